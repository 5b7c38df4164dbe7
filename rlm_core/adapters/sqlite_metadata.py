"""MetadataStore in one SQLite file: the embedded stand-in for MongoDB, with the same shapes.

Each record is its Mongo document as JSON, datetimes as {"$date": ISO UTC} and ObjectIds as
{"$oid": hex}, so what goes in through insert_raw comes back exactly as pymongo would return it.
Generated columns index the fields the lifecycle rules query; WAL mode lets several processes
(Dagster runs one per run) share the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from bson import ObjectId

from rlm_core.adapters.mongo_metadata import (
    IN_BATCH,
    KEY_BATCH,
    LOGICAL_COLLECTIONS,
    chunks,
    document_record,
    naive_utc,
    new_document_body,
)
from rlm_core.clock import to_utc
from rlm_core.ports import (
    DocumentRecord,
    DuplicateDocumentError,
    MetadataStats,
    NewDocument,
    StoreError,
)

BUSY_TIMEOUT_SECONDS = 10.0

# Generated columns carry no declared type, so no affinity turns an int user_id into text:
# comparisons then match by type as Mongo's do.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    user_id GENERATED ALWAYS AS (json_extract(body, '$.user_id')) VIRTUAL,
    file_hash GENERATED ALWAYS AS (CASE WHEN json_type(body, '$.metadata.file_hash') = 'text'
        THEN json_extract(body, '$.metadata.file_hash') END) VIRTUAL,
    minio_bucket GENERATED ALWAYS AS (json_extract(body, '$.minio_bucket')) VIRTUAL,
    minio_key GENERATED ALWAYS AS (json_extract(body, '$.minio_key')) VIRTUAL,
    conversation_id GENERATED ALWAYS AS (CASE WHEN json_type(body, '$.conversation_id') = 'text'
        THEN json_extract(body, '$.conversation_id') END) VIRTUAL,
    created_at GENERATED ALWAYS AS (json_extract(body, '$.created_at."$date"')) VIRTUAL
);
CREATE UNIQUE INDEX IF NOT EXISTS documents_user_file_hash
    ON documents (user_id, file_hash) WHERE file_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS documents_minio_key ON documents (minio_key);
CREATE INDEX IF NOT EXISTS documents_conversation_id ON documents (conversation_id);
CREATE INDEX IF NOT EXISTS documents_created_at ON documents (created_at);
CREATE TABLE IF NOT EXISTS chat_sessions (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at GENERATED ALWAYS AS (json_extract(body, '$.updated_at."$date"')) VIRTUAL
);
CREATE INDEX IF NOT EXISTS chat_sessions_updated_at ON chat_sessions (updated_at);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    chat_id GENERATED ALWAYS AS (CASE WHEN json_type(body, '$.chat_id') = 'text'
        THEN json_extract(body, '$.chat_id') END) VIRTUAL
);
CREATE INDEX IF NOT EXISTS messages_chat_id ON messages (chat_id);
"""

# The four reference paths of SPEC section 3, for one batch of ids (a JSON array in :ids).
_ACTIVE_REFERENCES = """
SELECT ref.value FROM chat_sessions s, json_each(s.body, '$.attached_file_ids') ref
WHERE (s.updated_at >= :since OR s.updated_at IS NULL) AND ref.type = 'text'
  AND ref.value IN (SELECT value FROM json_each(:ids))
UNION
SELECT doc_id FROM (
    SELECT CASE WHEN e.type = 'object' THEN
                    CASE WHEN json_type(e.value, '$.doc_id') = 'text'
                    THEN json_extract(e.value, '$.doc_id') END
                WHEN e.key = 'doc_id' AND e.type = 'text' THEN e.value END AS doc_id
    FROM chat_sessions s, json_each(s.body, '$.documents') e
    WHERE (s.updated_at >= :since OR s.updated_at IS NULL))
WHERE doc_id IN (SELECT value FROM json_each(:ids))
UNION
SELECT f.value FROM chat_sessions s
JOIN messages m ON m.chat_id = s.id
JOIN json_each(m.body, '$.file_ids') f
WHERE (s.updated_at >= :since OR s.updated_at IS NULL) AND f.type = 'text'
  AND f.value IN (SELECT value FROM json_each(:ids))
UNION
SELECT d.id FROM documents d JOIN chat_sessions s ON s.id = d.conversation_id
WHERE d.id IN (SELECT value FROM json_each(:ids)) AND (s.updated_at >= :since OR s.updated_at IS NULL)
"""

