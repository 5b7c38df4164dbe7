"""MetadataStore in memory: Mongo-shaped records by exact `_id`, and the adapter over them.

Records are kept as pymongo returns them (naive UTC datetimes at BSON's millisecond precision,
ObjectIds as ObjectIds), and read through the Mongo adapter's own `document_record`, so the
lifecycle sees the same DocumentRecord from the fake as from MongoDB or SQLite.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import bson
from bson import ObjectId

from rlm_core.adapters.mongo_metadata import exact_id
from rlm_core.adapters.records import (
    CLAIM_FIELD,
    LOGICAL_COLLECTIONS,
    document_record,
    id_text,
    message_record,
    naive_utc,
    new_document_body,
    session_record,
)
from rlm_core.clock import to_utc
from rlm_core.ports import (
    DocumentRecord,
    DuplicateDocumentError,
    MessageRecord,
    MetadataStats,
    NewDocument,
    ReferencesUnknownError,
    SessionRecord,
    Touch,
)

Raw = dict[str, Any]
# Deeper nesting than this names nothing (the Mongo adapter reads references to the same depth).
MAX_DEPTH = 8


class MemoryMongo:
    """One database: collections of raw records keyed by their exact `_id`, and rlm's leases.

    Starts with the RAG app's three collections, as the app's database has them; inserting into
    another name creates it, as MongoDB does.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.collections: dict[str, dict[Any, Raw]] = {name: {} for name in LOGICAL_COLLECTIONS}
        self.leases: dict[str, tuple[str, datetime]] = {}


