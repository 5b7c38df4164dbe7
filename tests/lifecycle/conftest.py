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
from tests.fakes import MemoryQdrant, MemoryVectors
from tests.lifecycle import shapes
from tests.lifecycle.world import World
from tests.stack import MANAGER_STACKS, build_manager


@pytest.fixture
def clock() -> FakeClock:
    """Starts at the real now: object stores stamp last_modified with the real clock."""
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def settings(tmp_path: Path, bucket_name: str) -> Settings:
    base = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "data")})
    return replace(base, minio_bucket=bucket_name, batch_size=50)


@pytest.fixture(params=MANAGER_STACKS)
def manager(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
) -> Iterator[LifecycleManager]:
    """A LifecycleManager over real servers (redis-server, S3 over HTTP, Qdrant local, mongomock), embedded, or the fakes."""
    mgr = build_manager(request, settings, clock)
    if request.param == "fakes":
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(shapes, "QdrantVectorStore", memory_vectors)
    yield mgr
    mgr.close()


@pytest.fixture
def world(manager: LifecycleManager, clock: FakeClock) -> World:
    w = World(manager.stores, clock)
    w.setup()
    return w


def memory_vectors(
    client: MemoryQdrant, collection: str, vector_size: int, scan_deletes: bool | None = None
) -> MemoryVectors:
    """What shapes.with_vectors and with_serialized_qdrant rebuild over the fakes: the fake has
    one delete path (the scan path's re-check), whichever of Qdrant's two a test asks for."""
    return MemoryVectors(client, collection, vector_size)


def raw_redis(manager: LifecycleManager) -> Any:
    """The redis client behind the cache adapter (for exact state checks)."""
    return manager.stores.cache()._client  # type: ignore[attr-defined]
