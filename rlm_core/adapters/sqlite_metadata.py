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
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from string import hexdigits
from typing import Any

from bson import ObjectId

from rlm_core.adapters.records import (
    IN_BATCH,
    KEY_BATCH,
    LOGICAL_COLLECTIONS,
    document_record,
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

BUSY_TIMEOUT_SECONDS = 10.0
SCHEMA_VERSION = 2

# `id` is the record's exact `_id` (see `row_key`): an ObjectId and a string with the same hex
# are two records. `sid` is the string form every reference holds. A reference is a string or
# an ObjectId ({"$oid": hex}); REF reads both. Generated columns carry no declared type, so no
# affinity turns an int user_id into text: comparisons then match by type as Mongo's do.
_SID = """coalesce(json_extract(body, '$._id."$oid"'), json_extract(body, '$._id'))"""
_REF = """CASE json_type(body, '{path}') WHEN 'text' THEN json_extract(body, '{path}')
    WHEN 'object' THEN json_extract(body, '{path}."$oid"') END"""
_TABLES = {
    "documents": f"""
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    sid GENERATED ALWAYS AS ({_SID}) VIRTUAL,
    user_id GENERATED ALWAYS AS (json_extract(body, '$.user_id')) VIRTUAL,
    file_hash GENERATED ALWAYS AS (CASE WHEN json_type(body, '$.metadata.file_hash') = 'text'
        THEN json_extract(body, '$.metadata.file_hash') END) VIRTUAL,
    minio_bucket GENERATED ALWAYS AS (json_extract(body, '$.minio_bucket')) VIRTUAL,
    minio_key GENERATED ALWAYS AS (json_extract(body, '$.minio_key')) VIRTUAL,
    conversation_id GENERATED ALWAYS AS ({_REF.format(path="$.conversation_id")}) VIRTUAL,
    created_at GENERATED ALWAYS AS (json_extract(body, '$.created_at."$date"')) VIRTUAL""",
    "chat_sessions": f"""
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    sid GENERATED ALWAYS AS ({_SID}) VIRTUAL,
    updated_at GENERATED ALWAYS AS (json_extract(body, '$.updated_at."$date"')) VIRTUAL""",
    "messages": f"""
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    chat_id GENERATED ALWAYS AS ({_REF.format(path="$.chat_id")}) VIRTUAL""",
}
_INDEXES = """
CREATE TABLE IF NOT EXISTS rlm_locks (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
    expires_at TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS documents_user_file_hash
    ON documents (user_id, file_hash) WHERE file_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS documents_sid ON documents (sid);
CREATE INDEX IF NOT EXISTS documents_minio_key ON documents (minio_key);
CREATE INDEX IF NOT EXISTS documents_conversation_id ON documents (conversation_id);
CREATE INDEX IF NOT EXISTS documents_created_at ON documents (created_at);
CREATE INDEX IF NOT EXISTS chat_sessions_sid ON chat_sessions (sid);
CREATE INDEX IF NOT EXISTS chat_sessions_updated_at ON chat_sessions (updated_at);
CREATE INDEX IF NOT EXISTS documents_user_id ON documents (user_id);
CREATE INDEX IF NOT EXISTS chat_sessions_user_id ON chat_sessions (json_extract(body, '$.user_id'));
CREATE INDEX IF NOT EXISTS messages_chat_id ON messages (chat_id);
"""
# The exact key of a stored body's _id, as `row_key` computes it (for the v1 -> v2 migration).
_KEY_SQL = """CASE WHEN json_type(body, '$._id') = 'object' THEN json_extract(body, '$._id."$oid"')
    WHEN json_type(body, '$._id') = 'text' AND length(json_extract(body, '$._id')) = 24
        AND json_extract(body, '$._id') NOT GLOB '*[^0-9a-fA-F]*'
    THEN 's:' || json_extract(body, '$._id')
    WHEN json_type(body, '$._id') = 'text' THEN json_extract(body, '$._id')
    ELSE 'v:' || json_extract(body, '$._id') END"""

_ACTIVE = "(s.updated_at >= :since OR s.updated_at IS NULL)"
# Text leaves that name a document: the list items, doc_id fields and ObjectIds ($oid) of a
# session's documents, attached_file_ids or a message's file_ids, lone values included.
_NAMING = (
    "(t.type = 'text' AND (t.key IS NULL OR t.key IN ('doc_id', '$oid')"
    " OR typeof(t.key) = 'integer'))"
)
_IDS = "(SELECT value FROM json_each(:ids))"

# The four reference paths of SPEC section 3, for one batch of ids (a JSON array in :ids).
# Built from the constants above, never from data. The session and message paths are read from
# the lookup tables below (an index on the document id); _SCAN_REFERENCES walks every active
# session's JSON instead, and is used whenever those tables cannot be trusted.
_CONVERSATION_REFERENCES = f"""
SELECT d.sid FROM documents d, json_tree(d.body, '$.conversation_id') t
JOIN chat_sessions s ON s.sid = t.value
WHERE d.sid IN {_IDS} AND {_NAMING} AND {_ACTIVE}
"""  # noqa: S608
_ACTIVE_REFERENCES = f"""
SELECT r.doc FROM rlm_session_refs r JOIN chat_sessions s ON s.id = r.owner
WHERE r.doc IN {_IDS} AND {_ACTIVE}
UNION
SELECT r.doc FROM rlm_message_refs r JOIN messages m ON m.id = r.owner
JOIN chat_sessions s ON s.sid = m.chat_id
WHERE r.doc IN {_IDS} AND {_ACTIVE}
UNION {_CONVERSATION_REFERENCES}"""  # noqa: S608
_SCAN_REFERENCES = f"""
SELECT t.value FROM chat_sessions s, json_tree(s.body, '$.attached_file_ids') t
WHERE {_ACTIVE} AND {_NAMING} AND t.value IN {_IDS}
UNION
SELECT t.value FROM chat_sessions s, json_tree(s.body, '$.documents') t
WHERE {_ACTIVE} AND {_NAMING} AND t.value IN {_IDS}
UNION
SELECT t.value FROM chat_sessions s
JOIN messages m ON m.chat_id = s.sid
JOIN json_tree(m.body, '$.file_ids') t
WHERE {_ACTIVE} AND {_NAMING} AND t.value IN {_IDS}
UNION {_CONVERSATION_REFERENCES}"""  # noqa: S608

# SQLite cannot index the values inside a JSON array. So the naming leaves of each session's
# documents and attached_file_ids, and of each message's file_ids, are kept per row (`owner`
# is the row's `id`) in two lookup tables that triggers rewrite on every insert, update and
# delete of the row: whoever writes, in the same statement. A file whose triggers or tables are
# missing (a table rebuilt by hand, a migration) has them rebuilt from the rows when it is
# opened, and until then every read walks the JSON (_SCAN_REFERENCES).
_REFERENCE_TABLES = {
    "rlm_session_refs": ("chat_sessions", ("$.attached_file_ids", "$.documents")),
    "rlm_message_refs": ("messages", ("$.file_ids",)),
}
_REFERENCE_TRIGGERS = tuple(
    f"{refs}_{event}" for refs in _REFERENCE_TABLES for event in ("insert", "update", "delete")
)

# SPEC 4.1 (5): a missing, empty or non-string minio_bucket names our bucket.
_REFERENCED_KEYS = """
SELECT DISTINCT minio_key FROM documents
WHERE minio_key IN (SELECT value FROM json_each(:keys))
  AND (json_type(body, '$.minio_bucket') IS NOT 'text' OR minio_bucket IN (:bucket, ''))
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
        """Create (or migrate) the tables, the unique (user_id, file_hash) index and lookups."""
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for table, columns in _TABLES.items():
                exists = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()
                if exists and version < SCHEMA_VERSION:
                    _migrate(conn, table, columns)
                elif not exists:
                    conn.execute(f"CREATE TABLE {table} ({columns})")
            for statement in filter(str.strip, _INDEXES.split(";")):
                conn.execute(statement)
            if not _references_indexed(conn):
                _rebuild_references(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    def touch_document(self, doc: DocumentRecord, now: datetime) -> Touch:
        """Set updated_at = now unless a cleanup claimed the record."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE documents SET body = json_set(body, '$.updated_at', json(?)) "
                "WHERE id = ? AND json_extract(body, '$.rlm_claim') IS NULL",
                (encode(naive_utc(now)), _doc_key(doc)),
            )
            if cursor.rowcount:
                return Touch.TOUCHED
            row = conn.execute("SELECT 1 FROM documents WHERE id = ?", (_doc_key(doc),))
            return Touch.CLAIMED if row.fetchone() else Touch.GONE

    def relink_document(
        self, doc: DocumentRecord, minio_key: str, size_bytes: int, now: datetime, status: str
    ) -> bool:
        """Point the document at a new object, set its status, touch it, break any claim."""
        with self._locked() as conn:
            cursor = conn.execute(
                "UPDATE documents SET body = json_remove(json_set(body, '$.minio_key', ?,"
                " '$.size_bytes', ?, '$.status', ?, '$.updated_at', json(?)),"
                " '$.rlm_claim') WHERE id = ?",
                (minio_key, size_bytes, status, encode(naive_utc(now)), _doc_key(doc)),
            )
        return cursor.rowcount > 0

    def iter_documents(self, batch_size: int) -> Iterator[list[DocumentRecord]]:
        """Stream all documents in id order, one page query per batch (no long-held lock)."""
        after = ""
        while rows := self._query(
            "SELECT id, body FROM documents WHERE id > ? ORDER BY id LIMIT ?", (after, batch_size)
        ):
            after = rows[-1][0]
            yield [document_record(decode(body)) for _, body in rows]

    def get_documents(self, doc_ids: Sequence[str]) -> dict[str, DocumentRecord]:
        """Documents by the string form of their id; missing ids are absent."""
        return {record.id: record for record in self.find_documents(doc_ids)}

    def find_documents(self, doc_ids: Sequence[str]) -> list[DocumentRecord]:
        """Every record whose `_id` (ObjectId or string) has one of these string forms."""
        found: list[DocumentRecord] = []
        for batch in chunked(set(doc_ids), IN_BATCH):
            sql = "SELECT body FROM documents WHERE sid IN (SELECT value FROM json_each(?))"
            found.extend(
                document_record(decode(b)) for (b,) in self._query(sql, (json.dumps(batch),))
            )
        return found

    def document_identities(self, doc_ids: Sequence[str]) -> set[tuple[str, bool]]:
        """The exact `_id` of every record find_documents would return, bodies left undecoded."""
        found: set[tuple[str, bool]] = set()
        sql = (
            "SELECT sid, json_extract(body, '$._id.\"$oid\"') IS NOT NULL FROM documents "
            "WHERE sid IN (SELECT value FROM json_each(?))"
        )
        for batch in chunked(set(doc_ids), IN_BATCH):
            found.update(
                (str(sid), bool(oid)) for sid, oid in self._query(sql, (json.dumps(batch),))
            )
        return found

    def check_references(self) -> None:
        """Refuse when documents exist but a reference table cannot be read."""
        try:
            self._query("SELECT 1 FROM chat_sessions LIMIT 1", ())
            self._query("SELECT 1 FROM messages LIMIT 1", ())
        except sqlite3.Error as exc:
            raise ReferencesUnknownError(
                f"metadata store references cannot be read ({exc}); nothing is deleted"
            ) from exc

    def claim_documents(self, docs: Sequence[DocumentRecord], run_id: str) -> list[DocumentRecord]:
        """Claim each record only if it is exactly as read; return those now claimed."""
        claimed: list[DocumentRecord] = []
        for batch in chunked(docs, IN_BATCH):
            with self._transaction() as conn:
                for doc in _unchanged(conn, batch):
                    conn.execute(
                        "UPDATE documents SET body = json_set(body, '$.rlm_claim', ?) WHERE id = ?",
                        (run_id, _doc_key(doc)),
                    )
                    claimed.append(replace(doc, claim=run_id))
        return claimed

    def claimed(self, docs: Sequence[DocumentRecord], run_id: str) -> list[DocumentRecord]:
        """Those of docs still claimed by run_id and unchanged since read."""
        out: list[DocumentRecord] = []
        for batch in chunked(docs, IN_BATCH):
            with self._locked() as conn:
                out.extend(_unchanged(conn, [replace(d, claim=run_id) for d in batch]))
        return out

    def release_claims(self, docs: Sequence[DocumentRecord], run_id: str) -> None:
        """Drop run_id's claim on these records."""
        for batch in chunked(docs, IN_BATCH):
            with self._locked() as conn:
                conn.execute(
                    "UPDATE documents SET body = json_remove(body, '$.rlm_claim') "
                    "WHERE id IN (SELECT value FROM json_each(?)) "
                    "AND json_extract(body, '$.rlm_claim') = ?",
                    (json.dumps([_doc_key(d) for d in batch]), run_id),
                )

    def active_references(self, doc_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of doc_ids referenced by an active session along any of the four paths."""
        since = _iso(active_since)
        found: set[str] = set()
        for batch in chunked(set(doc_ids), IN_BATCH):
            params = {"since": since, "ids": json.dumps(batch)}
            with self._locked() as conn:
                sql = _ACTIVE_REFERENCES if _lookup_usable(conn) else _SCAN_REFERENCES
                found.update(row[0] for row in conn.execute(sql, params).fetchall())
        return found

    def active_sessions(self, session_ids: Sequence[str], active_since: datetime) -> set[str]:
        """Those of session_ids (string forms) whose updated_at >= active_since, or is not a date
        at all (a session whose activity cannot be read is taken as active: it protects)."""
        sql = (
            "SELECT sid FROM chat_sessions s WHERE sid IN (SELECT value FROM json_each(:ids)) "
            "AND (s.updated_at >= :since OR s.updated_at IS NULL)"
        )
        since = _iso(active_since)
        found: set[str] = set()
        for batch in chunked(set(session_ids), IN_BATCH):
            found.update(
                row[0] for row in self._query(sql, {"ids": json.dumps(batch), "since": since})
            )
        return found

    def unreadable_sessions(self) -> int:
        """How many chat sessions have an updated_at that is missing or not a date."""
        rows = self._query("SELECT count(*) FROM chat_sessions WHERE updated_at IS NULL", ())
        return int(rows[0][0])

    def referenced_object_keys(
        self, bucket: str, keys: Sequence[str], excluding: Sequence[DocumentRecord] = ()
    ) -> set[str]:
        """Those of keys some document names in this bucket (a missing, empty or non-string
        bucket names ours), leaving out the records in `excluding`."""
        found: set[str] = set()
        for batch in chunked(set(keys), KEY_BATCH):
            params = {
                "keys": json.dumps(batch),
                "bucket": bucket,
                "excluding": json.dumps([_doc_key(d) for d in excluding]),
            }
            found.update(row[0] for row in self._query(_REFERENCED_KEYS, params))
        return found

    def delete_documents(self, docs: Sequence[DocumentRecord], run_id: str) -> int:
        """Delete exactly these records, each only if still claimed by run_id and as read."""
        deleted = 0
        for batch in chunked(docs, IN_BATCH):
            with self._transaction() as conn:
                for doc in _unchanged(conn, [replace(d, claim=run_id) for d in batch]):
                    conn.execute("DELETE FROM documents WHERE id = ?", (_doc_key(doc),))
                    deleted += 1
        return deleted

    def documents_of_user(self, user_id: str) -> list[DocumentRecord]:
        """Every record whose user_id is exactly this string (the `user_id` index)."""
        rows = self._query("SELECT body FROM documents WHERE user_id = ?", (user_id,))
        found = [document_record(decode(body)) for (body,) in rows]
        return [d for d in found if d.user_id == user_id]

    def sessions_of_user(self, user_id: str) -> list[SessionRecord]:
        """Every chat session whose user_id is exactly this string (an expression index)."""
        sql = "SELECT body FROM chat_sessions WHERE json_extract(body, '$.user_id') = ?"
        found = [session_record(decode(body)) for (body,) in self._query(sql, (user_id,))]
        return [s for s in found if s is not None and s.user_id == user_id]

    def find_sessions(self, session_ids: Sequence[str]) -> list[SessionRecord]:
        """Every session whose `_id` (ObjectId or string) has one of these string forms."""
        sql = "SELECT body FROM chat_sessions WHERE sid IN (SELECT value FROM json_each(?))"
        found: list[SessionRecord | None] = []
        for batch in chunked(set(session_ids), IN_BATCH):
            rows = self._query(sql, (json.dumps(batch),))
            found.extend(session_record(decode(body)) for (body,) in rows)
        return [s for s in found if s is not None]

    def messages_of_sessions(self, session_ids: Sequence[str]) -> list[MessageRecord]:
        """Messages whose chat_id (a string or an ObjectId) names one of these sessions."""
        sql = "SELECT body FROM messages WHERE chat_id IN (SELECT value FROM json_each(?))"
        found: list[MessageRecord | None] = []
        for batch in chunked(set(session_ids), IN_BATCH):
            rows = self._query(sql, (json.dumps(batch),))
            found.extend(message_record(decode(body)) for (body,) in rows)
        return [m for m in found if m is not None]

    def delete_messages(self, messages: Sequence[MessageRecord]) -> int:
        """Delete exactly these records, each only while its chat_id still names its session."""
        deleted = 0
        for batch in chunked(messages, IN_BATCH):
            with self._transaction() as conn:
                for m in batch:
                    cursor = conn.execute(
                        "DELETE FROM messages WHERE id = ? AND chat_id = ?",
                        (_key(m.id, m.oid), m.chat_id),
                    )
                    deleted += cursor.rowcount
        return deleted

    def delete_sessions(self, sessions: Sequence[SessionRecord], user_id: str) -> int:
        """Delete exactly these records, each only while its user_id is still this user."""
        sql = "DELETE FROM chat_sessions WHERE id = ? AND json_extract(body, '$.user_id') = ?"
        deleted = 0
        for batch in chunked(sessions, IN_BATCH):
            with self._transaction() as conn:
                for s in batch:
                    deleted += conn.execute(sql, (_key(s.id, s.oid), user_id)).rowcount
        return deleted

    def acquire_lease(self, name: str, holder: str, now: datetime, ttl: timedelta) -> str | None:
        """Take or renew the named lease (one row of rlm_locks, in one write transaction)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT holder, expires_at FROM rlm_locks WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] >= _iso(now):
                return f"{row[0]} until {row[1]}"
            conn.execute(
                "INSERT OR REPLACE INTO rlm_locks (name, holder, expires_at) VALUES (?, ?, ?)",
                (name, holder, _iso(now + ttl)),
            )
        return None

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back if this holder has it."""
        with self._locked() as conn:
            conn.execute("DELETE FROM rlm_locks WHERE name = ? AND holder = ?", (name, holder))

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
        for batch in chunked(docs, IN_BATCH):
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


def row_key(value: Any) -> str:
    """The exact key of an `_id`: an ObjectId's hex, a string as is, except that a string that
    looks like an ObjectId is marked `s:` (it is a different record from the ObjectId)."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        looks_like_oid = len(value) == 24 and all(c in hexdigits for c in value)
        return f"s:{value}" if looks_like_oid else value
    return f"v:{encode(value)}"


