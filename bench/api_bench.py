"""The operator's entry points: the HTTP API's `GET /api/resources/metrics` and `rlm --help`.

Metrics: `rlm api` (a real uvicorn on a free loopback port) answers from the latest usage snapshot
of each store in a real Dagster instance (SQLite storage, the repository's dagster.yaml). The
set-up is one snapshot_job run on the empty embedded stores, in a worker process: the endpoint
reads one materialization per store whatever the stores hold, so their size does not matter.
Ten client threads, each on its own keep-alive connection, send requests back to back for a few
seconds (several of the API's reuse windows, so the re-reads are among them); every request's
latency is recorded after a warm-up. The API reads the instance at most once a second
and shares that answer; a third row times single requests spaced past that second, each one a
read of the instance. The baseline is `GET /api/health` on the same server with the same
clients: the HTTP floor, no instance read.

`rlm --help`: wall time of the installed console script in a fresh process, median of several
runs; the baseline is the bare interpreter (`python -c pass`).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, Row, free_port, log, median, wait_for_port

PROFILES: dict[str, dict[str, int]] = {
    # 2 s per endpoint is still two reuse windows of the API (and thousands of requests).
    "quick": {"load_seconds": 2, "cold_requests": 5, "help_runs": 5},
    "full": {"load_seconds": 15, "cold_requests": 30, "help_runs": 11},
}
CLIENTS = 10
WARMUP_PER_CLIENT = 5
METRICS = "/api/resources/metrics"
HEALTH = "/api/health"
TOKEN = "bench-read-token-0123456789"
STORES = ("redis", "qdrant", "minio", "mongodb")
RLM = Path(PYTHON).parent / "rlm"
P99_GOAL_MS = 50.0
# rlm_dagster.api.METRICS_CACHE_SECONDS (not imported: that would load Dagster into this process).
API_CACHE_SECONDS = 1.0
HELP_GOAL_S = 0.5


def snapshot_worker(params: dict[str, Any]) -> dict[str, Any]:
    """One snapshot_job run recorded in the instance at DAGSTER_HOME (worker process)."""
    import dagster as dg

    from rlm_core.settings import Settings
    from rlm_dagster.wiring import build_definitions

    job = build_definitions(Settings.from_env()).resolve_job_def("snapshot_job")
    with dg.DagsterInstance.get() as instance:
        ok = job.execute_in_process(instance=instance).success
    return {"success": ok}


def _environment(scratch: Path) -> dict[str, str]:
    """A fresh instance and data dir; no store URL and no variable of the caller's shell."""
    home = scratch / "dagster-home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLM_", "DAGSTER_"))}
    for name in ("REDIS_URL", "QDRANT_URL", "MONGODB_URL", "MINIO_ENDPOINT"):
        env.pop(name, None)
    env.update(DAGSTER_HOME=str(home), RLM_DATA_DIR=str(scratch / "data"), RLM_API_TOKEN=TOKEN)
    return env


@contextmanager
def _api(env: dict[str, str], scratch: Path) -> Iterator[int]:
    """`rlm api` on a free loopback port until the block ends."""
    port = free_port()
    with (scratch / "api.log").open("wb") as out:
        proc = subprocess.Popen(
            [str(RLM), "api", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        wait_for_port(port, proc, timeout=120)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _client(port: int, path: str, warmup: int, until: float, out: list[float]) -> None:
    """One keep-alive connection: `warmup` requests unrecorded, then timed ones until `until`
    (perf_counter), at least one."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        done = 0
        while done <= warmup or time.perf_counter() < until:
            start = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            elapsed = time.perf_counter() - start
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
            if done >= warmup:
                out.append(elapsed)
            done += 1
    finally:
        connection.close()


def latencies(port: int, path: str, seconds: float) -> tuple[list[float], float]:
    """Every timed request's seconds from CLIENTS concurrent clients over `seconds`, and the
    timed requests per second."""
    results: list[list[float]] = [[] for _ in range(CLIENTS)]
    until = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=_client, args=(port, path, WARMUP_PER_CLIENT, until, out))
        for out in results
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [value for out in results for value in out]
    if len(flat) < CLIENTS:
        raise RuntimeError(f"{path}: {len(flat)} requests answered by {CLIENTS} clients")
    return flat, len(flat) / seconds


def cold_latencies(port: int, count: int) -> list[float]:
    """One client, each request after the API's reuse window: every answer is a fresh read."""
    out: list[float] = []
    for _ in range(count):
        time.sleep(API_CACHE_SECONDS * 1.1)
        _client(port, METRICS, 0, 0.0, out)
    return out


def percentile_ms(values: list[float], q: int) -> float:
    """The q-th percentile in milliseconds (inclusive method: a value that was measured)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def _check_snapshot_answer(port: int) -> None:
    """The endpoint answers from the snapshot just taken: an `as_of` for every store."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", METRICS, headers={"Authorization": f"Bearer {TOKEN}"})
    body = json.loads(connection.getresponse().read())
    connection.close()
    missing = [store for store in STORES if not body.get(store, {}).get("as_of")]
    if missing:
        raise RuntimeError(f"no usage snapshot served for {missing}: {body}")


class Prepared:
    """A fresh instance holding one snapshot_job run (untimed set-up): started by `prepare`,
    possibly while other untimed work runs, and waited for by `metrics_rows`."""

    def __init__(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="rlm-bench-api-"))
        self.env = _environment(self.scratch)
        log("api: one snapshot_job run into a fresh instance")
        self.snapshot = _start_snapshot({**self.env, "PYTHONPATH": str(ROOT)})

    def wait(self) -> None:
        """Until the snapshot_job run has finished (an error unless it succeeded)."""
        _finish_snapshot(self.snapshot)


