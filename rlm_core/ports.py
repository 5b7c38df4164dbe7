"""Ports: what the lifecycle service needs from each store. Adapters implement them.

Every adapter of a port passes the same contract suite (tests/contracts/). Ports speak in domain
records, never in client objects, so the service is the same over real servers and embedded stores.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, NamedTuple, Protocol


class StoreError(RuntimeError):
    """A store failed in a way a retry may fix (connection lost, timeout)."""


class DuplicateDocumentError(Exception):
    """The unique (user_id, metadata.file_hash) constraint rejected an insert."""


class NotOursError(ValueError):
    """An operation named a key, point or object outside what rlm manages."""


class ReferencesUnknownError(StoreError):
    """A reference source (sessions, messages) is missing or unreadable: nothing may be judged
    unreferenced, so reference-aware sweeps refuse."""


class MissingStoreError(StoreError):
    """A bucket or collection rlm was configured to use does not exist (a setting, not a blip)."""


# ---------------------------------------------------------------- cache (Redis)


@dataclass(frozen=True, slots=True)
class CacheKey:
    """A cache key as seen by one SCAN pass.

    ttl_seconds: remaining TTL; -1 means no TTL (the leak), -2 means gone.
    idle_seconds: OBJECT IDLETIME, or None where the server cannot tell (LFU eviction policy).
    memory_bytes: MEMORY USAGE, or None unless asked for.
    """

    key: bytes
    ttl_seconds: int
    idle_seconds: int | None
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class CacheSeed:
    """A key to write (rlm_core.seeding); idle_seconds backdates its idle time."""

    key: bytes
    value: bytes
    ttl_seconds: int | None
    idle_seconds: int = 0


class CacheStore(Protocol):
    """Redis cache keys matching the configured patterns; nothing else is visible."""

    patterns: tuple[str, ...]

    def scan(self, batch_size: int, with_memory: bool = False) -> Iterator[list[CacheKey]]:
        """Stream cache keys (SCAN + pipelined TTL/IDLETIME[/MEMORY USAGE]) in batches."""
        ...

    def unlink_idle(self, keys: Sequence[bytes], min_idle_seconds: int) -> dict[bytes, int]:
        """UNLINK each key only if it still has no TTL and is idle >= min, atomically per key;
        return each unlinked key with its MEMORY USAGE measured just before the UNLINK."""
        ...

    def memory_usage(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        """MEMORY USAGE of each existing key (missing keys are absent)."""
        ...

    def expire_if_persistent(self, items: Sequence[tuple[bytes, int]]) -> int:
        """EXPIRE each key to its seconds only if it still has no TTL; return how many were set."""
        ...

    def unlink(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        """UNLINK keys; return each key that existed with its MEMORY USAGE just before.

        Raises NotOursError if any key is outside the cache patterns."""
        ...

    def existing(self, keys: Sequence[bytes]) -> list[bytes]:
        """The subset of keys that exist."""
        ...

    def shards(self) -> list[str]:
        """The parts a sweep can be split into, each scanned on its own: a cluster's primaries
        (`host:port`), or the one server."""
        ...

    def restricted(self, shard: str) -> CacheStore:
        """This store with `scan` reading only `shard` (one of `shards()`); writes still go
        wherever each key lives. Raises StoreError if the shard is no longer there."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# ---------------------------------------------------------------- vectors (Qdrant)


@dataclass(frozen=True, slots=True)
class PointInfo:
    """One point's lifecycle-relevant payload, raw as stored (types are validated by policy)."""

    point_id: str
    session_id: Any
    document_id: Any
    created_at: Any
    payload_bytes: int | None = None


class CreatedAt(NamedTuple):
    """One point of a dating scan: its id as the store holds it (a UUID string or an int), its
    created_at raw as stored, and its payload's JSON size when the scan weighed it. A tuple:
    a snapshot makes one per point of the collection."""

    point_id: str | int
    created_at: Any
    payload_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class PointRef:
    """A point judged for deletion: its id and the payload values the judgement relied on."""

    point_id: str
    session_id: str | None
    document_id: str


@dataclass(frozen=True, slots=True)
class PointPin:
    """A point to erase: its id and the payload values (at least one) that made it the user's;
    it goes only while each pinned value is still the one read."""

    point_id: str
    session_id: str | None
    document_id: str | None


@dataclass(frozen=True, slots=True)
class VectorPoint:
    """A point to write (rlm_core.seeding)."""

    point_id: str
    vector: Sequence[float]
    payload: dict[str, Any]


