"""A cleanup interrupted after k deletions, then run again, ends exactly where one run ends;
N concurrent uploads of one file by one user leave one document and one object."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rlm_core import LifecycleManager, Settings
from rlm_core.clock import FakeClock
from rlm_core.stores import Stores
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.faults import Crash, FaultPlan, faulty
from tests.lifecycle.conftest import raw_redis
from tests.lifecycle.world import State, World, snapshot
from tests.services import S3Server

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def crashing(stores: Stores, after: int) -> Stores:
    return faulty(stores, FaultPlan(crash_after=after))


def build(world: World) -> None:
    day, hour = timedelta(days=1), timedelta(hours=1)
    active = world.session(idle=hour)
    stale = world.session(idle=3 * day)
    for age in (hour, 2 * day, 9 * day, 20 * day, 40 * day):
        world.document(age=age)
        world.document(age=age, session=stale)
    world.document(age=30 * day, conversation_id=active)
    kept = world.document(age=30 * day)
    world.message(active, [kept])
    world.points("vanished", stale, age=3 * day)
    world.orphan_object()


def fresh_manager(tmp_path: Path, name: str, bucket: str) -> LifecycleManager:
    base = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / name)})
    settings = replace(base, minio_bucket=bucket, batch_size=4)
    return LifecycleManager.from_settings(settings, clock=FakeClock(START))


def run_world(tmp_path: Path, name: str, clean: Callable[[LifecycleManager], None]) -> State:
    manager = fresh_manager(tmp_path, name, "documents")
    try:
        assert isinstance(manager.clock, FakeClock)
        world = World(manager.stores, manager.clock)
        world.setup()
        build(world)
        manager.clock.advance(days=8)
        clean(manager)
        return snapshot(manager.stores, raw_redis(manager))
    finally:
        manager.close()


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5, 6, 7, 9])
def test_interrupted_cleanup_then_rerun_equals_one_run(tmp_path: Path, k: int) -> None:
    expected = run_world(tmp_path, "once", lambda m: m.cleanup())

    def interrupted(manager: LifecycleManager) -> None:
        broken = LifecycleManager(manager.settings, crashing(manager.stores, k), manager.clock)
        with pytest.raises(Crash):
            broken.cleanup()
        manager.cleanup()

    # Every k above is below the number of mutating calls one run makes (see the test below),
    # so each one really crashes mid-sweep.

    assert run_world(tmp_path, f"crash-{k}", interrupted) == expected


def test_one_run_makes_more_mutating_calls_than_the_largest_crash_point(tmp_path: Path) -> None:
    budget = 10_000
    calls: list[int] = []

    def counted(manager: LifecycleManager) -> None:
        plan = FaultPlan(crash_after=budget)
        LifecycleManager(manager.settings, faulty(manager.stores, plan), manager.clock).cleanup()
        calls.append(plan._mutations)

    assert run_world(tmp_path, "a", counted) == run_world(tmp_path, "b", lambda m: m.cleanup())
    assert calls[0] > 9


def _race(manager: LifecycleManager, users: list[str], payload: bytes) -> list[Any]:
    manager.stores.metadata().ensure_indexes()
    manager.stores.objects().ensure_bucket()
    barrier = threading.Barrier(len(users))
    results: list[Any] = [None] * len(users)

    def upload(i: int) -> None:
        barrier.wait()
        results[i] = manager.ingest(users[i], "same.pdf", io.BytesIO(payload))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.fixture
def race_manager(tmp_path: Path, s3_srv: S3Server, bucket_name: str) -> Iterator[LifecycleManager]:
    """S3 over HTTP and the SQLite metadata store, whose unique index is atomic.

    mongomock checks a unique index after inserting, so concurrent inserts can both lose; it
    cannot model this race (a real MongoDB's unique index can), so the race runs here.
    """
    settings = Settings.from_env(
        {
            "RLM_DATA_DIR": str(tmp_path / "race"),
            "MINIO_ENDPOINT": s3_srv.endpoint,
            "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
            "MINIO_SECRET_KEY": S3_SECRET_KEY,
            "MINIO_BUCKET": bucket_name,
        }
    )
    manager = LifecycleManager.from_settings(settings, clock=FakeClock(START))
    yield manager
    manager.close()


def test_sixteen_concurrent_uploads_leave_one_document_and_one_object(
    race_manager: LifecycleManager,
) -> None:
    manager = race_manager
    results = _race(manager, ["user-1"] * 16, b"%PDF-1.7 identical" * 4096)
    assert len({r.document_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    docs = [d for batch in manager.stores.metadata().iter_documents(100) for d in batch]
    assert len(docs) == 1
    assert [o.key for o in manager.stores.objects().iter_objects()] == [docs[0].minio_key]


def test_the_same_file_for_two_users_makes_two_documents(race_manager: LifecycleManager) -> None:
    manager = race_manager
    results = _race(manager, ["user-1", "user-2"] * 4, b"shared contract" * 1000)
    assert len({r.document_id for r in results}) == 2
    assert len({o.key for o in manager.stores.objects().iter_objects()}) == 2
