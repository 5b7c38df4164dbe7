"""Messy reference shapes (SPEC 3 and 4.1.1), raw seeding and exact store inventories.

`SHAPES` is the one table of reference shapes: every path a session can name a document by,
in every id form real data holds. Add a row to extend it; every test that reads the table
(tests/lifecycle/test_messy_catalogue.py and test_invariants.py) picks it up on both stacks.

A row says where the reference goes (`place`), whether it names the document (`names`) and
whether it makes the document record itself wrong-typed (`doc_malformed`). Readings chosen where
the SPEC is silent (always the one that keeps data):
- a nested form that still holds the id (`[[id]]`, `[{"doc_id": [id]}]`, `conversation_id:
  [sid]`) names the document;
- a row that only puts a wrong type in the document record (`conversation_id: 42`) may leave
  that document kept and counted instead of expired, but never half-expired.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from bson import ObjectId

from rlm_core import LifecycleManager
from rlm_core.adapters.qdrant_vectors import QdrantVectorStore
from rlm_core.audit import read_audit
from rlm_core.clock import FakeClock
from rlm_core.domain import CleanupReport
from rlm_core.ports import CacheSeed, VectorPoint
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from rlm_core.stores import Stores

DIM = 384
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
OLD = 30 * DAY  # well past FILES_TTL_DAYS = 7
STALE = 3 * DAY  # well past RAG_SESSION_TTL_HOURS = 24
STORES = ("redis", "qdrant", "minio", "mongodb")


class _Missing:
    """Marks a field the record must not have at all."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def naive(when: datetime) -> datetime:
    """Naive UTC, as pymongo returns datetimes and the RAG app writes them."""
    return when.replace(tzinfo=None)


