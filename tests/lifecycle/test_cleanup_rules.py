"""Every rule of SPEC section 4, on realistic data, with a fake clock moved across the TTLs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from rlm_core import LifecycleManager, ResourceType
from rlm_core.audit import read_audit
from rlm_core.cleanup import objects as objects_sweep
from rlm_core.clock import FakeClock
from rlm_core.ports import CacheSeed
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from tests.lifecycle.conftest import raw_redis
from tests.lifecycle.world import World, snapshot

DAY = timedelta(days=1)


def points_of(vectors: Any, doc_ids: Sequence[str]) -> int:
    """How many points name one of these documents."""
    return sum(len(ids) for ids in vectors.points_for_documents(list(doc_ids)).values())


HOUR = timedelta(hours=1)


def test_redis_unlinks_idle_persistent_keys_and_repairs_the_rest(manager: LifecycleManager) -> None:
    redis = raw_redis(manager)
    cache_seeder(manager.stores.cache()).seed(
        [
            CacheSeed(b"doc:text:idle", b"x", None, idle_seconds=2 * 3600),
            CacheSeed(b"cache:fresh", b"x", None, idle_seconds=60),
            CacheSeed(b"cache:with-ttl", b"x", 600, idle_seconds=5 * 3600),
            CacheSeed(b"blacklist:token", b"x", None, idle_seconds=99 * 3600),
            CacheSeed(b"rate_limit:u1", b"x", None, idle_seconds=99 * 3600),
            CacheSeed(b"upload-idk:abc", b"x", None, idle_seconds=99 * 3600),
        ]
    )
    report = manager.cleanup(ResourceType.REDIS_CACHE)
    assert report.success
    assert report.deleted_counts["redis"] == 1
    assert report.repaired == 1
    assert not redis.exists(b"doc:text:idle")
    assert 0 < redis.ttl(b"cache:fresh") <= 3600 - 60
    assert 0 < redis.ttl(b"cache:with-ttl") <= 600
    for foreign in (b"blacklist:token", b"rate_limit:u1", b"upload-idk:abc"):
        assert redis.exists(foreign) and redis.ttl(foreign) == -1


def test_dry_run_changes_nothing_and_reports_exactly(
    manager: LifecycleManager, world: World, clock: FakeClock
) -> None:
    world.document(age=30 * DAY)
    world.document(age=HOUR)
    world.orphan_object()
    cache_seeder(manager.stores.cache()).seed(
        [CacheSeed(b"cache:idle", b"x", None, idle_seconds=7200)]
    )
    clock.advance(days=10)
    before = snapshot(manager.stores, raw_redis(manager))
    dry = manager.cleanup(dry_run=True)
    assert snapshot(manager.stores, raw_redis(manager)) == before
    real = manager.cleanup()
    assert dry.deleted_counts == real.deleted_counts
    assert dry.total_deleted > 0
    assert read_audit(manager.settings.audit_path / f"audit-{clock.now():%Y%m%d}.jsonl")


def test_document_expiry_cascades_and_leaves_no_orphan(
    manager: LifecycleManager, world: World
) -> None:
    old = world.document(age=8 * DAY)
    young = world.document(age=2 * DAY)
    report = manager.cleanup(ResourceType.MONGODB_METADATA)
    docs = manager.stores.metadata().get_documents([old, young])
    assert set(docs) == {young}
    assert report.deleted_counts == {"redis": 1, "qdrant": 3, "minio": 1, "mongodb": 1}
    assert points_of(manager.stores.vectors(), [old]) == 0
    assert manager.stores.cache().existing([f"doc:text:{old}".encode()]) == []
    keys = {o.key for o in manager.stores.objects().iter_objects()}
    assert keys == {docs[young].minio_key}


def test_a_document_referenced_by_an_active_session_is_kept_on_every_path(
    manager: LifecycleManager, world: World
) -> None:
    old = 30 * DAY
    via_documents = world.document(age=old)
    via_attached = world.document(age=old)
    via_message = world.document(age=old)
    active = world.session(idle=HOUR, documents=(via_documents,), attached=(via_attached,))
    world.message(active, [via_message])
    via_conversation = world.document(age=old, conversation_id=active)
    stale = world.session(idle=3 * DAY)
    only_stale = world.document(age=old, conversation_id=stale)
    world.message(stale, [only_stale])
    manager.cleanup(ResourceType.MINIO_FILES)
    left = manager.stores.metadata().get_documents(
        [via_documents, via_attached, via_message, via_conversation, only_stale]
    )
    assert set(left) == {via_documents, via_attached, via_message, via_conversation}
    objects = {o.key for o in manager.stores.objects().iter_objects()}
    # The object referenced only through messages.file_ids stays with its document.
    assert left[via_message].minio_key in objects


def test_in_flight_and_malformed_documents_are_kept_and_counted(
    manager: LifecycleManager, world: World
) -> None:
    uploading = world.document(age=90 * DAY, status="uploading")
    processing = world.document(age=90 * DAY, status="processing")
    broken = world.document(age=90 * DAY, extra={"created_at": "2024-01-01", "updated_at": None})
    report = manager.cleanup(ResourceType.MONGODB_METADATA)
    assert set(manager.stores.metadata().get_documents([uploading, processing, broken])) == {
        uploading,
        processing,
        broken,
    }
    assert report.skipped.get("mongodb", 0) >= 1
    assert report.total_deleted == 0


def test_dedup_touch_keeps_a_reupload_alive(manager: LifecycleManager, clock: FakeClock) -> None:
    import io

    manager.stores.metadata().ensure_indexes()
    manager.stores.objects().ensure_bucket()
    first = manager.ingest("user-1", "a.pdf", io.BytesIO(b"same bytes" * 100))
    manager.stores.metadata()
    clock.advance(days=6, hours=23)
    again = manager.ingest("user-1", "a.pdf", io.BytesIO(b"same bytes" * 100))
    assert again.duplicate and again.document_id == first.document_id
    clock.advance(days=2)
    manager.stores.vectors().ensure_collection()
    manager.cleanup(ResourceType.MONGODB_METADATA)
    assert manager.stores.metadata().get_documents([first.document_id])


def test_qdrant_rules(manager: LifecycleManager, world: World) -> None:
    live_upload = world.document(age=2 * DAY)
    stale = world.session(idle=3 * DAY)
    active = world.session(idle=HOUR)
    doc_in_stale = world.document(age=2 * DAY, session=stale)
    shared = world.document(age=2 * DAY, session=stale)
    world.points(shared, active, age=2 * DAY)
    world.session(idle=HOUR, documents=(shared,))
    world.points("gone-doc", stale, age=2 * DAY)
    world.points("young-gone-doc", stale, age=HOUR)
    _bad_payloads(manager)
    report = manager.cleanup(ResourceType.QDRANT_VECTORS)
    vectors = manager.stores.vectors()
    assert points_of(vectors, ["gone-doc"]) == 0
    assert points_of(vectors, [doc_in_stale]) == 0
    assert points_of(vectors, [shared]) == 6
    assert points_of(vectors, [live_upload]) == 3
    assert report.unknown["qdrant"] == 3
    assert vectors.count() == 6 + 3 + 3 + 3


def _bad_payloads(manager: LifecycleManager) -> None:
    import uuid

    from rlm_core.ports import VectorPoint

    vector_seeder(manager.stores.vectors()).upsert(
        [
            VectorPoint(str(uuid.uuid4()), [0.5] * 384, {"document_id": "x"}),
            VectorPoint(str(uuid.uuid4()), [0.5] * 384, {"session_id": 42, "document_id": None}),
            VectorPoint(
                str(uuid.uuid4()),
                [0.5] * 384,
                {"session_id": "s", "document_id": "d", "created_at": "ayer"},
            ),
        ]
    )


def test_expiry_keeps_an_object_another_document_names(
    manager: LifecycleManager, world: World, clock: FakeClock
) -> None:
    live = world.document(age=HOUR)
    key = manager.stores.metadata().get_documents([live])[live].minio_key
    assert key
    old = world.document(age=30 * DAY, extra={"minio_key": key})
    report = manager.cleanup(ResourceType.MONGODB_METADATA)
    assert set(manager.stores.metadata().get_documents([live, old])) == {live}
    assert key in {o.key for o in manager.stores.objects().iter_objects()}
    assert report.deleted_counts["mongodb"] == 1
    assert report.deleted_counts.get("minio", 0) == 0 and report.skipped["minio"] == 1
    audit = read_audit(Path(report.audit_path))
    (entry,) = [e for e in audit if e["target"] == old]
    assert entry["cascade"] == ["qdrant", "redis", "mongodb"]
    # Once no other document names it, the object goes with the last record that did.
    clock.advance(days=30)
    later = manager.cleanup(ResourceType.MONGODB_METADATA)
    assert later.deleted_counts["minio"] == 1
    assert key not in {o.key for o in manager.stores.objects().iter_objects()}


@pytest.mark.parametrize(
    "updated_at", ["2025-01-20T15:00:00", None, 1737385200], ids=["text", "null", "number"]
)
def test_a_session_whose_activity_cannot_be_read_protects(
    manager: LifecycleManager, world: World, updated_at: Any
) -> None:
    doc = world.document(age=30 * DAY)
    metadata_seeder(manager.stores.metadata()).insert_raw(
        "chat_sessions",
        [
            {
                "_id": "s-unreadable",
                "user_id": "user-1",
                "updated_at": updated_at,
                "documents": [{"doc_id": doc}],
                "attached_file_ids": [],
            }
        ],
    )
    world.points(doc, "s-unreadable", age=30 * DAY)
    before = snapshot(manager.stores, raw_redis(manager))
    report = manager.cleanup()
    assert report.total_deleted == 0
    assert report.skipped["mongodb"] == 1  # the session, counted
    after = snapshot(manager.stores, raw_redis(manager))
    assert after.documents == before.documents and after.points == before.points


def test_orphan_objects_go_only_when_old(
    manager: LifecycleManager, world: World, clock: FakeClock
) -> None:
    kept_doc = world.document(age=HOUR)
    orphan = world.orphan_object()
    report = manager.cleanup(ResourceType.MINIO_FILES)
    assert orphan in {o.key for o in manager.stores.objects().iter_objects()}
    assert report.total_deleted == 0
    clock.advance(days=8)
    world.session(idle=timedelta(0), documents=(kept_doc,))
    manager.cleanup(ResourceType.MINIO_FILES)
    keys = {o.key for o in manager.stores.objects().iter_objects()}
    assert orphan not in keys
    assert manager.stores.metadata().get_documents([kept_doc])[kept_doc].minio_key in keys


def test_orphan_sweep_reads_references_per_window_and_deletes_per_batch(
    manager: LifecycleManager, world: World, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows of 4 old objects, delete requests of at most 2: the request counts follow.
    monkeypatch.setattr(objects_sweep, "REFERENCE_WINDOW", 4)
    monkeypatch.setattr(objects_sweep, "S3_DELETE_BATCH", 2)
    docs = [world.document(age=HOUR) for _ in range(3)]
    orphans = {world.orphan_object() for _ in range(7)}
    clock.advance(days=8)
    world.session(idle=timedelta(0), documents=tuple(docs))
    calls: dict[str, list[int]] = {"references": [], "remove": []}
    metadata, objects = manager.stores.metadata(), manager.stores.objects()
    real_references, real_remove = metadata.referenced_object_keys, objects.remove

    def references(bucket: str, keys: Sequence[str], *args: Any) -> set[str]:
        calls["references"].append(len(keys))
        return real_references(bucket, keys, *args)

    def remove(keys: Sequence[str]) -> list[str]:
        calls["remove"].append(len(keys))
        return real_remove(keys)

    monkeypatch.setattr(metadata, "referenced_object_keys", references)
    monkeypatch.setattr(objects, "remove", remove)
    report = manager.cleanup(ResourceType.MINIO_FILES)
    assert report.deleted_counts["minio"] == 7
    assert calls["references"] == [4, 4, 2]
    assert sum(calls["remove"]) == 7 and max(calls["remove"]) <= 2
    assert 4 <= len(calls["remove"]) <= 6  # per window: ceil(orphans in it / 2)
    keys = {o.key for o in objects.iter_objects()}
    assert not keys & orphans and len(keys) == 3


def test_max_deletions_caps_a_run_and_the_next_run_finishes(
    manager: LifecycleManager, world: World
) -> None:
    docs = [world.document(age=30 * DAY) for _ in range(5)]
    # The cap counts items: each cascade here is 3 points, 1 key, 1 object and 1 record.
    first = manager.cleanup(ResourceType.MONGODB_METADATA, max_deletions=13)
    assert first.capped and first.deleted_counts["mongodb"] == 2
    assert first.total_deleted == 12
    second = manager.cleanup(ResourceType.MONGODB_METADATA)
    assert second.deleted_counts["mongodb"] == 3
    assert manager.stores.metadata().get_documents(docs) == {}


def test_cleanup_twice_is_idempotent(
    manager: LifecycleManager, world: World, clock: FakeClock
) -> None:
    for age in (HOUR, 3 * DAY, 9 * DAY, 40 * DAY):
        world.document(age=age)
    world.orphan_object()
    clock.advance(days=8)
    manager.cleanup()
    after_one = snapshot(manager.stores, raw_redis(manager))
    again = manager.cleanup()
    assert again.total_deleted == 0
    assert snapshot(manager.stores, raw_redis(manager)) == after_one


def test_empty_metadata_store_refuses_orphan_sweeps(
    manager: LifecycleManager, world: World, clock: FakeClock
) -> None:
    orphan = world.orphan_object()
    world.points("doc-x", "session-x", age=30 * DAY)
    clock.advance(days=30)
    report = manager.cleanup()
    assert not report.success
    assert any("metadata store holds no documents" in e for e in report.errors)
    assert report.refusals and not report.retryable  # a retry would only refuse again
    assert orphan in {o.key for o in manager.stores.objects().iter_objects()}
    assert points_of(manager.stores.vectors(), ["doc-x"]) == 3


def test_a_dedup_touch_during_the_expiry_batch_keeps_the_document(
    manager: LifecycleManager, world: World
) -> None:
    import hashlib
    import io

    body = b"the same report" * 100
    sha = hashlib.sha256(body).hexdigest()
    doc_id = world.document(age=8 * DAY, extra={"metadata": {"file_hash": sha}})
    metadata = manager.stores.metadata()
    read_references = metadata.active_references

    def references_then_a_reupload(ids: list[str], since: object) -> set[str]:
        # The user re-uploads the file after the sweep listed the document as expired.
        found = read_references(ids, since)  # type: ignore[arg-type]
        again = manager.ingest("user-1", "a.pdf", io.BytesIO(body))
        assert again.duplicate and again.document_id == doc_id
        return found

    metadata.active_references = references_then_a_reupload  # type: ignore[method-assign]
    report = manager.cleanup(ResourceType.MONGODB_METADATA)
    doc = manager.stores.metadata().get_documents([doc_id])[doc_id]
    assert report.deleted_counts["mongodb"] == 0
    assert doc.minio_key in {o.key for o in manager.stores.objects().iter_objects()}
    assert points_of(manager.stores.vectors(), [doc_id]) == 3


def test_a_cleanup_of_a_store_another_run_holds_is_refused_and_deletes_nothing(
    manager: LifecycleManager, world: World, clock: FakeClock
) -> None:
    from datetime import timedelta as td

    world.document(age=30 * DAY)
    orphan = world.orphan_object()
    clock.advance(days=10)
    metadata = manager.stores.metadata()
    assert metadata.acquire_lease("minio", "run-elsewhere", clock.now(), td(minutes=20)) is None
    before = snapshot(manager.stores, raw_redis(manager))
    refused = manager.cleanup(ResourceType.MINIO_FILES)
    assert not refused.success and refused.total_deleted == 0
    assert any("another cleanup of minio is running" in e for e in refused.errors)
    assert snapshot(manager.stores, raw_redis(manager)) == before
    assert manager.cleanup(ResourceType.MINIO_FILES, dry_run=True).total_deleted > 0
    metadata.release_lease("minio", "run-elsewhere")
    done = manager.cleanup(ResourceType.MINIO_FILES)
    assert done.success and orphan not in {o.key for o in manager.stores.objects().iter_objects()}
    # The run gave its leases back: the next one is not refused.
    assert manager.cleanup(ResourceType.MINIO_FILES).success


def test_an_active_session_protects_its_own_points_even_naming_no_document(
    manager: LifecycleManager, world: World
) -> None:
    # Neither session names the document in any reference path: only a session's own activity
    # keeps the points its chat wrote.
    doc = world.document(age=2 * DAY)
    active = world.session(idle=HOUR)
    stale = world.session(idle=30 * DAY)
    world.points(doc, active, age=2 * DAY, count=4)
    world.points(doc, stale, age=2 * DAY, count=2)
    report = manager.cleanup(ResourceType.QDRANT_VECTORS)
    assert report.deleted_counts["qdrant"] == 2
    left = {
        (p.session_id, p.document_id) for b in manager.stores.vectors().iter_points(50) for p in b
    }
    assert (active, doc) in left and (stale, doc) not in left
    assert points_of(manager.stores.vectors(), [doc]) == 3 + 4


def test_a_key_given_a_ttl_between_scan_and_unlink_survives(manager: LifecycleManager) -> None:
    # The unlink re-checks TTL and idleness atomically in Redis: a key the app gave a TTL after
    # the scan read it is not unlinked (a plain UNLINK would delete it).
    redis = raw_redis(manager)
    cache = manager.stores.cache()
    cache_seeder(cache).seed([CacheSeed(b"cache:idle", b"x", None, idle_seconds=2 * 3600)])
    measured = cache.memory_usage

    def app_sets_a_ttl_then_measure(keys: Sequence[bytes]) -> dict[bytes, int]:
        redis.expire(b"cache:idle", 600)
        return measured(keys)

    cache.memory_usage = app_sets_a_ttl_then_measure  # type: ignore[method-assign]
    report = manager.cleanup(ResourceType.REDIS_CACHE)
    assert redis.exists(b"cache:idle") and 0 < redis.ttl(b"cache:idle") <= 600
    assert report.deleted_counts["redis"] == 0 and report.bytes_freed["redis"] == 0