def prepare() -> Prepared:
    """Start the set-up: the snapshot_job run goes on in its own process."""
    return Prepared()


def metrics_rows(seconds: float, cold_requests: int, prepared: Prepared | None = None) -> list[Row]:
    """p50 and p99 of GET /metrics (and of /health, the baseline) with 10 concurrent clients."""
    prepared = prepared or prepare()
    scratch, env = prepared.scratch, prepared.env
    try:
        # Neither start-up is measured: the server's imports overlap the job's if it still
        # runs, and nothing is requested from the server before the job has finished.
        with _api(env, scratch) as port:
            prepared.wait()
            _check_snapshot_answer(port)
            log(f"api: {CLIENTS} clients for {seconds:g} s each on /health, then /metrics")
            health, _ = latencies(port, HEALTH, seconds)
            metrics, rate = latencies(port, METRICS, seconds)
            cold = cold_latencies(port, cold_requests)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [*_metrics_rows(metrics, health, rate, seconds), _cold_row(cold)]


def _start_snapshot(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """snapshot_worker in a fresh interpreter with the bench's environment."""
    argv = [PYTHON, "-m", "bench.worker", "bench.api_bench:snapshot_worker", "{}"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish_snapshot(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the snapshot_job run; fail unless it succeeded."""
    out, err = proc.communicate(timeout=600)
    lines = out.splitlines()
    if proc.returncode != 0 or not lines or not json.loads(lines[-1])["success"]:
        raise RuntimeError(f"snapshot_job failed: {err[-3000:]!r}")


def _metrics_rows(
    metrics: list[float], health: list[float], rate: float, seconds: float
) -> list[Row]:
    setting = f"{CLIENTS} concurrent clients, {len(metrics):,} requests in {seconds:g} s"
    note = (
        "rlm api (uvicorn) on loopback, latest snapshots of a SQLite instance, re-read at most "
        f"once a second; {rate:.0f} req/s, slowest {max(metrics) * 1000:.0f} ms; baseline: "
        "GET /api/health, same server and clients; "
        "client threads share this CPU"
    )
    p50, p99 = percentile_ms(metrics, 50), percentile_ms(metrics, 99)
    return [
        Row("api", f"GET /metrics p50 ms, {setting}", p50, percentile_ms(health, 50), None,
            note=note),
        Row("api", f"GET /metrics p99 ms, {setting}", p99, percentile_ms(health, 99), None,
            f"<= {P99_GOAL_MS:g} ms", p99 <= P99_GOAL_MS, note),
    ]  # fmt: skip


def _cold_row(cold: list[float]) -> Row:
    return Row("api", f"GET /metrics ms read from the instance, 1 client, median of {len(cold)}",
               median(cold) * 1000, None, None,
               note=f"requests {API_CACHE_SECONDS * 1.1:g} s apart, past the API's reuse window; "
               "4 latest-materialization reads from SQLite")  # fmt: skip


def _wall(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv}: exit {done.returncode}: {done.stderr[-500:]!r}")
    return elapsed


def help_row(runs: int) -> Row:
    """Median wall time of `rlm --help` in a fresh process (console script, as installed)."""
    log(f"cli: rlm --help x {runs}")
    _wall([str(RLM), "--help"])  # the first run warms the page cache
    rlm = median([_wall([str(RLM), "--help"]) for _ in range(runs)])
    bare = median([_wall([PYTHON, "-c", "pass"]) for _ in range(runs)])
    return Row("cli", f"rlm --help wall seconds, median of {runs} fresh processes", rlm, bare,
               None, f"<= {HELP_GOAL_S:g} s", rlm <= HELP_GOAL_S,
               "baseline: the bare interpreter (python -c pass)")  # fmt: skip


def run(profile: str, prepared: Prepared | None = None) -> list[Row]:
    """The API latency rows and the `rlm --help` row for the `quick` or `full` profile, over
    `prepared` (api_bench.prepare()) when given."""
    p = PROFILES[profile]
    metrics = metrics_rows(p["load_seconds"], p["cold_requests"], prepared)
    return [*metrics, help_row(p["help_runs"])]
