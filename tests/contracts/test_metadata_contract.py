"""MetadataStore contract: the Mongo API (mongomock), the embedded SQLite store and the in-memory
fake (tests/fakes/) behave alike."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import mongomock
import pytest
from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import OperationFailure

from rlm_core.adapters import mongo_metadata
from rlm_core.adapters.mongo_metadata import MongoMetadataStore, connect_mongo
from rlm_core.adapters.sqlite_metadata import SCHEMA_VERSION, SqliteMetadataStore, decode, encode
from rlm_core.clock import FakeClock
from rlm_core.ports import (
    DocumentRecord,
    DuplicateDocumentError,
    MetadataStore,
    NewDocument,
    ReferencesUnknownError,
    StoreError,
    Touch,
)
from rlm_core.seeding import metadata_seeder
from tests.fakes import MemoryMetadata, MemoryMongo
from tests.services import free_port

NOW = datetime(2025, 1, 20, 15, 30, tzinfo=UTC)
SINCE = NOW - timedelta(hours=24)
ACTIVE_AT = datetime(2025, 1, 20, 14, 30)  # naive UTC, as pymongo returns them
STALE_AT = datetime(2025, 1, 18, 15, 30)
HASH = "ab" * 32
PATHS = ("documents", "attached_file_ids", "messages", "conversation_id")


@pytest.fixture(params=["mongo", "sqlite", "fakes"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    """An adapter over an empty database, indexes in place."""
    adapter: MetadataStore
    if request.param == "mongo":
        adapter = MongoMetadataStore(request.getfixturevalue("mongo_db"))
    elif request.param == "fakes":
        adapter = MemoryMetadata(MemoryMongo())
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


def _session(session_id: Any, updated_at: Any, **fields: Any) -> dict[str, Any]:
    return {
        "_id": session_id,
        "user_id": "u1",
        "created_at": STALE_AT,
        "updated_at": updated_at,
        "documents": [],
        "attached_file_ids": [],
        **fields,
    }


def _read(store: MetadataStore, doc_id: str, oid: bool = True) -> DocumentRecord:
    """The record with this exact `_id` (an ObjectId when oid, else the string), as read now."""
    (record,) = [r for r in store.find_documents([doc_id]) if r.oid is oid]
    return record


def _gone(doc_id: str, oid: bool) -> DocumentRecord:
    """A record as once read whose `_id` no longer exists."""
    return DocumentRecord(
        doc_id, "u1", "ready", None, None, "documents", "k", 1, None, None, oid=oid
    )


def _twins(
    store: MetadataStore, oid_key: str = "k/oid.pdf", str_key: str = "k/str.pdf"
) -> tuple[DocumentRecord, DocumentRecord]:
    """Two records with the same hex, `_id` as an ObjectId and as the string (SPEC 4.1 (6))."""
    hex_id = str(ObjectId())
    metadata_seeder(store).insert_raw(
        "documents",
        [_raw_doc(ObjectId(hex_id), minio_key=oid_key), _raw_doc(hex_id, minio_key=str_key)],
    )
    return _read(store, hex_id, oid=True), _read(store, hex_id, oid=False)


def _pair(store: MetadataStore) -> tuple[DocumentRecord, DocumentRecord]:
    """Two ordinary records, as read."""
    first, second = ObjectId(), ObjectId()
    metadata_seeder(store).insert_raw(
        "documents",
        [_raw_doc(first, minio_key="k/1.pdf"), _raw_doc(second, minio_key="k/2.pdf")],
    )
    return _read(store, str(first)), _read(store, str(second))


def _link(store: MetadataStore, path: str, doc_id: str, session_id: str, at: datetime) -> None:
    """A session referencing doc_id along one path (conversation_id lives on the document)."""
    fields: dict[str, Any] = {}
    if path == "documents":
        fields["documents"] = [{"doc_id": doc_id, "filename": "a.pdf"}]
    elif path == "attached_file_ids":
        fields["attached_file_ids"] = [doc_id]
    metadata_seeder(store).insert_raw("chat_sessions", [_session(session_id, at, **fields)])
    if path == "messages":
        message = {"chat_id": session_id, "file_ids": [doc_id], "created_at": at}
        metadata_seeder(store).insert_raw("messages", [message])


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
    metadata_seeder(store).insert_raw("documents", [_raw_doc(), _raw_doc(), _raw_doc(metadata={})])
    assert store.stats().total_items == 3


# ---------------------------------------------------------------- touch, read, iterate


def test_touch_document_updates_updated_at(store: MetadataStore, clock: FakeClock) -> None:
    doc_id = store.insert_document(_new(created=clock.now()))
    later = clock.advance(hours=5, microseconds=123456)
    assert store.touch_document(_read(store, doc_id), later) is Touch.TOUCHED
    record = store.get_documents([doc_id])[doc_id]
    assert record.created_at == NOW
    # BSON datetimes hold milliseconds; both stores truncate alike.
    assert record.updated_at == later.replace(microsecond=123000)


@pytest.mark.parametrize("status", ["processing", "uploading"])
def test_relink_document_points_at_the_new_object(
    store: MetadataStore, clock: FakeClock, status: str
) -> None:
    doc_id = store.insert_document(_new(created=clock.now()))
    later = clock.advance(days=8)
    assert store.relink_document(_read(store, doc_id), "new-uuid/file.pdf", 4321, later, status)
    record = store.get_documents([doc_id])[doc_id]
    assert (record.minio_key, record.size_bytes, record.status) == (
        "new-uuid/file.pdf",
        4321,
        status,
    )
    assert record.updated_at == later.replace(microsecond=(later.microsecond // 1000) * 1000)
    assert record.created_at == NOW


def test_touch_document_finds_legacy_string_ids(store: MetadataStore) -> None:
    metadata_seeder(store).insert_raw("documents", [_raw_doc("legacy-1")])
    assert store.touch_document(_read(store, "legacy-1", oid=False), NOW) is Touch.TOUCHED
    assert store.get_documents(["legacy-1"])["legacy-1"].updated_at == NOW


def test_touch_and_relink_of_a_gone_record(store: MetadataStore) -> None:
    gone = _gone(str(ObjectId()), oid=True)
    assert store.touch_document(gone, NOW) is Touch.GONE
    assert store.touch_document(_gone("missing-id", oid=False), NOW) is Touch.GONE
    assert not store.relink_document(gone, "k/new.pdf", 1, NOW, "processing")
    assert store.stats().total_items == 0


def test_get_documents_returns_only_existing_ids(store: MetadataStore) -> None:
    oid = ObjectId()
    metadata_seeder(store).insert_raw("documents", [_raw_doc(oid), _raw_doc("legacy-2")])
    found = store.get_documents([str(oid), "legacy-2", str(ObjectId()), "nope", str(oid)])
    assert set(found) == {str(oid), "legacy-2"}
    assert found[str(oid)].id == str(oid)
    assert (found[str(oid)].oid, found["legacy-2"].oid) == (True, False)
    assert found[str(oid)].claim is None


def test_iter_documents_batches_every_document_once(store: MetadataStore) -> None:
    assert list(store.iter_documents(3)) == []
    ids = [ObjectId() for _ in range(10)]
    metadata_seeder(store).insert_raw("documents", [_raw_doc(i) for i in ids])
    batches = list(store.iter_documents(3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    seen = [r.id for b in batches for r in b]
    assert sorted(seen) == sorted(str(i) for i in ids)
    assert all(r.problem is None for b in batches for r in b)


def test_malformed_documents_surface_with_a_problem(store: MetadataStore) -> None:
    missing_created = _raw_doc("no-created")
    del missing_created["created_at"]
    metadata_seeder(store).insert_raw(
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


def test_find_documents_returns_every_id_form_once(store: MetadataStore) -> None:
    hex_id, new_id = str(ObjectId()), store.insert_document(_new())
    metadata_seeder(store).insert_raw(
        "documents", [_raw_doc(ObjectId(hex_id)), _raw_doc(hex_id), _raw_doc("legacy")]
    )
    found = store.find_documents([hex_id, "legacy", new_id, "nope", str(ObjectId()), hex_id])
    assert len(found) == 4
    assert {r.identity for r in found} == {
        (hex_id, True),
        (hex_id, False),
        ("legacy", False),
        (new_id, True),
    }
    assert all(r.claim is None for r in found)
    assert store.find_documents([]) == []


def test_document_identities_are_exactly_the_identities_find_documents_reads(
    store: MetadataStore,
) -> None:
    # Every _id shape: an ObjectId and a string of the same hex (two records), a plain string,
    # a malformed record (it still exists, so it still protects its points), an int _id (no
    # string form names it) and one written through insert_document.
    hex_id, new_id = str(ObjectId()), store.insert_document(_new())
    metadata_seeder(store).insert_raw(
        "documents",
        [
            _raw_doc(ObjectId(hex_id)),
            _raw_doc(hex_id),
            _raw_doc("legacy"),
            _raw_doc("broken", user_id=5, created_at="yesterday"),
            _raw_doc(7),
        ],
    )
    ids = [hex_id, "legacy", "broken", "7", new_id, "nope", str(ObjectId())]
    identities = store.document_identities(ids)
    assert identities == {r.identity for r in store.find_documents(ids)}
    assert identities == {
        (hex_id, True),
        (hex_id, False),
        ("legacy", False),
        ("broken", False),
        (new_id, True),
    }
    assert store.document_identities([hex_id]) == {(hex_id, True), (hex_id, False)}
    assert store.document_identities([]) == set()
    assert store.document_identities(["nope"]) == set()


MISSING = object()  # the field is absent from the record
# minio_bucket as stored -> whether the record names its key in our bucket ("documents").
BUCKETS: dict[str, tuple[Any, bool]] = {
    "ours": ("documents", True),
    "other": ("other", False),
    "missing": (MISSING, True),
    "empty": ("", True),
    "null": (None, True),
    "number": (5, True),
    "bool": (True, True),
    "list-of-ours": (["documents"], True),
    "list-of-other": (["other"], True),
    "empty-list": ([], True),
    "object": ({"name": "other"}, True),
}


@pytest.mark.parametrize(("bucket", "ours"), BUCKETS.values(), ids=BUCKETS)
def test_bucket_rule_protects_and_flags_records_without_a_usable_bucket(
    store: MetadataStore, bucket: Any, ours: bool
) -> None:
    # SPEC 4.1 (5): the record names its key in our bucket for protection, and is never expired
    # on a guess (it carries a problem).
    raw = _raw_doc(minio_key="k/shared.pdf")
    if bucket is MISSING:
        del raw["minio_bucket"]
    else:
        raw["minio_bucket"] = bucket
    metadata_seeder(store).insert_raw("documents", [raw])
    (record,) = store.find_documents([str(raw["_id"])])
    keys = ["k/shared.pdf", "k/else.pdf"]
    assert store.referenced_object_keys("documents", keys) == ({"k/shared.pdf"} if ours else set())
    assert store.referenced_object_keys("documents", keys, [record]) == set()
    if isinstance(bucket, str) and bucket:
        assert (record.minio_bucket, record.problem) == (bucket, None)
    else:
        assert record.minio_bucket is None
        assert record.problem is not None and "minio_bucket" in record.problem


# ---------------------------------------------------------------- references


@pytest.mark.parametrize("path", PATHS)
def test_active_references_follow_each_path(store: MetadataStore, path: str) -> None:
    live, stale, lone = (str(ObjectId()) for _ in range(3))
    sessions = {live: "s-active", stale: "s-stale"}
    metadata_seeder(store).insert_raw(
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
    metadata_seeder(store).insert_raw(
        "chat_sessions",
        [
            _session("s1", ACTIVE_AT, attached_file_ids=[ids[5], ids[1500]]),
            _session("s2", ACTIVE_AT, documents=[{"doc_id": ids[2400]}]),
        ],
    )
    metadata_seeder(store).insert_raw(
        "messages", [{"chat_id": "s1", "file_ids": [ids[2499], "other"]}]
    )
    assert store.active_references(ids, SINCE) == {ids[5], ids[1500], ids[2400], ids[2499]}


def test_messy_sessions_and_messages_never_crash(store: MetadataStore) -> None:
    a, b, c, d, e = (str(ObjectId()) for _ in range(5))
    metadata_seeder(store).insert_raw(
        "chat_sessions",
        [
            _session("m1", ACTIVE_AT, documents="junk", attached_file_ids=None),
            _session("m2", ACTIVE_AT, documents=[5, "x", {"doc_id": 7}, [a], {"doc_id": a}]),
            _session("m3", "2025-01-20T15:00:00", attached_file_ids=[b]),
            {"_id": "m4", "attached_file_ids": [c]},
            _session("m5", ACTIVE_AT, attached_file_ids=e),  # a lone string matches, as in Mongo
        ],
    )
    metadata_seeder(store).insert_raw(
        "messages",
        [{"chat_id": 5, "file_ids": [d]}, {"chat_id": "m1"}, {"chat_id": "m1", "file_ids": 3}],
    )
    # m3 and m4 have no readable updated_at: taken as active, so they protect b and c.
    assert store.active_references([a, b, c, d, e], SINCE) == {a, b, c, e}


def test_active_sessions(store: MetadataStore) -> None:
    metadata_seeder(store).insert_raw(
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
    metadata_seeder(store).insert_raw(
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
    # Which bucket a bucketless record names is defined for ours only (the one rlm sweeps).
    other = store.referenced_object_keys("other", keys)
    assert "k3" in other and not other & {"k1", "k5", "5"}
    assert store.referenced_object_keys("documents", []) == set()


def test_referenced_object_keys_leaves_out_excluded_documents(store: MetadataStore) -> None:
    first, second, legacy = ObjectId(), ObjectId(), "legacy-string-id"
    metadata_seeder(store).insert_raw(
        "documents",
        [
            _raw_doc(first, minio_key="k1"),
            _raw_doc(second, minio_key="k1"),
            _raw_doc(legacy, minio_key="k2"),
        ],
    )
    keys = ["k1", "k2"]
    one, two = _read(store, str(first)), _read(store, str(second))
    old = _read(store, legacy, oid=False)
    assert store.referenced_object_keys("documents", keys, [one]) == {"k1", "k2"}
    assert store.referenced_object_keys("documents", keys, [one, two]) == {"k2"}
    assert store.referenced_object_keys("documents", keys, [two, old]) == {"k1"}
    assert store.referenced_object_keys("documents", keys, [one, two, old]) == set()


# Every form in which a session names document d (s is the session's hex id): the session's
# fields, its messages and the document's own fields (SPEC 4.1 (1)).
Form = Callable[[str, str], tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]]
REFERENCE_FORMS: dict[str, Form] = {
    "documents-entry": lambda d, s: ({"documents": [{"doc_id": d, "filename": "a.pdf"}]}, [], {}),
    "documents-entry-oid": lambda d, s: ({"documents": [{"doc_id": ObjectId(d)}]}, [], {}),
    "documents-plain": lambda d, s: ({"documents": ["other", d]}, [], {}),
    "documents-plain-oid": lambda d, s: ({"documents": [ObjectId(d)]}, [], {}),
    "documents-lone-entry": lambda d, s: ({"documents": {"doc_id": d}}, [], {}),
    "documents-lone": lambda d, s: ({"documents": d}, [], {}),
    "documents-lone-oid": lambda d, s: ({"documents": ObjectId(d)}, [], {}),
    "attached": lambda d, s: ({"attached_file_ids": ["other", d]}, [], {}),
    "attached-oid": lambda d, s: ({"attached_file_ids": [ObjectId(d)]}, [], {}),
    "attached-lone": lambda d, s: ({"attached_file_ids": d}, [], {}),
    "attached-lone-oid": lambda d, s: ({"attached_file_ids": ObjectId(d)}, [], {}),
    "messages": lambda d, s: ({}, [{"chat_id": s, "file_ids": ["other", d]}], {}),
    "messages-oid": lambda d, s: ({}, [{"chat_id": s, "file_ids": [ObjectId(d)]}], {}),
    "messages-lone": lambda d, s: ({}, [{"chat_id": s, "file_ids": d}], {}),
    "messages-lone-oid": lambda d, s: ({}, [{"chat_id": s, "file_ids": ObjectId(d)}], {}),
    "messages-chat-oid": lambda d, s: ({}, [{"chat_id": ObjectId(s), "file_ids": [d]}], {}),
    "conversation": lambda d, s: ({}, [], {"conversation_id": s}),
    "conversation-oid": lambda d, s: ({}, [], {"conversation_id": ObjectId(s)}),
}


@pytest.mark.parametrize("session_oid", [False, True], ids=["session-str", "session-oid"])
@pytest.mark.parametrize("form", REFERENCE_FORMS.values(), ids=REFERENCE_FORMS)
def test_every_reference_form_protects(store: MetadataStore, form: Form, session_oid: bool) -> None:
    live, stale, lone = (str(ObjectId()) for _ in range(3))
    for doc_id, at in ((live, ACTIVE_AT), (stale, STALE_AT)):
        session = str(ObjectId())
        fields, messages, doc_fields = form(doc_id, session)
        session_id = ObjectId(session) if session_oid else session
        metadata_seeder(store).insert_raw("chat_sessions", [_session(session_id, at, **fields)])
        metadata_seeder(store).insert_raw("messages", messages)
        metadata_seeder(store).insert_raw("documents", [_raw_doc(ObjectId(doc_id), **doc_fields)])
    metadata_seeder(store).insert_raw("documents", [_raw_doc(ObjectId(lone))])
    assert store.active_references([live, stale, lone], SINCE) == {live}


def test_active_sessions_read_object_id_session_ids(store: MetadataStore) -> None:
    active, stale = ObjectId(), ObjectId()
    metadata_seeder(store).insert_raw(
        "chat_sessions", [_session(active, ACTIVE_AT), _session(stale, STALE_AT)]
    )
    assert store.active_sessions([str(active), str(stale), "nope"], SINCE) == {str(active)}


def test_referenced_object_keys_excludes_exact_identities(store: MetadataStore) -> None:
    as_oid, as_str = _twins(store, oid_key="k1", str_key="k1")
    assert store.referenced_object_keys("documents", ["k1"], [as_oid]) == {"k1"}
    assert store.referenced_object_keys("documents", ["k1"], [as_str]) == {"k1"}
    assert store.referenced_object_keys("documents", ["k1"], [as_oid, as_str]) == set()


# ---------------------------------------------------------------- claims (SPEC 4.1 (4))


# A record as read that differs from the stored one in one compared field is never claimed.
STALE_READS: dict[str, Callable[[DocumentRecord], DocumentRecord]] = {
    "updated_at": lambda d: replace(d, updated_at=(d.updated_at or NOW) + timedelta(seconds=1)),
    "status": lambda d: replace(d, status="processing"),
    "minio_key": lambda d: replace(d, minio_key="k/other.pdf"),
    "claim": lambda d: replace(d, claim="another-run"),
    "id-form": lambda d: replace(d, oid=False),
}


@pytest.mark.parametrize("stale", STALE_READS.values(), ids=STALE_READS)
def test_claim_only_records_exactly_as_read(
    store: MetadataStore, stale: Callable[[DocumentRecord], DocumentRecord]
) -> None:
    changed, same = _pair(store)
    assert store.claim_documents([stale(changed), same], "run-1") == [replace(same, claim="run-1")]
    assert store.touch_document(changed, NOW) is Touch.TOUCHED
    assert store.touch_document(same, NOW) is Touch.CLAIMED


# What may happen to a record between the listing and the claim: each one keeps it unclaimed.
SINCE_READ: dict[str, Callable[[MetadataStore, DocumentRecord], object]] = {
    "touched": lambda store, d: store.touch_document(d, NOW),
    "relinked": lambda store, d: store.relink_document(
        d, "k/reupload.pdf", 5, d.updated_at or NOW, d.status or "ready"
    ),
    "claimed-by-another-run": lambda store, d: store.claim_documents([d], "run-0"),
    "deleted": lambda store, d: store.delete_documents(
        store.claim_documents([d], "run-0"), "run-0"
    ),
}


@pytest.mark.parametrize("change", SINCE_READ.values(), ids=SINCE_READ)
def test_a_record_changed_since_it_was_read_is_not_claimed(
    store: MetadataStore, change: Callable[[MetadataStore, DocumentRecord], object]
) -> None:
    changed, same = _pair(store)
    change(store, changed)
    claimed = store.claim_documents([changed, same], "run-1")
    assert claimed == [replace(same, claim="run-1")]
    assert store.claimed([replace(changed, claim="run-1"), *claimed], "run-1") == claimed
    assert store.delete_documents([changed], "run-1") == 0


def test_claims_records_missing_optional_fields(store: MetadataStore) -> None:
    bare = _raw_doc()
    for field in ("updated_at", "status", "minio_key"):
        del bare[field]
    metadata_seeder(store).insert_raw("documents", [bare])
    record = _read(store, str(bare["_id"]))
    assert (record.updated_at, record.status, record.minio_key) == (None, None, None)
    claimed = store.claim_documents([record], "run-1")
    assert claimed == [replace(record, claim="run-1")]
    assert store.delete_documents(claimed, "run-1") == 1


def test_touch_is_refused_while_claimed(store: MetadataStore) -> None:
    doc, _ = _pair(store)
    claimed = store.claim_documents([doc], "run-1")
    assert store.touch_document(doc, NOW) is Touch.CLAIMED
    assert _read(store, doc.id) == replace(doc, claim="run-1")  # updated_at unchanged
    assert store.claimed(claimed, "run-1") == claimed
    store.release_claims(claimed, "run-1")
    assert store.touch_document(doc, NOW) is Touch.TOUCHED
    assert _read(store, doc.id).updated_at == NOW
    assert store.claimed(claimed, "run-1") == []


def test_relink_breaks_the_claim_so_nothing_is_deleted(store: MetadataStore) -> None:
    doc, other = _pair(store)
    claimed = store.claim_documents([doc, other], "run-1")
    assert store.relink_document(doc, "k/reupload.pdf", 99, NOW, "processing")
    relinked = _read(store, doc.id)
    assert (relinked.claim, relinked.minio_key, relinked.status, relinked.size_bytes) == (
        None,
        "k/reupload.pdf",
        "processing",
        99,
    )
    assert store.claimed(claimed, "run-1") == claimed[1:]
    assert store.delete_documents(claimed[:1], "run-1") == 0
    assert store.touch_document(relinked, NOW) is Touch.TOUCHED
    assert store.delete_documents(claimed, "run-1") == 1
    assert [r.identity for r in store.find_documents([doc.id, other.id])] == [doc.identity]


def test_an_abandoned_claim_read_as_claimed_can_be_taken_over(store: MetadataStore) -> None:
    # A crashed run leaves its claim; the next run lists the record with it and finishes.
    doc, _ = _pair(store)
    (abandoned,) = store.claim_documents([doc], "run-crashed")
    (listed,) = store.find_documents([doc.id])
    assert listed == abandoned
    (taken,) = store.claim_documents([listed], "run-2")
    assert store.claimed([abandoned], "run-crashed") == []
    assert store.delete_documents([abandoned], "run-crashed") == 0
    assert store.delete_documents([taken], "run-2") == 1


def test_release_claims_drops_only_this_runs_claim(store: MetadataStore) -> None:
    doc, other = _pair(store)
    claimed = store.claim_documents([doc], "run-1")
    store.release_claims(claimed, "run-2")
    store.release_claims([other], "run-1")
    assert store.touch_document(doc, NOW) is Touch.CLAIMED
    store.release_claims(claimed, "run-1")
    assert _read(store, doc.id).claim is None
    assert store.delete_documents(claimed, "run-1") == 0
    assert store.stats().total_items == 2


def test_claimed_and_delete_take_records_as_read_or_as_claimed(store: MetadataStore) -> None:
    # Both calls say "still claimed by run_id and unchanged since read": the run's own claim is
    # the one change they expect, whichever copy of the record the caller holds.
    first, second = _pair(store)
    claimed = store.claim_documents([first, second], "run-1")
    assert [d.identity for d in store.claimed(claimed, "run-1")] == [
        first.identity,
        second.identity,
    ]
    assert [d.identity for d in store.claimed([first, second], "run-1")] == [
        first.identity,
        second.identity,
    ]
    assert store.delete_documents([first], "run-1") == 1
    assert store.delete_documents(claimed[1:], "run-1") == 1


def test_delete_documents_deletes_only_exact_identities(store: MetadataStore) -> None:
    as_oid, as_str = _twins(store)
    assert as_oid.id == as_str.id
    assert (as_oid.minio_key, as_str.minio_key) == ("k/oid.pdf", "k/str.pdf")
    claimed_str = store.claim_documents([as_str], "run-1")
    assert store.delete_documents([as_oid], "run-1") == 0  # its twin's claim is not its own
    assert store.delete_documents(claimed_str, "run-1") == 1
    assert [r.identity for r in store.find_documents([as_oid.id])] == [as_oid.identity]
    claimed_oid = store.claim_documents([as_oid], "run-1")
    assert store.delete_documents(claimed_str, "run-1") == 0
    assert store.delete_documents(claimed_oid, "run-1") == 1
    assert store.find_documents([as_oid.id]) == []


def test_claims_touches_and_relinks_hold_one_twin_only(store: MetadataStore) -> None:
    as_oid, as_str = _twins(store)
    store.claim_documents([as_oid], "run-1")
    assert store.touch_document(as_str, NOW) is Touch.TOUCHED
    assert store.touch_document(as_oid, NOW) is Touch.CLAIMED
    assert store.relink_document(as_str, "k/new.pdf", 1, NOW, "processing")
    store.release_claims([replace(as_str, claim="run-1")], "run-1")
    assert _read(store, as_oid.id, oid=True) == replace(as_oid, claim="run-1")
    now_str = _read(store, as_str.id, oid=False)
    assert (now_str.minio_key, now_str.claim, now_str.updated_at) == ("k/new.pdf", None, NOW)


# ---------------------------------------------------------------- reference sources


def test_check_references_passes_when_sources_are_readable(store: MetadataStore) -> None:
    store.check_references()
    metadata_seeder(store).insert_raw("documents", [_raw_doc()])
    store.check_references()
    metadata_seeder(store).insert_raw("chat_sessions", [_session("s1", ACTIVE_AT)])
    metadata_seeder(store).insert_raw("messages", [{"chat_id": "s1", "file_ids": []}])
    store.check_references()


# ---------------------------------------------------------------- delete, stats, raw


def test_delete_documents_is_idempotent(store: MetadataStore) -> None:
    first = store.insert_document(_new("u1"))
    second = store.insert_document(_new("u2"))
    metadata_seeder(store).insert_raw("documents", [_raw_doc("legacy-3"), _raw_doc()])
    read = [_read(store, first), _read(store, second), _read(store, "legacy-3", oid=False)]
    claimed = store.claim_documents([*read, _gone(str(ObjectId()), oid=True)], "run-1")
    assert [d.identity for d in claimed] == [d.identity for d in read]
    assert store.delete_documents(claimed, "run-1") == 3
    assert store.delete_documents(claimed, "run-1") == 0
    assert store.get_documents([first, second, "legacy-3"]) == {}
    assert store.stats().total_items == 1
    assert store.insert_document(_new("u1")) != first  # the hash is free again


def test_stats_counts_and_oldest(store: MetadataStore) -> None:
    assert (store.stats().total_items, store.stats().size_bytes) == (0, 0)
    assert store.stats().oldest_created_at is None
    missing = _raw_doc()
    del missing["created_at"]
    metadata_seeder(store).insert_raw(
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
    metadata_seeder(store).insert_raw("documents", [_raw_doc(filename="x" * 10_000)])
    assert store.stats().size_bytes > stats.size_bytes + 10_000


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
    metadata_seeder(store).insert_raw("chat_sessions", [_session("s1", ACTIVE_AT)])
    metadata_seeder(store).insert_raw("documents", [_raw_doc("d1")])
    assert mongo_db["chats"].count_documents({}) == 1
    assert mongo_db["docs"].count_documents({}) == 1
    assert store.active_sessions(["s1"], SINCE) == {"s1"}


def test_mongo_size_is_exact_bson_bytes_without_collstats(mongo_db: Database[Any]) -> None:
    store = MongoMetadataStore(mongo_db)
    docs = [_raw_doc() for _ in range(5)]
    metadata_seeder(store).insert_raw("documents", docs)
    exact = sum(len(bson.encode(d)) for d in mongo_db["documents"].find({}))
    assert (store.stats().size_bytes, store.stats().sampled) == (exact, False)


def test_mongo_size_is_sampled_past_the_limit(
    mongo_db: Database[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongo_metadata, "SIZE_SAMPLE", 5)
    store = MongoMetadataStore(mongo_db)
    metadata_seeder(store).insert_raw("documents", [_raw_doc() for _ in range(40)])
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


@pytest.mark.parametrize(
    ("missing", "setting"),
    [("sessions", "RLM_SESSIONS_COLLECTION"), ("messages", "RLM_MESSAGES_COLLECTION")],
)
def test_mongo_missing_reference_collection_refuses_naming_the_setting(
    mongo_db: Database[Any], missing: str, setting: str
) -> None:
    names = {"sessions": "chat_sessions", "messages": "messages", missing: "misnamed"}
    store = MongoMetadataStore(mongo_db, sessions=names["sessions"], messages=names["messages"])
    store.check_references()  # no documents: nothing could be judged unreferenced
    metadata_seeder(store).insert_raw("documents", [_raw_doc()])
    with pytest.raises(ReferencesUnknownError, match=setting) as caught:
        store.check_references()
    assert isinstance(caught.value, StoreError)
    assert "misnamed" in str(caught.value)
    assert "misnamed" not in mongo_db.list_collection_names()


@pytest.mark.parametrize(
    ("collection", "setting"),
    [("chat_sessions", "RLM_SESSIONS_COLLECTION"), ("messages", "RLM_MESSAGES_COLLECTION")],
)
def test_mongo_unreadable_reference_collection_refuses_naming_the_setting(
    mongo_db: Database[Any], monkeypatch: pytest.MonkeyPatch, collection: str, setting: str
) -> None:
    store = MongoMetadataStore(mongo_db)
    metadata_seeder(store).insert_raw("documents", [_raw_doc()])
    find_one = mongomock.Collection.find_one

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.name == collection:
            raise OperationFailure(f"not authorized on rag to execute find on {collection}", 13)
        return find_one(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.Collection, "find_one", refuse)
    with pytest.raises(ReferencesUnknownError, match=setting):
        store.check_references()


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


# rlm's first schema (v1): rows keyed by str(_id), so an ObjectId and its hex string collided.
V1_SCHEMA = """
CREATE TABLE documents (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    user_id GENERATED ALWAYS AS (json_extract(body, '$.user_id')) VIRTUAL,
    file_hash GENERATED ALWAYS AS (CASE WHEN json_type(body, '$.metadata.file_hash') = 'text'
        THEN json_extract(body, '$.metadata.file_hash') END) VIRTUAL,
    minio_key GENERATED ALWAYS AS (json_extract(body, '$.minio_key')) VIRTUAL
);
CREATE UNIQUE INDEX documents_user_file_hash
    ON documents (user_id, file_hash) WHERE file_hash IS NOT NULL;
