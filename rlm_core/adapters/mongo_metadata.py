"""MetadataStore over plain pymongo: the RAG app's documents, chat_sessions and messages."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from itertools import islice
from typing import Any, TypeVar

import bson
import pymongo
from bson import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, ExecutionTimeout, OperationFailure

from rlm_core.clock import to_utc
from rlm_core.ports import (
    DocumentRecord,
    DuplicateDocumentError,
    MetadataStats,
    NewDocument,
    StoreError,
)

IN_BATCH = 1000
# Object keys per reference query: the orphan sweep reads references for 10 listing pages at once.
KEY_BATCH = 10_000
SIZE_SAMPLE = 10_000
LOGICAL_COLLECTIONS = ("documents", "chat_sessions", "messages")

Raw = dict[str, Any]
_T = TypeVar("_T")

PROJECTION: dict[str, int] = {
    "user_id": 1,
    "status": 1,
    "created_at": 1,
    "updated_at": 1,
    "minio_bucket": 1,
    "minio_key": 1,
    "size_bytes": 1,
    "conversation_id": 1,
    "metadata.file_hash": 1,
}

# (field, expected type, required). Missing optional fields read as None; policy decides.
_FIELDS: tuple[tuple[str, type, bool], ...] = (
    ("user_id", str, True),
    ("status", str, False),
    ("created_at", datetime, True),
    ("updated_at", datetime, False),
    ("minio_bucket", str, False),
    ("minio_key", str, False),
    ("size_bytes", int, False),
    ("conversation_id", str, False),
)


def connect_mongo(url: str, database: str, timeout: float = 10.0) -> Database[Raw]:
    """A database handle whose server selection, connects and socket reads all time out."""
    millis = int(timeout * 1000)
    client: pymongo.MongoClient[Raw] = pymongo.MongoClient(
        url,
        serverSelectionTimeoutMS=millis,
        connectTimeoutMS=millis,
        socketTimeoutMS=millis,
        tz_aware=False,
        appname="rlm",
    )
    return client[database]


def document_record(raw: Mapping[str, Any]) -> DocumentRecord:
    """The lifecycle view of a raw `documents` record; never raises, names what is wrong."""
    problems: list[str] = []
    doc_id = _id_text(raw.get("_id"), problems)
    values = {name: _typed(raw, name, kind, required, problems) for name, kind, required in _FIELDS}
    file_hash = _file_hash(raw.get("metadata"), problems)
    created, updated = values["created_at"], values["updated_at"]
    return DocumentRecord(
        id=doc_id,
        user_id=values["user_id"],
        status=values["status"],
        created_at=to_utc(created) if created is not None else None,
        updated_at=to_utc(updated) if updated is not None else None,
        minio_bucket=values["minio_bucket"],
        minio_key=values["minio_key"],
        size_bytes=values["size_bytes"],
        conversation_id=values["conversation_id"],
        file_hash=file_hash,
        problem="; ".join(problems) or None,
    )


def _id_text(value: Any, problems: list[str]) -> str:
    if isinstance(value, ObjectId | str):
        return str(value)
    problems.append(f"_id is {_type_name(value)}, expected ObjectId or str")
    return "" if value is None else str(value)


def _typed(
    raw: Mapping[str, Any], name: str, kind: type, required: bool, problems: list[str]
) -> Any:
    value = raw.get(name)
    if value is None:
        if required:
            problems.append(f"{name} is missing")
        return None
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # drivers of other languages write whole numbers as doubles
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    problems.append(f"{name} is {_type_name(value)}, expected {kind.__name__}")
    return None


def _file_hash(metadata: Any, problems: list[str]) -> str | None:
    # A non-object metadata holds no hash; the projection on metadata.file_hash drops it anyway.
    if not isinstance(metadata, Mapping):
        return None
    value = metadata.get("file_hash")
    if value is None or isinstance(value, str):
        return value
    problems.append(f"metadata.file_hash is {_type_name(value)}, expected str")
    return None


def _type_name(value: Any) -> str:
    return "missing" if value is None else type(value).__name__


def id_candidates(doc_ids: Iterable[str]) -> list[Any]:
    """Each id as an ObjectId where it is one, and as the raw string (messy data has both)."""
    out: list[Any] = []
    for doc_id in doc_ids:
        if ObjectId.is_valid(doc_id):
            out.append(ObjectId(doc_id))
        out.append(doc_id)
    return out


def new_document_body(doc: NewDocument) -> Raw:
    """The `documents` record ingest writes, shaped as the RAG app writes it (no _id yet)."""
    created = naive_utc(doc.created_at)
    return {
        "user_id": doc.user_id,
        "filename": doc.filename,
        "content_type": doc.content_type,
        "size_bytes": doc.size_bytes,
        "minio_bucket": doc.minio_bucket,
        "minio_key": doc.minio_key,
        "status": doc.status,
        "conversation_id": None,
        "created_at": created,
        "updated_at": created,
        "metadata": {"file_hash": doc.file_hash},
    }


def naive_utc(value: datetime) -> datetime:
    """The naive UTC datetime pymongo stores and returns."""
    return to_utc(value).replace(tzinfo=None)


def chunks(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    """Consecutive lists of at most `size` items."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


