"""Shared plumbing: workers in subprocesses (peak RSS per child), servers, rows, medians."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MIB = 1024 * 1024


@dataclass
class Row:
    """One line of the results table. ratio: > 1 means rlm is better, unless the goal says <=."""

    bench: str
    metric: str
    rlm: float | None
    baseline: float | None
    ratio: float | None
    goal: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "metric": self.metric,
            "rlm": self.rlm,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ workers


def run_worker(
    target: str, params: dict[str, Any], timeout: float = 900, fork: bool = False
) -> dict[str, Any]:
    """Run `module:function(params)` in a fresh interpreter; add its peak RSS (MiB).

    The child's own rusage (os.wait4) is read, so peaks of different workloads never mix.
    With `fork`, the process is forked from a server that imported the usual modules once
    (FORK_PRELOAD and the target's module; see bench/worker.py): the same measurement without
    the interpreter start and imports (~1 s a worker). Safe from several threads at once.
    """
    if fork:
        return _forked(target, params, timeout)
    cmd = [PYTHON, "-m", "bench.worker", target, json.dumps(params)]
    # rlm's structured events (one JSON line per metrics() call) go to the worker's stderr:
    # kept aside, shown only when the worker fails.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env=_env())
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                raise RuntimeError(f"worker {target} timed out after {timeout}s")
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
        err.seek(0)
        errors = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(
            f"worker {target} failed ({proc.returncode}): {text[-2000:]}{errors[-3000:]}"
        )
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    # ru_maxrss of a child also counts the forked copy of this (bigger) parent before exec, so
    # the peak is the child's own VmHWM, reported by bench.worker as it exits.
    result["ru_maxrss_mb"] = usage.ru_maxrss / 1024.0
    result["peak_rss_mb"] = result["vm_hwm_mb"]
    return result


# Imported once by the fork server: what the Redis and S3 workloads import (the Qdrant client
# is not: its gRPC stack is not fork-safe once used, and those workers start fresh).
FORK_PRELOAD = (
    "bench.counting",
    "bench.redis_bench",
    "bench.s3_bench",
    "redis",
    "minio",
    "rlm_core.lifecycle",
    "rlm_core.adapters.redis_cache",
    "rlm_core.adapters.s3_objects",
    "rlm_core.adapters.sqlite_metadata",
)


class _ForkServer:
    """The `bench.worker --serve` process, started at the first forked worker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.worker", "--serve", *FORK_PRELOAD],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        atexit.register(self.close)

    def start(self, request: dict[str, Any]) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline()
        if not answer.strip():
            raise RuntimeError(f"fork server exited ({self.proc.poll()})")
        return int(answer)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


_FORK_SERVER: list[_ForkServer] = []


def _forked(target: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    with _FORK_LOCK:
        if not _FORK_SERVER:
            _FORK_SERVER.append(_ForkServer())
    folder = Path(tempfile.mkdtemp(prefix="rlm-bench-fork-"))
    out, err = folder / "result.json", folder / "stderr.txt"
    pid = _FORK_SERVER[0].start(
        {"target": target, "params": params, "out": str(out), "err": str(err)}
    )
    deadline = time.monotonic() + timeout
    try:
        while not out.exists():
            if not _alive(pid):
                if out.exists():  # written just before it exited
                    break
                raise RuntimeError(f"worker {target} died: {err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                raise RuntimeError(f"worker {target} timed out after {timeout}s")
            time.sleep(0.01)
        while _alive(pid):  # its exit: nothing of it runs during the next measurement
            time.sleep(0.005)
        result: dict[str, Any] = json.loads(out.read_text())
        with _FORK_LOCK:
            _FORKED_CPU[0] += float(result.get("cpu_seconds", 0.0))
        if "error" in result:
            raise RuntimeError(f"worker {target} failed: {result['error'][-3000:]}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["peak_rss_mb"] = result["vm_hwm_mb"]
    return result


_FORK_LOCK = threading.Lock()
_FORKED_CPU = [0.0]


def forked_cpu_seconds() -> float:
    """CPU seconds of the forked workers so far (the kernel reaps them: no rusage has them)."""
    return _FORKED_CPU[0]


def close_fork_server() -> None:
    """Stop the fork server, so that its own CPU seconds reach this process's rusage."""
    with _FORK_LOCK:
        while _FORK_SERVER:
            _FORK_SERVER.pop().close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def loaded_rss() -> float:
    """Reset this process's peak RSS (VmHWM) to its RSS now and return that, in MiB: the loaded
    baseline (interpreter, clients, and for local-mode Qdrant the collection) above which a
    run's growth is measured, the same way for every store."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return vm_kb("VmRSS") / 1024.0


def growth(result: dict[str, Any]) -> float:
    """A worker's peak RSS above its loaded baseline, MiB (0 when the peak was the baseline:
    VmHWM lags VmRSS by a page or two)."""
    return max(0.0, float(result["peak_rss_mb"] - result["base_rss_mb"]))


@dataclass
class Memory:
    """Per store size: RSS growth above the loaded baseline (rlm's run and the raw baseline's,
    medians) and rlm's own tracemalloc peak in KiB (one traced run)."""

    growth: dict[int, float] = field(default_factory=dict)
    raw_growth: dict[int, float] = field(default_factory=dict)
    own_kb: dict[int, float] = field(default_factory=dict)

    def rows(self, bench: str, raw_name: str, note: str = "") -> list[Row]:
        """rlm's own peak at 10x vs 1x (goal <= 1.2x) and the RSS growth rows, explained (the
        two may come from different sizes: see the S3 bench's memory_sizes)."""
        if len(self.own_kb) < 2:
            return []
        small, big = min(self.own_kb), max(self.own_kb)
        own = ratio(self.own_kb[big], self.own_kb[small])
        rows = [
            Row(bench, f"rlm's own peak KiB (tracemalloc, rlm_core frames) at {_scale(small, big)}",
                self.own_kb[big], self.own_kb[small], own, "<= 1.2x",
                own is not None and own <= 1.2, note),
        ]  # fmt: skip
        if len(self.growth) >= 2:
            small, big = min(self.growth), max(self.growth)
            rows.append(
                Row(bench, f"process RSS growth MB above the loaded baseline at {_scale(small, big)}",
                    self.growth[big], self.growth[small],
                    ratio(self.growth[big], self.growth[small]),
                    note=f"{raw_name} grows {self.raw_growth[small]:.1f} -> "
                    f"{self.raw_growth[big]:.1f} MB on the same data")
            )  # fmt: skip
        return rows


def _scale(small: int, big: int) -> str:
    return f"{big // small}x size ({big:,}) vs 1x ({small:,})"


def vm_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s")


REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


@contextmanager
def redis_server() -> Iterator[int]:
    """A private redis-server (never the shared one on 6379) on a free port."""
    port = free_port()
    assert port != 6379
    workdir = tempfile.mkdtemp(prefix="rlm-bench-redis-")
    args = [
        REDIS_SERVER,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
        "--daemonize",
        "no",
        "--lazyfree-lazy-user-flush",
        "yes",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value
