"""VectorStore contract: QdrantVectorStore over qdrant-client's local on-disk engine.

No Qdrant server is available on this machine, so local mode is the only engine run here; the
same suite is meant to run against a server by adding a factory that reads QDRANT_URL. Both
delete strategies run on it: `scan` (what local mode uses: one scroll, delete by id) and
`filter` (what a server gets: delete-by-filter, which the local engine evaluates the same way).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient, models

from rlm_core.adapters import qdrant_vectors
from rlm_core.adapters.qdrant_vectors import QdrantVectorStore, connect_qdrant
from rlm_core.ports import PointInfo, StoreError, VectorPoint

COLLECTION = "rag_documents"
SIZE = 384


@pytest.fixture(params=["local-scan", "local-filter"])
def vectors(request: pytest.FixtureRequest) -> Iterator[QdrantVectorStore]:
    """Each adapter and delete strategy over a collection that does not exist yet."""
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


def test_missing_collection_reads_as_empty(vectors: QdrantVectorStore) -> None:
    assert vectors.count() == 0
    assert list(vectors.iter_points(10)) == []
    assert vectors.count_for_documents(["d1"]) == 0
    vectors.delete_for_documents(["d1"])
    vectors.delete_for_pairs([("s1", "d1")])


def test_ensure_collection_is_idempotent(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vectors.upsert([point("d1", 0)])
    vectors.ensure_collection()
    assert vectors.count() == 1


def test_iter_points_pages_through_everything(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    planted = [point(f"d{i // 10}", i % 10) for i in range(1000)]
    vectors.upsert(planted)
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
    vectors.upsert([good, bad, bare])
    found = {p.point_id: p for p in all_points(vectors)}
    assert found[good.point_id] == PointInfo(good.point_id, "s1", "d1", 1700000000.5)
    assert (found[bad.point_id].session_id, found[bad.point_id].document_id) == (None, 123)
    assert found[bare.point_id] == PointInfo(bare.point_id, None, None, None)


def test_payload_size_only_when_asked(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vectors.upsert([point("d1", 0, text="x" * 500)])
    assert all_points(vectors)[0].payload_bytes is None
    assert (all_points(vectors, with_payload_size=True)[0].payload_bytes or 0) > 500


def test_delete_for_documents_removes_only_those_documents(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vectors.upsert([point(f"d{d}", c, session_id=f"s{d % 2}") for d in range(6) for c in range(3)])
    assert vectors.count_for_documents(["d1", "d4", "nope"]) == 6
    vectors.delete_for_documents(["d1", "d4", "nope"])
    assert vectors.count() == 12
    assert {d for _, d in pairs_present(vectors)} == {"d0", "d2", "d3", "d5"}


def test_document_deletes_span_several_batches(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vectors.upsert([point(f"d{i}", 0) for i in range(600)])
    doomed = [f"d{i}" for i in range(0, 600, 2)]
    assert vectors.count_for_documents(doomed) == 300
    vectors.delete_for_documents(doomed)
    assert {d for _, d in pairs_present(vectors)} == {f"d{i}" for i in range(1, 600, 2)}


def test_delete_for_pairs_removes_only_exact_pairs(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vectors.upsert([point("d1", 0, "s1"), point("d1", 1, "s2"), point("d2", 0, "s1")])
    vectors.delete_for_pairs([("s1", "d1")])
    assert pairs_present(vectors) == {("s2", "d1"), ("s1", "d2")}


def test_pair_deletes_span_several_batches(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vectors.upsert([point(f"d{i}", 0, f"s{i}") for i in range(150)])
    vectors.upsert([point(f"d{i}", 1, f"other{i}") for i in range(150)])
    vectors.delete_for_pairs([(f"s{i}", f"d{i}") for i in range(150)])
    assert pairs_present(vectors) == {(f"other{i}", f"d{i}") for i in range(150)}


def test_deletes_page_through_the_collection(
    vectors: QdrantVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages: scan deletes remove points from pages already read while the scroll goes on.
    monkeypatch.setattr(qdrant_vectors, "_LOCAL_PAGE", 7)
    vectors.ensure_collection()
    vectors.upsert([point(f"d{i % 40}", i, f"s{i % 3}") for i in range(120)])
    doomed = {(f"s{i % 3}", f"d{i % 40}") for i in range(0, 120, 2)}
    vectors.delete_for_pairs(sorted(doomed))
    left = pairs_present(vectors)
    assert not left & doomed
    assert left == {(f"s{i % 3}", f"d{i % 40}") for i in range(120)} - doomed
    vectors.delete_for_documents([f"d{i}" for i in range(0, 40, 4)])
    assert {d for _, d in pairs_present(vectors)} == {d for _, d in left} - {
        f"d{i}" for i in range(0, 40, 4)
    }


def test_deletes_match_strings_exactly(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    target = point("123", 0, "s1")
    kept = [point(123, 1, "s1"), point("123", 2, None), point("1234", 3, "s1"), point("123", 4, 1)]
    vectors.upsert([target, *kept])
    assert vectors.count_for_documents(["123"]) == 3
    vectors.delete_for_pairs([("s1", "123")])
    vectors.delete_for_documents(["12"])
    assert {p.point_id for p in all_points(vectors)} == {p.point_id for p in kept}


def test_upsert_overwrites_by_point_id(vectors: QdrantVectorStore) -> None:
    vectors.ensure_collection()
    vectors.upsert([point("d1", 0, "s1")])
    vectors.upsert([point("d1", 0, "s2")])
    assert pairs_present(vectors) == {("s2", "d1")}


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
