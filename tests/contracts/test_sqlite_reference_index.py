"""SQLite's reference lookup tables: always the answer the JSON walk gives, whoever writes.

`active_references` on SQLite reads the session and message paths from two tables that
triggers keep (an index by document id). These tests hold it equal to `_SCAN_REFERENCES`, the
walk over every active session's JSON, after writes that do not go through rlm: raw inserts,
body updates, `_id` changes, deletes and INSERT OR REPLACE, on every reference shape; and on
files whose triggers are missing (the walk is used until the file is reopened and rebuilt).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlm_core.adapters import sqlite_metadata
from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore, encode

NOW = datetime(2025, 1, 20, 15, 30, tzinfo=UTC)
SINCE = NOW - timedelta(hours=24)
ACTIVE_AT = datetime(2025, 1, 20, 14, 30)
STALE_AT = datetime(2025, 1, 18, 15, 30)
DOCS = [f"{i:024x}" for i in range(1, 7)]
SESSIONS = ["s1", "s2", "s3"]

# Every shape a reference takes (SPEC section 3 and the adversarial review): a string, an
# ObjectId, a doc_id field holding either, and leaves that name nothing (a number, another key).
_doc = st.sampled_from(DOCS)
_naming = st.one_of(
    _doc,
    _doc.map(ObjectId),
    _doc.map(lambda d: {"doc_id": d, "filename": "a.pdf"}),
    _doc.map(lambda d: {"doc_id": ObjectId(d)}),
)
_inert = st.one_of(
    st.integers(0, 9), _doc.map(lambda d: {"name": d}), st.none(), _doc.map(lambda d: [[d]])
)
_refs = st.one_of(st.lists(st.one_of(_naming, _inert), max_size=3), _naming, _inert)
_when = st.sampled_from([ACTIVE_AT, STALE_AT, None, "yesterday"])


@st.composite
def _session(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"_id": draw(st.sampled_from(SESSIONS))}
    when = draw(_when)
    if when is not None:
        body["updated_at"] = when
    for field in ("documents", "attached_file_ids"):
        if draw(st.booleans()):
            body[field] = draw(_refs)
    return body


@st.composite
def _message(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "_id": draw(st.sampled_from(["m1", "m2", "m3"])),
        "chat_id": draw(st.sampled_from([*SESSIONS, "gone"])),
        "file_ids": draw(_refs),
    }


_write = st.one_of(
    st.tuples(st.just("replace"), st.just("chat_sessions"), _session()),
    st.tuples(st.just("replace"), st.just("messages"), _message()),
    st.tuples(st.just("update"), st.just("chat_sessions"), _session()),
    st.tuples(st.just("update"), st.just("messages"), _message()),
    st.tuples(st.just("rekey"), st.sampled_from(["chat_sessions", "messages"]), st.none()),
    st.tuples(st.just("delete"), st.sampled_from(["chat_sessions", "messages"]), st.none()),
)


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "metadata.sqlite3"


def _scan(conn: sqlite3.Connection) -> set[str]:
    """The JSON walk's answer for every document id."""
    params = {"since": sqlite_metadata._iso(SINCE), "ids": encode(DOCS)}
    return {row[0] for row in conn.execute(sqlite_metadata._SCAN_REFERENCES, params)}


def _raw(conn: sqlite3.Connection, op: str, table: str, body: dict[str, Any] | None) -> None:
    """One write as another program would make it: plain SQL on the file, no rlm code."""
    # Table names come from the fixed strategies above.
    if op == "replace" and body is not None:
        conn.execute(
            f"INSERT OR REPLACE INTO {table} (id, body) VALUES (?, ?)",  # noqa: S608
            (body["_id"], encode(body)),
        )
    elif op == "update" and body is not None:
        conn.execute(
            f"UPDATE {table} SET body = ? WHERE id = ?",  # noqa: S608
            (encode({**body, "_id": body["_id"]}), body["_id"]),
        )
    elif op == "rekey":
        conn.execute(
            f"UPDATE OR IGNORE {table} SET id = id || 'x', "  # noqa: S608
            "body = json_set(body, '$._id', json_extract(body, '$._id') || 'x') "
            f"WHERE id = (SELECT min(id) FROM {table})"
        )
    elif op == "delete":
        conn.execute(f"DELETE FROM {table} WHERE id = (SELECT max(id) FROM {table})")  # noqa: S608


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sessions=st.lists(_session(), max_size=4),
    messages=st.lists(_message(), max_size=4),
    writes=st.lists(_write, max_size=8),
)
def test_indexed_references_equal_the_json_walk_after_any_raw_writes(
    tmp_path: Path,
    sessions: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    writes: list[tuple[str, str, dict[str, Any] | None]],
) -> None:
    path = tmp_path / f"m-{ObjectId()}.sqlite3"
    store = SqliteMetadataStore(path)
    conn = sqlite3.connect(path, isolation_level=None)
    with closing(conn):
        for table, rows in (("chat_sessions", sessions), ("messages", messages)):
            for body in rows:
                _raw(conn, "replace", table, body)
        for op, table, body in writes:
            _raw(conn, op, table, body)
        assert sqlite_metadata._references_indexed(conn)
        expected = _scan(conn)
    assert store.active_references(DOCS, SINCE) == expected
    store.close()


