"""The two stacks every lifecycle-level test runs on: real servers, and the embedded default."""

from __future__ import annotations

import pytest

from rlm_core import LifecycleManager, Settings
from rlm_core.clock import FakeClock

STACKS = ["servers", "embedded"]


def build_manager(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
) -> LifecycleManager:
    """Real redis-server, S3 over HTTP, Qdrant local and mongomock; or the embedded stack."""
    if request.param == "servers":
        return LifecycleManager.from_clients(
            settings,
            redis=request.getfixturevalue("redis_client"),
            qdrant=request.getfixturevalue("qdrant_client"),
            minio=request.getfixturevalue("minio_client"),
            mongo_db=request.getfixturevalue("mongo_db"),
            clock=clock,
        )
    return LifecycleManager.from_settings(settings, clock=clock)
