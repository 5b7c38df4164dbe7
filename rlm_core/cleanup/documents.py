"""Document expiry: the cascade Qdrant points, Redis keys, object, then the Mongo record LAST."""

from __future__ import annotations

from rlm_core.audit import AuditEntry
from rlm_core.cleanup.context import Sweep
from rlm_core.policy import DocumentVerdict, document_verdict, last_touched
from rlm_core.ports import DocumentRecord


def expire_documents(sweep: Sweep) -> None:
    """Expire every document that is neither touched within FILES_TTL nor actively referenced."""
    metadata = sweep.stores.metadata()
    for batch in metadata.iter_documents(sweep.settings.batch_size):
        candidates = [doc for doc in batch if _is_candidate(sweep, doc)]
        if candidates:
            _expire_batch(sweep, candidates)
        if sweep.budget.exhausted:
            sweep.report.capped = True
            return


def _is_candidate(sweep: Sweep, doc: DocumentRecord) -> bool:
    verdict = document_verdict(doc, sweep.retention)
    if verdict is DocumentVerdict.MALFORMED:
        sweep.report.add_skipped("mongodb")
        return False
    if verdict is DocumentVerdict.CANDIDATE and not _is_our_object(sweep, doc):
        sweep.report.add_skipped("minio")
        return False
    return verdict is DocumentVerdict.CANDIDATE


def _is_our_object(sweep: Sweep, doc: DocumentRecord) -> bool:
    # A document whose file lives in another bucket is not ours to cascade: its record is the
    # only pointer to that object, so it stays.
    return doc.minio_bucket in (None, sweep.settings.minio_bucket)


def _expire_batch(sweep: Sweep, candidates: list[DocumentRecord]) -> None:
    metadata = sweep.stores.metadata()
    # References are read after listing, right before deleting, so a session that picked a
    # document up during the sweep protects it.
    referenced = metadata.active_references(
        [d.id for d in candidates], sweep.retention.active_since
    )
    # Re-read right before deleting: a dedup hit or a repair since the listing touched the
    # record, and a touched record is live.
    current = metadata.get_documents([d.id for d in candidates if d.id not in referenced])
    still = [d for d in current.values() if _still_expired(sweep, d)]
    expired = sweep.granted(still)
    if not expired:
        return
    ids = [d.id for d in expired]
    points = sweep.stores.vectors().count_for_documents(ids)
    cache_keys = sweep.stores.cache().existing(_cache_keys(sweep, ids))
    shared = _shared_objects(sweep, expired)
    sweep.audit.record([_entry(sweep, d, shared) for d in expired])
    if sweep.dry_run:
        _count(sweep, expired, points, len(cache_keys), shared)
    else:
        _delete_cascade(sweep, expired, points, cache_keys, shared)


def _shared_objects(sweep: Sweep, expired: list[DocumentRecord]) -> set[str]:
    # An object that a document outside this batch also names is that document's file too: the
    # expiring records go, the object stays (the orphan sweep takes it once nobody names it).
    keys = sorted({d.minio_key for d in expired if d.minio_key})
    if not keys:
        return set()
    bucket = sweep.stores.objects().bucket
    excluding = [d.id for d in expired]
    return sweep.stores.metadata().referenced_object_keys(bucket, keys, excluding)


def _still_expired(sweep: Sweep, doc: DocumentRecord) -> bool:
    verdict = document_verdict(doc, sweep.retention)
    return verdict is DocumentVerdict.CANDIDATE and _is_our_object(sweep, doc)


def _delete_cascade(
    sweep: Sweep,
    expired: list[DocumentRecord],
    points: int,
    cache_keys: list[bytes],
    shared: set[str],
) -> None:
    ids = [d.id for d in expired]
    sweep.stores.vectors().delete_for_documents(ids)
    unlinked = sweep.stores.cache().unlink(cache_keys) if cache_keys else 0
    object_keys = sorted({d.minio_key for d in expired if d.minio_key} - shared)
    failed = set(sweep.stores.objects().remove(object_keys)) if object_keys else set()
    if failed:
        sweep.report.errors.append(f"minio: {len(failed)} object(s) could not be deleted")
    # A record whose object failed to go stays, so the next run finishes its cascade.
    done = [d for d in expired if d.minio_key not in failed]
    sweep.stores.metadata().delete_documents([d.id for d in done])
    _count(sweep, done, points, unlinked, shared)


def _count(
    sweep: Sweep, docs: list[DocumentRecord], points: int, cache_keys: int, shared: set[str]
) -> None:
    report = sweep.report
    report.add_deleted("qdrant", points)
    report.add_deleted("redis", cache_keys)
    objects = {d.minio_key: d.size_bytes or 0 for d in docs if d.minio_key}
    gone = {key: size for key, size in objects.items() if key not in shared}
    report.add_deleted("minio", len(gone), sum(gone.values()))
    if len(gone) < len(objects):
        report.add_skipped("minio", len(objects) - len(gone))
    report.add_deleted("mongodb", len(docs))


def _cache_keys(sweep: Sweep, doc_ids: list[str]) -> list[bytes]:
    templates = sweep.settings.redis_document_key_templates
    return [t.format(doc_id=doc_id).encode() for doc_id in doc_ids for t in templates]


def _entry(sweep: Sweep, doc: DocumentRecord, shared: set[str]) -> AuditEntry:
    touched = last_touched(doc)
    return AuditEntry(
        store="mongodb",
        action="expire_document",
        target=doc.id,
        size_bytes=doc.size_bytes or 0,
        reason=(
            f"not touched since {touched.isoformat() if touched else '?'} "
            f"(FILES_TTL_DAYS={sweep.settings.files_ttl_days}) and no active session references it"
        ),
        extra={
            "user_id": doc.user_id,
            "minio_bucket": doc.minio_bucket or sweep.settings.minio_bucket,
            "minio_key": doc.minio_key,
            "cascade": (
                ["qdrant", "redis", "mongodb"]
                if doc.minio_key in shared
                else ["qdrant", "redis", "minio", "mongodb"]
            ),
        },
    )
