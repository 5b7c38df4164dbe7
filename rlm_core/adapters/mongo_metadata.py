"""MetadataStore over plain pymongo: the RAG app's documents, chat_sessions and messages."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import bson
import pymongo
from bson import ObjectId
from pymongo import ReadPreference
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, ExecutionTimeout, OperationFailure

from rlm_core.adapters.records import (
    CLAIM_FIELD,
    IN_BATCH,
    KEY_BATCH,
    LOGICAL_COLLECTIONS,
    Raw,
    document_record,
    id_text,
    message_record,
    naive_utc,
    new_document_body,
    session_record,
)
from rlm_core.batching import chunked
from rlm_core.clock import to_utc
from rlm_core.ports import (
    DocumentRecord,
    DuplicateDocumentError,
    MessageRecord,
    MetadataStats,
    NewDocument,
    ReferencesUnknownError,
    SessionRecord,
    StoreError,
    Touch,
)

SIZE_SAMPLE = 10_000

# rlm's own collection of per-store leases: two cleanups of one store never run at once.
LOCKS_COLLECTION = "rlm_locks"

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
    CLAIM_FIELD: 1,
}


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


def exact_id(doc: DocumentRecord) -> Any:
    """The record's `_id` as stored: an ObjectId, or the string."""
    return ObjectId(doc.id) if doc.oid else doc.id


def as_read(doc: DocumentRecord) -> Raw:
    """A filter matching the record only while it is exactly as it was read: same `_id` form,
    updated_at, status, minio_key and claim (a dedup touch or relink changes one of them)."""
    updated = naive_utc(doc.updated_at) if doc.updated_at is not None else None
    return {
        "_id": exact_id(doc),
        "updated_at": updated,
        "status": doc.status,
        "minio_key": doc.minio_key,
        CLAIM_FIELD: doc.claim,
    }


def _exact(record_id: str, oid: bool) -> Any:
    return ObjectId(record_id) if oid else record_id


