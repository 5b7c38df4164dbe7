"""Upload with per-user deduplication over the fakes (SPEC 5, 4.1 (4)): SHA-256 while
streaming; the unique (user, hash) index decides races, and the loser resolves to the winner."""

from __future__ import annotations

import hashlib
import io
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from rlm_core.adapters import disk_objects
from rlm_core.adapters.disk_objects import DiskObjectStore
from rlm_core.adapters.mongo_metadata import CLAIM_FIELD
from rlm_core.dedup import HashingReader, ingest, safe_filename
from rlm_core.domain import IngestResult
from rlm_core.events import DUPLICATE_DETECTED
from rlm_core.ports import StoreError
from tests.unit.rig import NOW, Rig, from_the_wire, make_rig

DATA = b"the same bytes" * 100
HASH = hashlib.sha256(DATA).hexdigest()
NAIVE_NOW = NOW.replace(tzinfo=None)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path)


def upload(rig: Rig, data: bytes = DATA, user: str = "user-1", **kw: Any) -> IngestResult:
    return rig.manager.ingest(user, kw.pop("filename", "report.pdf"), io.BytesIO(data), **kw)


def record(rig: Rig, doc_id: str) -> dict[str, Any]:
    return rig.mongo.collections["documents"][ObjectId(doc_id)]


def older(rig: Rig, doc_id: str, **fields: Any) -> None:
    """The record as it was a while ago (so a touch shows), with fields changed (each value
    as the server would hand it back)."""
    raw = record(rig, doc_id)
    raw.update(from_the_wire({"updated_at": NAIVE_NOW - timedelta(days=3), **fields}))


# --- reading and naming ----------------------------------------------------------------------


def test_the_reader_hashes_and_counts_every_byte_read_through_it() -> None:
    reader = HashingReader(io.BytesIO(b"abcdef"))
    assert reader.read(4) == b"abcd"
    assert reader.read() == b"ef"
    assert reader.read() == b""
    assert reader.size == 6
    assert reader.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("C:\\Users\\ana\\report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        (" spaced name.pdf ", "spaced name.pdf"),
        ("bell\x07\x7fname.pdf", "bell__name.pdf"),
        ("x" * 300, "x" * 255),
    ],
)
def test_a_file_name_keeps_its_last_segment_without_control_characters(
    given: str, safe: str
) -> None:
    assert safe_filename(given) == safe


@pytest.mark.parametrize("given", ["", "dir/", "a/..", ".", "  ", "dir\\"])
def test_a_name_with_no_file_name_is_refused(given: str) -> None:
    with pytest.raises(ValueError, match=r"filename: .* is not valid"):
        safe_filename(given)


@pytest.mark.parametrize("user", ["", "   ", None, 7])
def test_an_upload_without_a_user_is_refused_and_leaves_nothing(rig: Rig, user: Any) -> None:
    with pytest.raises(ValueError, match=r"user_id: .* is not valid"):
        upload(rig, user=user)
    assert rig.objects() == set() and rig.documents() == set()


def test_an_upload_with_a_bad_name_leaves_nothing(rig: Rig) -> None:
    with pytest.raises(ValueError):
        upload(rig, filename="dir/")
    assert rig.objects() == set() and rig.documents() == set()


# --- first upload and duplicates -------------------------------------------------------------


def test_a_first_upload_stores_the_object_and_a_processing_record(rig: Rig) -> None:
    result = upload(rig, filename="dir/report.pdf", content_type="application/pdf")
    assert result == IngestResult(result.document_id, False, HASH, len(DATA), result.minio_key)
    uuid_part, name = result.minio_key.split("/")
    assert (len(uuid_part), name) == (36, "report.pdf")
    assert rig.objects() == {result.minio_key}
    raw = record(rig, result.document_id)
    assert {k: v for k, v in raw.items() if k != "_id"} == {
        "user_id": "user-1",
        "filename": "report.pdf",
        "content_type": "application/pdf",
        "size_bytes": len(DATA),
        "minio_bucket": rig.settings.minio_bucket,
        "minio_key": result.minio_key,
        "status": "processing",
        "conversation_id": None,
        "created_at": NAIVE_NOW,
        "updated_at": NAIVE_NOW,
        "metadata": {"file_hash": HASH},
    }


