"""Per-user erasure (SPEC section 12), over the store ports.

A scan reads everything of one user from indexes and filters: documents and chat sessions by
`user_id`, messages by their sessions, points by a filter on the user's document and session
ids, cache keys by their computed names, objects by the documents' keys (a HEAD each). A pass
then audits and deletes store by store in the cascade's order: Qdrant points, Redis keys,
objects, then the Mongo messages, sessions and documents LAST, so a crash leaves the records a
re-run finds the rest from. A real erase scans again after each pass: an upload that landed
meanwhile is taken by the next pass, and the scan that finds nothing is the verification.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from rlm_core.audit import AuditEntry, AuditLog, open_audit
from rlm_core.batching import chunked
from rlm_core.cleanup.context import Leases, StoreSet
from rlm_core.clock import Clock
from rlm_core.domain import MINIO, MONGODB, QDRANT, REDIS, ErasureReceipt, StoreErasure
from rlm_core.policy import object_key_problem
from rlm_core.ports import (
    DocumentRecord,
    MessageRecord,
    ObjectStore,
    PointInfo,
    PointPin,
    SessionRecord,
    StoreError,
)
from rlm_core.settings import Settings

# Passes of a real erase before it reports what keeps appearing (uploads racing the erase).
MAX_PASSES = 3
STORES = (QDRANT, REDIS, MINIO, MONGODB)
# S3 has no batch HEAD: one request per object, so a few are kept in flight at once.
HEAD_THREADS = 8
HEAD_CHUNK = 100

# Why an item found with the user's ids is kept; the receipt counts each reason.
SHARED_ID = "its id also names another user's record, so it cannot be attributed to one user"
OTHER_DOCUMENT = "in one of the user's sessions but names another user's document"
SHARED_OBJECT = "another user's document also names this object"
OTHER_BUCKET = "its document names another bucket than MINIO_BUCKET, which rlm does not manage"
UNSAFE_KEY = "its key has a '.', '..', leading '/' or control character: not deletable by name"

_Kept = dict[str, dict[str, set[str]]]


class UnknownUserError(ValueError):
    """The user id matches no document and no chat session: refused, so that a typo never
    looks like a successful erase."""


def check_user_id(user_id: object) -> str:
    """The user id; ValueError naming it when it is not a string with a non-blank character."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise ValueError(
            f"user_id: {user_id!r} is not valid; allowed: a user id that is not empty or blank"
        )
    return user_id


def _kept() -> _Kept:
    return defaultdict(lambda: defaultdict(set))


@dataclass
class _Known:
    """Ids of the user's items this run has seen; later scans look them up again, so a chunk
    written after its document's record went is still found."""

    documents: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    objects: set[str] = field(default_factory=set)


