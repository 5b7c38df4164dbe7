"""Reliability fixtures: a LifecycleManager over real servers or the embedded stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rlm_core import LifecycleManager, Settings
from rlm_core.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """Starts at the real now: object stores stamp last_modified with the real clock."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def settings(tmp_path: Path, bucket_name: str) -> Settings:
    base = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "data")})
    return replace(base, minio_bucket=bucket_name, batch_size=3)


@pytest.fixture(params=["servers", "embedded"])
def manager(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
) -> Iterator[LifecycleManager]:
    """Real redis-server, S3 over HTTP, Qdrant local and mongomock; or the embedded stack."""
    if request.param == "servers":
        mgr = LifecycleManager.from_clients(
            settings,
            redis=request.getfixturevalue("redis_client"),
            qdrant=request.getfixturevalue("qdrant_client"),
            minio=request.getfixturevalue("minio_client"),
            mongo_db=request.getfixturevalue("mongo_db"),
            clock=clock,
        )
    else:
        mgr = LifecycleManager.from_settings(settings, clock=clock)
    mgr.stores.metadata().ensure_indexes()
    mgr.stores.vectors().ensure_collection()
    mgr.stores.objects().ensure_bucket()
    yield mgr
    mgr.close()
