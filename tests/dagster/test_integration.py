"""End to end through a real Dagster instance and daemon: snapshot, sensor tick, queued cleanup, metrics drop.

Nothing runs in-process: runs are submitted with `dagster job launch`, and `dagster-daemon run`
(the queued-run coordinator, the sensor daemon and the default run launcher) does the rest.
The QueuedRunCoordinator's dequeue step has no public Python API, hence the daemon process.
Once with SQLite storage (dagster.yaml) and once with PostgreSQL storage (dagster.postgres.yaml).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pytest

from tests.dagster.conftest import REPO_ROOT, clean_subprocess_env, dagster_home, launch

pytestmark = pytest.mark.e2e

BIN = REPO_ROOT / ".venv" / "bin"
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
PRESSURE = {"HIGH", "CRITICAL"}


def dagster_pg_url(url: str, name: str) -> str:
    """The server URL pointed at database `name`, with the driver SQLAlchemy 2.1 must be told."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))


@pytest.fixture(params=["sqlite", "postgres"])
def instance_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """DAGSTER_HOME (and for PostgreSQL a fresh database) for one end-to-end run."""
    if request.param == "sqlite":
        yield {"DAGSTER_HOME": str(dagster_home(tmp_path / "home"))}
        return
    import psycopg2

    server_url: str = request.getfixturevalue("postgres_url")
    name = f"rlm_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        pg_url = dagster_pg_url(server_url, name)
        monkeypatch.setenv("RLM_DAGSTER_PG_URL", pg_url)
        home = dagster_home(tmp_path / "home", "dagster.postgres.yaml")
        yield {"DAGSTER_HOME": str(home), "RLM_DAGSTER_PG_URL": pg_url}
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def rlm(env: dict[str, str], *argv: str) -> dict[str, object]:
    done = subprocess.run(
        [str(BIN / "rlm"), *argv], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


def metrics(env: dict[str, str]) -> dict[str, dict[str, object]]:
    return {k: v for k, v in rlm(env, "metrics").items() if isinstance(v, dict)}


def wait_for_sensor_cleanups(
    instance: dg.DagsterInstance,
    daemon: subprocess.Popen[bytes],
    expected: set[str],
    timeout: float = 420,
) -> list[dg.DagsterRun]:
    """Poll until the sensor has requested a cleanup of each expected resource type (the
    snapshot's assets may reach the sensor in different ticks) and every run has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.poll() is None, "dagster-daemon exited early"
        runs = [
            r
            for r in instance.get_runs(dg.RunsFilter(job_name="cleanup_job"))
            if r.tags.get("rlm/trigger") == "sensor"
        ]
        targets = {r.tags.get("rlm/resource_type") for r in runs}
        if expected <= targets and all(r.status in DONE for r in runs):
            return runs
        time.sleep(2)
    raise AssertionError("the sensor's cleanup runs did not finish in time")


# The schedules are RUNNING by default: weekly crons keep them from firing while the test runs
# (a run that crossed a 5-minute boundary once got a scheduled second snapshot and sensor round).
QUIET_SCHEDULES = dict.fromkeys(
    (
        "RESOURCE_MONITORING_INTERVAL_SECONDS",
        "REDIS_CLEANUP_INTERVAL_SECONDS",
        "QDRANT_CLEANUP_INTERVAL_SECONDS",
        "MINIO_CLEANUP_INTERVAL_SECONDS",
    ),
    "604800",
)


def test_snapshot_sensor_queue_cleanup(instance_env: dict[str, str], tmp_path: Path) -> None:
    env = clean_subprocess_env(
        RLM_DATA_DIR=str(tmp_path / "data"), **QUIET_SCHEDULES, **instance_env
    )
    rlm(env, "demo", "seed")
    seeded = metrics(env)
    # Soft limits just above what the demo holds: Qdrant and MongoDB are CRITICAL (about 95%).
    env["MAX_QDRANT_POINTS"] = str(int(int(str(seeded["qdrant"]["total_items"])) / 0.95))
    env["MAX_MONGODB_DOCUMENTS"] = str(int(int(str(seeded["mongodb"]["total_items"])) / 0.95))
    before = metrics(env)
    assert before["qdrant"]["cleanup_priority"] in PRESSURE
    launch(env, "snapshot_job", {}, {})
    log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with dg.DagsterInstance.from_config(instance_env["DAGSTER_HOME"]) as instance:
            runs = wait_for_sensor_cleanups(
                instance, daemon, {"qdrant_vectors", "mongodb_metadata"}
            )
            snapshot_runs = [
                r
                for r in instance.get_runs(dg.RunsFilter(job_name="snapshot_job"))
                if "dagster/schedule_name" not in r.tags
            ]
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()
    assert [r.status for r in snapshot_runs] == [dg.DagsterRunStatus.SUCCESS]
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    targets: dict[str, dict[str, str]] = {}
    for run in reversed(runs):  # oldest first: the round that the test's snapshot triggered
        targets.setdefault(run.tags["rlm/resource_type"], dict(run.tags))
    assert {"qdrant_vectors", "mongodb_metadata"} <= set(targets)
    assert targets["qdrant_vectors"]["dagster/priority"] == "10"
    assert str(targets["qdrant_vectors"]["rlm/reason"]).startswith("High resource usage: ")
    after = metrics(env)
    assert int(str(after["qdrant"]["total_items"])) < int(str(before["qdrant"]["total_items"]))
    assert int(str(after["mongodb"]["total_items"])) < int(str(before["mongodb"]["total_items"]))
    assert float(str(after["qdrant"]["usage_percentage"])) < float(
        str(before["qdrant"]["usage_percentage"])
    )
    assert rlm(env, "queue") == {"queue_size": 0, "tasks": []}