def _doc_key(doc: DocumentRecord) -> str:
    return _key(doc.id, doc.oid)


def _key(record_id: str, oid: bool) -> str:
    """The row key of an exact `_id` given as its string form and whether it is an ObjectId."""
    return record_id if oid else row_key(record_id)


def _row(doc: dict[str, Any]) -> tuple[str, str]:
    return row_key(doc["_id"]), encode(doc)


def _unchanged(conn: sqlite3.Connection, docs: Sequence[DocumentRecord]) -> list[DocumentRecord]:
    """Those of docs whose stored record still has the `_id` form, updated_at, status,
    minio_key and claim they were read with."""
    out = []
    for doc in docs:
        row = conn.execute("SELECT body FROM documents WHERE id = ?", (_doc_key(doc),)).fetchone()
        if row is None:
            continue
        now = document_record(decode(row[0]))
        same = (now.oid, now.updated_at, now.status, now.minio_key, now.claim)
        if same == (doc.oid, doc.updated_at, doc.status, doc.minio_key, doc.claim):
            out.append(doc)
    return out


def _references_indexed(conn: sqlite3.Connection) -> bool:
    """Whether both reference lookup tables and all six triggers that keep them are in place."""
    names = {*_REFERENCE_TABLES, *_REFERENCE_TRIGGERS}
    rows = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type IN ('table', 'trigger') "
        "AND name IN (SELECT value FROM json_each(?))",
        (json.dumps(sorted(names)),),
    )
    return bool(rows.fetchone()[0] == len(names))


