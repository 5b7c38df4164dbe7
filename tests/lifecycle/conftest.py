"""Lifecycle fixtures: the same tests run on real servers and on the embedded stack."""

from __future__ import annotations

from typing import Any

import pytest

from rlm_core import LifecycleManager
from rlm_core.clock import FakeClock
from tests.fakes import MemoryQdrant, MemoryVectors
from tests.lifecycle import shapes
from tests.lifecycle.world import World
from tests.stack import MANAGER_STACKS, stack_fixtures


def _patch_shapes(request: pytest.FixtureRequest) -> None:
    monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setattr(shapes, "QdrantVectorStore", memory_vectors)


clock, settings, manager = stack_fixtures(MANAGER_STACKS, batch_size=50, on_fakes=_patch_shapes)


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
