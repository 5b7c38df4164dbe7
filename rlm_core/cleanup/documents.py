"""Document expiry: the cascade Qdrant points, Redis keys, object, then the Mongo record LAST.

A batch is decided from the listing, claimed (only records still exactly as read), planned per
document, audited, then deleted store by store; before each store's delete the claim and the
references are read again, so a dedup re-upload (which breaks the claim) or a session that
picked the document up stops the rest of its cascade. The record goes last, and only while it
is still claimed and unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlm_core.audit import AuditEntry
from rlm_core.cleanup.context import Sweep
from rlm_core.domain import MINIO, MONGODB, QDRANT, REDIS
from rlm_core.policy import DocumentVerdict, document_verdict, last_touched, object_key_problem
from rlm_core.ports import DocumentRecord, PointRef


@dataclass
class _Plan:
    """What one document's cascade deletes, measured before anything goes."""

    doc: DocumentRecord
    points: list[str] = field(default_factory=list)
    cache_keys: dict[bytes, int] = field(default_factory=dict)
    object_size: int | None = None  # None: no object of its own to delete
    shared: bool = False

    @property
    def cost(self) -> int:
        """Items this cascade deletes: points, keys, the object and the record."""
        return len(self.points) + len(self.cache_keys) + (self.object_size is not None) + 1


def expire_documents(sweep: Sweep) -> None:
    """Expire every document that is neither touched within FILES_TTL nor actively referenced."""
    metadata = sweep.stores.metadata()
    for batch in metadata.iter_documents(sweep.options.batch_size):
        sweep.heartbeat()
        candidates = [doc for doc in batch if _is_candidate(sweep, doc)]
        if candidates:
            _expire_batch(sweep, candidates)
        if sweep.budget.exhausted:
            sweep.report.capped = True
            return


def _is_candidate(sweep: Sweep, doc: DocumentRecord) -> bool:
    verdict = document_verdict(doc, sweep.retention)
    if verdict is DocumentVerdict.MALFORMED:
        sweep.report.add_skipped(MONGODB)
        return False
    if verdict is not DocumentVerdict.CANDIDATE:
        return False
    if not _is_our_object(sweep, doc):
        sweep.report.add_skipped(MINIO)
        return False
    problem = object_key_problem(doc.minio_key) if doc.minio_key is not None else None
    if problem is not None:
        sweep.report.add_skipped(MINIO)
        sweep.report.errors.append(
            f"minio: document {doc.id} kept: its minio_key {problem}, so its object could not "
            "be deleted safely"
        )
        return False
    return True


def _is_our_object(sweep: Sweep, doc: DocumentRecord) -> bool:
    # A document whose file lives in another bucket is not ours to cascade: its record is the
    # only pointer to that object, so it stays.
    return doc.minio_bucket == sweep.options.minio_bucket


def _expire_batch(sweep: Sweep, candidates: list[DocumentRecord]) -> None:
    docs = _unreferenced(sweep, candidates)
    if docs and not sweep.dry_run:
        docs = _claim(sweep, docs)
    if not docs:
        return
    plans = _granted(sweep, _plan(sweep, docs))
    if not plans:
        return
    sweep.audit.record([_entry(sweep, p) for p in plans])
    if sweep.dry_run:
        _count_dry(sweep, plans)
    else:
        _delete_cascade(sweep, plans)


def _unreferenced(sweep: Sweep, docs: list[DocumentRecord]) -> list[DocumentRecord]:
    referenced = sweep.stores.metadata().active_references(
        [d.id for d in docs], sweep.retention.active_since
    )
    return [d for d in docs if d.id not in referenced]


def _claim(sweep: Sweep, docs: list[DocumentRecord]) -> list[DocumentRecord]:
    # The claim succeeds only on records still exactly as listed: a dedup touch, a relink or
    # another run's claim since the listing keeps the record. References are read again after
    # the claim, so a session that picked the document up in between protects it.
    metadata = sweep.stores.metadata()
    claimed = metadata.claim_documents(docs, sweep.run_id)
    kept = _unreferenced(sweep, claimed)
    _release(sweep, [d for d in claimed if d not in kept])
    return kept