class VectorStore(Protocol):
    """Points of the configured Qdrant collection."""

    def ensure_collection(self) -> None:
        """Create the collection (and payload indexes) if missing."""
        ...

    def count(self) -> int:
        """Exact number of points."""
        ...

    def iter_points(
        self, batch_size: int, with_payload_size: bool = False
    ) -> Iterator[list[PointInfo]]:
        """Stream points (no vectors) in batches; with with_payload_size every point carries
        payload_bytes."""
        ...

    def iter_created(self, batch_size: int, weigh_first: int = 0) -> Iterator[list[CreatedAt]]:
        """Stream every point's id and created_at (nothing else read) in batches; the first
        weigh_first points of the scan are read whole and weighed (a sample, same pass)."""
        ...

    def points_by_id(self, point_ids: Sequence[str | int]) -> list[PointInfo]:
        """The lifecycle payload of those of these points that exist (ids as CreatedAt has
        them)."""
        ...

    def points_for_documents(self, document_ids: Sequence[str]) -> dict[str, list[str]]:
        """Ids of the points whose document_id is exactly one of these strings, per document."""
        ...

    def delete_for_documents(self, points: Sequence[PointRef]) -> int:
        """Delete these points if their document_id is still the one read; return how many went."""
        ...

    def delete_points(self, points: Sequence[PointRef], created_before: float) -> int:
        """Delete these points if their session_id/document_id are still the ones read and
        their created_at is still a number < created_before; return how many went."""
        ...

    def points_of(self, document_ids: Sequence[str], session_ids: Sequence[str]) -> list[PointInfo]:
        """Points whose document_id is exactly one of document_ids or whose session_id is exactly
        one of session_ids: a filter per batch of ids on a server, one scan in local mode."""
        ...

    def delete_pinned(self, points: Sequence[PointPin]) -> int:
        """Delete these points while every value each one pins is still the one read; return
        how many went."""
        ...

    def point_bytes(self) -> int:
        """Bytes one point's vector takes, from the collection's own configuration."""
        ...

    def close(self) -> None:
        """Release the client (and local mode's folder lock)."""
        ...


# ---------------------------------------------------------------- objects (MinIO / S3)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object as listed."""

    key: str
    size: int
    last_modified: datetime


class ObjectStore(Protocol):
    """Objects of the configured bucket."""

    bucket: str

    def ensure_bucket(self) -> None:
        """Create the bucket if missing."""
        ...

    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Stream every object of the bucket (paginated listing)."""
        ...

    def put(self, key: str, stream: BinaryIO, length: int | None, content_type: str | None) -> int:
        """Upload a stream (length None = unknown, multipart); return bytes written."""
        ...

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Delete keys, up to 1000 per request; return the keys that failed."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        ...

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        """The stored size of each existing key (missing keys are absent)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# ---------------------------------------------------------------- metadata (MongoDB)


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """A `documents` record as the lifecycle rules see it.

    `id` is the string form of `_id` (what references hold); `oid` says whether `_id` itself is
    an ObjectId, so (`id`, `oid`) names exactly one record. Datetimes are aware UTC. `problem`
    names why the record cannot be trusted (a missing or wrong-typed field); such records are
    skipped and counted. `claim` is the run id of a cleanup that claimed it for expiry.
    """

    id: str
    user_id: str | None
    status: str | None
    created_at: datetime | None
    updated_at: datetime | None
    minio_bucket: str | None
    minio_key: str | None
    size_bytes: int | None
    conversation_id: str | None
    file_hash: str | None
    problem: str | None = None
    oid: bool = True
    claim: str | None = None

    @property
    def identity(self) -> tuple[str, bool]:
        """The exact `_id`: an ObjectId and a string with the same hex are two records."""
        return (self.id, self.oid)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A `chat_sessions` record by its exact `_id` (`id` its string form, `oid` whether it is an
    ObjectId) and its owner (None when user_id is missing or not a string)."""

    id: str
    oid: bool
    user_id: str | None

    @property
    def identity(self) -> tuple[str, bool]:
        """The exact `_id`."""
        return (self.id, self.oid)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A `messages` record by its exact `_id`, with the string form of the session its chat_id
    names."""

    id: str
    oid: bool
    chat_id: str

    @property
    def identity(self) -> tuple[str, bool]:
        """The exact `_id`."""
        return (self.id, self.oid)


class Touch(enum.Enum):
    """What a dedup touch found."""

    TOUCHED = "touched"
    CLAIMED = "claimed"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class NewDocument:
    """Fields of a document rlm's ingest creates."""

    user_id: str
    filename: str
    content_type: str
    size_bytes: int
    minio_bucket: str
    minio_key: str
    file_hash: str
    status: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MetadataStats:
    """Measured size of the metadata store."""

    total_items: int
    size_bytes: int
    oldest_created_at: datetime | None
    sampled: bool = False


