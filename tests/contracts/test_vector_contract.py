"""VectorStore contract: QdrantVectorStore over qdrant-client's local on-disk engine.

No Qdrant server is available on this machine, so local mode is the only engine run here; the
same suite is meant to run against a server by adding a factory that reads QDRANT_URL. Both
delete strategies run on it: `scan` (what local mode uses: one scroll, delete by id) and
`filter` (what a server gets: delete-by-filter, which the local engine evaluates the same way).
The in-memory fake (tests/fakes/) runs it too; its deletes re-check as the scan path does.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from rlm_core import monitoring
from rlm_core.adapters import qdrant_vectors
from rlm_core.adapters.qdrant_vectors import QdrantVectorStore, connect_qdrant
from rlm_core.clock import age_hours
from rlm_core.monitoring import measure_vectors
from rlm_core.ports import PointInfo, PointRef, StoreError, VectorPoint
from rlm_core.seeding import vector_seeder
from rlm_core.settings import Settings
from tests.fakes import MemoryQdrant, MemoryVectors

COLLECTION = "rag_documents"
SIZE = 384


@pytest.fixture(params=["local-scan", "local-filter", "fakes"])
def vectors(request: pytest.FixtureRequest) -> Iterator[QdrantVectorStore | MemoryVectors]:
    """Each adapter and delete strategy over a collection that does not exist yet."""
    if request.param == "fakes":
        yield MemoryVectors(MemoryQdrant(), COLLECTION, SIZE)
        return
    client: QdrantClient = request.getfixturevalue("qdrant_client")
    store = QdrantVectorStore(client, COLLECTION, SIZE)
    assert store.scan_deletes, "local mode is detected from the client"
    if request.param == "local-filter":
        store = QdrantVectorStore(client, COLLECTION, SIZE, scan_deletes=False)
    yield store


def point(document_id: Any, chunk_id: int, session_id: Any = "s1", **payload: Any) -> VectorPoint:
    """A point shaped as the RAG stack writes it (SPEC section 3)."""
    body = {
        "session_id": session_id,
        "document_id": document_id,
        "chunk_id": chunk_id,
        "text": f"chunk {chunk_id} of {document_id}",
        "page": 1,
        "created_at": time.time(),
        "metadata": {"filename": "a.pdf"},
        **payload,
    }
    point_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}_{chunk_id}"))
    return VectorPoint(point_id, [random.random() for _ in range(SIZE)], body)


def all_points(store: QdrantVectorStore, **kw: Any) -> list[PointInfo]:
    """Every point one pass yields."""
    return [p for batch in store.iter_points(64, **kw) for p in batch]


def pairs_present(store: QdrantVectorStore) -> set[tuple[Any, Any]]:
    """(session_id, document_id) of every point."""
    return {(p.session_id, p.document_id) for p in all_points(store)}


def refs_for(store: QdrantVectorStore, document_ids: list[str]) -> list[PointRef]:
    """The cascade's judgement: every point of these documents, by id, session not relied on."""
    found = store.points_for_documents(document_ids)
    return [PointRef(pid, None, doc) for doc, ids in found.items() for pid in ids]


def refs_of(points: list[VectorPoint]) -> list[PointRef]:
    """The sweep's judgement of points as written: id, session and document."""
    return [PointRef(p.point_id, p.payload["session_id"], p.payload["document_id"]) for p in points]


def test_missing_collection_reads_as_empty(vectors: QdrantVectorStore) -> None:
    assert vectors.count() == 0
    assert list(vectors.iter_points(10)) == []
    assert vectors.points_for_documents(["d1"]) == {}
    ref = PointRef(str(uuid.uuid4()), "s1", "d1")
    assert vectors.delete_for_documents([ref]) == 0
    assert vectors.delete_points([ref], time.time()) == 0