CREATE INDEX documents_minio_key ON documents (minio_key);
CREATE TABLE chat_sessions (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at GENERATED ALWAYS AS (json_extract(body, '$.updated_at."$date"')) VIRTUAL
);
CREATE INDEX chat_sessions_updated_at ON chat_sessions (updated_at);
CREATE TABLE messages (id TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


def _v1_file(path: Path, records: dict[str, list[dict[str, Any]]]) -> None:
    """A metadata file as v1 wrote it."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(V1_SCHEMA)
        for table, docs in records.items():
            conn.executemany(
                f"INSERT INTO {table} (id, body) VALUES (?, ?)",  # noqa: S608 (fixed names)
                [(str(d["_id"]), encode(d)) for d in docs],
            )
        conn.commit()


def test_sqlite_migrates_a_v1_file_to_exact_ids(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite3"
    as_oid, as_hex, session_oid = str(ObjectId()), str(ObjectId()), ObjectId()
    _v1_file(
        path,
        {
            "documents": [
                _raw_doc(ObjectId(as_oid), minio_key="k/oid.pdf", metadata={"file_hash": HASH}),
                _raw_doc(as_hex, minio_key="k/hex.pdf", conversation_id=str(session_oid)),
                _raw_doc("legacy-1", minio_key="k/legacy.pdf"),
                _raw_doc(7, minio_key="k/int-id.pdf"),
            ],
            "chat_sessions": [
                _session("s-active", ACTIVE_AT, attached_file_ids=[as_oid]),
                _session(session_oid, ACTIVE_AT),
            ],
            "messages": [{"_id": ObjectId(), "chat_id": "s-active", "file_ids": ["legacy-1"]}],
        },
    )
    store = SqliteMetadataStore(path)
    try:
        records = {r.identity: r for batch in store.iter_documents(10) for r in batch}
        assert set(records) == {(as_oid, True), (as_hex, False), ("legacy-1", False), ("7", False)}
        assert [k for k, r in records.items() if r.problem] == [("7", False)]
        ids = [as_oid, as_hex, "legacy-1"]
        assert store.active_references(ids, SINCE) == set(ids)
        sessions = ["s-active", str(session_oid)]
        assert store.active_sessions(sessions, SINCE) == set(sessions)
        keys = ["k/oid.pdf", "k/hex.pdf", "k/legacy.pdf", "k/int-id.pdf"]
        assert store.referenced_object_keys("documents", keys) == set(keys)
        with pytest.raises(DuplicateDocumentError):
            store.insert_document(_new())
        # The twin v1 could not hold: ObjectId(h) and "h" are two records now.
        metadata_seeder(store).insert_raw(
            "documents", [_raw_doc(as_oid), _raw_doc(ObjectId(as_hex))]
        )
        assert {r.identity for r in store.find_documents([as_oid, as_hex])} == {
            (as_oid, True),
            (as_oid, False),
            (as_hex, True),
            (as_hex, False),
        }
        claimed = store.claim_documents([records[(as_hex, False)]], "run-1")
        assert store.delete_documents(claimed, "run-1") == 1
        assert store.touch_document(records[(as_oid, True)], NOW) is Touch.TOUCHED
    finally:
        store.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    reopened = SqliteMetadataStore(path)
    try:
        left = {r.identity for batch in reopened.iter_documents(10) for r in batch}
        assert left == {
            (as_oid, True),
            (as_oid, False),
            (as_hex, True),
            ("legacy-1", False),
            ("7", False),
        }
        assert reopened.get_documents([as_oid])[as_oid].updated_at is not None
    finally:
        reopened.close()


def test_sqlite_unreadable_reference_table_refuses(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite3"
    store = SqliteMetadataStore(path)
    try:
        metadata_seeder(store).insert_raw("documents", [_raw_doc()])
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("DROP TABLE messages")
            conn.commit()
        with pytest.raises(ReferencesUnknownError):
            store.check_references()
    finally:
        store.close()


# ---------------------------------------------------------------- leases (one cleanup per store)


def test_a_lease_is_held_renewed_released_and_taken_over_once_expired(
    store: MetadataStore,
) -> None:
    ttl = timedelta(minutes=20)
    assert store.acquire_lease("minio", "run-a", NOW, ttl) is None
    busy = store.acquire_lease("minio", "run-b", NOW + timedelta(minutes=5), ttl)
    assert busy is not None and "run-a" in busy
    assert store.acquire_lease("redis", "run-b", NOW, ttl) is None  # another store is free
    # The holder renews; the lease then outlives its first expiry.
    assert store.acquire_lease("minio", "run-a", NOW + timedelta(minutes=15), ttl) is None
    assert store.acquire_lease("minio", "run-b", NOW + timedelta(minutes=25), ttl) is not None
    # Releasing by someone else does nothing; by the holder, frees it.
    store.release_lease("minio", "run-b")
    assert store.acquire_lease("minio", "run-b", NOW + timedelta(minutes=26), ttl) is not None
    store.release_lease("minio", "run-a")
    assert store.acquire_lease("minio", "run-b", NOW + timedelta(minutes=26), ttl) is None
    # A crashed holder's lease is taken over once its time ran out.
    later = NOW + timedelta(minutes=26) + ttl + timedelta(seconds=1)
    assert store.acquire_lease("minio", "run-c", later, ttl) is None
