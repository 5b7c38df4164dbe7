"""Shared fixtures: real services, fresh stores per test, a fake clock."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import mongomock
import pytest
import redis
from minio import Minio
from qdrant_client import QdrantClient

from rlm_core.clock import FakeClock
from tests.services import (
    POSTGRES_URL,
    RedisServer,
    S3Server,
    postgres_available,
    redis_server,
    require_or_skip,
    s3_server,
)

S3_ACCESS_KEY = "rlm-test-access"
S3_SECRET_KEY = "rlm-test-secret-value"

os.environ.setdefault("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


# The tier of each test module, by path (longest match wins); a test's own tier marker (an
# integration test in a unit module) wins over its module's. README "Tests" explains the tiers.
TIER_MARKERS = ("unit", "contract", "integration", "e2e")
TIERS: dict[str, str] = {
    "tests/unit/": "unit",
    "tests/contracts/": "contract",
    # The stack suites: real servers and the embedded stack; their `fakes` param is the fast rung.
    "tests/lifecycle/": "integration",
    "tests/reliability/": "integration",
    "tests/dagster/": "integration",
    "tests/dagster/test_checks.py": "unit",
    "tests/dagster/test_history.py": "unit",
    "tests/dagster/test_logs.py": "unit",
    "tests/dagster/test_schedules.py": "unit",
    "tests/dagster/test_store_table_derived.py": "unit",
    "tests/dagster/test_api.py": "e2e",
    "tests/dagster/test_cli.py": "e2e",
    "tests/dagster/test_cli_polish.py": "e2e",
    "tests/dagster/test_integration.py": "e2e",
    "tests/browser/": "e2e",
    "tests/test_audit_sinks.py": "integration",
    "tests/test_clock_and_events.py": "unit",
    "tests/test_connections.py": "integration",
    "tests/test_fanout.py": "integration",
    "tests/test_init.py": "integration",
    "tests/test_package.py": "unit",
    "tests/test_priority.py": "unit",
    "tests/test_services.py": "integration",
    "tests/test_settings.py": "unit",
    "tests/test_settings_operate.py": "unit",
    "tests/test_settings_topology.py": "unit",
    "tests/test_split_topology.py": "integration",
}
ROOT = Path(__file__).resolve().parent.parent


def tier_of(path: Path) -> str | None:
    """The tier marker of a test module, from TIERS."""
    relative = path.resolve().relative_to(ROOT).as_posix()
    matches = [prefix for prefix in TIERS if relative.startswith(prefix)]
    return TIERS[max(matches, key=len)] if matches else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its tier marker; a module no tier covers is a collection error."""
    for item in items:
        if any(item.get_closest_marker(name) for name in TIER_MARKERS):
            continue
        tier = tier_of(item.path)
        if tier is None:
            raise pytest.UsageError(
                f"{item.path}: no test tier; add it to TIERS in tests/conftest.py"
            )
        item.add_marker(tier)


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    """A private redis-server for the whole session (never 6379)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_client(redis_srv: RedisServer) -> Iterator[redis.Redis]:
    """A client on a flushed database of the private server."""
    client = redis.Redis(host="127.0.0.1", port=redis_srv.port, socket_timeout=10)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_srv() -> Iterator[S3Server]:
    """moto's S3 server for the whole session."""
    with s3_server() as server:
        yield server


@pytest.fixture
def minio_client(s3_srv: S3Server) -> Minio:
    """The real minio client speaking HTTP to the S3 server."""
    return Minio(s3_srv.endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)


@pytest.fixture
def bucket_name() -> str:
    """A fresh bucket name per test."""
    return f"rlm-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def qdrant_client(tmp_path: Path) -> Iterator[QdrantClient]:
    """qdrant-client's local on-disk engine in a temporary folder."""
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    yield client
    client.close()


@pytest.fixture
def mongo_db() -> mongomock.Database:
    """A mongomock database standing in for pymongo's Database, with the RAG app's three
    collections (rlm refuses reference-aware sweeps when sessions or messages are missing)."""
    db = mongomock.MongoClient(tz_aware=False)["rag"]
    for name in ("documents", "chat_sessions", "messages"):
        db.create_collection(name)
    return db


@pytest.fixture
def postgres_url() -> str:
    """PostgreSQL for Dagster storage on 127.0.0.1:5432."""
    if not postgres_available():
        require_or_skip("PostgreSQL is not answering on 127.0.0.1:5432")
    return POSTGRES_URL


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()
