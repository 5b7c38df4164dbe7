"""The port methods per-user erasure needs, on every adapter: the Mongo API (mongomock) and the
embedded SQLite store; Qdrant's scan (local mode) and filter (server) strategies."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from qdrant_client import QdrantClient

from rlm_core.adapters.mongo_metadata import MongoMetadataStore
from rlm_core.adapters.qdrant_vectors import QdrantVectorStore
from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore
from rlm_core.ports import MessageRecord, MetadataStore, PointPin, SessionRecord, VectorPoint
from rlm_core.seeding import metadata_seeder, vector_seeder

AT = datetime(2025, 1, 20, 14, 30)
OID = "65a1b2c3d4e5f60718293a4b"  # an ObjectId's hex, also used as a plain string id


@pytest.fixture(params=["mongo", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    """Each metadata adapter over an empty database, indexes in place."""
    adapter: MetadataStore
    if request.param == "mongo":
        adapter = MongoMetadataStore(request.getfixturevalue("mongo_db"))
    else:
        adapter = SqliteMetadataStore(tmp_path / "metadata.sqlite3")
    adapter.ensure_indexes()
    yield adapter
    adapter.close()


def doc(doc_id: Any, user: Any) -> dict[str, Any]:
    return {
        "_id": doc_id,
        "user_id": user,
        "minio_bucket": "documents",
        "minio_key": f"k/{doc_id}",
        "status": "ready",
        "created_at": AT,
        "updated_at": AT,
        "metadata": {"file_hash": uuid.uuid4().hex},
    }


def session(session_id: Any, user: Any) -> dict[str, Any]:
    return {"_id": session_id, "user_id": user, "updated_at": AT, "documents": []}


def message(message_id: Any, chat_id: Any) -> dict[str, Any]:
    return {"_id": message_id, "chat_id": chat_id, "file_ids": [], "created_at": AT}


def test_documents_of_user_is_an_exact_string_match(store: MetadataStore) -> None:
    ours = [ObjectId(), ObjectId()]
    metadata_seeder(store).insert_raw(
        "documents",
        [
            doc(ours[0], "alice"),
            doc(ObjectId(), "bob"),
            doc(ours[1], "alice"),
            doc(ObjectId(), ["alice", "bob"]),  # names no single owner
            doc(ObjectId(), "Alice"),
            doc(ObjectId(), " alice"),
        ],
    )
    found = store.documents_of_user("alice")
    assert sorted(d.identity for d in found) == sorted((str(o), True) for o in ours)
    assert all(d.user_id == "alice" and d.file_hash for d in found)
    assert store.documents_of_user("nobody") == []


def test_sessions_of_user_and_find_sessions_name_exact_ids(store: MetadataStore) -> None:
    metadata_seeder(store).insert_raw(
        "chat_sessions",
        [
            session("s-alice", "alice"),
            session(ObjectId(OID), "alice"),
            session(OID, "bob"),  # the string twin of alice's ObjectId session
            session("s-bob", "bob"),
            session("s-none", None),
        ],
    )
    mine = store.sessions_of_user("alice")
    assert sorted(s.identity for s in mine) == [
        ("65a1b2c3d4e5f60718293a4b", True),
        ("s-alice", False),
    ]
    both = store.find_sessions([OID, "s-none", "missing"])
    assert sorted((s.identity, s.user_id) for s in both) == [
        ((OID, False), "bob"),
        ((OID, True), "alice"),
        (("s-none", False), None),
    ]


def test_messages_of_sessions_read_string_and_objectid_chat_ids(store: MetadataStore) -> None:
    m1, m2, m3 = ObjectId(), ObjectId(), ObjectId()
    metadata_seeder(store).insert_raw(
        "messages",
        [
            message(m1, "s-alice"),
            message(m2, ObjectId(OID)),
            message(m3, "s-bob"),
            message(ObjectId(), ["s-alice"]),  # a list names no one session
        ],
    )
    found = store.messages_of_sessions(["s-alice", OID])
    assert sorted((m.id, m.oid, m.chat_id) for m in found) == sorted(
        [(str(m1), True, "s-alice"), (str(m2), True, OID)]
    )


def test_delete_messages_takes_exact_ids_still_in_their_session(store: MetadataStore) -> None:
    kept, gone = ObjectId(), ObjectId()
    metadata_seeder(store).insert_raw(
        "messages", [message(kept, "s-bob"), message(gone, "s-alice")]
    )
    moved = MessageRecord(str(kept), True, "s-alice")  # read in alice's session, now bob's
    twin = MessageRecord(str(gone), False, "s-alice")  # the string twin of an ObjectId id
    assert store.delete_messages([moved, twin]) == 0
    assert store.delete_messages([MessageRecord(str(gone), True, "s-alice")]) == 1
    assert [m.id for m in store.messages_of_sessions(["s-alice", "s-bob"])] == [str(kept)]


def test_delete_sessions_takes_exact_ids_still_of_the_user(store: MetadataStore) -> None:
    metadata_seeder(store).insert_raw(
        "chat_sessions",
        [session(ObjectId(OID), "alice"), session(OID, "bob"), session("s-x", "bob")],
    )
    assert store.delete_sessions([SessionRecord("s-x", False, "alice")], "alice") == 0
    assert store.delete_sessions([SessionRecord(OID, True, "alice")], "alice") == 1
    assert sorted(s.identity for s in store.find_sessions([OID, "s-x"])) == [
        (OID, False),
        ("s-x", False),
    ]


# ---------------------------------------------------------------- vectors


@pytest.fixture(params=["local-scan", "local-filter"])
def vectors(request: pytest.FixtureRequest) -> QdrantVectorStore:
    """Both delete strategies over one local collection."""
    client: QdrantClient = request.getfixturevalue("qdrant_client")
    store = QdrantVectorStore(
        client, "rag_documents", 8, scan_deletes=request.param == "local-scan"
    )
    store.ensure_collection()
    return store


def point(name: str, document_id: Any, session_id: Any) -> VectorPoint:
    payload = {"document_id": document_id, "session_id": session_id, "created_at": 1.0}
    point_id = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
    return VectorPoint(point_id, [random.random() for _ in range(8)], payload)


def ids(*points: VectorPoint) -> set[str]:
    return {p.point_id for p in points}


def test_points_of_finds_by_document_or_session_exactly(vectors: QdrantVectorStore) -> None:
    by_doc = point("a", "d1", "upload_d1")
    by_session = point("b", "other-doc", "s1")
    both = point("c", "d1", "s1")
    listed = point("d", ["d1"], ["s1"])  # a list is no exact match
    foreign = point("e", "d2", "s2")
    vector_seeder(vectors).upsert([by_doc, by_session, both, listed, foreign])
    found = vectors.points_of(["d1"], ["s1"])
    assert {p.point_id for p in found} == ids(by_doc, by_session, both)
    assert len(found) == 3
    assert vectors.points_of([], []) == []


def test_delete_pinned_goes_only_while_every_pin_holds(vectors: QdrantVectorStore) -> None:
    doc_pinned = point("a", "d1", "s9")
    session_pinned = point("b", None, "s1")
    both_pinned = point("c", "d3", "s1")
    vector_seeder(vectors).upsert([doc_pinned, session_pinned, both_pinned])
    stale = [
        PointPin(doc_pinned.point_id, None, "d-other"),
        PointPin(session_pinned.point_id, "s-other", None),
        PointPin(both_pinned.point_id, "s1", "d-other"),
    ]
    assert vectors.delete_pinned(stale) == 0
    fresh = [
        PointPin(doc_pinned.point_id, None, "d1"),
        PointPin(session_pinned.point_id, "s1", None),
        PointPin(both_pinned.point_id, "s1", "d3"),
    ]
    assert vectors.delete_pinned(fresh) == 3
    assert vectors.count() == 0
