"""MetadataStore contract: the Mongo API (mongomock) and the embedded SQLite store behave alike."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import ObjectId
from pymongo.database import Database

from rlm_core.adapters import mongo_metadata
from rlm_core.adapters.mongo_metadata import MongoMetadataStore, connect_mongo
from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore, decode, encode
from rlm_core.clock import FakeClock
from rlm_core.ports import DuplicateDocumentError, MetadataStore, NewDocument, StoreError
from tests.services import free_port

NOW = datetime(2025, 1, 20, 15, 30, tzinfo=UTC)
SINCE = NOW - timedelta(hours=24)
ACTIVE_AT = datetime(2025, 1, 20, 14, 30)  # naive UTC, as pymongo returns them
STALE_AT = datetime(2025, 1, 18, 15, 30)
HASH = "ab" * 32
PATHS = ("documents", "attached_file_ids", "messages", "conversation_id")


@pytest.fixture(params=["mongo", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    """An adapter over an empty database, indexes in place."""
    adapter: MetadataStore
    if request.param == "mongo":
        adapter = MongoMetadataStore(request.getfixturevalue("mongo_db"))
    else:
        adapter = SqliteMetadataStore(tmp_path / "metadata.sqlite3")
    adapter.ensure_indexes()
    yield adapter
    adapter.close()


def _new(user: str = "u1", file_hash: str = HASH, created: datetime = NOW) -> NewDocument:
    return NewDocument(
        user_id=user,
        filename="Informe anual ñ.pdf",
        content_type="application/pdf",
        size_bytes=2048,
        minio_bucket="documents",
        minio_key=f"{file_hash[:8]}/Informe anual ñ.pdf",
        file_hash=file_hash,
        status="ready",
        created_at=created,
    )


def _raw_doc(doc_id: Any = None, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": ObjectId() if doc_id is None else doc_id,
        "user_id": "u1",
        "filename": "a.pdf",
        "content_type": "application/pdf",
        "size_bytes": 10,
        "minio_bucket": "documents",
        "minio_key": "k/a.pdf",
        "status": "ready",
        "conversation_id": None,
        "created_at": STALE_AT,
        "updated_at": STALE_AT,
        "metadata": {"file_hash": None},
    }
    doc.update(fields)
    return doc


def _session(session_id: str, updated_at: Any, **fields: Any) -> dict[str, Any]:
    return {
        "_id": session_id,
        "user_id": "u1",
        "created_at": STALE_AT,
        "updated_at": updated_at,
        "documents": [],
        "attached_file_ids": [],
        **fields,
    }


def _link(store: MetadataStore, path: str, doc_id: str, session_id: str, at: datetime) -> None:
    """A session referencing doc_id along one path (conversation_id lives on the document)."""
    fields: dict[str, Any] = {}
    if path == "documents":
        fields["documents"] = [{"doc_id": doc_id, "filename": "a.pdf"}]
    elif path == "attached_file_ids":
        fields["attached_file_ids"] = [doc_id]
    store.insert_raw("chat_sessions", [_session(session_id, at, **fields)])
    if path == "messages":
        message = {"chat_id": session_id, "file_ids": [doc_id], "created_at": at}
        store.insert_raw("messages", [message])


# ---------------------------------------------------------------- insert and dedup


def test_insert_document_then_find_by_hash(store: MetadataStore) -> None:
    doc_id = store.insert_document(_new())
    assert ObjectId.is_valid(doc_id)
    record = store.find_by_hash("u1", HASH)
    assert record is not None
    assert record.id == doc_id
    assert (record.user_id, record.status, record.file_hash) == ("u1", "ready", HASH)
    assert (record.created_at, record.updated_at) == (NOW, NOW)
    assert (record.minio_bucket, record.minio_key) == (
        "documents",
        f"{HASH[:8]}/Informe anual ñ.pdf",
    )
    assert (record.size_bytes, record.conversation_id, record.problem) == (2048, None, None)
    assert store.find_by_hash("u2", HASH) is None
    assert store.find_by_hash("u1", "cd" * 32) is None


def test_same_user_same_hash_is_a_duplicate(store: MetadataStore) -> None:
    store.insert_document(_new())
    with pytest.raises(DuplicateDocumentError):
        store.insert_document(_new(created=NOW + timedelta(hours=1)))
    assert store.stats().total_items == 1


def test_same_hash_for_another_user_is_allowed(store: MetadataStore) -> None:
    first = store.insert_document(_new("u1"))
    second = store.insert_document(_new("u2"))
    assert first != second
    assert store.stats().total_items == 2


def test_documents_without_a_hash_never_collide(store: MetadataStore) -> None:
    store.insert_raw("documents", [_raw_doc(), _raw_doc(), _raw_doc(metadata={})])
    assert store.stats().total_items == 3


# ---------------------------------------------------------------- touch, read, iterate


def test_touch_document_updates_updated_at(store: MetadataStore, clock: FakeClock) -> None:
    doc_id = store.insert_document(_new(created=clock.now()))
    later = clock.advance(hours=5, microseconds=123456)
    store.touch_document(doc_id, later)
    record = store.get_documents([doc_id])[doc_id]
    assert record.created_at == NOW
    # BSON datetimes hold milliseconds; both stores truncate alike.
    assert record.updated_at == later.replace(microsecond=123000)


def test_relink_document_points_at_the_new_object(store: MetadataStore, clock: FakeClock) -> None:
    doc_id = store.insert_document(_new(created=clock.now()))
    later = clock.advance(days=8)
    store.relink_document(doc_id, "new-uuid/file.pdf", 4321, later)
    record = store.get_documents([doc_id])[doc_id]
    assert (record.minio_key, record.size_bytes, record.status) == (
        "new-uuid/file.pdf",
        4321,
        "processing",
    )
    assert record.updated_at == later.replace(microsecond=(later.microsecond // 1000) * 1000)
    assert record.created_at == NOW


def test_touch_document_finds_legacy_string_ids(store: MetadataStore) -> None:
    store.insert_raw("documents", [_raw_doc("legacy-1")])
    store.touch_document("legacy-1", NOW)
    store.touch_document("missing-id", NOW)
    assert store.get_documents(["legacy-1"])["legacy-1"].updated_at == NOW


def test_get_documents_returns_only_existing_ids(store: MetadataStore) -> None:
    oid = ObjectId()
    store.insert_raw("documents", [_raw_doc(oid), _raw_doc("legacy-2")])
    found = store.get_documents([str(oid), "legacy-2", str(ObjectId()), "nope", str(oid)])
    assert set(found) == {str(oid), "legacy-2"}
    assert found[str(oid)].id == str(oid)


def test_iter_documents_batches_every_document_once(store: MetadataStore) -> None:
    assert list(store.iter_documents(3)) == []
    ids = [ObjectId() for _ in range(10)]
    store.insert_raw("documents", [_raw_doc(i) for i in ids])
    batches = list(store.iter_documents(3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    seen = [r.id for b in batches for r in b]
    assert sorted(seen) == sorted(str(i) for i in ids)
    assert all(r.problem is None for b in batches for r in b)


def test_malformed_documents_surface_with_a_problem(store: MetadataStore) -> None:
    missing_created = _raw_doc("no-created")
    del missing_created["created_at"]
    store.insert_raw(
        "documents",
        [
            missing_created,
            _raw_doc("str-created", created_at="2024-01-01T00:00:00"),
            _raw_doc("int-user", user_id=42),
            _raw_doc("bad-size", size_bytes="10 KB", metadata="junk"),
            _raw_doc("bad-hash", metadata={"file_hash": 12}),
            _raw_doc("float-size", size_bytes=2048.0),
            _raw_doc("fine"),
        ],
    )
    records = {r.id: r for b in store.iter_documents(2) for r in b}
    assert records["no-created"].problem == "created_at is missing"
    assert records["no-created"].created_at is None
    assert records["str-created"].problem == "created_at is str, expected datetime"
    assert records["int-user"].problem == "user_id is int, expected str"
    assert records["int-user"].user_id is None
    assert records["bad-size"].problem == "size_bytes is str, expected int"
    assert records["bad-size"].file_hash is None
    assert records["bad-hash"].problem == "metadata.file_hash is int, expected str"
    assert (records["float-size"].size_bytes, records["float-size"].problem) == (2048, None)
    assert records["fine"].problem is None


# ---------------------------------------------------------------- references


@pytest.mark.parametrize("path", PATHS)
def test_active_references_follow_each_path(store: MetadataStore, path: str) -> None:
    live, stale, lone = (str(ObjectId()) for _ in range(3))
    sessions = {live: "s-active", stale: "s-stale"}
    store.insert_raw(
        "documents",
        [
            _raw_doc(ObjectId(d), conversation_id=sessions.get(d) if path == PATHS[3] else None)
            for d in (live, stale, lone)
        ],
    )
    _link(store, path, live, "s-active", ACTIVE_AT)
    _link(store, path, stale, "s-stale", STALE_AT)
    assert store.active_references([live, stale, lone], SINCE) == {live}
    assert store.active_references([live, stale, lone], NOW) == set()
    # The boundary is inclusive: updated_at == active_since is active.
    assert store.active_references([stale], STALE_AT.replace(tzinfo=UTC)) == {stale}


def test_active_references_cross_in_batches(store: MetadataStore) -> None:
    ids = [str(ObjectId()) for _ in range(2500)]
    store.insert_raw(
        "chat_sessions",
        [
            _session("s1", ACTIVE_AT, attached_file_ids=[ids[5], ids[1500]]),
            _session("s2", ACTIVE_AT, documents=[{"doc_id": ids[2400]}]),
        ],
    )
    store.insert_raw("messages", [{"chat_id": "s1", "file_ids": [ids[2499], "other"]}])
    assert store.active_references(ids, SINCE) == {ids[5], ids[1500], ids[2400], ids[2499]}


def test_messy_sessions_and_messages_never_crash(store: MetadataStore) -> None:
    a, b, c, d, e = (str(ObjectId()) for _ in range(5))
    store.insert_raw(
        "chat_sessions",
        [
            _session("m1", ACTIVE_AT, documents="junk", attached_file_ids=None),
            _session("m2", ACTIVE_AT, documents=[5, "x", {"doc_id": 7}, [a], {"doc_id": a}]),
            _session("m3", "2025-01-20T15:00:00", attached_file_ids=[b]),
            {"_id": "m4", "attached_file_ids": [c]},
            _session("m5", ACTIVE_AT, attached_file_ids=e),  # a lone string matches, as in Mongo
        ],
    )
    store.insert_raw(
        "messages",
        [{"chat_id": 5, "file_ids": [d]}, {"chat_id": "m1"}, {"chat_id": "m1", "file_ids": 3}],
    )
    # m3 and m4 have no readable updated_at: taken as active, so they protect b and c.
    assert store.active_references([a, b, c, d, e], SINCE) == {a, b, c, e}


def test_active_sessions(store: MetadataStore) -> None:
    store.insert_raw(
        "chat_sessions",
        [
            _session("s-active", ACTIVE_AT),
            _session("s-edge", SINCE.replace(tzinfo=None)),
            _session("s-stale", STALE_AT),
            _session("s-str", "2025-01-20T15:00:00"),
            {"_id": "s-missing", "user_id": "u1"},
        ],
    )
    asked = ["s-active", "s-edge", "s-stale", "s-str", "s-missing", "nope"]
    # A session whose updated_at is missing or not a date is taken as active: it protects.
    assert store.active_sessions(asked, SINCE) == {"s-active", "s-edge", "s-str", "s-missing"}
    assert store.unreadable_sessions() == 2
    assert store.active_sessions([], SINCE) == set()


def test_referenced_object_keys(store: MetadataStore) -> None:
    no_bucket = _raw_doc(minio_key="k2")
    del no_bucket["minio_bucket"]
    store.insert_raw(
        "documents",
        [
            _raw_doc(minio_key="k1"),
            no_bucket,
            _raw_doc(minio_key="k3", minio_bucket="other"),
            _raw_doc(minio_key="k4", minio_bucket=None),
            _raw_doc(minio_key=5),
        ],
    )
    keys = ["k1", "k2", "k3", "k4", "k5", "5"]
    assert store.referenced_object_keys("documents", keys) == {"k1", "k2", "k4"}
    assert store.referenced_object_keys("other", keys) == {"k3"}
    assert store.referenced_object_keys("documents", []) == set()


def test_referenced_object_keys_leaves_out_excluded_documents(store: MetadataStore) -> None:
    first, second, legacy = ObjectId(), ObjectId(), "legacy-string-id"
    store.insert_raw(
        "documents",
        [
            _raw_doc(first, minio_key="k1"),
            _raw_doc(second, minio_key="k1"),
            _raw_doc(legacy, minio_key="k2"),
        ],
    )
    keys = ["k1", "k2"]
    assert store.referenced_object_keys("documents", keys, [str(first)]) == {"k1", "k2"}
    assert store.referenced_object_keys("documents", keys, [str(first), str(second)]) == {"k2"}
    assert store.referenced_object_keys("documents", keys, [str(second), legacy]) == {"k1"}
    assert (
        store.referenced_object_keys("documents", keys, [str(first), str(second), legacy]) == set()
    )


# ---------------------------------------------------------------- delete, stats, raw


def test_delete_documents_is_idempotent(store: MetadataStore) -> None:
    first = store.insert_document(_new("u1"))
    second = store.insert_document(_new("u2"))
    store.insert_raw("documents", [_raw_doc("legacy-3"), _raw_doc()])
    assert store.delete_documents([first, second, "legacy-3", str(ObjectId())]) == 3
    assert store.delete_documents([first, second, "legacy-3"]) == 0
    assert store.get_documents([first, second, "legacy-3"]) == {}
    assert store.stats().total_items == 1
    assert store.insert_document(_new("u1")) != first  # the hash is free again


def test_stats_counts_and_oldest(store: MetadataStore) -> None:
    assert (store.stats().total_items, store.stats().size_bytes) == (0, 0)
    assert store.stats().oldest_created_at is None
    missing = _raw_doc()
    del missing["created_at"]
    store.insert_raw(
        "documents",
        [
            _raw_doc(created_at=datetime(2024, 3, 1)),
            _raw_doc(created_at=datetime(2023, 6, 15, 8, 0, 0, 250000)),
            _raw_doc(created_at="2001-01-01T00:00:00"),
            missing,
        ],
    )
    stats = store.stats()
    assert stats.total_items == 4
    assert stats.size_bytes > 0
    assert stats.oldest_created_at == datetime(2023, 6, 15, 8, 0, 0, 250000, tzinfo=UTC)
    assert not stats.sampled
    store.insert_raw("documents", [_raw_doc(filename="x" * 10_000)])
    assert store.stats().size_bytes > stats.size_bytes + 10_000


def test_insert_raw_round_trips_mongo_shapes(store: MetadataStore) -> None:
    oid = ObjectId()
    raw = _raw_doc(oid, created_at=datetime(2024, 5, 6, 7, 8, 9, 10000), updated_at=None)
    store.insert_raw("documents", [raw])
    assert raw["_id"] == oid
    record = store.get_documents([str(oid)])[str(oid)]
    assert record.id == str(oid)
    assert record.created_at == datetime(2024, 5, 6, 7, 8, 9, 10000, tzinfo=UTC)
    assert record.updated_at is None
    assert record.problem is None
    session = _session("8c1d7a0e-5d3b-4f8e-9a51-0f9a1c2b3d4e", ACTIVE_AT)
    messages = [{"chat_id": session["_id"], "file_ids": [str(oid)]}]
    store.insert_raw("chat_sessions", [session])
    store.insert_raw("messages", messages)
    assert "_id" not in messages[0]  # the caller's dicts are not changed
    assert store.active_sessions([session["_id"]], SINCE) == {session["_id"]}
    assert store.active_references([str(oid)], SINCE) == {str(oid)}


def test_insert_raw_rejects_unknown_collections(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match="users"):
        store.insert_raw("users", [{"_id": "x"}])
    store.insert_raw("messages", [])


# ---------------------------------------------------------------- Mongo adapter only


def test_mongo_indexes(mongo_db: Database[Any]) -> None:
    MongoMetadataStore(mongo_db).ensure_indexes()
    MongoMetadataStore(mongo_db).ensure_indexes()
    unique = mongo_db["documents"].index_information()["rlm_user_file_hash"]
    assert unique["unique"] is True
    assert unique["partialFilterExpression"] == {"metadata.file_hash": {"$type": "string"}}
    assert "chat_id_1" in mongo_db["messages"].index_information()
    assert "file_ids_1" in mongo_db["messages"].index_information()
    assert "updated_at_1" in mongo_db["chat_sessions"].index_information()


def test_mongo_configured_collection_names(mongo_db: Database[Any]) -> None:
    store = MongoMetadataStore(mongo_db, documents="docs", sessions="chats", messages="msgs")
    store.insert_raw("chat_sessions", [_session("s1", ACTIVE_AT)])
    store.insert_raw("documents", [_raw_doc("d1")])
    assert mongo_db["chats"].count_documents({}) == 1
    assert mongo_db["docs"].count_documents({}) == 1
    assert store.active_sessions(["s1"], SINCE) == {"s1"}


def test_mongo_size_is_exact_bson_bytes_without_collstats(mongo_db: Database[Any]) -> None:
    store = MongoMetadataStore(mongo_db)
    docs = [_raw_doc() for _ in range(5)]
    store.insert_raw("documents", docs)
    exact = sum(len(bson.encode(d)) for d in mongo_db["documents"].find({}))
    assert (store.stats().size_bytes, store.stats().sampled) == (exact, False)


def test_mongo_size_is_sampled_past_the_limit(
    mongo_db: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_metadata, "SIZE_SAMPLE", 5)
    store = MongoMetadataStore(mongo_db)
    store.insert_raw("documents", [_raw_doc() for _ in range(40)])
    exact = sum(len(bson.encode(d)) for d in mongo_db["documents"].find({}))
    stats = store.stats()
    assert stats.sampled
    assert abs(stats.size_bytes - exact) <= exact * 0.05


def test_connect_mongo_sets_timeouts_and_naive_datetimes() -> None:
    db = connect_mongo("mongodb://127.0.0.1:1", "rag", timeout=2.5)
    try:
        assert db.name == "rag"
        assert db.client.options.server_selection_timeout == 2.5
        assert db.client.options.pool_options.connect_timeout == 2.5
        assert db.client.options.pool_options.socket_timeout == 2.5
        assert db.codec_options.tz_aware is False
    finally:
        db.client.close()


def test_unreachable_mongo_is_a_store_error() -> None:
    db = connect_mongo(f"mongodb://127.0.0.1:{free_port()}", "rag", timeout=0.3)
    store = MongoMetadataStore(db)
    try:
        with pytest.raises(StoreError, match="stats"):
            store.stats()
        with pytest.raises(StoreError, match="iter_documents"):
            list(store.iter_documents(10))
    finally:
        db.client.close()


# ---------------------------------------------------------------- SQLite adapter only


def test_sqlite_uses_wal_and_is_shared_between_store_objects(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite3"
    first, second = SqliteMetadataStore(path), SqliteMetadataStore(path)
    doc_id = first.insert_document(_new())
    assert second.get_documents([doc_id])[doc_id].file_hash == HASH
    with pytest.raises(DuplicateDocumentError):
        second.insert_document(_new())
    first.close()
    second.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reopened = SqliteMetadataStore(path)
    assert reopened.stats().total_items == 1
    reopened.close()


def test_sqlite_concurrent_uploads_of_one_file_leave_one_document(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite3"
    stores = [SqliteMetadataStore(path) for _ in range(8)]
    outcomes: list[str] = []
    start = threading.Barrier(len(stores))

    def upload(store: SqliteMetadataStore) -> None:
        start.wait()
        try:
            store.insert_document(_new())
            outcomes.append("inserted")
        except DuplicateDocumentError:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=upload, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["duplicate"] * 7 + ["inserted"]
    assert stores[0].stats().total_items == 1
    for store in stores:
        store.close()


def test_sqlite_json_keeps_bson_types() -> None:
    oid = ObjectId()
    value = {"_id": oid, "at": datetime(2024, 1, 2, 3, 4, 5, 678999), "l": [{"$x": 1}, None]}
    text = encode(value)
    assert '"$oid"' in text
    assert '"$date": "2024-01-02T03:04:05.678Z"' in text
    assert decode(text) == {**value, "at": datetime(2024, 1, 2, 3, 4, 5, 678000)}
