"""SPEC 13 on one host: code server, webserver, daemon and API as separate processes on
PostgreSQL storage, driven by deploy/split_topology.py, deleting from a real redis-server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from rlm_core.settings import ENV_VARIABLES
from tests.services import RedisServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the instance, dropped afterwards."""
    import psycopg2

    name = f"rlm_split_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(postgres_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(postgres_url)
        yield urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.integration
@pytest.mark.slow
def test_a_cleanup_goes_api_webserver_daemon_code_server(
    pg_database: str, redis_srv: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    for i in range(40):
        redis_client.set(f"cache:{i}", b"x")
    stale = [f"cache:old:{i}".encode() for i in range(25)]
    for key in stale:
        redis_client.restore(key, 0, redis_client.dump("cache:0"), idletime=7200)  # type: ignore[arg-type]
    redis_client.set("blacklist:token", b"not ours")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ENV_VARIABLES},
        "RLM_DAGSTER_PG_URL": pg_database,
        "REDIS_URL": redis_srv.url,
        "RLM_DATA_DIR": str(tmp_path / "data"),
        "RLM_CLEANUP_MODE": "enforce",
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "split_topology.py"), "--keep"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout)
    root = Path(summary["root"])
    try:
        # RLM_LOG_FORMAT is unset (json): the webserver and the daemon log JSON lines only.
        for name in ("webserver", "daemon"):
            lines = (root / name / "process.log").read_text().splitlines()
            events = [json.loads(line) for line in lines if line.strip()]
            assert any(str(e.get("logger")).startswith("dagster") for e in events), name
        # The code server's own lines are JSON too; the run workers it starts share its output
        # and log through the run's console logger, which the job chooses.
        lines = (root / "code-server" / "process.log").read_text().splitlines()
        own = [json.loads(line) for line in lines if line.startswith("{")]
        assert any(str(e.get("logger")).startswith("dagster") for e in own), lines[:20]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cleanup = summary["cleanup"]
    assert cleanup["success"] is True, cleanup
    assert cleanup["deleted_counts"]["redis"] == len(stale)
    assert all(summary["processes_alive_after_run"].values())
    assert redis_client.exists(*stale) == 0
    assert redis_client.exists("blacklist:token") == 1
    assert redis_client.ttl("cache:1") > 0  # the fresh persistent keys got their TTL