@dataclass
class _Plan:
    """One scan: the user's items to delete, per store, and those kept with the reason."""

    documents: list[DocumentRecord] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    messages: list[MessageRecord] = field(default_factory=list)
    points: list[PointPin] = field(default_factory=list)
    cache_keys: dict[bytes, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    kept: _Kept = field(default_factory=_kept)

    def names(self) -> dict[str, set[str]]:
        """Every item to delete, per store, by a name unique within its store."""
        return {
            QDRANT: {p.point_id for p in self.points},
            REDIS: {_key_name(k) for k in self.cache_keys},
            MINIO: set(self.objects),
            MONGODB: {
                *(_record_name("documents", d.identity) for d in self.documents),
                *(_record_name("chat_sessions", s.identity) for s in self.sessions),
                *(_record_name("messages", m.identity) for m in self.messages),
            },
        }

    @property
    def empty(self) -> bool:
        """True when nothing is left to delete (kept items aside)."""
        return not any(self.names().values())

    def keep(self, store: str, reason: str, names: Iterable[str]) -> None:
        """Count items kept in a store for a reason."""
        self.kept[store][reason].update(names)


@dataclass
class _Tally:
    """What the whole run found, deleted and kept, across its passes."""

    found: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    deleted: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    kept: _Kept = field(default_factory=_kept)
    detail: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def add(self, plan: _Plan, deletable: bool = True) -> None:
        """Count a scan's kept items, and (unless it is the last scan) its items to delete."""
        for store, reasons in plan.kept.items():
            for reason, names in reasons.items():
                self.keep(store, reason, names)
        if not deletable:
            return
        for store, names in plan.names().items():
            self.found[store] |= names
        self.detail["documents"] |= {d.id for d in plan.documents}
        self.detail["dedup_entries"] |= {d.id for d in plan.documents if d.file_hash}
        self.detail["sessions"] |= {s.id for s in plan.sessions}
        self.detail["messages"] |= {m.id for m in plan.messages}

    def keep(self, store: str, reason: str, names: Iterable[str]) -> None:
        """Count items kept (they were found too)."""
        self.kept[store][reason].update(names)
        self.found[store].update(names)


@dataclass
class _Erase:
    """The state one erase shares across its scans and passes."""

    settings: Settings
    stores: StoreSet
    user_id: str
    run_id: str
    dry_run: bool
    audit: AuditLog
    leases: Leases | None = None
    known: _Known = field(default_factory=_Known)
    tally: _Tally = field(default_factory=_Tally)
    errors: list[str] = field(default_factory=list)

    def heartbeat(self) -> None:
        """Called before each store's deletes: keeps a long erase's leases alive."""
        if self.leases is not None:
            self.leases.renew()


def erase_user(
    settings: Settings,
    stores: StoreSet,
    clock: Clock,
    user_id: str,
    *,
    dry_run: bool = False,
    allow_empty: bool = False,
    run_id: str | None = None,
) -> ErasureReceipt:
    """Erase (or, in a dry run, list) every item of one user in the four stores."""
    check_user_id(user_id)
    started = clock.now()
    run_id = run_id or uuid.uuid4().hex
    audit = open_audit(settings, run_id, dry_run, started)
    run = _Erase(settings, stores, user_id, run_id, dry_run, audit)
    try:
        left = _run(run, clock, allow_empty)
        receipt = _receipt(run, started, clock, left)
        audit.record([_receipt_entry(receipt)])
    finally:
        audit.close()
    return receipt


def _run(run: _Erase, clock: Clock, allow_empty: bool) -> _Plan | None:
    """The re-scan after the last pass (None in a dry run, or when a store failed)."""
    if not run.dry_run and not _lease(run, clock):
        return None
    try:
        plan = _scan(run)
        if not (plan.documents or plan.sessions or allow_empty):
            raise UnknownUserError(
                f"user_id: {run.user_id!r} matches no document and no chat session (a typo, "
                "or already erased); nothing was deleted. Allowed: an existing user id, or "
                "allow_empty (--allow-empty) to get an empty receipt"
            )
        return _passes(run, plan)
    except StoreError as exc:
        run.errors.append(str(exc))
        return None
    finally:
        _release(run)


def _lease(run: _Erase, clock: Clock) -> bool:
    # The same per-store leases as a cleanup: an erase and a cleanup never claim, count or
    # delete the same items at once.
    try:
        leases = Leases(run.stores.metadata(), STORES, run.run_id, clock.now)
        busy = leases.acquire()
    except StoreError as exc:
        run.errors.append(f"mongodb: cannot take the erase lease: {exc}")
        return False
    if busy is not None:
        run.errors.append(busy)
        return False
    run.leases = leases
    return True


def _release(run: _Erase) -> None:
    if run.leases is None:
        return
    try:
        run.leases.release()
    except StoreError as exc:
        run.errors.append(f"mongodb: lease not released (it expires): {exc}")
    run.leases = None


def _passes(run: _Erase, plan: _Plan) -> _Plan | None:
    """Delete, scan again, until a scan finds nothing or MAX_PASSES are done."""
    if run.dry_run:
        run.tally.add(plan)
        _execute(run, plan)
        return None
    for _ in range(MAX_PASSES):
        if plan.empty:
            break
        run.tally.add(plan)
        _execute(run, plan)
        plan = _scan(run)
    run.tally.add(plan, deletable=False)
    if not plan.empty:
        left = sum(len(names) for names in plan.names().values())
        run.errors.append(
            f"{left} item(s) of user {run.user_id!r} were still found after {MAX_PASSES} passes "
            "(uploads during the erase?); run the erase again to take them"
        )
    return plan


# ---------------------------------------------------------------- scan


def _scan(run: _Erase) -> _Plan:
    """Read every item of the user, by index and filter, and judge each."""
    metadata = run.stores.metadata()
    plan = _Plan(
        documents=metadata.documents_of_user(run.user_id),
        sessions=metadata.sessions_of_user(run.user_id),
    )
    run.known.documents.update(d.id for d in plan.documents)
    run.known.sessions.update(s.id for s in plan.sessions)
    other_sessions = _other_sessions(run)
    points = run.stores.vectors().points_of(sorted(run.known.documents), sorted(run.known.sessions))
    other_docs = _other_documents(run, points)
    _plan_points(run, plan, points, other_docs, other_sessions)
    _plan_cache(run, plan, other_docs)
    _plan_objects(run, plan)
    _plan_messages(run, plan, other_sessions)
    return plan


def _other_documents(run: _Erase, points: list[PointInfo]) -> set[str]:
    """Ids among the user's and the points' documents that another user's record also has."""
    ids = run.known.documents | {d for p in points if (d := _text(p.document_id))}
    records = run.stores.metadata().find_documents(sorted(ids)) if ids else []
    return {r.id for r in records if r.user_id != run.user_id}


def _other_sessions(run: _Erase) -> set[str]:
    """Ids of the user's sessions that another user's session also has (ObjectId twins)."""
    if not run.known.sessions:
        return set()
    found = run.stores.metadata().find_sessions(sorted(run.known.sessions))
    return {s.id for s in found if s.user_id != run.user_id}


def _plan_points(
    run: _Erase,
    plan: _Plan,
    points: list[PointInfo],
    other_docs: set[str],
    other_sessions: set[str],
) -> None:
    for point in points:
        verdict = point_verdict(point, run.known, other_docs, other_sessions)
        if isinstance(verdict, PointPin):
            plan.points.append(verdict)
        elif verdict is not None:
            plan.keep(QDRANT, verdict, [point.point_id])


def point_verdict(
    point: PointInfo, known: _Known, other_docs: set[str], other_sessions: set[str]
) -> PointPin | str | None:
    """A pin when the point is the user's alone, the reason when it is kept, None when it is
    not the user's at all. A point of the user's document goes whatever its session; a point of
    the user's session goes unless it names another user's document."""
    doc, session = _text(point.document_id), _text(point.session_id)
    if doc is not None and doc in known.documents:
        return SHARED_ID if doc in other_docs else PointPin(point.point_id, None, doc)
    if session is None or session not in known.sessions:
        return None
    if session in other_sessions:
        return SHARED_ID
    if doc is not None and doc in other_docs:
        return OTHER_DOCUMENT
    return PointPin(point.point_id, session, doc)


def _plan_cache(run: _Erase, plan: _Plan, other_docs: set[str]) -> None:
    """The documents' cache keys, by computed name (REDIS_DOCUMENT_KEY_TEMPLATES): no SCAN."""
    templates = run.settings.redis_document_key_templates
    owner = {t.format(doc_id=d).encode(): d for d in sorted(run.known.documents) for t in templates}
    if not owner:
        return
    for key, memory in run.stores.cache().memory_usage(list(owner)).items():
        if owner[key] in other_docs:
            plan.keep(REDIS, SHARED_ID, [_key_name(key)])
        else:
            plan.cache_keys[key] = memory


def _plan_objects(run: _Erase, plan: _Plan) -> None:
    """The documents' objects in our bucket that no other user's document names."""
    candidates = set(run.known.objects) | _object_keys(run, plan)
    if not candidates:
        return
    objects, keys = run.stores.objects(), sorted(candidates)
    shared = run.stores.metadata().referenced_object_keys(objects.bucket, keys, plan.documents)
    for key, size in _sizes(objects, keys).items():
        if key in shared:
            plan.keep(MINIO, SHARED_OBJECT, [key])
        else:
            plan.objects[key] = size
    run.known.objects.update(plan.objects)


def _sizes(objects: ObjectStore, keys: list[str]) -> dict[str, int]:
    """The stored size of each existing key, HEAD_CHUNK keys per task, HEAD_THREADS at once."""
    chunks = list(chunked(keys, HEAD_CHUNK))
    # The first chunk alone: the client looks the bucket's region up once, not once per thread.
    sizes = objects.sizes(chunks[0]) if chunks else {}
    with ThreadPoolExecutor(max_workers=HEAD_THREADS) as pool:
        for part in pool.map(objects.sizes, chunks[1:]):
            sizes.update(part)
    return sizes


def _object_keys(run: _Erase, plan: _Plan) -> set[str]:
    bucket = run.stores.objects().bucket
    keys: set[str] = set()
    for doc in plan.documents:
        key = doc.minio_key
        if not key:
            continue
        # SPEC 4.1 (5): a record without a usable bucket names its key in our bucket.
        if doc.minio_bucket not in (None, bucket):
            plan.keep(MINIO, OTHER_BUCKET, [f"{doc.minio_bucket}/{key}"])
        elif object_key_problem(key) is not None:
            plan.keep(MINIO, UNSAFE_KEY, [key])
        else:
            keys.add(key)
    return keys


def _plan_messages(run: _Erase, plan: _Plan, other_sessions: set[str]) -> None:
    if not run.known.sessions:
        return
    for message in run.stores.metadata().messages_of_sessions(sorted(run.known.sessions)):
        if message.chat_id in other_sessions:
            plan.keep(MONGODB, SHARED_ID, [_record_name("messages", message.identity)])
        else:
            plan.messages.append(message)


# ---------------------------------------------------------------- passes


def _execute(run: _Erase, plan: _Plan) -> None:
    """Audit, then delete, store by store; the Mongo records go last."""
    docs = plan.documents if run.dry_run else _claim(run, plan.documents)
    _erase_points(run, plan.points)
    _erase_cache(run, plan.cache_keys)
    _erase_objects(run, plan)
    _erase_messages(run, plan.messages)
    _erase_sessions(run, plan.sessions)
    _erase_documents(run, docs)


def _claim(run: _Erase, docs: list[DocumentRecord]) -> list[DocumentRecord]:
    # The cascade's claim: a dedup hit on a claimed record relinks it (duplicate=False) rather
    # than answer "duplicate" for a record going away; a record changed since it was read is
    # not claimed and is taken by the next pass.
    return run.stores.metadata().claim_documents(docs, run.run_id) if docs else []


def _step(run: _Erase, store: str, entries: list[AuditEntry], delete: Callable[[], int]) -> None:
    """Audit the entries durably, then delete (a dry run counts what would go)."""
    run.heartbeat()
    run.audit.record(entries)
    run.tally.deleted[store] += delete()


def _erase_points(run: _Erase, pins: list[PointPin]) -> None:
    if not pins:
        return
    vectors = run.stores.vectors()
    groups: dict[tuple[str | None, str | None], list[str]] = defaultdict(list)
    for pin in pins:
        groups[(pin.session_id, pin.document_id)].append(pin.point_id)
    point_bytes = vectors.point_bytes()
    entries = [
        _entry(
            run,
            QDRANT,
            "erase_points",
            f"session_id={s} document_id={d}",
            len(ids) * point_bytes,
            {"points": len(ids), "point_ids": ids, "session_id": s, "document_id": d},
        )
        for (s, d), ids in groups.items()
    ]
    _step(run, QDRANT, entries, lambda: len(pins) if run.dry_run else vectors.delete_pinned(pins))


def _erase_cache(run: _Erase, keys: dict[bytes, int]) -> None:
    if not keys:
        return
    cache = run.stores.cache()
    entries = [_entry(run, REDIS, "erase_cache_key", _key_name(k), m) for k, m in keys.items()]
    _step(run, REDIS, entries, lambda: len(keys) if run.dry_run else len(cache.unlink(list(keys))))


def _erase_objects(run: _Erase, plan: _Plan) -> None:
    objects, keys = run.stores.objects(), sorted(plan.objects)
    if keys and not run.dry_run:
        # The last re-check: an object another user's document named since the scan stays.
        shared = run.stores.metadata().referenced_object_keys(objects.bucket, keys, plan.documents)
        run.tally.keep(MINIO, SHARED_OBJECT, shared)
        keys = [k for k in keys if k not in shared]
    if not keys:
        return
    entries = [
        _entry(run, MINIO, "erase_object", k, plan.objects[k], {"bucket": objects.bucket})
        for k in keys
    ]
    _step(run, MINIO, entries, lambda: len(keys) if run.dry_run else _remove(run, keys))


def _remove(run: _Erase, keys: list[str]) -> int:
    failed = run.stores.objects().remove(keys)
    if failed:
        run.errors.append(f"minio: {len(failed)} object(s) could not be deleted")
    return len(keys) - len(failed)


def _erase_messages(run: _Erase, messages: list[MessageRecord]) -> None:
    if not messages:
        return
    by_session: dict[str, list[str]] = defaultdict(list)
    for message in messages:
        by_session[message.chat_id].append(message.id)
    entries = [
        _entry(
            run,
            MONGODB,
            "erase_messages",
            f"chat_id={chat}",
            0,
            {"messages": len(ids), "message_ids": ids},
        )
        for chat, ids in by_session.items()
    ]
    metadata = run.stores.metadata()
    _step(
        run,
        MONGODB,
        entries,
        lambda: len(messages) if run.dry_run else metadata.delete_messages(messages),
    )


def _erase_sessions(run: _Erase, sessions: list[SessionRecord]) -> None:
    if not sessions:
        return
    entries = [
        _entry(run, MONGODB, "erase_session", s.id, 0, {"id_type": _id_type(s.oid)})
        for s in sessions
    ]
    metadata = run.stores.metadata()
    _step(
        run,
        MONGODB,
        entries,
        lambda: len(sessions) if run.dry_run else metadata.delete_sessions(sessions, run.user_id),
    )


def _erase_documents(run: _Erase, docs: list[DocumentRecord]) -> None:
    if not docs:
        return
    entries = [_document_entry(run, d) for d in docs]
    metadata = run.stores.metadata()
    _step(
        run,
        MONGODB,
        entries,
        lambda: len(docs) if run.dry_run else metadata.delete_documents(docs, run.run_id),
    )


# ---------------------------------------------------------------- audit and receipt


def _entry(
    run: _Erase,
    store: str,
    action: str,
    target: str,
    size: int,
    extra: dict[str, object] | None = None,
) -> AuditEntry:
    reason = f"erasure of user {run.user_id!r} (right to be forgotten)"
    return AuditEntry(
        store, action, target, size, reason, {"user_id": run.user_id, **(extra or {})}
    )


def _document_entry(run: _Erase, doc: DocumentRecord) -> AuditEntry:
    extra: dict[str, object] = {
        "id_type": _id_type(doc.oid),
        "minio_bucket": doc.minio_bucket,
        "minio_key": doc.minio_key,
        "dedup_entry": doc.file_hash is not None,
    }
    return _entry(run, MONGODB, "erase_document", doc.id, doc.size_bytes or 0, extra)


def _receipt(run: _Erase, started: datetime, clock: Clock, left: _Plan | None) -> ErasureReceipt:
    tally = run.tally
    remaining = {store: len(names) for store, names in left.names().items()} if left else {}
    stores = {
        store: StoreErasure(
            found=len(tally.found[store]),
            deleted=tally.deleted[store],
            kept={reason: len(names) for reason, names in sorted(tally.kept[store].items())},
            left=remaining.get(store),
            verified=None if run.dry_run else remaining.get(store) == 0,
            detail=_detail(tally) if store == MONGODB else {},
        )
        for store in STORES
    }
    return ErasureReceipt(
        run_id=run.run_id,
        user_id=run.user_id,
        dry_run=run.dry_run,
        started_at=started,
        finished_at=clock.now(),
        stores=stores,
        errors=tuple(run.errors),
        audit_path=run.audit.location,
    )


def _detail(tally: _Tally) -> dict[str, int]:
    kinds = ("documents", "dedup_entries", "sessions", "messages")
    return {kind: len(tally.detail[kind]) for kind in kinds}


def _receipt_entry(receipt: ErasureReceipt) -> AuditEntry:
    return AuditEntry(
        store="all",
        action="erasure_receipt",
        target=receipt.user_id,
        size_bytes=0,
        reason="the receipt of the erasure of this user",
        extra={"receipt": receipt.as_json()},
    )


def _key_name(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _record_name(collection: str, identity: tuple[str, bool]) -> str:
    record_id, oid = identity
    return f"{collection}/{record_id}" + ("" if oid else " (str)")


def _id_type(oid: bool) -> str:
    return "ObjectId" if oid else "str"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
