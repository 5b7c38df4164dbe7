"""Fault injection with real servers: redis-server and the S3 server die (or freeze) mid-sweep.

Each run that meets a dead store reports a clear StoreError text naming the store and the
operation, never deletes a live document, and a retry after the restart completes. Every
client has a network timeout, and a frozen server is given up on within it.
"""

from __future__ import annotations

import io
import signal
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from bson import ObjectId

from rlm_core import LifecycleManager, ResourceType, Settings
from rlm_core.adapters.mongo_metadata import connect_mongo
from rlm_core.adapters.qdrant_vectors import connect_qdrant
from rlm_core.adapters.redis_cache import connect_redis
from rlm_core.adapters.s3_objects import connect_minio
from rlm_core.clock import FakeClock
from rlm_core.ports import CacheSeed, StoreError, VectorPoint
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.faults import Crash, FaultPlan, OnCall, Phase, faulty, hooked
from tests.services import RedisServer, S3Server, free_port, redis_server, s3_server

DAY = timedelta(days=1)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server only this test kills (the session one stays up)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def server_settings(tmp_path: Path, redis: RedisServer, s3: S3Server | None) -> Settings:
    env = {
        "RLM_DATA_DIR": str(tmp_path / "data"),
        "REDIS_URL": redis.url,
        "RLM_STORE_TIMEOUT_SECONDS": "2",
        "RLM_BATCH_SIZE": "4",
    }
    if s3 is not None:
        env |= {
            "MINIO_ENDPOINT": s3.endpoint,
            "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
            "MINIO_SECRET_KEY": S3_SECRET_KEY,
            "MINIO_BUCKET": f"rlm-{uuid.uuid4().hex[:10]}",
        }
    return Settings.from_env(env)


def with_hook(manager: LifecycleManager, hook: OnCall) -> LifecycleManager:
    """The same stores, with `hook` run around every call."""
    return LifecycleManager(manager.settings, hooked(manager.stores, hook), manager.clock)


def build(manager: LifecycleManager, expired: int, live: int) -> tuple[list[str], list[str]]:
    """Documents with object, three points and a text key: `expired` old ones, `live` recent ones."""
    stores, now = manager.stores, manager.clock.now()
    stores.metadata().ensure_indexes()
    stores.vectors().ensure_collection()
    stores.objects().ensure_bucket()

    ids: dict[bool, list[str]] = {True: [], False: []}
    for i in range(expired + live):
        old = i < expired
        doc_id = str(ObjectId())
        key = f"{uuid.uuid4()}/file {i}.pdf"
        body = f"body {i}".encode() * 20
        stores.objects().put(key, io.BytesIO(body), len(body), "application/pdf")
        created = (now - (30 * DAY if old else DAY)).replace(tzinfo=None)
        metadata_seeder(stores.metadata()).insert_raw(
            "documents",
            [
                {
                    "_id": ObjectId(doc_id),
                    "user_id": "user-1",
                    "filename": f"file {i}.pdf",
                    "size_bytes": len(body),
                    "minio_bucket": stores.objects().bucket,
                    "minio_key": key,
                    "status": "ready",
                    "created_at": created,
                    "updated_at": created,
                    "metadata": {"file_hash": uuid.uuid4().hex},
                }
            ],
        )
        vector_seeder(stores.vectors()).upsert(
            [
                VectorPoint(
                    str(uuid.uuid4()),
                    [0.1] * 384,
                    {
                        "session_id": f"upload_{doc_id}",
                        "document_id": doc_id,
                        "chunk_id": c,
                        "created_at": (now - 30 * DAY).timestamp(),
                    },
                )
                for c in range(3)
            ]
        )
        cache_seeder(stores.cache()).seed([CacheSeed(f"doc:text:{doc_id}".encode(), body, 3600)])
        ids[old].append(doc_id)
    return ids[True], ids[False]


def assert_live_intact(manager: LifecycleManager, live: list[str]) -> None:
    stores = manager.stores
    docs = stores.metadata().get_documents(live)
    assert set(docs) == set(live), "a live document was deleted"
    keys = {o.key for o in stores.objects().iter_objects()}
    assert all(d.minio_key in keys for d in docs.values()), "a live document lost its object"
    points = [p for batch in stores.vectors().iter_points(100) for p in batch]
    assert sum(p.document_id in live for p in points) == 3 * len(live)
    cache_keys = [f"doc:text:{d}".encode() for d in live]
    assert stores.cache().existing(cache_keys) == cache_keys


