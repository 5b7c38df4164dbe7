"""Qdrant sweep: points of vanished documents, and of inactive sessions nobody active uses.

Page by page: a page's old, well-formed points are judged against their documents and
sessions read right then, audited, and deleted by a request that names each point and carries
the created_at bound, so a point written or changed since it was read is never taken. Memory is
one page, whatever the collection's size.
"""

from __future__ import annotations

from rlm_core.audit import AuditEntry
from rlm_core.cleanup.context import Sweep
from rlm_core.domain import QDRANT
from rlm_core.policy import PointEvidence, PointVerdict, is_upload_session, point_evidence
from rlm_core.ports import PointInfo, PointRef

GONE = "document no longer exists"
INACTIVE = (
    "session inactive past RAG_SESSION_TTL_HOURS and no active session references the document"
)
_REFUSAL = (
    "qdrant: refusing to treat points as orphans because the metadata store holds no "
    "documents (check MONGODB_URL, MONGODB_DATABASE and RLM_DOCUMENTS_COLLECTION)"
)


def sweep_vectors(sweep: Sweep) -> None:
    """Judge each page of points on positive evidence only; delete the doomed, page by page."""
    vectors = sweep.stores.vectors()
    for page in vectors.iter_points(sweep.options.batch_size):
        sweep.heartbeat()
        old = _old_points(sweep, page)
        doomed = _doomed(sweep, old) if old else []
        if doomed is None:
            return
        granted = sweep.granted(doomed)
        if granted:
            _delete(sweep, granted)
        if sweep.budget.exhausted:
            sweep.report.capped = True
            return


def _old_points(sweep: Sweep, page: list[PointInfo]) -> list[PointEvidence]:
    old: list[PointEvidence] = []
    since, planned = sweep.retention.active_since, sweep.planned.points if sweep.dry_run else ()
    for point in page:
        if point.point_id in planned:
            continue  # the cascade of this dry run counted it already
        verdict, evidence = point_evidence(point, since)
        if verdict is PointVerdict.UNKNOWN:
            sweep.report.add_unknown(QDRANT)
        elif evidence is not None:
            old.append(evidence)
    return old


def _doomed(sweep: Sweep, old: list[PointEvidence]) -> list[tuple[PointEvidence, str]] | None:
    """Each doomed point with its reason; None when the sweep must stop (misconfiguration)."""
    existing = _existing_documents(sweep, sorted({p.document_id for p in old}))
    if not existing and not sweep.metadata_populated:
        sweep.report.refuse(_REFUSAL)
        return None
    doomed = [(p, GONE) for p in old if p.document_id not in existing]
    judged = [p for p in old if p.document_id in existing]
    for point in judged:
        if point.session_id is None:
            sweep.report.add_unknown(QDRANT)  # the session rule needs a session_id
    judged = [
        p
        for p in judged
        if p.session_id is not None and not is_upload_session(p.session_id, p.document_id)
    ]
    if judged:
        doomed += [(p, INACTIVE) for p in _unprotected(sweep, judged)]
    return doomed


def _existing_documents(sweep: Sweep, doc_ids: list[str]) -> set[str]:
    # In a dry run the documents its cascade would have deleted count as gone already.
    identities = sweep.stores.metadata().document_identities(doc_ids)
    return {identity[0] for identity in identities if identity not in sweep.planned.documents}


def _unprotected(sweep: Sweep, points: list[PointEvidence]) -> list[PointEvidence]:
    metadata, since = sweep.stores.metadata(), sweep.retention.active_since
    active = metadata.active_sessions(sorted({p.session_id for p in points if p.session_id}), since)
    # An active session protects its points whatever references say: only the documents of
    # points in inactive sessions need their references read (most sessions are active).
    inactive = [p for p in points if p.session_id not in active]
    if not inactive:
        return []
    referenced = metadata.active_references(sorted({p.document_id for p in inactive}), since)
    return [p for p in inactive if p.document_id not in referenced]


def _delete(sweep: Sweep, doomed: list[tuple[PointEvidence, str]]) -> None:
    vectors = sweep.stores.vectors()
    point_bytes = vectors.point_bytes()
    # One entry per point: page boundaries differ between a dry and a real run (the cascade
    # before this sweep deleted points in one and not in the other), so per-group entries
    # would not match in number.
    sweep.audit.record([_entry(point, reason, point_bytes) for point, reason in doomed])
    if sweep.dry_run:
        deleted = len(doomed)
    else:
        refs = [PointRef(p.point_id, p.session_id, p.document_id) for p, _ in doomed]
        deleted = vectors.delete_points(refs, sweep.retention.active_since.timestamp())
    sweep.report.add_deleted(QDRANT, deleted, deleted * point_bytes)


def _entry(point: PointEvidence, reason: str, point_bytes: int) -> AuditEntry:
    return AuditEntry(
        store=QDRANT,
        action="delete_points",
        target=point.point_id,
        size_bytes=point_bytes,
        reason=reason,
        extra={
            "points": 1,
            "point_ids": [point.point_id],
            "session_id": point.session_id,
            "document_id": point.document_id,
        },
    )
