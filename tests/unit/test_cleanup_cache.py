"""The Redis sweep over the fakes (SPEC 4, Redis): persistent keys idle past the TTL are
unlinked, atomically re-checked; the others get the time they have left."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from rlm_core.domain import ResourceType
from tests.fakes.cache import ENTRY_OVERHEAD
from tests.unit.rig import Rig, make_rig

TTL = 3600  # REDIS_CACHE_TTL_HOURS = 1
CACHE = ResourceType.REDIS_CACHE


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, redis_cache_ttl_hours=1.0)


def memory(key: bytes, size: int = 10) -> int:
    return ENTRY_OVERHEAD + len(key) + size


def test_a_key_idle_exactly_the_ttl_is_unlinked_and_one_second_less_is_bounded(rig: Rig) -> None:
    rig.seed.cache_key(b"doc:text:at", idle=TTL)
    rig.seed.cache_key(b"doc:text:under", idle=TTL - 1)
    report = rig.cleanup(CACHE)
    assert rig.keys() == {b"doc:text:under"}
    assert rig.redis.ttl(b"doc:text:under") == 1  # the one second it had left
    assert report.deleted_counts["redis"] == 1
    assert report.bytes_freed["redis"] == memory(b"doc:text:at")
    assert report.repaired == 1
    assert report.success


def test_every_idle_key_is_audited_with_its_store_size_before_the_unlink(rig: Rig) -> None:
    rig.seed.cache_key(b"doc:text:a", idle=TTL + 5, size=30)
    rig.seed.cache_key(b"cache:b", idle=2 * TTL)
    rig.cleanup(CACHE)
    assert rig.journal[:3] == [
        ("audit", ("redis", "doc:text:a")),
        ("audit", ("redis", "cache:b")),
        ("cache.unlink_idle", (b"doc:text:a", b"cache:b")),
    ]
    lines = {line["target"]: line for line in rig.audit()}
    assert lines["doc:text:a"]["size_bytes"] == memory(b"doc:text:a", 30)
    assert lines["doc:text:a"]["reason"] == (
        f"no TTL and idle {TTL + 5}s >= REDIS_CACHE_TTL ({TTL}s)"
    )
    assert lines["cache:b"]["size_bytes"] == memory(b"cache:b")
    assert {line["action"] for line in lines.values()} == {"unlink"}
    assert rig.keys() == set()


def test_keys_with_a_ttl_and_keys_of_other_apps_are_never_touched(rig: Rig) -> None:
    rig.seed.cache_key(b"doc:text:ttl", idle=10 * TTL, ttl=50)
    rig.seed.cache_key(b"session:other-app", idle=10 * TTL)
    report = rig.cleanup(CACHE)
    assert rig.keys() == {b"doc:text:ttl", b"session:other-app"}
    assert rig.redis.ttl(b"doc:text:ttl") == 50
    assert rig.redis.ttl(b"session:other-app") == -1
    assert (report.deleted_counts["redis"], report.repaired) == (0, 0)
    assert rig.writes() == []
    assert rig.audit() == []


def test_a_persistent_young_key_is_expired_to_the_time_it_has_left(rig: Rig) -> None:
    rig.seed.cache_key(b"doc:text:young", idle=100)
    rig.seed.cache_key(b"cache:fresh", idle=0)
    report = rig.cleanup(CACHE)
    assert rig.redis.ttl(b"doc:text:young") == TTL - 100
    assert rig.redis.ttl(b"cache:fresh") == TTL
    assert report.repaired == 2
    assert report.deleted_counts["redis"] == 0
    assert rig.audit() == []  # bounding a key deletes nothing


def test_a_key_read_between_the_scan_and_the_unlink_is_kept(rig: Rig) -> None:
    """The atomic check-and-unlink: a plain UNLINK would take a key the app just used."""
    rig.seed.cache_key(b"doc:text:read", idle=2 * TTL)
    rig.seed.cache_key(b"doc:text:idle", idle=2 * TTL)
    rig.before["unlink_idle"] = [lambda: rig.redis.get(b"doc:text:read")]
    report = rig.cleanup(CACHE)
    assert rig.keys() == {b"doc:text:read"}
    assert report.deleted_counts["redis"] == 1
    assert report.bytes_freed["redis"] == memory(b"doc:text:idle")


def test_a_key_given_a_ttl_between_the_scan_and_the_unlink_is_kept(rig: Rig) -> None:
    rig.seed.cache_key(b"doc:text:bounded", idle=2 * TTL)
    rig.before["unlink_idle"] = [lambda: rig.redis.expire(b"doc:text:bounded", 30)]
    report = rig.cleanup(CACHE)
    assert rig.keys() == {b"doc:text:bounded"}
    assert report.deleted_counts["redis"] == 0


def test_a_key_given_a_ttl_before_the_repair_keeps_its_own_ttl(rig: Rig) -> None:
    rig.seed.cache_key(b"doc:text:young", idle=100)
    rig.before["expire_if_persistent"] = [lambda: rig.redis.expire(b"doc:text:young", 7)]
    report = rig.cleanup(CACHE)
    assert rig.redis.ttl(b"doc:text:young") == 7
    assert report.repaired == 0  # the report counts what the store did


def test_a_dry_run_reports_what_would_go_and_changes_nothing(rig: Rig) -> None:
    rig.seed.cache_key(b"doc:text:old", idle=TTL, size=40)
    rig.seed.cache_key(b"cache:old", idle=3 * TTL)
    rig.seed.cache_key(b"doc:text:young", idle=5)
    dry = rig.cleanup(CACHE, dry_run=True)
    assert rig.keys() == {b"doc:text:old", b"cache:old", b"doc:text:young"}
    assert rig.redis.ttl(b"doc:text:young") == -1
    assert rig.writes() == []
    assert dry.deleted_counts["redis"] == 2
    assert dry.bytes_freed["redis"] == memory(b"doc:text:old", 40) + memory(b"cache:old")
    assert dry.repaired == 1
    assert [line["dry_run"] for line in rig.audit()] == [True, True]
    assert sorted(line["target"] for line in rig.audit()) == ["cache:old", "doc:text:old"]


def test_a_dry_run_equals_the_real_run_on_the_same_data(tmp_path: Path) -> None:
    rigs = [make_rig(tmp_path / name, redis_cache_ttl_hours=1.0) for name in ("dry", "real")]
    for r in rigs:
        r.seed.cache_key(b"doc:text:old", idle=TTL, size=40)
        r.seed.cache_key(b"cache:old", idle=3 * TTL)
        r.seed.cache_key(b"doc:text:young", idle=5)
    dry, real = rigs[0].cleanup(CACHE, dry_run=True), rigs[1].cleanup(CACHE)
    assert (dry.deleted_counts, dry.bytes_freed, dry.repaired) == (
        real.deleted_counts,
        real.bytes_freed,
        real.repaired,
    )
    assert [(x["target"], x["size_bytes"]) for x in rigs[0].audit()] == [
        (x["target"], x["size_bytes"]) for x in rigs[1].audit()
    ]
    assert rigs[1].keys() == {b"doc:text:young"}


def test_the_cap_counts_keys_and_marks_the_report(rig: Rig) -> None:
    for name in (b"cache:1", b"cache:2", b"cache:3"):
        rig.seed.cache_key(name, idle=2 * TTL)
    report = rig.cleanup(CACHE, cap=2)
    assert report.deleted_counts["redis"] == 2
    assert len(rig.keys()) == 1
    assert report.capped
    assert len(rig.audit()) == 2


def test_a_cap_that_is_not_reached_is_not_reported_as_capped(rig: Rig) -> None:
    rig.seed.cache_key(b"cache:1", idle=2 * TTL)
    report = rig.cleanup(CACHE, cap=2)
    assert report.deleted_counts["redis"] == 1
    assert not report.capped


def test_keys_are_judged_batch_by_batch(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, redis_cache_ttl_hours=1.0, batch_size=2)
    names = [f"cache:{i}".encode() for i in range(5)]
    for name in names:
        rig.seed.cache_key(name, idle=2 * TTL)
    rig.seed.cache_key(b"cache:young", idle=1)
    report = rig.cleanup(CACHE)
    unlinks = rig.writes("cache.unlink_idle")
    assert [len(keys) for _, keys in unlinks] == [2, 2, 1]
    assert rig.keys() == {b"cache:young"}
    assert report.deleted_counts["redis"] == 5
    assert report.repaired == 1


def test_a_tiny_ttl_still_means_at_least_one_second(tmp_path: Path) -> None:
    # 0.0001 h is 0.36 s: rounded to 0, floored at 1 s, so a key idle 0 s is not yet idle.
    rig = make_rig(tmp_path, redis_cache_ttl_hours=0.0001)
    rig.seed.cache_key(b"cache:now", idle=0)
    rig.seed.cache_key(b"cache:second", idle=1)
    rig.cleanup(CACHE)
    assert rig.keys() == {b"cache:now"}
    assert rig.redis.ttl(b"cache:now") == 1


def test_fractional_hours_are_rounded_to_whole_seconds(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, redis_cache_ttl_hours=0.5)  # 1800 s
    rig.seed.cache_key(b"cache:at", idle=1800)
    rig.seed.cache_key(b"cache:under", idle=1799)
    rig.cleanup(CACHE)
    assert rig.keys() == {b"cache:under"}
    assert rig.redis.ttl(b"cache:under") == 1


def test_a_key_gone_before_it_is_measured_is_audited_at_zero_bytes_and_not_counted(
    rig: Rig,
) -> None:
    rig.seed.cache_key(b"cache:gone", idle=2 * TTL)
    rig.seed.cache_key(b"cache:here", idle=2 * TTL)
    rig.before["memory_usage"] = [lambda: rig.redis.delete(b"cache:gone")]
    report = rig.cleanup(CACHE, dry_run=True)
    sizes = {line["target"]: line["size_bytes"] for line in rig.audit()}
    assert sizes == {"cache:gone": 0, "cache:here": memory(b"cache:here")}
    assert report.deleted_counts["redis"] == 1
    assert report.bytes_freed["redis"] == memory(b"cache:here")


def test_a_dry_run_of_every_store_counts_a_documents_cache_key_once(tmp_path: Path) -> None:
    """The cascade counts an expiring document's key; the Redis sweep after it must not."""
    rigs = [make_rig(tmp_path / name, redis_cache_ttl_hours=1.0) for name in ("dry", "real")]
    for r in rigs:
        doc = r.seed.document(age=timedelta(days=30))
        r.seed.cache_key(f"doc:text:{doc}".encode(), idle=2 * TTL, size=20)
        r.seed.cache_key(b"cache:after", idle=2 * TTL)
        r.seed.cache_key(b"cache:young", idle=1)
    dry, real = rigs[0].cleanup(dry_run=True), rigs[1].cleanup()
    assert real.deleted_counts == {"redis": 2, "qdrant": 0, "minio": 1, "mongodb": 1}
    assert (dry.deleted_counts, dry.bytes_freed, dry.repaired) == (
        real.deleted_counts,
        real.bytes_freed,
        real.repaired,
    )
    assert len(rigs[0].audit()) == len(rigs[1].audit())
    assert rigs[1].keys() == {b"cache:young"}


def test_a_large_batch_within_the_cap_is_not_reported_as_capped(rig: Rig) -> None:
    # Counts above 256 are distinct int objects in CPython: compared by value, not identity.
    for cap in (None, 1000):
        for i in range(300):
            rig.seed.cache_key(f"cache:{i:03d}".encode(), idle=2 * TTL)
        report = rig.cleanup(CACHE, cap=cap)
        assert report.deleted_counts["redis"] == 300
        assert not report.capped