class MetadataStore(Protocol):
    """The `documents`, `chat_sessions` and `messages` collections."""

    def ensure_indexes(self) -> None:
        """Create the unique (user_id, metadata.file_hash) index and lookup indexes."""
        ...

    def insert_document(self, doc: NewDocument) -> str:
        """Insert; raises DuplicateDocumentError when the user already holds the hash."""
        ...

    def find_by_hash(self, user_id: str, file_hash: str) -> DocumentRecord | None:
        """The user's document with this hash, if any."""
        ...

    def touch_document(self, doc: DocumentRecord, now: datetime) -> Touch:
        """Set updated_at = now unless a cleanup has claimed the record (a dedup hit keeps the
        document live); say whether it was touched, is claimed, or is gone."""
        ...

    def relink_document(
        self, doc: DocumentRecord, minio_key: str, size_bytes: int, now: datetime, status: str
    ) -> bool:
        """Point a document at a new object, set its status, touch it and break any claim;
        False when the record is gone.

        Repairs a record whose object an interrupted cascade deleted, resets a failed one, and
        takes a record back from a cleanup that claimed it.
        """
        ...

    def iter_documents(self, batch_size: int) -> Iterator[list[DocumentRecord]]:
        """Stream all documents in batches (malformed ones carry `problem`)."""
        ...

    def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocumentRecord]:
        """Documents by the string form of their id ($in batches); missing ids are absent."""
        ...

    def find_documents(self, doc_ids: Sequence[str]) -> list[DocumentRecord]:
        """Every record whose `_id`, as an ObjectId or as a string, has one of these forms."""
        ...

    def document_identities(self, doc_ids: Sequence[str]) -> set[tuple[str, bool]]:
        """The exact `_id` (`DocumentRecord.identity`: string form, is-ObjectId) of every record
        `find_documents` would return for these ids, read without decoding the records."""
        ...

    def check_references(self) -> None:
        """Raise ReferencesUnknownError when documents exist but the sessions or messages
        collection is missing or unreadable (a misnamed setting makes everything unreferenced)."""
        ...

    def claim_documents(self, docs: Sequence[DocumentRecord], run_id: str) -> list[DocumentRecord]:
        """Claim each record for expiry only if it is exactly as read (same `_id` form,
        updated_at, status, minio_key and claim); return the records now claimed by run_id."""
        ...

    def claimed(self, docs: Sequence[DocumentRecord], run_id: str) -> list[DocumentRecord]:
        """Those of docs still claimed by run_id and unchanged since read."""
        ...

    def release_claims(self, docs: Sequence[DocumentRecord], run_id: str) -> None:
        """Drop run_id's claim on these records (they stay)."""
        ...

    def active_references(self, doc_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of doc_ids referenced by a session with updated_at >= active_since.

        All four reference paths count: chat_sessions.documents[].doc_id,
        chat_sessions.attached_file_ids, messages.file_ids (via chat_id) and
        documents.conversation_id.
        """
        ...

    def active_sessions(self, session_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of session_ids whose updated_at >= active_since."""
        ...

    def unreadable_sessions(self) -> int:
        """How many chat sessions have an updated_at that is missing or not a date (taken as
        active, so they protect what they reference)."""
        ...

    def referenced_object_keys(
        self, bucket: str, keys: Sequence[str], excluding: Sequence[DocumentRecord] = ()
    ) -> set[str]:
        """Those of keys that some document, other than the records in `excluding`, names as its
        minio_key in this bucket; a missing, empty or non-string minio_bucket names our bucket."""
        ...

    def delete_documents(self, docs: Sequence[DocumentRecord], run_id: str) -> int:
        """Delete exactly these records, each only if still claimed by run_id and unchanged
        since read; return how many went."""
        ...

    def documents_of_user(self, user_id: str) -> list[DocumentRecord]:
        """Every record whose user_id is exactly this string (an index lookup, not a scan)."""
        ...

    def sessions_of_user(self, user_id: str) -> list[SessionRecord]:
        """Every chat session whose user_id is exactly this string, `_id` in either form."""
        ...

    def find_sessions(self, session_ids: Sequence[str]) -> list[SessionRecord]:
        """Every session whose `_id`, as an ObjectId or as a string, has one of these forms."""
        ...

    def messages_of_sessions(self, session_ids: Sequence[str]) -> list[MessageRecord]:
        """Messages whose chat_id, a string or an ObjectId, names one of these sessions."""
        ...

    def delete_messages(self, messages: Sequence[MessageRecord]) -> int:
        """Delete exactly these records, each only while its chat_id still names the session
        read; return how many went."""
        ...

    def delete_sessions(self, sessions: Sequence[SessionRecord], user_id: str) -> int:
        """Delete exactly these records, each only while its user_id is still this user; return
        how many went."""
        ...

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> str | None:
        """Take (or renew) the named lease until now + ttl; None on success, else the current
        holder (a lease whose time ran out is taken over)."""
        ...

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back if this holder has it."""
        ...

    def stats(self) -> MetadataStats:
        """Document count, storage size and oldest created_at."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
