"""Reliability fixtures: a LifecycleManager over real servers or the embedded stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rlm_core import LifecycleManager, Settings
from rlm_core.clock import FakeClock
from tests.stack import STACKS, build_manager


@pytest.fixture
def clock() -> FakeClock:
    """Starts at the real now: object stores stamp last_modified with the real clock."""
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def settings(tmp_path: Path, bucket_name: str) -> Settings:
    base = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "data")})
    return replace(base, minio_bucket=bucket_name, batch_size=3)


@pytest.fixture(params=STACKS)
def manager(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
) -> Iterator[LifecycleManager]:
    """Real redis-server, S3 over HTTP, Qdrant local and mongomock; or the embedded stack."""
    mgr = build_manager(request, settings, clock)
    mgr.stores.metadata().ensure_indexes()
    mgr.stores.vectors().ensure_collection()
    mgr.stores.objects().ensure_bucket()
    yield mgr
    mgr.close()