def test_ensure_collection_is_idempotent(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vector_seeder(vectors).upsert([point("d1", 0)])
    vectors.ensure_collection()
    assert vectors.count() == 1


def test_iter_points_pages_through_everything(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    planted = [point(f"d{i // 10}", i % 10) for i in range(1000)]
    vector_seeder(vectors).upsert(planted)
    batches = list(vectors.iter_points(128))
    assert len(batches) == 8
    assert all(0 < len(b) <= 128 for b in batches)
    ids = [p.point_id for b in batches for p in b]
    assert len(ids) == len(set(ids)) == vectors.count() == 1000
    assert set(ids) == {p.point_id for p in planted}


def test_iter_points_returns_lifecycle_payload_raw(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    good, bad = point("d1", 0, created_at=1700000000.5), point(123, 1, session_id=None)
    bare = VectorPoint(str(uuid.uuid4()), [0.5] * SIZE, {})
    vector_seeder(vectors).upsert([good, bad, bare])
    found = {p.point_id: p for p in all_points(vectors)}
    assert found[good.point_id] == PointInfo(good.point_id, "s1", "d1", 1700000000.5)
    assert (found[bad.point_id].session_id, found[bad.point_id].document_id) == (None, 123)
    assert found[bare.point_id] == PointInfo(bare.point_id, None, None, None)


def test_payload_size_only_when_asked(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vector_seeder(vectors).upsert([point("d1", 0, text="x" * 500)])
    assert all_points(vectors)[0].payload_bytes is None
    assert (all_points(vectors, with_payload_size=True)[0].payload_bytes or 0) > 500


@pytest.mark.parametrize("weigh_first", [0, 1, 150, 300, 1000])
def test_iter_created_reads_every_point_once_and_weighs_a_prefix_in_the_same_pass(
    vectors: QdrantVectorStore, weigh_first: int
) -> None:
    vectors.ensure_collection()
    odd: list[Any] = [True, "5", None, -1e300, 12]
    vector_seeder(vectors).upsert(
        [
            point(f"d{i // 10}", i % 10, text="x" * (i % 7), created_at=odd[i % 5] if i % 3 else i)
            for i in range(300)
        ]
    )
    weighed = {p.point_id: p.payload_bytes for p in all_points(vectors, with_payload_size=True)}
    created = {p.point_id: p.created_at for p in all_points(vectors)}
    scan = [c for batch in vectors.iter_created(64, weigh_first=weigh_first) for c in batch]
    # Every point once, created_at raw as stored; the first weigh_first of the scan weighed
    # exactly as a full weighing weighs them, none after.
    assert sorted(str(c.point_id) for c in scan) == sorted(weighed)
    assert {str(c.point_id): c.created_at for c in scan} == created
    assert all(type(c.created_at) is type(created[str(c.point_id)]) for c in scan)
    prefix = min(weigh_first, 300)
    sizes = [c.payload_bytes for c in scan[:prefix]]
    assert sizes == [weighed[str(c.point_id)] for c in scan[:prefix]]
    assert all(c.payload_bytes is None for c in scan[prefix:])


def test_points_by_id_reads_those_that_exist(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    good, bad = point("d1", 0, created_at=1700000000.5), point(123, 1, session_id=None)
    vector_seeder(vectors).upsert([good, bad])
    ids = {str(c.point_id): c.point_id for b in vectors.iter_created(64) for c in b}
    missing = str(uuid.uuid4())
    found = vectors.points_by_id([ids[good.point_id], ids[bad.point_id], missing])
    assert sorted(found, key=lambda p: p.point_id) == sorted(
        [
            PointInfo(good.point_id, "s1", "d1", 1700000000.5),
            PointInfo(bad.point_id, None, 123, bad.payload["created_at"]),
        ],
        key=lambda p: p.point_id,
    )
    assert vectors.points_by_id([]) == []


# qdrant-client's own engine: a point id may be an int, and retrieve() finds it only as one.
@pytest.mark.parametrize("vectors", ["local-scan", "local-filter"], indirect=True)
def test_an_int_point_id_is_dated_and_read_back(
    vectors: QdrantVectorStore, qdrant_client: QdrantClient, tmp_path: Path
) -> None:
    vectors.ensure_collection()
    payload = {"session_id": "s1", "document_id": "d1", "created_at": 1000.0}
    qdrant_client.upsert(
        COLLECTION, points=[models.PointStruct(id=7, vector=[0.1] * SIZE, payload=payload)]
    )
    (created,) = [c for batch in vectors.iter_created(64) for c in batch]
    assert created.point_id == 7 and created.created_at == 1000.0
    assert vectors.points_by_id([created.point_id]) == [PointInfo("7", "s1", "d1", 1000.0)]
    # An int id and a UUID tied on created_at: the snapshot still dates them.
    monitoring_settings = Settings(data_dir=tmp_path, qdrant_vector_size=SIZE)
    vector_seeder(vectors).upsert([_dated("d2", 0, 1000.0), _dated("d3", 0, 500.0, "")])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(monitoring, "OLDEST_CANDIDATES", 2)
        metrics = measure_vectors(vectors, monitoring_settings, SNAPSHOT_AT)
    assert metrics.oldest_age_hours == pytest.approx(
        age_hours(SNAPSHOT_AT, datetime.fromtimestamp(1000.0, UTC))
    )


def _snapshot(vectors: Any, tmp_path: Path) -> float:
    settings = Settings(data_dir=tmp_path, qdrant_vector_size=SIZE)
    return measure_vectors(vectors, settings, SNAPSHOT_AT).oldest_age_hours


SNAPSHOT_AT = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def _dated(document_id: Any, chunk: int, created: Any, session_id: Any = "s1") -> VectorPoint:
    return point(document_id, chunk, session_id=session_id, created_at=created)


def test_the_snapshot_dates_the_oldest_well_formed_point(
    vectors: QdrantVectorStore, tmp_path: Path
) -> None:
    vectors.ensure_collection()
    oldest = datetime(2025, 12, 1, tzinfo=UTC).timestamp()
    vector_seeder(vectors).upsert(
        [
            _dated("d1", 0, oldest + 3600),
            _dated("d1", 1, oldest),  # the oldest well-formed point
            _dated(None, 2, 10.0),  # no document_id
            _dated("d2", 3, 20.0, session_id=""),  # an empty session_id
            _dated("d3", 4, True),  # a bool is not a number here
            _dated("d4", 5, "30"),
            _dated("d5", 6, -1e300),  # a number, but no instant
            _dated("d6", 7, 10**30),
        ]
    )
    assert _snapshot(vectors, tmp_path) == pytest.approx(
        age_hours(SNAPSHOT_AT, datetime.fromtimestamp(oldest, UTC))
    )


def test_the_snapshot_reads_every_point_when_the_lowest_are_all_malformed(
    vectors: QdrantVectorStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitoring, "OLDEST_CANDIDATES", 3)
    vectors.ensure_collection()
    young = datetime(2026, 1, 14, tzinfo=UTC).timestamp()
    malformed = [_dated(None, i, 100.0 + i) for i in range(5)]
    vector_seeder(vectors).upsert([*malformed, _dated("d1", 9, young)])
    assert _snapshot(vectors, tmp_path) == pytest.approx(36.0)
    monkeypatch.setattr(monitoring, "OLDEST_CANDIDATES", 5)  # exactly the malformed ones
    assert _snapshot(vectors, tmp_path) == pytest.approx(36.0)


def test_the_snapshot_keeps_the_lowest_candidates_whatever_the_scan_order(
    vectors: QdrantVectorStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitoring, "OLDEST_CANDIDATES", 2)
    vectors.ensure_collection()
    days = [9.0, 3.0, 12.0, 5.0, 1.0, 7.0, 2.5]  # days before SNAPSHOT_AT; 12 is the oldest
    when = [SNAPSHOT_AT.timestamp() - d * 86400 for d in days]
    vector_seeder(vectors).upsert([_dated(f"d{i}", i, w) for i, w in enumerate(when)])
    assert _snapshot(vectors, tmp_path) == pytest.approx(12 * 24.0)


class _Losing:
    """A vector store whose points_by_id misses the first candidate (gone since the scan)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def points_by_id(self, point_ids: Any) -> list[PointInfo]:
        return self._inner.points_by_id(point_ids)[1:]


def test_the_snapshot_reads_every_point_when_a_candidate_cannot_be_read_back(
    vectors: QdrantVectorStore, tmp_path: Path
) -> None:
    vectors.ensure_collection()
    old, young = datetime(2026, 1, 10, tzinfo=UTC), datetime(2026, 1, 14, tzinfo=UTC)
    vector_seeder(vectors).upsert(
        [_dated("d1", 0, old.timestamp()), _dated("d1", 1, young.timestamp())]
    )
    assert _snapshot(_Losing(vectors), tmp_path) == pytest.approx(age_hours(SNAPSHOT_AT, old))


def test_the_snapshot_of_an_empty_or_undated_collection_has_no_age(
    vectors: QdrantVectorStore, tmp_path: Path
) -> None:
    assert _snapshot(vectors, tmp_path) == 0.0  # no collection yet
    vectors.ensure_collection()
    vector_seeder(vectors).upsert([_dated("d1", 0, "yesterday"), _dated(None, 1, 5.0)])
    assert _snapshot(vectors, tmp_path) == 0.0


# A second adapter over the same qdrant_client: about qdrant-client's collection config.
@pytest.mark.parametrize("vectors", ["local-scan", "local-filter"], indirect=True)
def test_point_bytes_come_from_the_collection_config(
    vectors: QdrantVectorStore, qdrant_client: QdrantClient
) -> None:
    vectors.ensure_collection()
    assert vectors.point_bytes() == SIZE * 4
    # Another size configured on an existing collection: the collection's own size counts.
    assert QdrantVectorStore(qdrant_client, COLLECTION, 8).point_bytes() == SIZE * 4
    small = QdrantVectorStore(qdrant_client, "small", 8, scan_deletes=vectors.scan_deletes)
    small.ensure_collection()
    assert small.point_bytes() == 32


def test_points_for_documents_groups_point_ids_by_document(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    planted = [point(f"d{d}", c, session_id=f"s{c}") for d in range(4) for c in range(3)]
    vector_seeder(vectors).upsert(planted)
    found = vectors.points_for_documents(["d1", "d3", "nope", "d1"])
    assert set(found) == {"d1", "d3"}
    for doc in ("d1", "d3"):
        expected = {p.point_id for p in planted if p.payload["document_id"] == doc}
        assert len(found[doc]) == 3 and set(found[doc]) == expected
    assert vectors.points_for_documents([]) == {}
    assert vectors.count() == 12  # reading deletes nothing


def test_points_for_documents_match_strings_exactly(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    target = [point("123", 0, "s1"), point("123", 1, None), point("123", 2, 7)]
    others = [
        point(123, 3),
        point(123.0, 4),
        point(["123"], 5),
        point(["123", "d9"], 6),
        point({"id": "123"}, 7),
        point("1234", 8),
        point("12", 9),
        point(None, 10),
    ]
    vector_seeder(vectors).upsert([*target, *others])
    found = vectors.points_for_documents(["123", "d9"])
    assert set(found) == {"123"}
    assert sorted(found["123"]) == sorted(p.point_id for p in target)


def test_delete_for_documents_removes_only_those_documents(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vector_seeder(vectors).upsert(
        [point(f"d{d}", c, session_id=f"s{d % 2}") for d in range(6) for c in range(3)]
    )
    refs = refs_for(vectors, ["d1", "d4", "nope"])
    assert len(refs) == 6
    assert vectors.delete_for_documents(refs) == 6
    assert vectors.count() == 12
    assert {d for _, d in pairs_present(vectors)} == {"d0", "d2", "d3", "d5"}
    assert vectors.delete_for_documents(refs) == 0  # idempotent


def test_delete_for_documents_removes_only_the_listed_points(vectors: QdrantVectorStore) -> None:
    # A point written for the document after its points were read is not in the judgement.
    vectors.ensure_collection()
    vector_seeder(vectors).upsert([point("d1", 0), point("d1", 1)])
    refs = refs_for(vectors, ["d1"])
    late = point("d1", 2)
    vector_seeder(vectors).upsert([late])
    assert vectors.delete_for_documents(refs) == 2
    assert [p.point_id for p in all_points(vectors)] == [late.point_id]


@pytest.mark.parametrize("changed_to", ["d2", 123, None], ids=["other", "number", "missing"])
def test_delete_for_documents_keeps_a_point_whose_document_changed(
    vectors: QdrantVectorStore, changed_to: Any
) -> None:
    vectors.ensure_collection()
    moved, stays = point("d1", 0), point("d1", 1)
    vector_seeder(vectors).upsert([moved, stays])
    refs = refs_for(vectors, ["d1"])
    vector_seeder(vectors).upsert(
        [VectorPoint(moved.point_id, moved.vector, {**moved.payload, "document_id": changed_to})]
    )
    assert vectors.delete_for_documents(refs) == 1
    assert [p.point_id for p in all_points(vectors)] == [moved.point_id]


def test_document_deletes_span_several_batches(
    vectors: QdrantVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qdrant_vectors, "_DELETE_BATCH", 64)
    vectors.ensure_collection()
    vector_seeder(vectors).upsert([point(f"d{i}", 0) for i in range(600)])
    doomed = [f"d{i}" for i in range(0, 600, 2)]
    refs = refs_for(vectors, doomed)
    assert len(refs) == 300
    assert vectors.delete_for_documents(refs) == 300
    assert {d for _, d in pairs_present(vectors)} == {f"d{i}" for i in range(1, 600, 2)}


def test_delete_points_removes_only_judged_old_points(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    now = time.time()
    old = [point("d1", 0, "s1", created_at=now - 100), point("d2", 0, "s1", created_at=now - 50)]
    young = point("d1", 1, "s1", created_at=now)
    unjudged = point("d1", 2, "s1", created_at=now - 100)
    other_pair = point("d1", 3, "s2", created_at=now - 100)
    vector_seeder(vectors).upsert([*old, young, unjudged, other_pair])
    assert vectors.delete_points(refs_of([*old, young]), now) == 2
    left = {p.point_id for p in all_points(vectors)}
    assert left == {young.point_id, unjudged.point_id, other_pair.point_id}
    assert vectors.delete_points(refs_of(old), now) == 0
    assert vectors.delete_points([], now) == 0


def test_delete_points_without_a_session_checks_only_the_document(
    vectors: QdrantVectorStore,
) -> None:
    # "Document gone" relies on document_id alone: a malformed session_id does not matter.
    vectors.ensure_collection()
    old = time.time() - 100
    points = [point("d1", 0, 5, created_at=old), point("d1", 1, None, created_at=old)]
    vector_seeder(vectors).upsert(points)
    refs = [PointRef(p.point_id, None, "d1") for p in points]
    assert vectors.delete_points(refs, old + 1) == 2
    assert vectors.count() == 0


# What a judged point's payload became before the delete, from (now, old): each one stays.
CHANGED_AFTER_JUDGEMENT: dict[str, Callable[[float, float], dict[str, Any]]] = {
    "created_at-now": lambda now, old: {"created_at": now},
    "created_at-string": lambda now, old: {"created_at": "2020-01-01T00:00:00"},
    "created_at-missing": lambda now, old: {"created_at": None},
    "created_at-bool": lambda now, old: {"created_at": False},
    "session_id-other": lambda now, old: {"session_id": "s2"},
    "session_id-missing": lambda now, old: {"session_id": None},
    "document_id-other": lambda now, old: {"document_id": "d2"},
    "document_id-number": lambda now, old: {"document_id": 1},
}
# A one-item list holding the judged value is not that value, but a server's filter matches
# list items and has no "is not an array" condition: only the scan path (local mode) can tell.
# Rewriting a payload into such a list between the page read and the delete is the residual
# window the README names.
CHANGED_INTO_A_LIST: dict[str, Callable[[float, float], dict[str, Any]]] = {
    "created_at-list": lambda now, old: {"created_at": [old]},
    "session_id-list": lambda now, old: {"session_id": ["s1"]},
    "document_id-list": lambda now, old: {"document_id": ["d1"]},
}


@pytest.mark.parametrize("vectors", ["local-scan", "fakes"], indirect=True)
@pytest.mark.parametrize("change", CHANGED_INTO_A_LIST.values(), ids=CHANGED_INTO_A_LIST)
def test_the_scan_path_keeps_a_point_changed_into_a_list(
    vectors: QdrantVectorStore, change: Callable[[float, float], dict[str, Any]]
) -> None:
    assert vectors.scan_deletes
    _changed_point_stays(vectors, change)


@pytest.mark.parametrize("change", CHANGED_AFTER_JUDGEMENT.values(), ids=CHANGED_AFTER_JUDGEMENT)
def test_delete_points_keeps_a_point_changed_after_it_was_judged(
    vectors: QdrantVectorStore, change: Callable[[float, float], dict[str, Any]]
) -> None:
    _changed_point_stays(vectors, change)


def _changed_point_stays(
    vectors: QdrantVectorStore, change: Callable[[float, float], dict[str, Any]]
) -> None:
    vectors.ensure_collection()
    now = time.time()
    old = now - 3600
    changed, doomed = point("d1", 0, "s1", created_at=old), point("d1", 1, "s1", created_at=old)
    vector_seeder(vectors).upsert([changed, doomed])
    refs = refs_of([changed, doomed])
    payload = {**changed.payload, **change(now, old)}
    vector_seeder(vectors).upsert([VectorPoint(changed.point_id, changed.vector, payload)])
    assert vectors.delete_points(refs, now - 60) == 1
    assert [p.point_id for p in all_points(vectors)] == [changed.point_id]


def test_deletes_page_through_the_collection(
    vectors: QdrantVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages and delete batches: reads and deletes cross many of both.
    monkeypatch.setattr(qdrant_vectors, "_LOCAL_PAGE", 7)
    monkeypatch.setattr(qdrant_vectors, "_DELETE_BATCH", 5)
    vectors.ensure_collection()
    planted = [point(f"d{i % 40}", i, f"s{i % 3}", created_at=1.0) for i in range(120)]
    vector_seeder(vectors).upsert(planted)
    doomed = planted[::2]
    assert vectors.delete_points(refs_of(doomed), 2.0) == 60
    assert {p.point_id for p in all_points(vectors)} == {p.point_id for p in planted[1::2]}
    gone = [f"d{i}" for i in range(1, 40, 4)]
    refs = refs_for(vectors, gone)
    assert len(refs) == 30
    assert vectors.delete_for_documents(refs) == 30
    assert {d for _, d in pairs_present(vectors)} == {f"d{i}" for i in range(1, 40, 2)} - set(gone)


def test_connect_qdrant_local_folder_is_exclusive(tmp_path: Path) -> None:
    first = connect_qdrant(None, None, tmp_path, 5)
    try:
        assert (tmp_path / "qdrant").is_dir()
        with pytest.raises(StoreError, match="unavailable"):
            connect_qdrant(None, None, tmp_path, 5)
    finally:
        first.close()
    connect_qdrant(None, None, tmp_path, 5).close()


def test_local_collection_is_cosine_of_configured_size(qdrant_client: QdrantClient) -> None:
    QdrantVectorStore(qdrant_client, COLLECTION, SIZE).ensure_collection()
    params = qdrant_client.get_collection(COLLECTION).config.params.vectors
    assert isinstance(params, models.VectorParams)
    assert (params.size, params.distance) == (SIZE, models.Distance.COSINE)