def test_every_reference_shape_protects_through_the_index(path: Path) -> None:
    store = SqliteMetadataStore(path)
    a, b, c, d, e, f = DOCS
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for body in (
            {"_id": "s1", "updated_at": ACTIVE_AT, "documents": [{"doc_id": ObjectId(a)}]},
            {"_id": "s2", "updated_at": ACTIVE_AT, "attached_file_ids": ObjectId(b)},
            {"_id": "s3", "updated_at": STALE_AT, "attached_file_ids": [c]},
            {"_id": "s4", "attached_file_ids": [{"name": d}, 7]},  # no updated_at: active
        ):
            _raw(conn, "replace", "chat_sessions", body)
        _raw(conn, "replace", "messages", {"_id": "m1", "chat_id": "s4", "file_ids": [e]})
        _raw(conn, "replace", "messages", {"_id": "m2", "chat_id": "s3", "file_ids": [f]})
        assert _scan(conn) == {a, b, e}
    assert store.active_references(DOCS, SINCE) == {a, b, e}
    store.close()


def test_a_session_made_stale_or_emptied_stops_protecting_at_once(path: Path) -> None:
    store = SqliteMetadataStore(path)
    a = DOCS[0]
    session = {"_id": "s1", "updated_at": ACTIVE_AT, "attached_file_ids": [a]}
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        _raw(conn, "replace", "chat_sessions", session)
        assert store.active_references([a], SINCE) == {a}
        _raw(conn, "update", "chat_sessions", {**session, "attached_file_ids": []})
        assert store.active_references([a], SINCE) == set()
        _raw(conn, "update", "chat_sessions", session)
        assert store.active_references([a], SINCE) == {a}
        _raw(conn, "delete", "chat_sessions", None)
        assert store.active_references([a], SINCE) == set()
        # A deleted row's references go with it (the table does not grow with old sessions).
        assert conn.execute("SELECT count(*) FROM rlm_session_refs").fetchone() == (0,)
    store.close()


def test_a_file_without_triggers_is_walked_then_rebuilt_when_reopened(path: Path) -> None:
    store = SqliteMetadataStore(path)
    a, b = DOCS[:2]
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        _raw(conn, "replace", "chat_sessions", {"_id": "s1", "attached_file_ids": [a]})
        # Another program rebuilds the table by hand: its triggers go with it.
        conn.execute("DROP TRIGGER rlm_session_refs_insert")
        _raw(conn, "replace", "chat_sessions", {"_id": "s2", "documents": [{"doc_id": b}]})
        assert not sqlite_metadata._references_indexed(conn)
        # The lookup table misses s2's reference; the open store walks the JSON instead.
        assert store.active_references([a, b], SINCE) == {a, b}
        store.close()
        reopened = SqliteMetadataStore(path)
        assert sqlite_metadata._references_indexed(conn)
        owners = conn.execute("SELECT owner, doc FROM rlm_session_refs ORDER BY owner").fetchall()
        assert owners == [("s1", a), ("s2", b)]
        assert reopened.active_references([a, b], SINCE) == {a, b}
        reopened.close()


def test_a_dropped_lookup_table_is_walked_not_trusted(path: Path) -> None:
    store = SqliteMetadataStore(path)
    a = DOCS[0]
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        _raw(conn, "replace", "messages", {"_id": "m1", "chat_id": "s1", "file_ids": [a]})
        _raw(conn, "replace", "chat_sessions", {"_id": "s1", "updated_at": ACTIVE_AT})
        for name in sqlite_metadata._REFERENCE_TRIGGERS:
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("DROP TABLE rlm_message_refs")
        assert store.active_references([a], SINCE) == {a}
    store.close()


def test_a_row_with_a_null_id_is_written_and_its_references_still_protect(path: Path) -> None:
    # SQLite lets a TEXT primary key hold NULL: such a row has no owner key in the lookup
    # tables, so while one exists every read walks the JSON.
    store = SqliteMetadataStore(path)
    a, b = DOCS[:2]
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        session = {"_id": "s1", "updated_at": ACTIVE_AT, "attached_file_ids": [a]}
        conn.execute("INSERT INTO chat_sessions (id, body) VALUES (NULL, ?)", (encode(session),))
        message = {"_id": "m1", "chat_id": "s1", "file_ids": [b]}
        conn.execute("INSERT INTO messages (id, body) VALUES (NULL, ?)", (encode(message),))
        assert not sqlite_metadata._lookup_usable(conn)
        assert _scan(conn) == {a, b}
        assert store.active_references([a, b], SINCE) == {a, b}
        conn.execute("DELETE FROM chat_sessions WHERE id IS NULL")
        conn.execute("DELETE FROM messages WHERE id IS NULL")
        assert sqlite_metadata._lookup_usable(conn)
    store.close()


def test_a_body_that_is_not_json_is_refused_as_before(path: Path) -> None:
    # The generated-column indexes already refused such a write; the triggers change nothing.
    store = SqliteMetadataStore(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for table in ("chat_sessions", "messages"):
            with pytest.raises(sqlite3.OperationalError, match="malformed JSON"):
                conn.execute(f"INSERT INTO {table} (id, body) VALUES ('x', '{{oops')")  # noqa: S608
    store.close()
