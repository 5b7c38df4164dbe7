"""Qdrant sweep: points of vanished documents, and of inactive sessions nobody active uses."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from rlm_core.audit import AuditEntry
from rlm_core.cleanup.context import Sweep, chunked
from rlm_core.policy import is_upload_session, parse_point

Pair = tuple[str, str]
_Query = Callable[[list[str]], set[str]]


@dataclass
class _Group:
    """Points of one (session_id, document_id) pair."""

    count: int
    newest: datetime


@dataclass(frozen=True)
class _Doomed:
    pair: Pair
    count: int
    reason: str


def sweep_vectors(sweep: Sweep) -> None:
    """Scroll payloads into per-pair groups, read references after, delete by filter."""
    groups = _scan_groups(sweep)
    if not groups:
        return
    doomed = sweep.granted(_doomed_pairs(sweep, groups))
    if not doomed:
        return
    vector_bytes = sweep.settings.qdrant_vector_size * 4
    sweep.audit.record([_entry(d, vector_bytes) for d in doomed])
    if not sweep.dry_run:
        # One call: the adapter batches its filters (server) or makes one pass (local mode).
        sweep.stores.vectors().delete_for_pairs([d.pair for d in doomed])
    sweep.report.add_deleted("qdrant", sum(d.count for d in doomed))


def _scan_groups(sweep: Sweep) -> dict[Pair, _Group]:
    # Memory grows with distinct (session, document) pairs, not with points.
    groups: dict[Pair, _Group] = {}
    for batch in sweep.stores.vectors().iter_points(sweep.settings.batch_size):
        for point in batch:
            parsed = parse_point(point)
            if parsed is None:
                sweep.report.add_unknown("qdrant")
                continue
            pair = (parsed.session_id, parsed.document_id)
            group = groups.get(pair)
            if group is None:
                groups[pair] = _Group(1, parsed.created_at)
            else:
                group.count += 1
                group.newest = max(group.newest, parsed.created_at)
    return groups


def _doomed_pairs(sweep: Sweep, groups: dict[Pair, _Group]) -> list[_Doomed]:
    # Points younger than the session TTL are never swept: the session or document record
    # that owns them may not be written yet.
    old = {pair: g for pair, g in groups.items() if g.newest < sweep.retention.active_since}
    if not old:
        return []
    metadata = sweep.stores.metadata()
    doc_ids = sorted({doc for _, doc in old})
    existing = _existing_documents(sweep, doc_ids)
    if not existing and not sweep.metadata_populated:
        sweep.report.errors.append(
            "qdrant: refusing to treat points as orphans because the metadata store holds no "
            "documents (check MONGODB_URL, MONGODB_DATABASE and RLM_DOCUMENTS_COLLECTION)"
        )
        return []
    since = sweep.retention.active_since
    sessions = sorted({s for s, d in old if not is_upload_session(s, d)})
    active = _batched(sessions, lambda b: metadata.active_sessions(b, since), sweep)
    referenced = _batched(sorted(existing), lambda b: metadata.active_references(b, since), sweep)
    return [
        _Doomed(pair, group.count, reason)
        for pair, group in sorted(old.items())
        if (reason := _reason(pair, existing, active, referenced))
    ]


def _reason(pair: Pair, existing: set[str], active: set[str], referenced: set[str]) -> str:
    session, doc = pair
    if doc not in existing:
        return "document no longer exists"
    if is_upload_session(session, doc) or session in active or doc in referenced:
        return ""
    return (
        "session inactive past RAG_SESSION_TTL_HOURS and no active session references the document"
    )


def _existing_documents(sweep: Sweep, doc_ids: list[str]) -> set[str]:
    metadata = sweep.stores.metadata()
    return _batched(doc_ids, lambda b: set(metadata.get_documents(b)), sweep)


def _batched(items: Iterable[str], query: _Query, sweep: Sweep) -> set[str]:
    found: set[str] = set()
    for batch in chunked(items, sweep.settings.batch_size):
        found |= query(batch)
    return found


def _entry(doomed: _Doomed, vector_bytes: int) -> AuditEntry:
    session, doc = doomed.pair
    return AuditEntry(
        store="qdrant",
        action="delete_points",
        target=f"session_id={session} document_id={doc}",
        size_bytes=doomed.count * vector_bytes,
        reason=doomed.reason,
        extra={"points": doomed.count, "session_id": session, "document_id": doc},
    )