class MongoMetadataStore:
    """The three collections of the RAG app's database, read and written with plain pymongo."""

    def __init__(
        self,
        db: Database[Raw],
        documents: str = "documents",
        sessions: str = "chat_sessions",
        messages: str = "messages",
        default_bucket: str = "documents",
        owns_client: bool = False,
    ) -> None:
        self._db = db
        self._owns_client = owns_client
        self._documents: Collection[Raw] = db[documents]
        self._sessions: Collection[Raw] = db[sessions]
        self._messages: Collection[Raw] = db[messages]
        self._by_logical = dict(
            zip(LOGICAL_COLLECTIONS, (self._documents, self._sessions, self._messages), strict=True)
        )
        self._default_bucket = default_bucket

    def ensure_indexes(self) -> None:
        """Create the unique dedup index and the lookup indexes (idempotent)."""
        with _guard("create_index"):
            self._documents.create_index(
                [("user_id", 1), ("metadata.file_hash", 1)],
                unique=True,
                partialFilterExpression={"metadata.file_hash": {"$type": "string"}},
                name="rlm_user_file_hash",
            )
            for collection, field in (
                (self._documents, "minio_key"),
                (self._documents, "conversation_id"),
                (self._documents, "created_at"),
                (self._sessions, "updated_at"),
                (self._messages, "chat_id"),
                (self._messages, "file_ids"),
            ):
                collection.create_index(field)

    def insert_document(self, doc: NewDocument) -> str:
        """Insert a new document; the unique index turns a same-user same-hash race into one."""
        body = new_document_body(doc)
        with _guard("insert_document"):
            try:
                result = self._documents.insert_one(body)
            except DuplicateKeyError as exc:
                raise DuplicateDocumentError(
                    f"user {doc.user_id!r} already holds a document with hash {doc.file_hash}"
                ) from exc
        return str(result.inserted_id)

    def find_by_hash(self, user_id: str, file_hash: str) -> DocumentRecord | None:
        """The user's document with this hash, if any."""
        with _guard("find_by_hash"):
            raw = self._documents.find_one(
                {"user_id": user_id, "metadata.file_hash": file_hash}, PROJECTION
            )
        return None if raw is None else document_record(raw)

    def touch_document(self, doc_id: str, now: datetime) -> None:
        """Set updated_at = now."""
        with _guard("touch_document"):
            self._documents.update_one(
                {"_id": {"$in": id_candidates([doc_id])}},
                {"$set": {"updated_at": naive_utc(now)}},
            )

    def relink_document(self, doc_id: str, minio_key: str, size_bytes: int, now: datetime) -> None:
        """Point the document at a new object, mark it processing and touch it."""
        fields = {
            "minio_key": minio_key,
            "size_bytes": size_bytes,
            "status": "processing",
            "updated_at": naive_utc(now),
        }
        with _guard("relink_document"):
            self._documents.update_one({"_id": {"$in": id_candidates([doc_id])}}, {"$set": fields})

    def iter_documents(self, batch_size: int) -> Iterator[list[DocumentRecord]]:
        """Stream all documents in _id order, `batch_size` per list."""
        with _guard("iter_documents"):
            cursor = self._documents.find({}, PROJECTION).sort("_id", 1).batch_size(batch_size)
            for batch in chunks(cursor, batch_size):
                yield [document_record(raw) for raw in batch]

    def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocumentRecord]:
        """Documents by id; missing ids are absent."""
        wanted = set(doc_ids)
        found: dict[str, DocumentRecord] = {}
        with _guard("get_documents"):
            for batch in chunks(wanted, IN_BATCH):
                query = {"_id": {"$in": id_candidates(batch)}}
                for raw in self._documents.find(query, PROJECTION):
                    record = document_record(raw)
                    if record.id in wanted:
                        found[record.id] = record
        return found

    def active_references(self, doc_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of doc_ids referenced by an active session along any of the four paths."""
        since = naive_utc(active_since)
        found: set[str] = set()
        with _guard("active_references"):
            for batch in chunks(set(doc_ids), IN_BATCH):
                found |= self._session_lists_referencing(batch, since)
                found |= self._messages_referencing(batch, active_since)
                found |= self._conversations_referencing(batch, active_since)
        return found

    def active_sessions(self, session_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of session_ids whose updated_at >= active_since, or is not a date at all (a
        session whose activity cannot be read is taken as active: it protects, never dooms)."""
        since = naive_utc(active_since)
        found: set[str] = set()
        with _guard("active_sessions"):
            for batch in chunks(set(session_ids), IN_BATCH):
                query = {"_id": {"$in": batch}, **_active_session(since)}
                found.update(str(raw["_id"]) for raw in self._sessions.find(query, {"_id": 1}))
        return found

    def unreadable_sessions(self) -> int:
        """How many chat sessions have an updated_at that is missing or not a date."""
        with _guard("unreadable_sessions"):
            return self._sessions.count_documents({"updated_at": {"$not": {"$type": "date"}}})

    def referenced_object_keys(
        self, bucket: str, keys: Sequence[str], excluding: Sequence[str] = ()
    ) -> set[str]:
        """Those of keys some document names in this bucket (no bucket = the default bucket),
        leaving out the documents whose ids are in `excluding`."""
        buckets: list[str | None] = [bucket]
        if bucket == self._default_bucket:
            buckets.append(None)  # matches a missing or null minio_bucket
        found: set[str] = set()
        with _guard("referenced_object_keys"):
            for batch in chunks(set(keys), KEY_BATCH):
                query: Raw = {"minio_key": {"$in": batch}, "minio_bucket": {"$in": buckets}}
                if excluding:
                    query["_id"] = {"$nin": id_candidates(excluding)}
                for raw in self._documents.find(query, {"minio_key": 1}):
                    found.add(raw["minio_key"])
        return found

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete documents by id; return how many went."""
        deleted = 0
        with _guard("delete_documents"):
            for batch in chunks(set(doc_ids), IN_BATCH):
                result = self._documents.delete_many({"_id": {"$in": id_candidates(batch)}})
                deleted += result.deleted_count
        return deleted

    def stats(self) -> MetadataStats:
        """Document count, measured size and oldest created_at."""
        with _guard("stats"):
            total = self._documents.count_documents({})
            size, sampled = self._size(total)
            oldest = list(
                self._documents.find({"created_at": {"$type": "date"}}, {"created_at": 1})
                .sort("created_at", 1)
                .limit(1)
            )
        oldest_at = to_utc(oldest[0]["created_at"]) if oldest else None
        return MetadataStats(total, size, oldest_at, sampled)

    def insert_raw(self, collection: str, docs: Iterable[dict[str, Any]]) -> None:
        """Write raw records to `documents`, `chat_sessions` or `messages` (by logical name)."""
        if collection not in self._by_logical:
            raise ValueError(f"collection {collection!r} is not one of {LOGICAL_COLLECTIONS}")
        with _guard("insert_raw"):
            for batch in chunks(docs, IN_BATCH):
                # Copies: insert_many would add _id to the caller's dicts.
                self._by_logical[collection].insert_many([dict(d) for d in batch])

    def close(self) -> None:
        """Close the client if this store opened it; a caller's client stays open."""
        if self._owns_client:
            self._db.client.close()

    def _session_lists_referencing(self, batch: list[str], since: datetime) -> set[str]:
        wanted = set(batch)
        query = {
            "$and": [
                _active_session(since),
                {
                    "$or": [
                        {"documents.doc_id": {"$in": batch}},
                        {"attached_file_ids": {"$in": batch}},
                    ]
                },
            ]
        }
        found: set[str] = set()
        # Whole entries: mongomock's projection of documents.doc_id crashes on non-object items.
        for raw in self._sessions.find(query, {"documents": 1, "attached_file_ids": 1}):
            found.update(wanted.intersection(_session_refs(raw)))
        return found

    def _messages_referencing(self, batch: list[str], active_since: datetime) -> set[str]:
        wanted = set(batch)
        by_chat: dict[str, set[str]] = {}
        query = {"file_ids": {"$in": batch}, "chat_id": {"$type": "string"}}
        for raw in self._messages.find(query, {"file_ids": 1, "chat_id": 1}):
            refs = wanted.intersection(_strings(raw.get("file_ids")))
            by_chat.setdefault(raw["chat_id"], set()).update(refs)
        active = self.active_sessions(list(by_chat), active_since)
        return {doc_id for chat in active for doc_id in by_chat[chat]}

    def _conversations_referencing(self, batch: list[str], active_since: datetime) -> set[str]:
        by_session: dict[str, set[str]] = {}
        query = {"_id": {"$in": id_candidates(batch)}, "conversation_id": {"$type": "string"}}
        for raw in self._documents.find(query, {"conversation_id": 1}):
            by_session.setdefault(raw["conversation_id"], set()).add(str(raw["_id"]))
        active = self.active_sessions(list(by_session), active_since)
        return {doc_id for session in active for doc_id in by_session[session]}

    def _size(self, total: int) -> tuple[int, bool]:
        """collStats data + index size; else BSON bytes, summed or sampled and extrapolated."""
        try:
            stats = self._db.command({"collStats": self._documents.name})
            return int(stats.get("size", 0)) + int(stats.get("totalIndexSize", 0)), False
        except (OperationFailure, NotImplementedError):
            pass  # no collStats privilege, or mongomock
        if total <= SIZE_SAMPLE:
            return sum(len(bson.encode(raw)) for raw in self._documents.find({})), False
        sample = self._documents.aggregate([{"$sample": {"size": SIZE_SAMPLE}}])
        sizes = [len(bson.encode(raw)) for raw in sample]
        return int(sum(sizes) / max(len(sizes), 1) * total), True


def _active_session(since: datetime) -> Raw:
    # updated_at missing, null or of another type (a string, say) counts as active.
    return {"$or": [{"updated_at": {"$gte": since}}, {"updated_at": {"$not": {"$type": "date"}}}]}


def _session_refs(raw: Mapping[str, Any]) -> set[str]:
    """Document ids a session names in documents[].doc_id and attached_file_ids."""
    entries = raw.get("documents")
    if isinstance(entries, Mapping):
        entries = [entries]  # Mongo's dotted path matches a lone embedded document too
    refs = _strings(raw.get("attached_file_ids"))
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, Mapping):
                refs |= _strings(entry.get("doc_id"))
    return refs


def _strings(value: Any) -> set[str]:
    """The str items of a list, or a lone str (Mongo's $in matches both)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()


@contextmanager
def _guard(operation: str) -> Iterator[None]:
    """Turn connection loss and timeouts into StoreError, which callers retry."""
    try:
        yield
    except (ConnectionFailure, ExecutionTimeout) as exc:
        raise StoreError(f"MongoDB {operation} failed: {type(exc).__name__}: {exc}") from exc