_REFERENCED_KEYS = """
SELECT DISTINCT minio_key FROM documents
WHERE minio_key IN (SELECT value FROM json_each(:keys))
  AND (minio_bucket = :bucket OR (minio_bucket IS NULL AND :bucket = :default_bucket))
  AND id NOT IN (SELECT value FROM json_each(:excluding))
"""


class SqliteMetadataStore:
    """documents, chat_sessions and messages as JSON records in one SQLite file (WAL mode)."""

    def __init__(self, path: Path, default_bucket: str = "documents") -> None:
        self._default_bucket = default_bucket
        self._lock = threading.Lock()
        # timeout is SQLite's busy timeout: wait that long for another process's write lock.
        # Autocommit: transactions are opened explicitly, only where several writes go together.
        self._conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        with self._locked() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
        self.ensure_indexes()

    def ensure_indexes(self) -> None:
        """Create the tables, the unique (user_id, file_hash) index and lookup indexes."""
        with self._locked() as conn:
            conn.executescript(_SCHEMA)

    def insert_document(self, doc: NewDocument) -> str:
        """Insert a new document; the unique index turns a same-user same-hash race into one."""
        body = {"_id": ObjectId(), **new_document_body(doc)}
        try:
            with self._locked() as conn:
                conn.execute("INSERT INTO documents (id, body) VALUES (?, ?)", _row(body))
        except sqlite3.IntegrityError as exc:
            raise DuplicateDocumentError(
                f"user {doc.user_id!r} already holds a document with hash {doc.file_hash}"
            ) from exc
        return str(body["_id"])

    def find_by_hash(self, user_id: str, file_hash: str) -> DocumentRecord | None:
        """The user's document with this hash, if any."""
        rows = self._query(
            "SELECT body FROM documents WHERE user_id = ? AND file_hash = ? LIMIT 1",
            (user_id, file_hash),
        )
        return document_record(decode(rows[0][0])) if rows else None

    def touch_document(self, doc_id: str, now: datetime) -> None:
        """Set updated_at = now."""
        with self._locked() as conn:
            conn.execute(
                "UPDATE documents SET body = json_set(body, '$.updated_at', json(?)) WHERE id = ?",
                (encode(naive_utc(now)), doc_id),
            )

    def relink_document(self, doc_id: str, minio_key: str, size_bytes: int, now: datetime) -> None:
        """Point the document at a new object, mark it processing and touch it."""
        with self._locked() as conn:
            conn.execute(
                "UPDATE documents SET body = json_set(body, '$.minio_key', ?, '$.size_bytes', ?,"
                " '$.status', 'processing', '$.updated_at', json(?)) WHERE id = ?",
                (minio_key, size_bytes, encode(naive_utc(now)), doc_id),
            )

    def iter_documents(self, batch_size: int) -> Iterator[list[DocumentRecord]]:
        """Stream all documents in id order, one page query per batch (no long-held lock)."""
        after = ""
        while rows := self._query(
            "SELECT id, body FROM documents WHERE id > ? ORDER BY id LIMIT ?", (after, batch_size)
        ):
            after = rows[-1][0]
            yield [document_record(decode(body)) for _, body in rows]

    def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocumentRecord]:
        """Documents by id; missing ids are absent."""
        found: dict[str, DocumentRecord] = {}
        for batch in chunks(set(doc_ids), IN_BATCH):
            sql = "SELECT id, body FROM documents WHERE id IN (SELECT value FROM json_each(?))"
            for doc_id, body in self._query(sql, (json.dumps(batch),)):
                found[doc_id] = document_record(decode(body))
        return found

    def active_references(self, doc_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of doc_ids referenced by an active session along any of the four paths."""
        since = _iso(active_since)
        found: set[str] = set()
        for batch in chunks(set(doc_ids), IN_BATCH):
            params = {"since": since, "ids": json.dumps(batch)}
            found.update(row[0] for row in self._query(_ACTIVE_REFERENCES, params))
        return found

    def active_sessions(self, session_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of session_ids whose updated_at >= active_since, or is not a date at all (a
        session whose activity cannot be read is taken as active: it protects, never dooms)."""
        sql = (
            "SELECT id FROM chat_sessions WHERE id IN (SELECT value FROM json_each(?)) "
            "AND (updated_at >= ? OR updated_at IS NULL)"
        )
        since = _iso(active_since)
        found: set[str] = set()
        for batch in chunks(set(session_ids), IN_BATCH):
            found.update(row[0] for row in self._query(sql, (json.dumps(batch), since)))
        return found

    def unreadable_sessions(self) -> int:
        """How many chat sessions have an updated_at that is missing or not a date."""
        rows = self._query("SELECT count(*) FROM chat_sessions WHERE updated_at IS NULL", ())
        return int(rows[0][0])

    def referenced_object_keys(
        self, bucket: str, keys: Sequence[str], excluding: Sequence[str] = ()
    ) -> set[str]:
        """Those of keys some document names in this bucket (no bucket = the default bucket),
        leaving out the documents whose ids are in `excluding`."""
        found: set[str] = set()
        for batch in chunks(set(keys), KEY_BATCH):
            params = {
                "keys": json.dumps(batch),
                "bucket": bucket,
                "default_bucket": self._default_bucket,
                # Only string ids: a JSON null in a NOT IN list would exclude every row.
                "excluding": json.dumps([i for i in excluding if isinstance(i, str)]),
            }
            found.update(row[0] for row in self._query(_REFERENCED_KEYS, params))
        return found

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete documents by id; return how many went."""
        deleted = 0
        for batch in chunks(set(doc_ids), IN_BATCH):
            with self._locked() as conn:
                cursor = conn.execute(
                    "DELETE FROM documents WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(batch),),
                )
                deleted += cursor.rowcount
        return deleted

    def stats(self) -> MetadataStats:
        """Document count, exact JSON bytes and oldest created_at."""
        ((total, size, oldest),) = self._query(
            "SELECT count(*), coalesce(sum(length(CAST(body AS BLOB))), 0), min(created_at) "
            "FROM documents",
            (),
        )
        oldest_at = _parse_date(oldest) if isinstance(oldest, str) else None
        return MetadataStats(total, size, to_utc(oldest_at) if oldest_at else None)

    def insert_raw(self, collection: str, docs: Iterable[dict[str, Any]]) -> None:
        """Write raw records to `documents`, `chat_sessions` or `messages`, _id as Mongo would."""
        if collection not in LOGICAL_COLLECTIONS:
            raise ValueError(f"collection {collection!r} is not one of {LOGICAL_COLLECTIONS}")
        # The table name comes from the fixed whitelist above, never from data.
        sql = f"INSERT INTO {collection} (id, body) VALUES (?, ?)"  # noqa: S608
        for batch in chunks(docs, IN_BATCH):
            rows = [_row({"_id": ObjectId(), **doc}) for doc in batch]
            with self._transaction() as conn:
                conn.executemany(sql, rows)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        with self._locked() as conn:
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread; a busy or locked file becomes StoreError."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}:
                    raise StoreError(f"metadata store is busy: {exc}") from exc
                raise


def encode(value: Any) -> str:
    """JSON text of a Mongo-shaped value (datetimes and ObjectIds in extended JSON)."""
    return json.dumps(value, default=_extended, ensure_ascii=False, allow_nan=False)


def decode(text: str) -> Any:
    """The Mongo-shaped value of JSON text: naive UTC datetimes and ObjectIds, as pymongo."""
    return json.loads(text, object_hook=_restore)


def _row(doc: dict[str, Any]) -> tuple[str, str]:
    return str(doc["_id"]), encode(doc)


def _iso(value: datetime) -> str:
    """Fixed-width ISO UTC with milliseconds (BSON's precision), so text order is time order."""
    utc = naive_utc(value)
    return (
        utc.replace(microsecond=utc.microsecond // 1000 * 1000).isoformat(timespec="milliseconds")
        + "Z"
    )


def _parse_date(text: str) -> datetime | None:
    try:
        return naive_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _extended(value: Any) -> dict[str, str]:
    if isinstance(value, datetime):
        return {"$date": _iso(value)}
    if isinstance(value, ObjectId):
        return {"$oid": str(value)}
    raise TypeError(f"a {type(value).__name__} cannot be stored in the metadata store")


def _restore(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        oid, date = obj.get("$oid"), obj.get("$date")
        if isinstance(oid, str) and ObjectId.is_valid(oid):
            return ObjectId(oid)
        if isinstance(date, str):
            return _parse_date(date) or obj
    return obj