def test_an_upload_without_a_content_type_is_stored_as_bytes(rig: Rig) -> None:
    result = upload(rig)
    assert record(rig, result.document_id)["content_type"] == "application/octet-stream"
    [put] = [c for c in rig.calls if c.name == "objects.put"]
    assert put.args[3] == "application/octet-stream"  # the object is typed alike


def test_the_upload_fields_are_passed_by_name_only(rig: Rig) -> None:
    stores = rig.stores
    positional: list[Any] = ["user-1", "a.pdf", io.BytesIO()]
    with pytest.raises(TypeError):
        ingest(stores.objects(), stores.metadata(), rig.clock, *positional)  # type: ignore[call-arg]
    result = ingest(
        objects=stores.objects(),
        metadata=stores.metadata(),
        clock=rig.clock,
        user_id="user-1",
        filename="a.pdf",
        stream=io.BytesIO(b"a"),
    )
    assert not result.duplicate


def test_two_uploads_get_two_distinct_keys(rig: Rig) -> None:
    first = upload(rig, b"one")
    second = upload(rig, b"two")
    assert first.minio_key != second.minio_key
    assert first.document_id != second.document_id


def test_the_same_bytes_again_are_a_duplicate_that_touches_the_record(rig: Rig) -> None:
    first = upload(rig)
    older(rig, first.document_id)
    again = upload(rig, filename="other name.pdf")
    assert again == IngestResult(first.document_id, True, HASH, len(DATA), first.minio_key)
    assert rig.objects() == {first.minio_key}  # the second copy is removed
    assert rig.documents() == {first.document_id}
    assert record(rig, first.document_id)["updated_at"] == NAIVE_NOW