def _plan(sweep: Sweep, docs: list[DocumentRecord]) -> list[_Plan]:
    plans = [_Plan(doc) for doc in docs]
    twins = _twins(sweep, docs)
    points = sweep.stores.vectors().points_for_documents([d.id for d in docs if d.id not in twins])
    keys = _cache_keys(sweep, [d.id for d in docs if d.id not in twins])
    memory = sweep.stores.cache().memory_usage([k for ks in keys.values() for k in ks])
    for plan in plans:
        plan.points = points.get(plan.doc.id, []) if plan.doc.id not in twins else []
        plan.cache_keys = {k: memory[k] for k in keys.get(plan.doc.id, []) if k in memory}
    _plan_objects(sweep, plans)
    return plans


def _twins(sweep: Sweep, docs: list[DocumentRecord]) -> set[str]:
    # SPEC 4.1 (6): ObjectId(h) and "h" are two records, but points and cache keys name both by
    # "h". While the other one stays, the points and keys stay with it.
    going = {d.identity for d in docs} | sweep.planned.documents
    others = sweep.stores.metadata().find_documents([d.id for d in docs])
    return {r.id for r in others if r.identity not in going}


def _plan_objects(sweep: Sweep, plans: list[_Plan]) -> None:
    keys = sorted({p.doc.minio_key for p in plans if p.doc.minio_key})
    if not keys:
        return
    objects = sweep.stores.objects()
    # An object that a document outside this batch also names is that document's file too: the
    # expiring records go, the object stays (the orphan sweep takes it once nobody names it).
    excluding = [p.doc for p in plans] + _planned_records(sweep)
    shared = sweep.stores.metadata().referenced_object_keys(objects.bucket, keys, excluding)
    sizes = objects.sizes([k for k in keys if k not in shared])
    claimed: set[str] = set()
    for plan in plans:
        key = plan.doc.minio_key
        plan.shared = key in shared
        if key in sizes and key not in claimed:
            plan.object_size = sizes[key]
            claimed.add(key)


def _planned_records(sweep: Sweep) -> list[DocumentRecord]:
    # A dry run's earlier batches deleted nothing, so their records still name their objects;
    # the real run would have deleted them by now.
    return [
        DocumentRecord(i, None, None, None, None, None, None, None, None, None, oid=oid)
        for i, oid in sweep.planned.documents
    ]


def _granted(sweep: Sweep, plans: list[_Plan]) -> list[_Plan]:
    """The documents the cap allows, whole, in order; an object that a refused document also
    names stays for now."""
    granted: list[_Plan] = []
    for index, plan in enumerate(plans):
        if not sweep.budget.take(plan.cost):
            sweep.report.capped = True
            refused = plans[index:]
            if not sweep.dry_run:
                _release(sweep, [p.doc for p in refused])
            kept = {p.doc.minio_key for p in refused}
            for p in granted:
                if p.doc.minio_key in kept and p.object_size is not None:
                    sweep.budget.refund(1)
                    p.object_size = None
            break
        granted.append(plan)
    return granted


def _count_dry(sweep: Sweep, plans: list[_Plan]) -> None:
    point_bytes = sweep.stores.vectors().point_bytes() if any(p.points for p in plans) else 0
    for plan in plans:
        _count(sweep, plan, len(plan.points), point_bytes, plan.cache_keys)
        sweep.report.add_deleted(MONGODB, 1)
        sweep.planned.documents.add(plan.doc.identity)
        sweep.planned.points.update(plan.points)
        sweep.planned.cache_keys.update(plan.cache_keys)


def _delete_cascade(sweep: Sweep, plans: list[_Plan]) -> None:
    vectors, cache = sweep.stores.vectors(), sweep.stores.cache()
    point_bytes = vectors.point_bytes() if any(p.points for p in plans) else 0
    live = _recheck(sweep, plans)
    refs = [PointRef(pid, None, p.doc.id) for p in live for pid in p.points]
    points = vectors.delete_for_documents(refs) if refs else 0
    sweep.report.add_deleted(QDRANT, points, points * point_bytes)
    live = _recheck(sweep, live)
    keys = [k for p in live for k in p.cache_keys]
    unlinked = cache.unlink(keys) if keys else {}
    sweep.report.add_deleted(REDIS, len(unlinked), sum(unlinked.values()))
    live = _recheck(sweep, live)
    live = _recheck(sweep, _delete_objects(sweep, live))
    deleted = sweep.stores.metadata().delete_documents([p.doc for p in live], sweep.run_id)
    sweep.report.add_deleted(MONGODB, deleted)