class MemoryMetadata:
    """The documents, chat_sessions and messages collections of a MemoryMongo.

    The unique (user_id, metadata.file_hash) rule holds for every insert, string hashes only.
    Every compare-and-set (claim, touch, relink, conditional delete, lease) is one step under
    the database's lock.
    """

    def __init__(
        self,
        client: MemoryMongo,
        *,
        documents: str = "documents",
        sessions: str = "chat_sessions",
        messages: str = "messages",
    ) -> None:
        self._client = client
        self._names = dict(zip(LOGICAL_COLLECTIONS, (documents, sessions, messages), strict=True))
        self._reference_settings = (
            ("RLM_SESSIONS_COLLECTION", sessions),
            ("RLM_MESSAGES_COLLECTION", messages),
        )

    def ensure_indexes(self) -> None:
        """Nothing to build: the unique hash rule is always enforced."""

    def insert_document(self, doc: NewDocument) -> str:
        """Insert a new document; the user already holding the hash is a duplicate."""
        body = {"_id": ObjectId(), **new_document_body(doc)}
        self.insert_raw("documents", [body])
        return str(body["_id"])

    def find_by_hash(self, user_id: str, file_hash: str) -> DocumentRecord | None:
        """The user's document with this hash, if any."""
        with self._client.lock:
            raw = _holder(self._docs().values(), user_id, file_hash)
            return None if raw is None else document_record(raw)

    def touch_document(self, doc: DocumentRecord, now: datetime) -> Touch:
        """Set updated_at = now unless a cleanup claimed the record."""
        with self._client.lock:
            raw = self._docs().get(exact_id(doc))
            if raw is None:
                return Touch.GONE
            if raw.get(CLAIM_FIELD) is not None:
                return Touch.CLAIMED
            raw["updated_at"] = _stored(now)
            return Touch.TOUCHED

    def relink_document(
        self, doc: DocumentRecord, minio_key: str, size_bytes: int, now: datetime, status: str
    ) -> bool:
        """Point the document at a new object, set its status, touch it, break any claim."""
        with self._client.lock:
            raw = self._docs().get(exact_id(doc))
            if raw is None:
                return False
            raw.update(minio_key=minio_key, size_bytes=size_bytes, status=status)
            raw["updated_at"] = _stored(now)
            raw.pop(CLAIM_FIELD, None)
            return True

    def iter_documents(self, batch_size: int) -> Iterator[list[DocumentRecord]]:
        """Stream the documents present when iteration starts, in Mongo's `_id` order, each
        batch read when it is reached."""
        with self._client.lock:
            ids = sorted(self._docs(), key=_id_order)
        for start in range(0, len(ids), batch_size):
            with self._client.lock:
                docs = self._docs()
                raws = [docs[i] for i in ids[start : start + batch_size] if i in docs]
                batch = [document_record(raw) for raw in raws]
            if batch:
                yield batch

    def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocumentRecord]:
        """Documents by the string form of their id; missing ids are absent."""
        return {record.id: record for record in self.find_documents(doc_ids)}

    def find_documents(self, doc_ids: Sequence[str]) -> list[DocumentRecord]:
        """Every record whose `_id`, as an ObjectId or as a string, has one of these forms."""
        return [document_record(raw) for raw in self._find_raw(set(doc_ids))]

    def document_identities(self, doc_ids: Sequence[str]) -> set[tuple[str, bool]]:
        """The exact `_id` of every record find_documents would return."""
        return {
            (str(raw["_id"]), isinstance(raw["_id"], ObjectId))
            for raw in self._find_raw(set(doc_ids))
        }

    def check_references(self) -> None:
        """Refuse when documents exist but a reference collection does not."""
        with self._client.lock:
            if not self._docs():
                return
            for setting, name in self._reference_settings:
                if name not in self._client.collections:
                    raise ReferencesUnknownError(
                        f"{setting}: collection {name!r} does not exist while "
                        f"{self._names['documents']!r} holds records; references cannot be "
                        "read, so nothing is deleted (allowed: the name of the existing collection)"
                    )

    def claim_documents(self, docs: Sequence[DocumentRecord], run_id: str) -> list[DocumentRecord]:
        """Claim each record only if it is exactly as read; return those now claimed."""
        claimed: list[DocumentRecord] = []
        with self._client.lock:
            for doc in docs:
                if self._unchanged(doc):
                    self._docs()[exact_id(doc)][CLAIM_FIELD] = run_id
                    claimed.append(replace(doc, claim=run_id))
        return claimed

    def claimed(self, docs: Sequence[DocumentRecord], run_id: str) -> list[DocumentRecord]:
        """Those of docs still claimed by run_id and unchanged since read."""
        ours = [replace(d, claim=run_id) for d in docs]
        with self._client.lock:
            return [d for d in ours if self._unchanged(d)]

    def release_claims(self, docs: Sequence[DocumentRecord], run_id: str) -> None:
        """Drop run_id's claim on these records."""
        with self._client.lock:
            for doc in docs:
                raw = self._docs().get(exact_id(doc))
                if raw is not None and raw.get(CLAIM_FIELD) == run_id:
                    del raw[CLAIM_FIELD]

    def active_references(self, doc_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of doc_ids referenced by an active session along any of the four paths."""
        wanted = set(doc_ids)
        with self._client.lock:
            active = self._active_session_ids(active_since)
            found = {
                ref
                for raw in self._sessions().values()
                if id_text(raw.get("_id")) in active
                for field in ("documents", "attached_file_ids")
                for ref in _named(raw.get(field)) & wanted
            }
            for message in self._messages().values():
                if id_text(message.get("chat_id")) in active:
                    found |= _named(message.get("file_ids")) & wanted
            for raw in self._find_raw(wanted):
                if _named(raw.get("conversation_id")) & active:
                    found.add(str(raw["_id"]))
        return found

    def active_sessions(self, session_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of session_ids whose updated_at >= active_since or is not a date at all."""
        with self._client.lock:
            return self._active_session_ids(active_since) & set(session_ids)

    def unreadable_sessions(self) -> int:
        """How many chat sessions have an updated_at that is missing or not a date."""
        with self._client.lock:
            return sum(not _is_date(s.get("updated_at")) for s in self._sessions().values())

    def referenced_object_keys(
        self, bucket: str, keys: Sequence[str], excluding: Sequence[DocumentRecord] = ()
    ) -> set[str]:
        """Those of keys some document names in this bucket (a missing, empty or non-string
        bucket names it), leaving out the records in `excluding` by their exact `_id`."""
        wanted = set(keys)
        left_out = {exact_id(d) for d in excluding}
        found: set[str] = set()
        with self._client.lock:
            for doc_id, raw in self._docs().items():
                if doc_id not in left_out and _names_bucket(raw.get("minio_bucket"), bucket):
                    found |= _keys(raw.get("minio_key")) & wanted
        return found

    def delete_documents(self, docs: Sequence[DocumentRecord], run_id: str) -> int:
        """Delete exactly these records, each only if still claimed by run_id and as read."""
        deleted = 0
        with self._client.lock:
            for doc in docs:
                if self._unchanged(replace(doc, claim=run_id)):
                    del self._docs()[exact_id(doc)]
                    deleted += 1
        return deleted

    def documents_of_user(self, user_id: str) -> list[DocumentRecord]:
        """Every record whose user_id is exactly this string."""
        with self._client.lock:
            docs = self._docs().values()
            return [document_record(raw) for raw in docs if _owned_by(raw, user_id)]

    def sessions_of_user(self, user_id: str) -> list[SessionRecord]:
        """Every chat session whose user_id is exactly this string, `_id` in either form."""
        with self._client.lock:
            owned = [raw for raw in self._sessions().values() if _owned_by(raw, user_id)]
        return [s for s in map(session_record, owned) if s is not None]

    def find_sessions(self, session_ids: Sequence[str]) -> list[SessionRecord]:
        """Every session whose `_id`, as an ObjectId or as a string, has one of these forms."""
        with self._client.lock:
            sessions = self._sessions()
            raws = [sessions[f] for i in set(session_ids) for f in _id_forms(i) if f in sessions]
        return [s for s in map(session_record, raws) if s is not None]

    def messages_of_sessions(self, session_ids: Sequence[str]) -> list[MessageRecord]:
        """Messages whose chat_id, a string or an ObjectId, names one of these sessions."""
        wanted = set(session_ids)
        with self._client.lock:
            found = map(message_record, self._messages().values())
            return [m for m in found if m is not None and m.chat_id in wanted]

    def delete_messages(self, messages: Sequence[MessageRecord]) -> int:
        """Delete exactly these records, each only while its chat_id still names its session."""
        deleted = 0
        with self._client.lock:
            stored = self._messages()
            for message in messages:
                raw = stored.get(_exact(message.id, message.oid))
                if raw is not None and id_text(raw.get("chat_id")) == message.chat_id:
                    del stored[raw["_id"]]
                    deleted += 1
        return deleted

    def delete_sessions(self, sessions: Sequence[SessionRecord], user_id: str) -> int:
        """Delete exactly these records, each only while its user_id is still this user."""
        deleted = 0
        with self._client.lock:
            stored = self._sessions()
            for session in sessions:
                raw = stored.get(_exact(session.id, session.oid))
                if raw is not None and _owned_by(raw, user_id):
                    del stored[raw["_id"]]
                    deleted += 1
        return deleted

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> str | None:
        """Take or renew the named lease; None on success, else who holds it until when."""
        with self._client.lock:
            current = self._client.leases.get(name)
            if current is not None and current[0] != holder and current[1] >= to_utc(now):
                return f"{current[0]} until {current[1]}"
            self._client.leases[name] = (holder, to_utc(now + ttl))
        return None

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back if this holder has it."""
        with self._client.lock:
            current = self._client.leases.get(name)
            if current is not None and current[0] == holder:
                del self._client.leases[name]

    def stats(self) -> MetadataStats:
        """Document count, exact BSON bytes and oldest created_at."""
        with self._client.lock:
            docs = list(self._docs().values())
            size = sum(len(bson.encode(raw)) for raw in docs)
        created = [raw["created_at"] for raw in docs if _is_date(raw.get("created_at"))]
        oldest = to_utc(min(created)) if created else None
        return MetadataStats(len(docs), size, oldest)

    def insert_raw(self, collection: str, docs: Iterable[dict[str, Any]]) -> None:
        """Write copies of raw records (as pymongo would store them), `_id` added if missing."""
        if collection not in self._names:
            raise ValueError(f"collection {collection!r} is not one of {LOGICAL_COLLECTIONS}")
        with self._client.lock:
            records = self._client.collections.setdefault(self._names[collection], {})
            for doc in docs:
                raw: Raw = _stored({"_id": ObjectId(), **doc})
                if raw["_id"] in records:
                    raise ValueError(f"duplicate _id {raw['_id']!r} in {collection!r}")
                if collection == "documents":
                    _require_unique_hash(records.values(), raw)
                records[raw["_id"]] = raw

    def close(self) -> None:
        """Nothing to release: the database outlives its adapters, as a server's does."""

    def _find_raw(self, doc_ids: Iterable[str]) -> list[Raw]:
        """The raw documents whose `_id`, as an ObjectId or a string, has one of these forms."""
        with self._client.lock:
            docs = self._docs()
            return [docs[form] for d in doc_ids for form in _id_forms(d) if form in docs]

    def _docs(self) -> dict[Any, Raw]:
        return self._collection("documents")

    def _sessions(self) -> dict[Any, Raw]:
        return self._collection("chat_sessions")

    def _messages(self) -> dict[Any, Raw]:
        return self._collection("messages")

    def _collection(self, logical: str) -> dict[Any, Raw]:
        # A collection that does not exist reads as empty, as in MongoDB.
        return self._client.collections.get(self._names[logical], {})

    def _unchanged(self, doc: DocumentRecord) -> bool:
        """The record with doc's exact `_id` still has the updated_at, status, minio_key and
        claim doc was read with."""
        raw = self._docs().get(exact_id(doc))
        if raw is None:
            return False
        now = document_record(raw)
        same = (now.updated_at, now.status, now.minio_key, now.claim)
        return same == (doc.updated_at, doc.status, doc.minio_key, doc.claim)

    def _active_session_ids(self, active_since: datetime) -> set[str]:
        """String forms of the sessions active since then; an unreadable updated_at is active."""
        since = naive_utc(active_since)
        return {
            session_id
            for raw in self._sessions().values()
            if (session_id := id_text(raw.get("_id"))) is not None
            and (not _is_date(raw.get("updated_at")) or raw["updated_at"] >= since)
        }


def _stored(value: Any) -> Any:
    """A copy as BSON keeps it: naive UTC datetimes in milliseconds, tuples as lists."""
    if isinstance(value, datetime):
        utc = naive_utc(value)
        return utc.replace(microsecond=utc.microsecond // 1000 * 1000)
    if isinstance(value, Mapping):
        return {key: _stored(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_stored(item) for item in value]
    return value


def _id_order(value: Any) -> tuple[int, str]:
    """Mongo's order of `_id`s: other types, then strings, then ObjectIds (by their bytes)."""
    if isinstance(value, ObjectId):
        return (2, str(value))
    if isinstance(value, str):
        return (1, value)
    return (0, repr(value))


def _is_date(value: Any) -> bool:
    return isinstance(value, datetime)


def _exact(record_id: str, oid: bool) -> Any:
    return ObjectId(record_id) if oid else record_id


def _owned_by(raw: Mapping[str, Any], user_id: str) -> bool:
    owner = raw.get("user_id")
    return isinstance(owner, str) and owner == user_id


def _id_forms(doc_id: str) -> list[Any]:
    """The exact `_id`s a string form can name: the ObjectId (if it is one) and the string."""
    return [ObjectId(doc_id), doc_id] if ObjectId.is_valid(doc_id) else [doc_id]


def _named(value: Any, depth: int = 0) -> set[str]:
    """The ids a reference value names: a string or an ObjectId, alone, in (nested) lists, or
    as the doc_id of an embedded document."""
    if depth > MAX_DEPTH:
        return set()
    if isinstance(value, list):
        return {text for item in value for text in _named(item, depth + 1)}
    if isinstance(value, Mapping):
        return _named(value.get("doc_id"), depth + 1)
    text = id_text(value)
    return {text} if text is not None else set()


def _names_bucket(value: Any, bucket: str) -> bool:
    """SPEC 4.1 (5): a missing, empty or non-string minio_bucket names our bucket."""
    return not isinstance(value, str) or value in {bucket, ""}


def _keys(value: Any) -> set[str]:
    """The object keys a minio_key names: a string, or the strings of a list (Mongo's $in
    matches list items)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()


def _file_hash(raw: Mapping[str, Any]) -> str | None:
    metadata = raw.get("metadata")
    value = metadata.get("file_hash") if isinstance(metadata, Mapping) else None
    return value if isinstance(value, str) else None


def _holder(docs: Iterable[Raw], user_id: Any, file_hash: str) -> Raw | None:
    """The document of this user with this hash, if any."""
    for raw in docs:
        if raw.get("user_id") == user_id and _file_hash(raw) == file_hash:
            return raw
    return None


def _require_unique_hash(docs: Iterable[Raw], new: Raw) -> None:
    file_hash = _file_hash(new)
    if file_hash is not None and _holder(docs, new.get("user_id"), file_hash) is not None:
        raise DuplicateDocumentError(
            f"user {new.get('user_id')!r} already holds a document with hash {file_hash}"
        )