def test_redis_killed_mid_cascade_reports_retries_and_completes(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    settings = server_settings(tmp_path, own_redis, None)
    manager = LifecycleManager.from_settings(settings, clock=FakeClock(datetime.now(UTC)))
    try:
        expired, live = build(manager, expired=10, live=5)
        # Redis dies right before the cascade's second batch unlinks its text keys.
        hook = OnCall("cache", "unlink", 1, own_redis.stop)
        report = with_hook(manager, hook).cleanup()
        assert hook.fired == 1
        assert not report.success
        text = " | ".join(report.errors)
        assert f"127.0.0.1:{own_redis.port}" in text and "Redis" in text, text
        assert "redis:" in text  # the Redis sweep itself also met the dead server
        # Partial progress: the first batch went, the rest of the expired ones are still there.
        left = manager.stores.metadata().get_documents(expired)
        assert 0 < len(left) < len(expired)
        own_redis.restart()
        # A restarted cache is empty; live documents get their text key back from the app.
        cache_seeder(manager.stores.cache()).seed(
            [CacheSeed(f"doc:text:{d}".encode(), b"t", 3600) for d in live]
        )
        retry = manager.cleanup()
        assert retry.success, retry.errors
        assert manager.stores.metadata().get_documents(expired) == {}
        assert_live_intact(manager, live)
        assert manager.stores.vectors().count() == 3 * len(live)
    finally:
        manager.close()


def test_redis_killed_mid_scan_reports_then_the_retry_sweeps(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    settings = server_settings(tmp_path, own_redis, None)
    manager = LifecycleManager.from_settings(settings, clock=FakeClock(datetime.now(UTC)))
    idle = [CacheSeed(f"cache:{i}".encode(), b"x", None, idle_seconds=7200) for i in range(30)]
    foreign = [
        CacheSeed(f"blacklist:{i}".encode(), b"tok", None, idle_seconds=90_000) for i in range(5)
    ]

    def seed() -> None:
        cache_seeder(manager.stores.cache()).seed([*idle, *foreign])

    try:
        seed()
        hook = OnCall("cache", "unlink_idle", 1, own_redis.stop)
        report = with_hook(manager, hook).cleanup(ResourceType.REDIS_CACHE)
        assert hook.fired == 1
        assert len(report.errors) == 1
        assert report.errors[0].startswith("redis: Redis UNLINK of idle keys failed on 127.0.0.1:")
        assert report.deleted_counts["redis"] == 4  # one batch went before the kill
        own_redis.restart()
        seed()
        retry = manager.cleanup(ResourceType.REDIS_CACHE)
        assert retry.success and retry.deleted_counts["redis"] == 30
        client = manager.stores.cache()._client  # type: ignore[attr-defined]
        assert sorted(client.keys("*")) == sorted(s.key for s in foreign)
        assert all(client.ttl(s.key) == -1 for s in foreign)
    finally:
        manager.close()


def test_s3_stopped_mid_cascade_reports_retries_and_completes(
    tmp_path: Path, own_redis: RedisServer, own_s3: S3Server
) -> None:
    settings = server_settings(tmp_path, own_redis, own_s3)
    manager = LifecycleManager.from_settings(settings, clock=FakeClock(datetime.now(UTC)))
    try:
        expired, live = build(manager, expired=10, live=5)
        hook = OnCall("objects", "remove", 1, own_s3.stop)
        started = time.monotonic()
        report = with_hook(manager, hook).cleanup(ResourceType.MINIO_FILES)
        assert hook.fired == 1
        assert time.monotonic() - started < 60, "a dead S3 server must fail fast"
        text = " | ".join(report.errors)
        assert "S3 remove_objects on bucket" in text and settings.minio_bucket in text, text
        left = manager.stores.metadata().get_documents(expired)
        assert 0 < len(left) < len(expired)
        own_s3.start()
        # The half-done documents kept their records (metadata goes last), so the retry finds them.
        retry = manager.cleanup(ResourceType.MINIO_FILES)
        assert retry.success, retry.errors
        assert manager.stores.metadata().get_documents(expired) == {}
        assert_live_intact(manager, live)
        keys = {o.key for o in manager.stores.objects().iter_objects()}
        assert len(keys) == len(live)
    finally:
        manager.close()


def test_s3_down_for_a_listing_keeps_everything(
    tmp_path: Path, own_redis: RedisServer, own_s3: S3Server
) -> None:
    settings = server_settings(tmp_path, own_redis, own_s3)
    clock = FakeClock(datetime.now(UTC))
    manager = LifecycleManager.from_settings(settings, clock=clock)
    try:
        _, live = build(manager, expired=0, live=3)
        clock.advance(days=30)  # every object is old now; documents are expired too
        metadata_seeder(manager.stores.metadata()).insert_raw(
            "chat_sessions",
            [
                {
                    "_id": "active",
                    "updated_at": manager.clock.now().replace(tzinfo=None),
                    "attached_file_ids": live,
                }
            ],
        )
        own_s3.stop()
        report = manager.cleanup()
        assert any(e.startswith("minio: S3 list_objects") for e in report.errors), report.errors
        own_s3.start()
        assert_live_intact(manager, live)
        assert manager.cleanup().success
        assert_live_intact(manager, live)
    finally:
        manager.close()


def test_a_frozen_redis_is_given_up_on_within_the_timeout(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    settings = replace(server_settings(tmp_path, own_redis, None), store_timeout_seconds=1.0)
    manager = LifecycleManager.from_settings(settings, clock=FakeClock(datetime.now(UTC)))
    try:
        cache_seeder(manager.stores.cache()).seed(
            [CacheSeed(b"cache:a", b"x", None, idle_seconds=7200)]
        )
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            report = manager.cleanup(ResourceType.REDIS_CACHE)
            elapsed = time.monotonic() - started
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        assert elapsed < 10, f"a frozen Redis held the sweep for {elapsed:.1f}s"
        assert report.errors and "Timeout" in report.errors[0], report.errors
        assert manager.cleanup(ResourceType.REDIS_CACHE).deleted_counts["redis"] == 1
    finally:
        manager.close()


def test_unreachable_servers_fail_fast_with_a_clear_error_and_spare_the_others(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    dead = free_port()
    settings = Settings.from_env(
        {
            "RLM_DATA_DIR": str(tmp_path / "data"),
            "REDIS_URL": own_redis.url,
            "QDRANT_URL": f"http://127.0.0.1:{dead}",
            "MONGODB_URL": f"mongodb://127.0.0.1:{dead}",
            "RLM_STORE_TIMEOUT_SECONDS": "1",
        }
    )
    manager = LifecycleManager.from_settings(settings, clock=FakeClock(datetime.now(UTC)))
    try:
        cache_seeder(manager.stores.cache()).seed(
            [CacheSeed(b"cache:old", b"x", None, idle_seconds=7200)]
        )
        started = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # qdrant-client: "Failed to obtain server version"
            report = manager.cleanup()
            with pytest.raises(StoreError, match="Qdrant"):
                manager.metrics([ResourceType.QDRANT_VECTORS])
        assert time.monotonic() - started < 30
        errors = " | ".join(report.errors)
        assert errors.startswith("mongodb: ") and "MongoDB" in errors, errors
        assert f"127.0.0.1:{dead}" in errors, errors
        # References cannot be read: the full run deletes nothing (SPEC 4.1 (2)) ...
        assert report.total_deleted == 0
        # ... while the healthy store's own sweep, which needs no references, still runs.
        redis = manager.cleanup(ResourceType.REDIS_CACHE)
        assert redis.success and redis.deleted_counts["redis"] == 1, redis.errors
    finally:
        manager.close()


# Where the cascade dies: (phase, call, whether the object is already gone).
CASCADE_CRASHES: dict[str, tuple[Phase, str, bool]] = {
    "after-claim": ("after", "metadata.claim_documents", False),
    "after-points": ("after", "vectors.delete_for_documents", False),
    "after-object": ("after", "objects.remove", True),
    "before-record": ("before", "metadata.delete_documents", True),
}


@pytest.mark.parametrize("point", list(CASCADE_CRASHES))
def test_crash_mid_cascade_then_a_reupload_of_the_same_file_keeps_the_users_file(
    tmp_path: Path, point: str
) -> None:
    """A cascade that died mid-way leaves the record (claimed) for the next run (SPEC section
    4). If the user re-uploads the same bytes before that run, dedup must not resolve the upload
    to the half-deleted document and throw the new copy away, and the next run must not take
    the re-uploaded file either."""
    when, call, object_gone = CASCADE_CRASHES[point]
    settings = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "data")})
    clock = FakeClock(datetime.now(UTC))
    manager = LifecycleManager.from_settings(settings, clock=clock)
    try:
        manager.stores.vectors().ensure_collection()
        first = manager.ingest("user-1", "contract.pdf", io.BytesIO(b"signed" * 500))
        vector_seeder(manager.stores.vectors()).upsert(
            [
                VectorPoint(
                    str(uuid.uuid4()),
                    [0.1] * 384,
                    {
                        "session_id": f"upload_{first.document_id}",
                        "document_id": first.document_id,
                        "chunk_id": c,
                        "created_at": clock.now().timestamp(),
                    },
                )
                for c in range(2)
            ]
        )
        with manager.stores.metadata()._locked() as conn:  # type: ignore[attr-defined]
            conn.execute("UPDATE documents SET body = json_set(body, '$.status', 'ready')")
        clock.advance(days=8)
        plan = FaultPlan(crash_after=0, when=when, on={call})
        with pytest.raises(Crash):
            LifecycleManager(settings, faulty(manager.stores, plan), clock).cleanup(
                ResourceType.MONGODB_METADATA
            )
        assert plan.injected == [f"{'crash' if when == 'before' else 'crash-after'}:{call}"]
        assert manager.stores.objects().exists(first.minio_key) is not object_gone
        again = manager.ingest("user-1", "contract.pdf", io.BytesIO(b"signed" * 500))
        # Whatever id comes back, the file the user was told is stored must exist.
        assert manager.stores.objects().exists(again.minio_key), (
            f"ingest returned {again} but its object is gone: the re-uploaded copy was removed "
            f"as a duplicate of half-expired document {first.document_id}"
        )
        manager.cleanup(ResourceType.MONGODB_METADATA)
        record = manager.stores.metadata().get_documents([again.document_id])
        assert again.document_id in record, f"the next run expired the re-upload {again}"
        key = record[again.document_id].minio_key
        assert key is not None and manager.stores.objects().exists(key)
    finally:
        manager.close()


def test_every_client_has_a_network_timeout(tmp_path: Path) -> None:
    redis = connect_redis("redis://:pw@127.0.0.1:1/0", tmp_path, 7.0)
    kwargs = redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 7.0 and kwargs["socket_connect_timeout"] == 7.0
    embedded = connect_redis(None, tmp_path, 7.0)
    try:
        # A unix socket connects locally: only the read timeout applies.
        assert embedded.connection_pool.connection_kwargs["socket_timeout"] == 7.0
    finally:
        embedded.close()

    minio = connect_minio("127.0.0.1:1", "a", "b", False, 7.0)
    timeout = minio._http.connection_pool_kw["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout) == (7.0, 7.0)
    retries = minio._http.connection_pool_kw["retries"]
    assert retries.total is not None and retries.total <= 3, "retries must be bounded"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qdrant = connect_qdrant(f"http://127.0.0.1:{free_port()}", None, tmp_path, 7.0)
    assert qdrant._client._timeout == 7  # type: ignore[attr-defined]
    with pytest.raises(StoreError):
        from rlm_core.adapters.qdrant_vectors import QdrantVectorStore

        QdrantVectorStore(qdrant, "rag_documents", 384).count()
    qdrant.close()

    db = connect_mongo("mongodb://127.0.0.1:1", "rag", 7.0)
    options = db.client.options
    assert options.pool_options.connect_timeout == 7.0
    assert options.pool_options.socket_timeout == 7.0
    assert options.server_selection_timeout == 7.0
    db.client.close()