def _delete_objects(sweep: Sweep, plans: list[_Plan]) -> list[_Plan]:
    """Remove the objects that are still no other document's; return the plans whose record
    may go (a record whose object could not be deleted stays for the next run)."""
    objects = sweep.stores.objects()
    owned = [p for p in plans if p.object_size is not None and p.doc.minio_key]
    keys = [p.doc.minio_key for p in owned if p.doc.minio_key]
    excluding = [p.doc for p in plans]
    shared = sweep.stores.metadata().referenced_object_keys(objects.bucket, keys, excluding)
    doomed = [p for p in owned if p.doc.minio_key not in shared]
    failed = set(objects.remove([p.doc.minio_key for p in doomed if p.doc.minio_key]))
    if failed:
        sweep.report.errors.append(f"minio: {len(failed)} object(s) could not be deleted")
    gone = [p for p in doomed if p.doc.minio_key not in failed]
    sweep.report.add_deleted(MINIO, len(gone), sum(p.object_size or 0 for p in gone))
    sweep.report.add_skipped(MINIO, sum(p.shared for p in plans) + len(owned) - len(doomed))
    stay = [p for p in plans if p.doc.minio_key in failed]
    _release(sweep, [p.doc for p in stay])
    return [p for p in plans if p not in stay]


def _recheck(sweep: Sweep, plans: list[_Plan]) -> list[_Plan]:
    """The plans whose document is still claimed by this run, unchanged and unreferenced, read
    right before the next store's delete; the others keep what is left of them."""
    if not plans:
        return []
    metadata = sweep.stores.metadata()
    claimed = metadata.claimed([p.doc for p in plans], sweep.run_id)
    still = {d.identity for d in _unreferenced(sweep, claimed)}
    dropped = [p.doc for p in plans if p.doc.identity not in still]
    if dropped:
        sweep.report.add_skipped(MONGODB, len(dropped))
        _release(sweep, dropped)
    return [p for p in plans if p.doc.identity in still]


def _release(sweep: Sweep, docs: list[DocumentRecord]) -> None:
    if docs:
        sweep.stores.metadata().release_claims(docs, sweep.run_id)


def _count(
    sweep: Sweep, plan: _Plan, points: int, point_bytes: int, keys: dict[bytes, int]
) -> None:
    report = sweep.report
    report.add_deleted(QDRANT, points, points * point_bytes)
    report.add_deleted(REDIS, len(keys), sum(keys.values()))
    if plan.object_size is not None:
        report.add_deleted(MINIO, 1, plan.object_size)
    elif plan.shared:
        report.add_skipped(MINIO)


def _cache_keys(sweep: Sweep, doc_ids: list[str]) -> dict[str, list[bytes]]:
    templates = sweep.options.redis_document_key_templates
    return {d: [t.format(doc_id=d).encode() for t in templates] for d in doc_ids}


def _entry(sweep: Sweep, plan: _Plan) -> AuditEntry:
    doc = plan.doc
    touched = last_touched(doc)
    cascade = [QDRANT, REDIS] + ([MINIO] if plan.object_size is not None else [])
    return AuditEntry(
        store=MONGODB,
        action="expire_document",
        target=doc.id,
        size_bytes=plan.object_size or 0,
        reason=(
            f"not touched since {touched.isoformat() if touched else '?'} "
            f"(FILES_TTL_DAYS={sweep.retention.files_ttl_days}) and no active session references it"
        ),
        extra={
            "id_type": "ObjectId" if doc.oid else "str",
            "user_id": doc.user_id,
            "minio_bucket": doc.minio_bucket,
            "minio_key": doc.minio_key,
            "points": len(plan.points),
            "cache_keys": [k.decode("utf-8", "backslashreplace") for k in plan.cache_keys],
            "cascade": [*cascade, MONGODB],
        },
    )
