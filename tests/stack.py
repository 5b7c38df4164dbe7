"""The stacks every lifecycle-level test runs on: real servers, the embedded default, and the
in-memory fakes (tests/fakes/)."""

from __future__ import annotations

import pytest

from rlm_core import LifecycleManager, Settings
from rlm_core.clock import FakeClock
from tests.fakes import memory_stores

STACKS = ["servers", "embedded"]
# The lifecycle `manager` fixture also runs on the fakes; STACKS stays the stacks of real
# adapters, for fixtures that build their stores themselves.
MANAGER_STACKS = [*STACKS, "fakes"]


def build_manager(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
) -> LifecycleManager:
    """Real redis-server, S3 over HTTP, Qdrant local and mongomock; the embedded stack; or the
    fakes."""
    if request.param == "servers":
        return LifecycleManager.from_clients(
            settings,
            redis=request.getfixturevalue("redis_client"),
            qdrant=request.getfixturevalue("qdrant_client"),
            minio=request.getfixturevalue("minio_client"),
            mongo_db=request.getfixturevalue("mongo_db"),
            clock=clock,
        )
    if request.param == "fakes":
        # Servers keep their own time: a test moving its clock ages records and payload dates,
        # not cache TTLs or object stamps. The fakes' clock starts with the test's and stays,
        # as real time barely moves during a test.
        return LifecycleManager(settings, memory_stores(settings, FakeClock(clock.now())), clock)
    return LifecycleManager.from_settings(settings, clock=clock)