def _lookup_usable(conn: sqlite3.Connection) -> bool:
    """Whether the lookup tables answer for every row: they are in place, and no session or
    message has a NULL `id` (SQLite allows one in a TEXT primary key; such a row has no owner
    key, so its references are not in the tables and only the JSON walk sees them)."""
    if not _references_indexed(conn):
        return False
    rows = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM chat_sessions WHERE id IS NULL) "
        "OR EXISTS (SELECT 1 FROM messages WHERE id IS NULL)"
    )
    return not rows.fetchone()[0]


def _rebuild_references(conn: sqlite3.Connection) -> None:
    """Drop and recreate the reference lookup tables and their triggers, filled from the rows
    (inside the caller's transaction). Names and paths come from the fixed tables above."""
    for name in _REFERENCE_TRIGGERS:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for refs, (source, paths) in _REFERENCE_TABLES.items():
        conn.execute(f"DROP TABLE IF EXISTS {refs}")
        conn.execute(f"CREATE TABLE {refs} (owner TEXT NOT NULL, doc TEXT NOT NULL)")
        conn.execute(f"CREATE INDEX {refs}_doc ON {refs} (doc)")
        conn.execute(f"CREATE INDEX {refs}_owner ON {refs} (owner)")
        # On insert the owner's old rows go too: INSERT OR REPLACE removes a row without firing
        # its delete trigger.
        fill = f"INSERT INTO {refs} (owner, doc) {_naming_leaves('NEW.id', 'NEW.body', paths)}"
        drop_old = f"DELETE FROM {refs} WHERE owner = OLD.id"  # noqa: S608
        drop_new = f"DELETE FROM {refs} WHERE owner = NEW.id"  # noqa: S608
        actions = {
            "insert": f"{drop_new}; {fill};",
            "update": f"{drop_old}; {fill};",
            "delete": f"{drop_old};",
        }
        for event, action in actions.items():
            conn.execute(
                f"CREATE TRIGGER {refs}_{event} AFTER {event.upper()} ON {source} "
                f"BEGIN {action} END"
            )
        leaves = _naming_leaves("r.id", "r.body", paths, f"{source} r, ")
        conn.execute(f"INSERT INTO {refs} (owner, doc) {leaves}")


def _naming_leaves(owner: str, body: str, paths: tuple[str, ...], source: str = "") -> str:
    """SELECT (owner, document id) of each naming leaf at these JSON paths of `body`."""
    return " UNION ".join(
        f"SELECT {owner}, t.value FROM {source}json_tree({body}, '{path}') t "  # noqa: S608
        f"WHERE {owner} IS NOT NULL AND {_NAMING}"
        for path in paths
    )


def _migrate(conn: sqlite3.Connection, table: str, columns: str) -> None:
    """v1 keyed records by str(_id); v2 keys them by their exact `_id` and adds `sid`."""
    # Table names and columns come from the fixed _TABLES above, never from data.
    conn.execute(f"CREATE TABLE {table}_v2 ({columns})")
    conn.execute(f"INSERT INTO {table}_v2 (id, body) SELECT {_KEY_SQL}, body FROM {table}")  # noqa: S608
    conn.execute(f"DROP TABLE {table}")
    conn.execute(f"ALTER TABLE {table}_v2 RENAME TO {table}")


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