def apply(record: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """record updated with fields; a MISSING value removes the field."""
    out = dict(record)
    for name, value in fields.items():
        if value is MISSING:
            out.pop(name, None)
        else:
            out[name] = value
    return out


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Ref:
    """The ids one row's reference is built from: a document and the session naming it."""

    doc: str  # hex of the document's ObjectId _id
    session: str  # hex of the session's _id (stored as str or as ObjectId, per row)

    @property
    def doc_oid(self) -> ObjectId:
        return ObjectId(self.doc)

    @property
    def session_oid(self) -> ObjectId:
        return ObjectId(self.session)


@dataclass(frozen=True)
class Placement:
    """Where one reference goes: fields of the session, messages, fields of the document."""

    session: dict[str, Any] = field(default_factory=dict)
    messages: tuple[dict[str, Any], ...] = ()
    document: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Shape:
    """One reference shape: a path, an id form, and whether it names the document."""

    path: str
    form: str
    names: bool
    place: Callable[[Ref], Placement]
    session_oid: bool = False  # the session's _id is an ObjectId instead of a string
    doc_malformed: bool = False  # the shape makes the document record itself wrong-typed

    @property
    def id(self) -> str:
        return f"{self.path} | {self.form}"


DOCS = "chat_sessions.documents[].doc_id"
PLAIN = "chat_sessions.documents (plain ids)"
ATTACHED = "chat_sessions.attached_file_ids"
MESSAGES = "messages.file_ids via chat_id"
CONVERSATION = "documents.conversation_id"
PATHS = (DOCS, PLAIN, ATTACHED, MESSAGES, CONVERSATION)


def _s(**fields: Any) -> Callable[[Ref], Placement]:
    """A session-side row whose fields do not depend on the ids (malformed forms)."""
    return lambda r: Placement(session=dict(fields))


def _msg(r: Ref, file_ids: Any, chat_id: Any = None) -> Placement:
    chat = r.session if chat_id is None else chat_id
    return Placement(messages=({"chat_id": chat, "file_ids": file_ids},))


SHAPES: tuple[Shape, ...] = (
    # chat_sessions.documents[].doc_id
    Shape(DOCS, "str", True, lambda r: Placement({"documents": [{"doc_id": r.doc}]})),
    Shape(DOCS, "ObjectId", True, lambda r: Placement({"documents": [{"doc_id": r.doc_oid}]})),
    Shape(DOCS, "lone object, str", True, lambda r: Placement({"documents": {"doc_id": r.doc}})),
    Shape(
        DOCS,
        "lone object, ObjectId",
        True,
        lambda r: Placement({"documents": {"doc_id": r.doc_oid}}),
    ),
    Shape(
        DOCS,
        "str among malformed entries",
        True,
        lambda r: Placement(
            {"documents": [None, 42, {"doc_id": None}, {"filename": "x.pdf"}, {"doc_id": r.doc}]}
        ),
    ),
    Shape(
        DOCS,
        "nested: doc_id is a list",
        True,
        lambda r: Placement({"documents": [{"doc_id": [r.doc]}]}),
    ),
    Shape(DOCS, "doc_id null", False, _s(documents=[{"doc_id": None, "filename": "a.pdf"}])),
    Shape(DOCS, "doc_id missing", False, _s(documents=[{"filename": "a.pdf"}])),
    Shape(DOCS, "doc_id number", False, _s(documents=[{"doc_id": 42}])),
    Shape(DOCS, "documents null", False, _s(documents=None)),
    Shape(DOCS, "documents missing", False, _s(documents=MISSING)),
    Shape(DOCS, "documents number", False, _s(documents=7)),
    # chat_sessions.documents as a plain list of ids
    Shape(PLAIN, "str", True, lambda r: Placement({"documents": [r.doc]})),
    Shape(PLAIN, "ObjectId", True, lambda r: Placement({"documents": [r.doc_oid]})),
    Shape(PLAIN, "lone str", True, lambda r: Placement({"documents": r.doc})),
    Shape(PLAIN, "lone ObjectId", True, lambda r: Placement({"documents": r.doc_oid})),
    Shape(
        PLAIN,
        "str mixed with objects",
        True,
        lambda r: Placement({"documents": [{"doc_id": "someone-else"}, r.doc]}),
    ),
    Shape(PLAIN, "nested list", True, lambda r: Placement({"documents": [[r.doc]]})),
    Shape(PLAIN, "null item", False, _s(documents=[None])),
    Shape(PLAIN, "number item", False, _s(documents=[42])),
    # chat_sessions.attached_file_ids
    Shape(ATTACHED, "str", True, lambda r: Placement({"attached_file_ids": [r.doc]})),
    Shape(ATTACHED, "ObjectId", True, lambda r: Placement({"attached_file_ids": [r.doc_oid]})),
    Shape(ATTACHED, "lone str", True, lambda r: Placement({"attached_file_ids": r.doc})),
    Shape(ATTACHED, "lone ObjectId", True, lambda r: Placement({"attached_file_ids": r.doc_oid})),
    Shape(ATTACHED, "nested list", True, lambda r: Placement({"attached_file_ids": [[r.doc]]})),
    Shape(ATTACHED, "null item", False, _s(attached_file_ids=[None])),
    Shape(ATTACHED, "null", False, _s(attached_file_ids=None)),
    Shape(ATTACHED, "missing", False, _s(attached_file_ids=MISSING)),
    Shape(ATTACHED, "number item", False, _s(attached_file_ids=[42])),
    Shape(ATTACHED, "number", False, _s(attached_file_ids=42)),
    # messages.file_ids, through the message's chat_id
    Shape(MESSAGES, "session _id str, chat_id str", True, lambda r: _msg(r, [r.doc])),
    Shape(
        MESSAGES,
        "session _id str, chat_id ObjectId",
        True,
        lambda r: _msg(r, [r.doc], r.session_oid),
    ),
    Shape(
        MESSAGES,
        "session _id ObjectId, chat_id str",
        True,
        lambda r: _msg(r, [r.doc]),
        session_oid=True,
    ),
    Shape(
        MESSAGES,
        "session _id ObjectId, chat_id ObjectId",
        True,
        lambda r: _msg(r, [r.doc], r.session_oid),
        session_oid=True,
    ),
    Shape(MESSAGES, "file_ids ObjectId", True, lambda r: _msg(r, [r.doc_oid])),
    Shape(MESSAGES, "file_ids lone str", True, lambda r: _msg(r, r.doc)),
    Shape(MESSAGES, "file_ids lone ObjectId", True, lambda r: _msg(r, r.doc_oid)),
    Shape(MESSAGES, "file_ids nested list", True, lambda r: _msg(r, [[r.doc]])),
    Shape(MESSAGES, "file_ids null item", False, lambda r: _msg(r, [None])),
    Shape(MESSAGES, "file_ids null", False, lambda r: _msg(r, None)),
    Shape(MESSAGES, "file_ids missing", False, lambda r: _msg(r, MISSING)),
    Shape(MESSAGES, "file_ids number", False, lambda r: _msg(r, [42])),
    Shape(MESSAGES, "chat_id missing", False, lambda r: _msg(r, [r.doc], MISSING)),
    Shape(
        MESSAGES,
        "chat_id null",
        False,
        lambda r: Placement(messages=({"chat_id": None, "file_ids": [r.doc]},)),
    ),
    Shape(MESSAGES, "chat_id number", False, lambda r: _msg(r, [r.doc], 42)),
    # documents.conversation_id naming the session
    Shape(
        CONVERSATION,
        "str, session _id str",
        True,
        lambda r: Placement(document={"conversation_id": r.session}),
    ),
    Shape(
        CONVERSATION,
        "ObjectId, session _id str",
        True,
        lambda r: Placement(document={"conversation_id": r.session_oid}),
    ),
    Shape(
        CONVERSATION,
        "str, session _id ObjectId",
        True,
        lambda r: Placement(document={"conversation_id": r.session}),
        session_oid=True,
    ),
    Shape(
        CONVERSATION,
        "ObjectId, session _id ObjectId",
        True,
        lambda r: Placement(document={"conversation_id": r.session_oid}),
        session_oid=True,
    ),
    Shape(CONVERSATION, "null", False, lambda r: Placement(document={"conversation_id": None})),
    Shape(
        CONVERSATION, "missing", False, lambda r: Placement(document={"conversation_id": MISSING})
    ),
    Shape(
        CONVERSATION,
        "number",
        False,
        lambda r: Placement(document={"conversation_id": 42}),
        doc_malformed=True,
    ),
    Shape(
        CONVERSATION,
        "nested list",
        True,
        lambda r: Placement(document={"conversation_id": [r.session]}),
        doc_malformed=True,
    ),
)


def shapes_of(path: str) -> list[Shape]:
    return [s for s in SHAPES if s.path == path]


# ------------------------------------------------------------------------------ seeding


@dataclass
class Doc:
    """What one seeded document owns across the four stores."""

    hex: str
    id_value: Any  # the raw _id (ObjectId or str)
    key: str | None
    size: int
    points: list[str] = field(default_factory=list)
    cache_key: bytes | None = None


class Seeder:
    """Writes raw Mongo-shaped records, points, objects and keys with unique deterministic ids."""

    def __init__(self, manager: LifecycleManager, clock: FakeClock, base: int = 0) -> None:
        self.manager = manager
        self.stores = manager.stores
        self.clock = clock
        self._n = base

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def setup(self) -> Seeder:
        self.stores.metadata().ensure_indexes()
        self.stores.vectors().ensure_collection()
        self.stores.objects().ensure_bucket()
        return self

    def hex(self) -> str:
        self._n += 1
        return f"{0x5EED0000 + self._n:024x}"

    def uid(self) -> str:
        self._n += 1
        return str(uuid.UUID(int=0xC0FFEE << 64 | self._n))

    def put(self, key: str, body: bytes) -> None:
        self.stores.objects().put(key, io.BytesIO(body), len(body), "application/pdf")

    def orphan(self, size: int = 60) -> str:
        key = f"{self.uid()}/huerfano.pdf"
        self.put(key, b"o" * size)
        return key

    def document(
        self,
        *,
        age: timedelta = OLD,
        status: str = "ready",
        user: str = "user-1",
        fields: dict[str, Any] | None = None,
        upload_points: int = 2,
        cache: bool = True,
        cache_ttl: int | None = 3600,
        cache_idle: int = 0,
        body: bytes | None = None,
        hex_id: str | None = None,
        id_as_str: bool = False,
        key: str | None = None,
        put_object: bool = True,
    ) -> Doc:
        """A `documents` record with its object, `upload_{id}` points and text cache key."""
        doc_hex = hex_id or self.hex()
        id_value: Any = doc_hex if id_as_str else ObjectId(doc_hex)
        obj_key = key or f"{self.uid()}/{doc_hex}.pdf"
        data = body if body is not None else f"contenido {doc_hex} {self.uid()} ".encode() * 40
        if put_object:
            self.put(obj_key, data)
        touched = naive(self.now - age)
        record = {
            "_id": id_value,
            "user_id": user,
            "filename": f"{doc_hex}.pdf",
            "content_type": "application/pdf",
            "size_bytes": len(data),
            "minio_bucket": self.stores.objects().bucket,
            "minio_key": obj_key,
            "status": status,
            "conversation_id": None,
            "created_at": touched,
            "updated_at": touched,
            "metadata": {"file_hash": hashlib.sha256(data).hexdigest()},
        }
        metadata_seeder(self.stores.metadata()).insert_raw(
            "documents", [apply(record, fields or {})]
        )
        doc = Doc(doc_hex, id_value, obj_key, len(data))
        if upload_points:
            doc.points += self.points(doc_hex, f"upload_{doc_hex}", age=age, count=upload_points)
        if cache:
            doc.cache_key = f"doc:text:{doc_hex}".encode()
            self.cache(doc.cache_key, ttl=cache_ttl, idle=cache_idle)
        return doc

    def points(
        self,
        document_id: Any,
        session_id: Any,
        *,
        age: timedelta | None = None,
        created_at: Any = MISSING,
        count: int = 1,
    ) -> list[str]:
        """Points with a raw payload; `age` sets created_at to now - age as Unix seconds."""
        if age is not None:
            created_at = (self.now - age).timestamp()
        ids = [self.uid() for _ in range(count)]
        base = apply(
            {"chunk_id": 0, "text": "fragmento", "page": 1, "metadata": {}},
            {"session_id": session_id, "document_id": document_id, "created_at": created_at},
        )
        vector_seeder(self.stores.vectors()).upsert(
            [
                VectorPoint(pid, [0.01 * (i + 1)] * DIM, apply(base, {"chunk_id": i}))
                for i, pid in enumerate(ids)
            ]
        )
        return ids

    def session(
        self,
        *,
        idle: timedelta,
        hex_id: str | None = None,
        as_oid: bool = False,
        fields: dict[str, Any] | None = None,
    ) -> str:
        """A chat session (its _id a 24-hex str, or that ObjectId); returns the hex."""
        sid = hex_id or self.hex()
        updated = naive(self.now - idle)
        record: dict[str, Any] = {
            "_id": ObjectId(sid) if as_oid else sid,
            "user_id": "user-1",
            "created_at": updated - HOUR,
            "updated_at": updated,
            "documents": [],
            "attached_file_ids": [],
        }
        metadata_seeder(self.stores.metadata()).insert_raw(
            "chat_sessions", [apply(record, fields or {})]
        )
        return sid

    def message(self, fields: dict[str, Any]) -> None:
        record = {"_id": ObjectId(self.hex()), "created_at": naive(self.now)}
        metadata_seeder(self.stores.metadata()).insert_raw("messages", [apply(record, fields)])

    def cache(self, key: bytes, *, ttl: int | None, idle: int = 0) -> None:
        cache_seeder(self.stores.cache()).seed(
            [CacheSeed(key, b"texto extraido " * 20, ttl, idle_seconds=idle)]
        )


# ------------------------------------------------------------------------------ inventories


@dataclass(frozen=True)
class Inventory:
    """Every item of the four stores (small test data only), for exact before/after checks."""

    records: Counter[tuple[str, str | None]]  # (id, minio_key): same-hex ids stay apart
    record_state: frozenset[tuple[str, str | None, str | None, str | None]]
    objects: dict[str, int]  # key -> size as the store reports it
    points: frozenset[str]
    keys: frozenset[bytes]
    persistent_keys: frozenset[bytes]

    def counts(self) -> dict[str, int]:
        return {
            "redis": len(self.keys),
            "qdrant": len(self.points),
            "minio": len(self.objects),
            "mongodb": sum(self.records.values()),
        }

    def same(self, other: Inventory) -> bool:
        return (
            self.record_state == other.record_state
            and self.objects == other.objects
            and self.points == other.points
            and self.keys == other.keys
            and self.persistent_keys == other.persistent_keys
        )

    def has_record(self, doc_hex: str, key: str | None = None) -> bool:
        return any(i == doc_hex and (key is None or k == key) for i, k in self.records)


def inventory(manager: LifecycleManager) -> Inventory:
    stores = manager.stores
    docs = [d for batch in stores.metadata().iter_documents(500) for d in batch]
    redis = raw_client(manager)
    keys = frozenset(redis.scan_iter(count=1000))
    return Inventory(
        records=Counter((d.id, d.minio_key) for d in docs),
        record_state=frozenset(
            (
                d.id,
                d.minio_key,
                d.status,
                d.updated_at.isoformat() if d.updated_at else None,
            )
            for d in docs
        ),
        objects={o.key: o.size for o in stores.objects().iter_objects()},
        points=frozenset(p.point_id for batch in stores.vectors().iter_points(500) for p in batch),
        keys=keys,
        persistent_keys=frozenset(k for k in keys if redis.ttl(k) == -1),
    )


def disappeared(before: Inventory, after: Inventory) -> dict[str, int]:
    """Items present before and gone after, per store (new items do not offset them)."""
    return {
        "redis": len(before.keys - after.keys),
        "qdrant": len(before.points - after.points),
        "minio": len(set(before.objects) - set(after.objects)),
        "mongodb": sum((before.records - after.records).values()),
    }


def gone_bytes(before: Inventory, after: Inventory) -> int:
    return sum(size for key, size in before.objects.items() if key not in after.objects)


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def doc_state(inv: Inventory, doc: Doc) -> dict[str, bool]:
    """Which of a document's items are present (points: all of them / any of them)."""
    state = {
        "record": inv.has_record(doc.hex, doc.key),
        "all points": all(p in inv.points for p in doc.points),
        "any point": any(p in inv.points for p in doc.points),
    }
    if doc.key is not None:
        state["object"] = doc.key in inv.objects
    if doc.cache_key is not None:
        state["cache"] = doc.cache_key in inv.keys
    return state


def kept_whole(inv: Inventory, doc: Doc) -> bool:
    """Record, object, every point and the cache key are all there."""
    return all(v for k, v in doc_state(inv, doc).items() if k != "any point")


def gone_whole(inv: Inventory, doc: Doc) -> bool:
    """Record, object, every point and the cache key are all gone."""
    return not any(v for k, v in doc_state(inv, doc).items() if k != "all points")


def raw_client(manager: LifecycleManager) -> Any:
    """The redis client behind the cache adapter."""
    return manager.stores.cache()._client  # type: ignore[attr-defined]


def audit_of(manager: LifecycleManager, report: CleanupReport) -> list[dict[str, Any]]:
    """The audit lines one run wrote."""
    clock = manager.clock
    path = manager.settings.audit_path / f"audit-{clock.now():%Y%m%d}.jsonl"
    return [line for line in read_audit(path) if line.get("run_id") == report.run_id]


# ------------------------------------------------------------------------------ store wiring


def with_vectors(manager: LifecycleManager, path: str) -> LifecycleManager:
    """The same stores, with Qdrant deletes forced onto one path: "scan" (local scan, the
    local-mode default) or "filter" (server-side delete-by-filter, as against a server)."""
    inner = cast(QdrantVectorStore, manager.stores.vectors())
    adapter = QdrantVectorStore(
        inner._client,
        manager.settings.qdrant_collection,
        manager.settings.qdrant_vector_size,
        scan_deletes=path == "scan",
    )
    s = manager.stores
    stores = Stores(s.cache, lambda: adapter, s.objects, s.metadata, owned=False)
    return LifecycleManager(manager.settings, stores, manager.clock)


class _Serialized:
    """A qdrant client whose calls run one at a time. qdrant-client's local engine is not
    thread-safe (its own SQLite persistence fails when two threads write); a server answers
    each request atomically, which this lock stands for."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return call


def with_serialized_qdrant(manager: LifecycleManager) -> LifecycleManager:
    """The same stores, Qdrant client calls serialized (for runs in several threads)."""
    inner = cast(QdrantVectorStore, manager.stores.vectors())
    adapter = QdrantVectorStore(
        cast(Any, _Serialized(inner._client)),
        manager.settings.qdrant_collection,
        manager.settings.qdrant_vector_size,
        scan_deletes=inner.scan_deletes,
    )
    s = manager.stores
    stores = Stores(s.cache, lambda: adapter, s.objects, s.metadata, owned=False)
    return LifecycleManager(manager.settings, stores, manager.clock)


Hook = Callable[[str, str, str, Any], None]
"""hook(store, method, phase, value): phase "call" before a call (value = args), "item" for each
item a returned generator yields, "end" once it is exhausted."""


def is_deletion(method: str) -> bool:
    return any(word in method for word in ("delete", "unlink", "remove"))


class _Hooked:
    """Proxy over one adapter that calls the hook around every method call."""

    def __init__(self, inner: Any, store: str, hook: Hook) -> None:
        self._inner = inner
        self._store = store
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._hook(self._store, name, "call", args)
            result = attr(*args, **kwargs)
            if inspect.isgenerator(result):
                return self._watch(name, result)
            return result

        return call

    def _watch(self, name: str, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            self._hook(self._store, name, "item", item)
            yield item
        self._hook(self._store, name, "end", None)


def hooked(manager: LifecycleManager, hook: Hook) -> LifecycleManager:
    """A manager over the same stores whose adapter calls go through the hook."""
    s = manager.stores
    stores = Stores(
        lambda: cast(Any, _Hooked(s.cache(), "cache", hook)),
        lambda: cast(Any, _Hooked(s.vectors(), "vectors", hook)),
        lambda: cast(Any, _Hooked(s.objects(), "objects", hook)),
        lambda: cast(Any, _Hooked(s.metadata(), "metadata", hook)),
        owned=False,
    )
    return LifecycleManager(manager.settings, stores, manager.clock)


class Once:
    """Runs an action the first time a condition holds (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fired: list[str] = []

    def first(self, label: str) -> bool:
        with self._lock:
            if self.fired:
                return False
            self.fired.append(label)
            return True
