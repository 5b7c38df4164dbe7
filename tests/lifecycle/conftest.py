"""Lifecycle fixtures: the same tests run on real servers and on the embedded stack."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rlm_core import LifecycleManager, Settings
from rlm_core.clock import FakeClock
from tests.lifecycle.world import World
from tests.stack import STACKS, build_manager


@pytest.fixture
def clock() -> FakeClock:
    """Starts at the real now: object stores stamp last_modified with the real clock."""
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def settings(tmp_path: Path, bucket_name: str) -> Settings:
    base = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "data")})
    return replace(base, minio_bucket=bucket_name, batch_size=50)


@pytest.fixture(params=STACKS)
def manager(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
) -> Iterator[LifecycleManager]:
    """A LifecycleManager over real servers (redis-server, S3 over HTTP, Qdrant local, mongomock) or embedded."""
    mgr = build_manager(request, settings, clock)
    yield mgr
    mgr.close()


@pytest.fixture
def world(manager: LifecycleManager, clock: FakeClock) -> World:
    w = World(manager.stores, clock)
    w.setup()
    return w


def raw_redis(manager: LifecycleManager) -> Any:
    """The redis client behind the cache adapter (for exact state checks)."""
    return manager.stores.cache()._client  # type: ignore[attr-defined]
