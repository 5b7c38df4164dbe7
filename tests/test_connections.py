"""Connections for real deployments (SPEC 8.1): Redis Cluster, TLS with a private CA for Redis
and S3, S3 region and session token, Mongo reference reads on the primary."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import mongomock
import pymongo
import pytest
import redis
from pymongo import ReadPreference
from redis.cluster import RedisCluster

from rlm_core.adapters import redis_cache
from rlm_core.adapters.mongo_metadata import MongoMetadataStore
from rlm_core.adapters.redis_cache import RedisCacheStore, connect_redis
from rlm_core.clock import FakeClock
from rlm_core.domain import ResourceType
from rlm_core.lifecycle import LifecycleManager
from rlm_core.ports import CacheSeed, StoreError
from rlm_core.seeding import cache_seeder
from rlm_core.settings import Settings
from rlm_core.stores import Stores, minio_client
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.secure_services import PrivateCA, make_private_ca, redis_cluster, redis_tls, s3_tls

PATTERNS = ("doc:text:*", "cache:*")
HOUR = 3600


@pytest.fixture(scope="module")
def cluster_ports() -> Iterator[list[int]]:
    """A real 3-primary Redis Cluster on free loopback ports, for this module."""
    with redis_cluster(3) as ports:
        yield ports


@pytest.fixture
def cluster(cluster_ports: list[int]) -> Iterator[RedisCluster]:
    """rlm's own cluster client (REDIS_CLUSTER=true), on a flushed cluster."""
    client = connect_redis(f"redis://127.0.0.1:{cluster_ports[0]}/0", Path("."), 10.0, cluster=True)
    assert isinstance(client, RedisCluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    """A CA made for this module and a server certificate it signed."""
    return make_private_ca(tmp_path_factory.mktemp("ca"))


def _seed(store: RedisCacheStore, count: int, idle: int, prefix: str = "cache:") -> list[bytes]:
    keys = [f"{prefix}{i}".encode() for i in range(count)]
    cache_seeder(store).seed([CacheSeed(k, b"x" * 100, None, idle) for k in keys])
    return keys


def _per_primary(cluster: RedisCluster) -> list[redis.Redis]:
    return [cluster.get_redis_connection(n) for n in cluster.get_primaries()]


# ------------------------------------------------------------- Redis Cluster


@pytest.mark.integration
def test_scan_covers_every_primary_and_leaves_other_keys(cluster: RedisCluster) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    ours = _seed(store, 300, 0)
    theirs = _seed(store, 50, 0, prefix="blacklist:")
    assert all(node.dbsize() > 0 for node in _per_primary(cluster))  # spread over all three
    seen = [k.key for batch in store.scan(64) for k in batch]
    assert sorted(seen) == sorted(ours)
    probe = [*ours[:10], *theirs[:10], b"cache:absent"]
    assert store.existing(probe) == probe[:-1]


def _evalsha_calls(cluster: RedisCluster) -> int:
    stats = [node.info("commandstats").get("cmdstat_evalsha", {}) for node in _per_primary(cluster)]
    return sum(int(s.get("calls", 0)) for s in stats)


@pytest.mark.integration
@pytest.mark.parametrize("form", ["one call per primary", "one call per slot (Redis < 7)"])
def test_scripts_run_per_slot_without_crossslot_errors(
    cluster: RedisCluster, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if form.endswith("(Redis < 7)"):
        monkeypatch.setattr(redis_cache, "_flags_supported", lambda cluster: False)
    store = RedisCacheStore(cluster, PATTERNS)
    idle = _seed(store, 120, 2 * HOUR)
    fresh = _seed(store, 80, 0, prefix="doc:text:")
    described = {k.key: k for batch in store.scan(500, with_memory=True) for k in batch}
    assert set(described) == {*idle, *fresh}
    assert all(described[k].ttl_seconds == -1 and described[k].memory_bytes for k in idle)

    gone = store.unlink_idle([*idle, *fresh], HOUR)
    assert set(gone) == set(idle)
    assert store.expire_if_persistent([(k, 600) for k in fresh]) == len(fresh)
    assert all(0 < int(cluster.ttl(k)) <= 600 for k in fresh)
    assert set(store.memory_usage(fresh)) == set(fresh)
    assert set(store.unlink(fresh)) == set(fresh)
    assert store.existing([*idle, *fresh]) == []


@pytest.mark.integration
def test_a_batch_costs_one_script_call_per_primary(cluster: RedisCluster) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    idle = _seed(store, 600, 2 * HOUR)  # spread over ~600 slots of 3 primaries
    for node in _per_primary(cluster):
        node.config_resetstat()
    described = [k for batch in store.scan(1000) for k in batch]
    assert len(described) == 600
    assert set(store.unlink_idle(idle, HOUR)) == set(idle)
    # SCAN's one batch, then the unlink: 3 primaries each, not one call per slot (~1,200).
    assert _evalsha_calls(cluster) <= 2 * 3 + 3  # (+ a NOSCRIPT retry per primary at most)


@pytest.mark.integration
def test_a_key_that_moved_fails_its_primarys_call_before_any_write(
    cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reshard between the routing and the script: the primary refuses the key it no longer
    holds. The script reads every key before it writes, so none of the group was unlinked by the
    refused call, and the per-slot retry counts every key it unlinked exactly once."""
    store = RedisCacheStore(cluster, PATTERNS)
    idle = _seed(store, 60, 2 * HOUR)
    primaries = cluster.get_primaries()
    victim = idle[-1]  # routed last in its group: a script writing as it reads would have
    real_home = cluster.get_node_from_key(victim)  # unlinked the others before the refusal
    wrong = next(n for n in primaries if n.name != real_home.name)
    routed = cluster.get_node_from_key

    def misrouted(key: bytes, *args: object, **kwargs: object) -> object:
        return wrong if key == victim else routed(key, *args, **kwargs)

    monkeypatch.setattr(cluster, "get_node_from_key", misrouted)
    fallbacks: list[int] = []
    per_slot = redis_cache._eval_per_slot

    def counting(cluster: RedisCluster, script: object, keys: list[bytes], *rest: object) -> object:
        fallbacks.append(len(keys))
        return per_slot(cluster, script, keys, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(redis_cache, "_eval_per_slot", counting)
    gone = store.unlink_idle(idle, HOUR)
    assert set(gone) == set(idle)  # each key counted once, with its memory
    assert all(size > 0 for size in gone.values())
    assert fallbacks == [len([k for k in idle if routed(k).name == wrong.name]) + 1]
    assert store.existing(idle) == []


@pytest.mark.integration
def test_a_full_cluster_still_unlinks(
    cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fallback(*args: object) -> object:
        raise AssertionError("a primary refused the cluster form of the script")

    monkeypatch.setattr(redis_cache, "_eval_per_slot", no_fallback)
    store = RedisCacheStore(cluster, PATTERNS)
    idle = _seed(store, 90, 2 * HOUR)
    nodes = _per_primary(cluster)
    try:
        for node in nodes:
            node.config_set("maxmemory", "1")  # every write is refused with OOM
        with pytest.raises(redis.ResponseError, match=r"OOM|maxmemory"):
            cluster.set(b"cache:new", b"x")
        assert set(store.unlink_idle(idle, HOUR)) == set(idle)
    finally:
        for node in nodes:
            node.config_set("maxmemory", "0")


@pytest.mark.integration
def test_metrics_and_cleanup_through_settings_add_up_across_primaries(
    cluster_ports: list[int], cluster: RedisCluster, tmp_path: Path
) -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": f"redis://127.0.0.1:{cluster_ports[1]}/0",
            "REDIS_CLUSTER": "true",
            "RLM_DATA_DIR": str(tmp_path),
            "RLM_CLEANUP_MODE": "enforce",
        }
    )
    store = RedisCacheStore(cluster, PATTERNS)
    idle = _seed(store, 90, 2 * HOUR)
    fresh = _seed(store, 60, 0, prefix="doc:text:")
    _seed(store, 30, 2 * HOUR, prefix="rate_limit:")
    expected = sum(
        int(node.memory_usage(k) or 0)
        for node in _per_primary(cluster)
        for k in node.scan_iter(count=1000)
        if k.startswith((b"cache:", b"doc:text:"))
    )
    with LifecycleManager.from_settings(settings, FakeClock()) as manager:
        metric = manager.metrics([ResourceType.REDIS_CACHE])[ResourceType.REDIS_CACHE]
        report = manager.cleanup(ResourceType.REDIS_CACHE)
    assert metric.total_items == len(idle) + len(fresh)
    assert metric.usage_percentage == pytest.approx(100 * expected / (256 * 1024 * 1024))
    assert report.deleted_counts["redis"] == len(idle), report.errors
    assert report.repaired == len(fresh)
    left = {k for node in _per_primary(cluster) for k in node.scan_iter(count=1000)}
    assert not left & set(idle)
    assert set(fresh) <= left
    assert sum(1 for k in left if k.startswith(b"rate_limit:")) == 30


# ------------------------------------------------------------- TLS with a private CA


@pytest.mark.integration
def test_rediss_with_the_ca_bundle_connects(private_ca: PrivateCA, tmp_path: Path) -> None:
    with redis_tls(private_ca) as port:
        settings = Settings.from_env(
            {
                "REDIS_URL": f"rediss://127.0.0.1:{port}/0",
                "REDIS_CA_BUNDLE": str(private_ca.ca),
                "RLM_DATA_DIR": str(tmp_path),
            }
        )
        stores = Stores.from_settings(settings)
        try:
            cache = stores.cache()
            cache_seeder(cache).seed([CacheSeed(b"cache:tls", b"v", None)])
            assert [k.key for batch in cache.scan(10) for k in batch] == [b"cache:tls"]
        finally:
            stores.close()


@pytest.mark.integration
def test_rediss_without_the_ca_bundle_fails_naming_the_variable(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    with redis_tls(private_ca) as port:
        settings = Settings.from_env(
            {"REDIS_URL": f"rediss://127.0.0.1:{port}/0", "RLM_DATA_DIR": str(tmp_path)}
        )
        stores = Stores.from_settings(settings)
        try:
            with pytest.raises(StoreError, match="set REDIS_CA_BUNDLE") as error:
                list(stores.cache().scan(10))
        finally:
            stores.close()
    assert "CERTIFICATE_VERIFY_FAILED" in str(error.value)


def _s3_settings(port: int, tmp_path: Path, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "MINIO_ENDPOINT": f"https://127.0.0.1:{port}",
            "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
            "MINIO_SECRET_KEY": S3_SECRET_KEY,
            "MINIO_BUCKET": "tls-bucket",
            "RLM_DATA_DIR": str(tmp_path),
            "RLM_STORE_TIMEOUT_SECONDS": "5",
            **extra,
        }
    )


@pytest.mark.integration
def test_s3_over_tls_with_ca_region_and_session_token(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    with s3_tls(private_ca) as port:
        settings = _s3_settings(
            port,
            tmp_path,
            MINIO_CA_BUNDLE=str(private_ca.ca),
            MINIO_REGION="eu-west-3",
            MINIO_SESSION_TOKEN="session-token-value",
        )
        client = minio_client(settings)
        credentials = client._provider.retrieve()  # type: ignore[union-attr]
        assert credentials.session_token == "session-token-value"
        assert client._region_map == {} and client._base_url.region == "eu-west-3"
        stores = Stores.from_settings(settings)
        objects = stores.objects()
        objects.ensure_bucket()
        objects.put("u/a.pdf", io.BytesIO(b"pdf"), 3, "application/pdf")
        assert [o.key for o in objects.iter_objects()] == ["u/a.pdf"]
        stores.close()


@pytest.mark.integration
def test_s3_over_tls_without_the_ca_bundle_fails_naming_the_variable(
    private_ca: PrivateCA, tmp_path: Path
) -> None:
    with s3_tls(private_ca) as port:
        stores = Stores.from_settings(_s3_settings(port, tmp_path))
        with pytest.raises(StoreError, match="set MINIO_CA_BUNDLE") as error:
            stores.objects().ensure_bucket()
        stores.close()
    assert "CERTIFICATE_VERIFY_FAILED" in str(error.value)


# ------------------------------------------------------------- Mongo: references on the primary


def test_reference_reads_go_to_the_primary_whatever_the_url_asks() -> None:
    url = "mongodb://h1:27017,h2:27017/?replicaSet=rs0&readPreference=secondaryPreferred"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(url, connect=False)
    try:
        db = client["rag"]
        assert db.read_preference == ReadPreference.SECONDARY_PREFERRED
        store = MongoMetadataStore(db)
        handles = [store._db, store._documents, store._sessions, store._messages, store._locks]
        assert all(h.read_preference == ReadPreference.PRIMARY for h in handles)
    finally:
        client.close()


def test_the_primary_preference_keeps_the_store_working_on_mongomock() -> None:
    db = mongomock.MongoClient(tz_aware=False)["rag"]
    for name in ("documents", "chat_sessions", "messages"):
        db.create_collection(name)
    store = MongoMetadataStore(db)
    store.ensure_indexes()
    store.check_references()
    assert store.acquire_lease("minio", "run-1", FakeClock().now(), timedelta(minutes=5)) is None