def test_a_duplicate_is_logged_with_what_it_resolved_to(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    first = upload(rig)
    caplog.set_level("INFO")
    upload(rig, filename="again.pdf")
    [event] = [r for r in caplog.records if r.getMessage() == DUPLICATE_DETECTED]
    assert event.rlm_fields == {  # type: ignore[attr-defined]
        "user_id": "user-1",
        "filename": "again.pdf",
        "file_hash": HASH,
        "existing_document_id": first.document_id,
        "size_bytes": len(DATA),
    }


def test_the_same_bytes_for_another_user_are_a_new_document(rig: Rig) -> None:
    first = upload(rig)
    other = upload(rig, user="user-2")
    assert not other.duplicate
    assert other.document_id != first.document_id
    assert len(rig.objects()) == 2


@pytest.mark.parametrize("status", ["completed", "error", "ready"])
def test_a_document_in_any_other_state_is_a_duplicate(rig: Rig, status: str) -> None:
    first = upload(rig)
    older(rig, first.document_id, status=status)
    again = upload(rig)
    assert again.duplicate
    assert record(rig, first.document_id)["status"] == status


def test_a_failed_document_is_reset_for_reprocessing_not_a_duplicate(rig: Rig) -> None:
    first = upload(rig)
    older(rig, first.document_id, status="failed")
    again = upload(rig)
    assert again == IngestResult(first.document_id, False, HASH, len(DATA), again.minio_key)
    assert again.minio_key != first.minio_key
    raw = record(rig, first.document_id)
    assert (raw["status"], raw["minio_key"], raw["updated_at"]) == (
        "uploading",
        again.minio_key,
        NAIVE_NOW,
    )
    assert raw["size_bytes"] == len(DATA)


def test_a_record_whose_object_is_gone_is_repaired_by_the_new_upload(rig: Rig) -> None:
    first = upload(rig)
    older(rig, first.document_id)
    rig.s3.buckets[rig.settings.minio_bucket].pop(first.minio_key)  # an interrupted cascade
    again = upload(rig)
    assert again == IngestResult(first.document_id, False, HASH, len(DATA), again.minio_key)
    raw = record(rig, first.document_id)
    assert (raw["status"], raw["minio_key"]) == ("processing", again.minio_key)
    assert rig.objects() == {again.minio_key}


def test_a_record_without_a_key_is_repaired_by_the_new_upload(rig: Rig) -> None:
    first = upload(rig)
    older(rig, first.document_id, minio_key=None)
    again = upload(rig)
    assert not again.duplicate
    assert record(rig, first.document_id)["minio_key"] == again.minio_key


def test_a_record_without_a_bucket_names_ours(rig: Rig) -> None:
    first = upload(rig)
    older(rig, first.document_id, minio_bucket=None)
    rig.s3.buckets[rig.settings.minio_bucket].pop(first.minio_key)
    again = upload(rig)
    assert not again.duplicate
    assert record(rig, first.document_id)["minio_key"] == again.minio_key


def test_a_record_in_another_bucket_is_a_duplicate_whatever_ours_holds(rig: Rig) -> None:
    first = upload(rig)
    older(rig, first.document_id, minio_bucket="archive")
    rig.s3.buckets[rig.settings.minio_bucket].pop(first.minio_key)
    again = upload(rig)
    assert again.duplicate
    assert again.minio_key == first.minio_key
    assert rig.objects() == set()


def test_a_duplicate_of_a_keyless_record_in_another_bucket_names_no_key(rig: Rig) -> None:
    first = upload(rig)
    older(rig, first.document_id, minio_bucket="archive", minio_key=None)
    again = upload(rig)
    assert (again.duplicate, again.minio_key) == (True, "")


# --- cleanups and races ----------------------------------------------------------------------


def test_a_claimed_record_is_taken_back_and_relinked_never_a_duplicate(rig: Rig) -> None:
    """SPEC 4.1 (4): a record a cleanup is expiring is not answered "duplicate"."""
    first = upload(rig)
    older(rig, first.document_id, **{CLAIM_FIELD: "cleanup-run"})
    again = upload(rig)
    assert again == IngestResult(first.document_id, False, HASH, len(DATA), again.minio_key)
    raw = record(rig, first.document_id)
    assert CLAIM_FIELD not in raw
    assert (raw["status"], raw["minio_key"]) == ("processing", again.minio_key)


def test_a_record_deleted_before_the_touch_makes_a_new_document(rig: Rig) -> None:
    first = upload(rig)
    docs = rig.mongo.collections["documents"]
    rig.before["touch_document"] = [lambda: docs.pop(ObjectId(first.document_id))]
    again = upload(rig)
    assert not again.duplicate
    assert again.document_id != first.document_id
    assert rig.documents() == {again.document_id}


def test_a_record_relinked_away_before_the_relink_makes_a_new_document(rig: Rig) -> None:
    first = upload(rig)
    older(rig, first.document_id, status="failed")
    docs = rig.mongo.collections["documents"]
    rig.before["relink_document"] = [lambda: docs.pop(ObjectId(first.document_id))]
    again = upload(rig)
    assert not again.duplicate
    assert rig.documents() == {again.document_id}


def plant_winner(rig: Rig, key: str = "winner/report.pdf") -> str:
    """A concurrent upload of the same bytes by the same user, finished first."""
    return rig.seed.document(age=timedelta(0), key=key, metadata={"file_hash": HASH})


def test_the_loser_of_the_unique_index_race_resolves_to_the_winner(rig: Rig) -> None:
    winner: list[str] = []
    rig.before["insert_document"] = [lambda: winner.append(plant_winner(rig))]
    result = upload(rig)
    assert result == IngestResult(winner[0], True, HASH, len(DATA), "winner/report.pdf")
    assert rig.objects() == {"winner/report.pdf"}  # the loser's copy is removed
    assert rig.documents() == {winner[0]}
    inserts = [c for c in rig.calls if c.name == "metadata.insert_document"]
    assert len(inserts) == 1 and inserts[0].raised is not None  # the conflict really happened


def test_an_upload_that_keeps_racing_gives_up_and_removes_its_copy(rig: Rig) -> None:
    docs = rig.mongo.collections["documents"]

    def vanish() -> None:
        docs.clear()
        rig.s3.buckets[rig.settings.minio_bucket].pop("winner/report.pdf")

    # Five attempts: an insert lost, a touch of a record gone, and so on.
    rig.before["insert_document"] = [lambda: plant_winner(rig)] * 3
    rig.before["touch_document"] = [vanish] * 2
    with pytest.raises(StoreError, match=f"ingest of {HASH} for user 'user-1' kept racing"):
        upload(rig)
    assert rig.before["insert_document"] == [] and rig.before["touch_document"] == []
    assert rig.objects() == {"winner/report.pdf"}  # the upload's own copy is removed


def test_a_store_error_mid_upload_removes_the_uploaded_copy(rig: Rig) -> None:
    def down() -> None:
        raise StoreError("mongo is down")

    rig.before["find_by_hash"] = [down]
    with pytest.raises(StoreError, match="mongo is down"):
        upload(rig)
    assert rig.objects() == set()
    assert rig.documents() == set()


# --- the embedded disk store's copy: writeback started early, fsync still last -----------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """4-byte chunks, writeback every 8 bytes; records writeback ranges and fsyncs in order."""
    monkeypatch.setattr(disk_objects, "CHUNK_BYTES", 4)
    monkeypatch.setattr(disk_objects, "WRITEBACK_BYTES", 8)
    events: list[tuple[str, int, int]] = []
    real_start, real_fsync = disk_objects.start_writeback, os.fsync

    def start(fd: int, offset: int, nbytes: int) -> bool:
        events.append(("writeback", offset, nbytes))
        assert os.fstat(fd).st_size >= offset + nbytes  # written before handed
        return real_start(fd, offset, nbytes)

    def fsync(fd: int) -> None:
        events.append(("fsync", 0, os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(disk_objects, "start_writeback", start)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def put_bytes(tmp_path: Path, data: bytes, length: int | None = None) -> bytes:
    store = DiskObjectStore(tmp_path, "bucket")
    store.ensure_bucket()
    written = store.put("u/report.pdf", HashingReader(io.BytesIO(data)), length, None)  # type: ignore[arg-type]
    assert written == (len(data) if length is None else length)
    return (tmp_path / "bucket" / "u" / "report.pdf").read_bytes()


def test_the_disk_store_hands_each_written_range_to_the_disk_once_and_fsyncs_last(
    tmp_path: Path, small_chunks: list[tuple[str, int, int]]
) -> None:
    data = bytes(range(30))
    assert put_bytes(tmp_path, data) == data
    assert small_chunks == [
        ("writeback", 0, 8),
        ("writeback", 8, 8),
        ("writeback", 16, 8),
        ("fsync", 0, 30),  # the tail (6 bytes) is left to the fsync, which comes last
    ]


def test_the_disk_store_copies_exactly_length_bytes_with_early_writeback(
    tmp_path: Path, small_chunks: list[tuple[str, int, int]]
) -> None:
    data = bytes(range(30))
    assert put_bytes(tmp_path, data, length=17) == data[:17]
    assert small_chunks == [("writeback", 0, 8), ("writeback", 8, 8), ("fsync", 0, 17)]


@pytest.mark.parametrize("available", [False, True])
def test_writeback_that_is_missing_or_fails_changes_nothing_but_the_head_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, available: bool
) -> None:
    monkeypatch.setattr(disk_objects, "CHUNK_BYTES", 4)
    monkeypatch.setattr(disk_objects, "WRITEBACK_BYTES", 8)
    calls: list[int] = []

    def failing(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append(flags)
        return -1

    monkeypatch.setattr(disk_objects, "_sync_file_range", failing if available else None)
    assert disk_objects.start_writeback(0, 0, 8) is False
    data = bytes(range(30))
    assert put_bytes(tmp_path, data) == data
    assert calls == ([2, 2, 2, 2] if available else [])  # SYNC_FILE_RANGE_WRITE: no wait


def test_writeback_is_started_on_linux() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("sync_file_range is Linux-only")
    assert disk_objects._sync_file_range is not None