def id_candidates(doc_ids: Iterable[str]) -> list[Any]:
    """Each id as an ObjectId where it is one, and as the raw string (messy data has both)."""
    out: list[Any] = []
    for doc_id in doc_ids:
        if ObjectId.is_valid(doc_id):
            out.append(ObjectId(doc_id))
        out.append(doc_id)
    return out


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
        # References decide what gets deleted: read them from the primary, never from a
        # lagging secondary, whatever read preference MONGODB_URL asks for.
        db = db.with_options(read_preference=ReadPreference.PRIMARY)
        self._db = db
        self._owns_client = owns_client
        self._documents: Collection[Raw] = db[documents]
        self._sessions: Collection[Raw] = db[sessions]
        self._messages: Collection[Raw] = db[messages]
        self._by_logical = dict(
            zip(LOGICAL_COLLECTIONS, (self._documents, self._sessions, self._messages), strict=True)
        )
        self._default_bucket = default_bucket
        self._locks: Collection[Raw] = db[LOCKS_COLLECTION]
        self._reference_sources = (
            ("RLM_SESSIONS_COLLECTION", self._sessions),
            ("RLM_MESSAGES_COLLECTION", self._messages),
        )

    def ensure_indexes(self) -> None:
        """Create the unique dedup index and the lookup indexes (idempotent)."""
        with _guard("create_index"):
            self._documents.create_index(
                [("user_id", 1), ("metadata.file_hash", 1)],
                unique=True,
                partialFilterExpression={"metadata.file_hash": {"$type": "string"}},
                name="rlm_user_file_hash",
            )
            for field in ("minio_key", "conversation_id", "created_at", "user_id"):
                self._documents.create_index(field)
            # Only on collections that exist: creating an index would create a misnamed
            # sessions or messages collection, and an empty one would hide every reference.
            existing = set(self._db.list_collection_names())
            for collection, field in (
                (self._sessions, "updated_at"),
                (self._sessions, "user_id"),
                (self._messages, "chat_id"),
                (self._messages, "file_ids"),
            ):
                if collection.name in existing:
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

    def touch_document(self, doc: DocumentRecord, now: datetime) -> Touch:
        """Set updated_at = now unless a cleanup claimed the record."""
        with _guard("touch_document"):
            result = self._documents.update_one(
                {"_id": exact_id(doc), CLAIM_FIELD: None},
                {"$set": {"updated_at": naive_utc(now)}},
            )
            if result.matched_count:
                return Touch.TOUCHED
            exists = self._documents.find_one({"_id": exact_id(doc)}, {"_id": 1})
        return Touch.CLAIMED if exists is not None else Touch.GONE

    def relink_document(
        self, doc: DocumentRecord, minio_key: str, size_bytes: int, now: datetime, status: str
    ) -> bool:
        """Point the document at a new object, set its status, touch it, break any claim."""
        fields = {
            "minio_key": minio_key,
            "size_bytes": size_bytes,
            "status": status,
            "updated_at": naive_utc(now),
        }
        with _guard("relink_document"):
            result = self._documents.update_one(
                {"_id": exact_id(doc)}, {"$set": fields, "$unset": {CLAIM_FIELD: ""}}
            )
        return result.matched_count > 0

    def iter_documents(self, batch_size: int) -> Iterator[list[DocumentRecord]]:
        """Stream all documents in _id order, `batch_size` per list."""
        with _guard("iter_documents"):
            cursor = self._documents.find({}, PROJECTION).sort("_id", 1).batch_size(batch_size)
            for batch in chunked(cursor, batch_size):
                yield [document_record(raw) for raw in batch]

    def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocumentRecord]:
        """Documents by the string form of their id; missing ids are absent."""
        return {record.id: record for record in self.find_documents(doc_ids)}

    def find_documents(self, doc_ids: Sequence[str]) -> list[DocumentRecord]:
        """Every record whose `_id` (ObjectId or string) has one of these string forms."""
        wanted = set(doc_ids)
        found: list[DocumentRecord] = []
        with _guard("find_documents"):
            for batch in chunked(wanted, IN_BATCH):
                query = {"_id": {"$in": id_candidates(batch)}}
                for raw in self._documents.find(query, PROJECTION):
                    record = document_record(raw)
                    if record.id in wanted:
                        found.append(record)
        return found

    def document_identities(self, doc_ids: Sequence[str]) -> set[tuple[str, bool]]:
        """The exact `_id` of every record find_documents would return, projected to `_id`."""
        wanted = set(doc_ids)
        found: set[tuple[str, bool]] = set()
        with _guard("document_identities"):
            for batch in chunked(wanted, IN_BATCH):
                query = {"_id": {"$in": id_candidates(batch)}}
                for raw in self._documents.find(query, {"_id": 1}):
                    doc_id = raw.get("_id")
                    if str(doc_id) in wanted:
                        found.add((str(doc_id), isinstance(doc_id, ObjectId)))
        return found

    def check_references(self) -> None:
        """Refuse when documents exist but a reference collection is missing or unreadable."""
        with _guard("check_references"):
            if self._documents.find_one({}, {"_id": 1}) is None:
                return
            names = set(self._db.list_collection_names())
            for setting, collection in self._reference_sources:
                if collection.name not in names:
                    raise ReferencesUnknownError(
                        f"{setting}: collection {collection.name!r} does not exist in database "
                        f"{self._db.name!r} while {self._documents.name!r} holds records; "
                        "references cannot be read, so nothing is deleted "
                        "(allowed: the name of the existing collection)"
                    )
                try:
                    collection.find_one({}, {"_id": 1})
                except OperationFailure as exc:
                    raise ReferencesUnknownError(
                        f"{setting}: collection {collection.name!r} cannot be read "
                        f"({exc.code}: {exc}); references are unknown, so nothing is deleted"
                    ) from exc

    def claim_documents(self, docs: Sequence[DocumentRecord], run_id: str) -> list[DocumentRecord]:
        """Claim each record only if it is exactly as read; return those now claimed."""
        claimed: list[DocumentRecord] = []
        with _guard("claim_documents"):
            for batch in chunked(docs, IN_BATCH):
                self._documents.update_many(
                    {"$or": [as_read(d) for d in batch]}, {"$set": {CLAIM_FIELD: run_id}}
                )
                ours = [replace(d, claim=run_id) for d in batch]
                claimed.extend(self._matching(ours))
        return claimed

    def claimed(self, docs: Sequence[DocumentRecord], run_id: str) -> list[DocumentRecord]:
        """Those of docs still claimed by run_id and unchanged since read."""
        ours = [replace(d, claim=run_id) for d in docs]
        with _guard("claimed"):
            return [d for batch in chunked(ours, IN_BATCH) for d in self._matching(batch)]

    def release_claims(self, docs: Sequence[DocumentRecord], run_id: str) -> None:
        """Drop run_id's claim on these records."""
        with _guard("release_claims"):
            for batch in chunked(docs, IN_BATCH):
                self._documents.update_many(
                    {"_id": {"$in": [exact_id(d) for d in batch]}, CLAIM_FIELD: run_id},
                    {"$unset": {CLAIM_FIELD: ""}},
                )

    def active_references(self, doc_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of doc_ids referenced by an active session along any of the four paths."""
        since = naive_utc(active_since)
        found: set[str] = set()
        with _guard("active_references"):
            for batch in chunked(set(doc_ids), IN_BATCH):
                found |= self._session_lists_referencing(batch, since)
                found |= self._messages_referencing(batch, active_since)
                found |= self._conversations_referencing(batch, active_since)
        return found

    def active_sessions(self, session_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of session_ids (string forms; a session's `_id` may be an ObjectId) whose
        updated_at >= active_since, or is not a date at all (a session whose activity cannot be
        read is taken as active: it protects, never dooms)."""
        since = naive_utc(active_since)
        wanted = set(session_ids)
        found: set[str] = set()
        with _guard("active_sessions"):
            for batch in chunked(wanted, IN_BATCH):
                query = {"_id": {"$in": id_candidates(batch)}, **_active_session(since)}
                for raw in self._sessions.find(query, {"_id": 1}):
                    found.add(str(raw["_id"]))
        return found & wanted

    def unreadable_sessions(self) -> int:
        """How many chat sessions have an updated_at that is missing or not a date."""
        with _guard("unreadable_sessions"):
            return self._sessions.count_documents({"updated_at": {"$not": {"$type": "date"}}})

    def referenced_object_keys(
        self, bucket: str, keys: Sequence[str], excluding: Sequence[DocumentRecord] = ()
    ) -> set[str]:
        """Those of keys some document names in this bucket (no bucket = the default bucket),
        leaving out the documents whose ids are in `excluding`."""
        wanted = set(keys)
        found: set[str] = set()
        with _guard("referenced_object_keys"):
            for batch in chunked(wanted, KEY_BATCH):
                query: Raw = {"minio_key": {"$in": batch}, **_names_our_bucket(bucket)}
                if excluding:
                    query["_id"] = {"$nin": [exact_id(d) for d in excluding]}
                for raw in self._documents.find(query, {"minio_key": 1}):
                    found |= _strings(raw.get("minio_key")) & wanted
        return found

    def delete_documents(self, docs: Sequence[DocumentRecord], run_id: str) -> int:
        """Delete exactly these records, each only if still claimed by run_id and as read."""
        deleted = 0
        with _guard("delete_documents"):
            for batch in chunked(docs, IN_BATCH):
                ours = [replace(d, claim=run_id) for d in batch]
                result = self._documents.delete_many({"$or": [as_read(d) for d in ours]})
                deleted += result.deleted_count
        return deleted

    def documents_of_user(self, user_id: str) -> list[DocumentRecord]:
        """Every record whose user_id is exactly this string (the `user_id` index)."""
        with _guard("documents_of_user"):
            found = [
                document_record(r) for r in self._documents.find({"user_id": user_id}, PROJECTION)
            ]
        # A list holding the id matches the query too: it names no single owner.
        return [d for d in found if d.user_id == user_id]

    def sessions_of_user(self, user_id: str) -> list[SessionRecord]:
        """Every chat session whose user_id is exactly this string."""
        with _guard("sessions_of_user"):
            raws = list(self._sessions.find({"user_id": user_id}, {"user_id": 1}))
        return [s for s in map(session_record, raws) if s is not None and s.user_id == user_id]

    def find_sessions(self, session_ids: Sequence[str]) -> list[SessionRecord]:
        """Every session whose `_id` (ObjectId or string) has one of these string forms."""
        wanted = set(session_ids)
        found: list[SessionRecord] = []
        with _guard("find_sessions"):
            for batch in chunked(wanted, IN_BATCH):
                query = {"_id": {"$in": id_candidates(batch)}}
                found.extend(
                    filter(None, map(session_record, self._sessions.find(query, {"user_id": 1})))
                )
        return [s for s in found if s.id in wanted]

    def messages_of_sessions(self, session_ids: Sequence[str]) -> list[MessageRecord]:
        """Messages whose chat_id (a string or an ObjectId) names one of these sessions."""
        wanted = set(session_ids)
        found: list[MessageRecord] = []
        with _guard("messages_of_sessions"):
            for batch in chunked(wanted, IN_BATCH):
                query = {"chat_id": {"$in": id_candidates(batch)}}
                found.extend(
                    filter(None, map(message_record, self._messages.find(query, {"chat_id": 1})))
                )
        return [m for m in found if m.chat_id in wanted]

    def delete_messages(self, messages: Sequence[MessageRecord]) -> int:
        """Delete exactly these records, each only while its chat_id still names its session."""
        deleted = 0
        with _guard("delete_messages"):
            for batch in chunked(messages, IN_BATCH):
                clauses = [
                    {"_id": _exact(m.id, m.oid), "chat_id": {"$in": id_candidates([m.chat_id])}}
                    for m in batch
                ]
                deleted += self._messages.delete_many({"$or": clauses}).deleted_count
        return deleted

    def delete_sessions(self, sessions: Sequence[SessionRecord], user_id: str) -> int:
        """Delete exactly these records, each only while its user_id is still this user."""
        deleted = 0
        with _guard("delete_sessions"):
            for batch in chunked(sessions, IN_BATCH):
                query = {"_id": {"$in": [_exact(s.id, s.oid) for s in batch]}, "user_id": user_id}
                deleted += self._sessions.delete_many(query).deleted_count
        return deleted

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> str | None:
        """Take or renew the named lease in rlm's own `rlm_locks` collection."""
        body = {"holder": holder, "expires_at": naive_utc(now + ttl)}
        with _guard("acquire_lease"):
            try:
                self._locks.insert_one({"_id": name, **body})
                return None
            except DuplicateKeyError:
                pass
            free = {"$or": [{"holder": holder}, {"expires_at": {"$lt": naive_utc(now)}}]}
            if self._locks.update_one({"_id": name, **free}, {"$set": body}).matched_count:
                return None
            current = self._locks.find_one({"_id": name}) or {}
        return f"{current.get('holder')} until {current.get('expires_at')}"

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back if this holder has it."""
        with _guard("release_lease"):
            self._locks.delete_one({"_id": name, "holder": holder})

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
            for batch in chunked(docs, IN_BATCH):
                # Copies: insert_many would add _id to the caller's dicts.
                self._by_logical[collection].insert_many([dict(d) for d in batch])

    def close(self) -> None:
        """Close the client if this store opened it; a caller's client stays open."""
        if self._owns_client:
            self._db.client.close()

    def _matching(self, docs: list[DocumentRecord]) -> list[DocumentRecord]:
        """Those of docs whose record is still exactly as given."""
        if not docs:
            return []
        found = {
            (id_text(raw["_id"]), isinstance(raw["_id"], ObjectId))
            for raw in self._documents.find({"$or": [as_read(d) for d in docs]}, {"_id": 1})
        }
        return [d for d in docs if d.identity in found]

    def _session_lists_referencing(self, batch: list[str], since: datetime) -> set[str]:
        wanted = set(batch)
        # Every form a reference takes: the id as a string or an ObjectId, in documents[].doc_id,
        # in documents as a plain list of ids, or in attached_file_ids (a list or a lone value).
        forms = id_candidates(batch)
        query = {
            "$and": [
                _active_session(since),
                {
                    "$or": [
                        {"documents.doc_id": {"$in": forms}},
                        *_any_depth("documents", forms),
                        {"documents": {"$elemMatch": {"$elemMatch": {"doc_id": {"$in": forms}}}}},
                        *_any_depth("attached_file_ids", forms),
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
        query = {"$or": _any_depth("file_ids", id_candidates(batch))}
        for raw in self._messages.find(query, {"file_ids": 1, "chat_id": 1}):
            chat = id_text(raw.get("chat_id"))
            if chat is not None:
                refs = wanted.intersection(_strings(raw.get("file_ids")))
                by_chat.setdefault(chat, set()).update(refs)
        active = self.active_sessions(list(by_chat), active_since)
        return {doc_id for chat in active for doc_id in by_chat[chat]}

    def _conversations_referencing(self, batch: list[str], active_since: datetime) -> set[str]:
        by_session: dict[str, set[str]] = {}
        query = {"_id": {"$in": id_candidates(batch)}}
        for raw in self._documents.find(query, {"conversation_id": 1}):
            for session in _strings(raw.get("conversation_id")):
                by_session.setdefault(session, set()).add(str(raw["_id"]))
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


def _names_our_bucket(bucket: str) -> Raw:
    # SPEC 4.1 (5): a missing, empty or non-string minio_bucket names our bucket for protection.
    return {
        "$or": [
            {"minio_bucket": {"$in": [bucket, None, ""]}},
            {"minio_bucket": {"$not": {"$type": "string"}}},
            {"minio_bucket": {"$type": "array"}},  # $type tests an array's items, not the array
        ]
    }


def _any_depth(field: str, forms: list[Any]) -> list[Raw]:
    """Match a lone id, a list of ids, or ids in lists nested one or two deep (Mongo's own
    array matching descends one level only)."""
    return [
        {field: {"$in": forms}},
        {field: {"$elemMatch": {"$in": forms}}},
        {field: {"$elemMatch": {"$elemMatch": {"$in": forms}}}},
    ]


def _session_refs(raw: Mapping[str, Any]) -> set[str]:
    """Document ids a session names in documents (entries with doc_id, or plain ids) and
    attached_file_ids, each as a string or an ObjectId, alone or in nested lists."""
    return _strings(raw.get("documents")) | _strings(raw.get("attached_file_ids"))


def _strings(value: Any, depth: int = 0) -> set[str]:
    """The ids a value names: a str or an ObjectId, alone, in (nested) lists, or as the doc_id
    of an embedded document."""
    if depth > 8:
        return set()
    if isinstance(value, list):
        return {text for v in value for text in _strings(v, depth + 1)}
    if isinstance(value, Mapping):
        return _strings(value.get("doc_id"), depth + 1)
    text = id_text(value)
    return {text} if text is not None else set()


@contextmanager
def _guard(operation: str) -> Iterator[None]:
    """Turn connection loss and timeouts into StoreError, which callers retry."""
    try:
        yield
    except (ConnectionFailure, ExecutionTimeout) as exc:
        raise StoreError(f"MongoDB {operation} failed: {type(exc).__name__}: {exc}") from exc
