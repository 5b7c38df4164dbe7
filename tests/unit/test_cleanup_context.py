"""What one cleanup pass shares across its sweeps: the cap on deletions (SPEC 4.1 (8)), the
per-store leases that keep two cleanups of a store apart, and streaming in chunks."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest

from rlm_core.batching import chunked
from rlm_core.cleanup.context import LEASE_TTL, Budget, Leases, SweepOptions
from rlm_core.clock import FakeClock
from rlm_core.domain import ResourceType
from rlm_core.ports import StoreError
from rlm_core.settings import Settings
from tests.fakes import MemoryMetadata, MemoryMongo
from tests.faults import FaultPlan, OnCall, hooked
from tests.unit.rig import NOW, make_rig

TTL = 3600


# --- the cap ---------------------------------------------------------------------------------


def test_no_cap_grants_everything_and_is_never_exhausted() -> None:
    budget = Budget(None)
    assert budget.take(10**9)
    assert budget.grant(10**9) == 10**9
    budget.refund(3)
    assert budget.remaining is None
    assert not budget.exhausted


def test_take_spends_all_of_a_cost_that_fits_or_nothing() -> None:
    budget = Budget(5)
    assert budget.take(3)
    assert budget.remaining == 2
    assert not budget.take(3)
    assert budget.remaining == 2
    assert budget.take(2)  # exactly what is left fits
    assert budget.remaining == 0
    assert budget.exhausted
    assert budget.take(0)


def test_grant_gives_what_is_left_at_most() -> None:
    budget = Budget(5)
    assert budget.grant(2) == 2
    assert budget.remaining == 3
    assert budget.grant(7) == 3
    assert budget.remaining == 0
    assert budget.grant(1) == 0


def test_refund_gives_back_what_was_taken() -> None:
    budget = Budget(4)
    assert budget.take(4)
    budget.refund(1)
    assert budget.remaining == 1
    assert not budget.exhausted


def test_a_budget_is_exhausted_only_once_nothing_is_left() -> None:
    assert not Budget(1).exhausted
    assert Budget(0).exhausted


def test_the_cap_spans_every_store_of_a_run(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.seed.document(age=timedelta(days=30), with_object=False)  # one record: 1 item
    for i in range(3):
        rig.seed.cache_key(f"cache:{i}".encode(), idle=2 * TTL)
    report = rig.cleanup(cap=3)
    assert report.deleted_counts["mongodb"] == 1
    assert report.deleted_counts["redis"] == 2
    assert report.total_deleted == 3
    assert report.capped


# --- chunks ----------------------------------------------------------------------------------


def test_chunked_streams_lists_of_at_most_size() -> None:
    assert list(chunked(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []
    assert list(chunked(range(3), 3)) == [[0, 1, 2]]


# --- leases ----------------------------------------------------------------------------------


@pytest.fixture
def mongo() -> MemoryMongo:
    return MemoryMongo()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


def leases(mongo: MemoryMongo, clock: FakeClock, holder: str, *names: str, **kw: object) -> Leases:
    return Leases(MemoryMetadata(mongo), names, holder, clock.now, **kw)  # type: ignore[arg-type]


def test_a_run_takes_every_lease_and_gives_them_back(mongo: MemoryMongo, clock: FakeClock) -> None:
    run = leases(mongo, clock, "run-1", "redis", "qdrant", "redis")
    assert run.acquire() is None
    assert mongo.leases == {
        "qdrant": ("run-1", NOW + LEASE_TTL),
        "redis": ("run-1", NOW + LEASE_TTL),
    }
    run.release()
    assert mongo.leases == {}
    run.release()  # nothing held: nothing to do


def test_a_busy_store_refuses_the_run_and_it_keeps_no_lease(
    mongo: MemoryMongo, clock: FakeClock
) -> None:
    assert leases(mongo, clock, "other", "redis").acquire() is None
    run = leases(mongo, clock, "run-1", "qdrant", "redis")
    busy = run.acquire()
    assert busy == (
        f"another cleanup of redis is running (other until {NOW + LEASE_TTL}); this run "
        "deleted nothing, run it again when that one ends"
    )
    assert mongo.leases == {"redis": ("other", NOW + LEASE_TTL)}  # qdrant given back


def test_a_lease_lasts_twenty_minutes_without_renewal(mongo: MemoryMongo, clock: FakeClock) -> None:
    assert leases(mongo, clock, "crashed", "redis").acquire() is None
    clock.advance(timedelta(minutes=20))
    assert leases(mongo, clock, "run-1", "redis").acquire() is not None
    clock.advance(timedelta(microseconds=1))
    assert leases(mongo, clock, "run-1", "redis").acquire() is None


def test_leases_are_renewed_once_a_quarter_of_their_time_has_passed(
    mongo: MemoryMongo, clock: FakeClock
) -> None:
    run = leases(mongo, clock, "run-1", "redis")
    run.renew()  # nothing held yet: nothing to renew
    assert mongo.leases == {}
    assert run.acquire() is None
    clock.advance(timedelta(minutes=5) - timedelta(microseconds=1))
    run.renew()
    assert mongo.leases["redis"] == ("run-1", NOW + LEASE_TTL)
    clock.advance(timedelta(microseconds=1))
    run.renew()
    assert mongo.leases["redis"] == ("run-1", clock.now() + LEASE_TTL)
    renewed = clock.now()
    clock.advance(timedelta(minutes=4))
    run.renew()  # counted from the last renewal
    assert mongo.leases["redis"] == ("run-1", renewed + LEASE_TTL)


def test_a_quarter_of_an_odd_lease_is_its_exact_quarter(
    mongo: MemoryMongo, clock: FakeClock
) -> None:
    run = leases(mongo, clock, "run-1", "redis", ttl=timedelta(microseconds=7))
    assert run.acquire() is None
    clock.advance(timedelta(microseconds=1))  # under 7/4 us
    run.renew()
    assert mongo.leases["redis"] == ("run-1", NOW + timedelta(microseconds=7))


def test_a_lease_taken_over_stops_the_run(mongo: MemoryMongo, clock: FakeClock) -> None:
    run = leases(mongo, clock, "run-1", "redis")
    assert run.acquire() is None
    clock.advance(timedelta(minutes=21))
    assert leases(mongo, clock, "other", "redis").acquire() is None
    with pytest.raises(StoreError, match="the lease on redis was taken over") as raised:
        run.renew()
    assert str(raised.value) == (
        f"the lease on redis was taken over (other until {clock.now() + LEASE_TTL}); run stopped"
    )


def test_a_store_error_while_taking_leases_gives_back_those_taken(
    mongo: MemoryMongo, clock: FakeClock, tmp_path: Path
) -> None:
    rig = make_rig(tmp_path)

    def blip() -> None:
        raise StoreError("connection reset")

    faulty = hooked(rig.stores, OnCall("metadata", "acquire_lease", 1, blip)).metadata()
    run = Leases(faulty, ["qdrant", "redis"], "run-1", clock.now)
    with pytest.raises(StoreError, match="connection reset"):
        run.acquire()
    assert rig.mongo.leases == {}


def test_a_failing_give_back_is_left_to_expire(
    mongo: MemoryMongo, clock: FakeClock, tmp_path: Path
) -> None:
    rig = make_rig(tmp_path)
    plan = FaultPlan(down="metadata", down_after=1)  # everything after the first lease fails
    run = Leases(hooked(rig.stores, plan).metadata(), ["qdrant", "redis"], "run-1", clock.now)
    with pytest.raises(StoreError, match="acquire_lease"):
        run.acquire()
    plan.down = None
    run.release()  # forgets the lease it could not give back; it expires on its own
    assert rig.mongo.leases == {"qdrant": ("run-1", NOW + LEASE_TTL)}


# --- leases over whole runs ------------------------------------------------------------------


def test_a_cleanup_while_another_holds_a_lease_deletes_nothing(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.seed.cache_key(b"cache:old", idle=2 * TTL)
    assert leases(rig.mongo, rig.clock, "other", "redis").acquire() is None
    report = rig.cleanup(ResourceType.REDIS_CACHE)
    assert rig.keys() == {b"cache:old"}
    assert report.errors and "another cleanup of redis is running" in report.errors[0]


def test_a_long_run_renews_its_leases_between_batches(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=1)
    for i in range(3):
        rig.seed.cache_key(f"cache:{i}".encode(), idle=2 * TTL)
    # After the first batch the clock moves 15 minutes: the second batch's heartbeat renews,
    # the third's (no time later) does not.
    rig.after["unlink_idle"] = [lambda: rig.clock.advance(timedelta(minutes=15))]
    report = rig.cleanup(ResourceType.REDIS_CACHE)
    assert report.success, report.errors
    assert report.deleted_counts["redis"] == 3
    renewals = [c for c in rig.calls if c.name == "metadata.acquire_lease"]
    assert len(renewals) == 2  # taken once, renewed once
    assert rig.mongo.leases == {}


def test_a_lease_taken_over_mid_run_stops_that_sweep(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=1)
    for i in range(3):
        rig.seed.cache_key(f"cache:{i}".encode(), idle=2 * TTL)

    def stolen() -> None:
        rig.clock.advance(timedelta(minutes=25))
        assert leases(rig.mongo, rig.clock, "other", "redis").acquire() is None

    rig.after["unlink_idle"] = [stolen]
    report = rig.cleanup(ResourceType.REDIS_CACHE)
    assert report.deleted_counts["redis"] == 1
    assert report.errors == [
        "redis: the lease on redis was taken over "
        f"(other until {rig.clock.now() + LEASE_TTL}); run stopped"
    ]
    assert rig.mongo.leases == {"redis": ("other", rig.clock.now() + LEASE_TTL)}


def test_a_runs_options_come_from_its_settings_and_cannot_change_mid_run() -> None:
    settings = Settings.from_env(
        {"RLM_BATCH_SIZE": "250", "MINIO_BUCKET": "docs", "RLM_AUDIT_PREFIX": "trail/"}
    )
    options = SweepOptions.from_settings(settings)
    assert (options.batch_size, options.minio_bucket, options.audit_prefix) == (
        250,
        "docs",
        "trail/",
    )
    assert options.redis_document_key_templates == settings.redis_document_key_templates
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 1  # type: ignore[misc]
