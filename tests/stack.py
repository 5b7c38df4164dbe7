"""The stacks every lifecycle-level test runs on: real servers, the embedded default, and the
in-memory fakes (tests/fakes/)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def stack_fixtures(
    stacks: list[str],
    *,
    batch_size: int,
    whole_seconds: bool = False,
    provision: bool = False,
    on_fakes: Callable[[pytest.FixtureRequest], None] | None = None,
) -> tuple[Any, Any, Any]:
    """The `clock`, `settings` and `manager` fixtures of a stack suite (tests/lifecycle and
    tests/reliability), which differ only in these arguments; assign them in its conftest."""

    @pytest.fixture(name="clock")
    def clock_fixture() -> FakeClock:
        """Starts at the real now: object stores stamp last_modified with the real clock."""
        now = datetime.now(UTC)
        return FakeClock(now.replace(microsecond=0) if whole_seconds else now)

    @pytest.fixture(name="settings")
    def settings_fixture(tmp_path: Path, bucket_name: str) -> Settings:
        base = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "data")})
        return replace(base, minio_bucket=bucket_name, batch_size=batch_size)

    @pytest.fixture(name="manager", params=stacks)
    def manager_fixture(
        request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
    ) -> Iterator[LifecycleManager]:
        """A LifecycleManager over each stack of `stacks`."""
        mgr = build_manager(request, settings, clock)
        if request.param == "fakes" and on_fakes is not None:
            on_fakes(request)
        if provision:
            mgr.stores.metadata().ensure_indexes()
            mgr.stores.vectors().ensure_collection()
            mgr.stores.objects().ensure_bucket()
        yield mgr
        mgr.close()

    return clock_fixture, settings_fixture, manager_fixture
