"""Document expiry over the fakes (SPEC 4 Expired document, 4.1): a document neither touched
within FILES_TTL_DAYS nor actively referenced is claimed, audited, then cascaded: its Qdrant
points, its Redis keys, its object, and its record LAST, re-checked before each store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from rlm_core.adapters.mongo_metadata import CLAIM_FIELD
from rlm_core.domain import ResourceType
from tests.fakes.cache import ENTRY_OVERHEAD
from tests.unit.rig import DIM, NOW, Rig, make_rig

EXPIRED = timedelta(days=8)  # FILES_TTL_DAYS = 7
LIVE = timedelta(days=6)
OLD_POINT = timedelta(days=8)
ACTIVE = timedelta(hours=1)  # RAG_SESSION_TTL_HOURS = 24
DOCUMENTS = ResourceType.MONGODB_METADATA
CASCADE = [
    "metadata.claim_documents",
    "vectors.delete_for_documents",
    "cache.unlink",
    "objects.remove",
    "metadata.delete_documents",
]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, files_ttl_days=7.0)


def text_key(doc: str) -> bytes:
    return f"doc:text:{doc}".encode()


def key_memory(doc: str, size: int = 10) -> int:
    return ENTRY_OVERHEAD + len(text_key(doc)) + size


def expiring(rig: Rig, *, points: int = 2, key: bool = True, size: int = 100, **fields: Any) -> str:
    """An expired document with its object, `points` chunks and its text cache key."""
    doc = rig.seed.document(age=EXPIRED, size=size, **fields)
    rig.seed.points(doc, f"upload_{doc}", age=OLD_POINT, count=points)
    if key:
        rig.seed.cache_key(text_key(doc), idle=0, ttl=3600)
    return doc


def test_an_expired_document_is_audited_then_cascaded_with_its_record_last(rig: Rig) -> None:
    doc = expiring(rig, size=120)
    report = rig.cleanup(DOCUMENTS)
    assert (rig.documents(), rig.points(), rig.objects(), rig.keys()) == (
        set(),
        set(),
        set(),
        set(),
    )
    writes = [name for name, _ in rig.writes()]
    assert writes == CASCADE
    assert rig.journal.index(("audit", ("mongodb", doc))) < rig.journal.index(
        ("vectors.delete_for_documents", rig.called("vectors.delete_for_documents")[0])
    )
    assert rig.journal.index(("audit", ("mongodb", doc))) > rig.journal.index(
        ("metadata.claim_documents", (doc,))
    )
    assert report.deleted_counts == {"redis": 1, "qdrant": 2, "minio": 1, "mongodb": 1}
    assert report.bytes_freed == {
        "redis": key_memory(doc),
        "qdrant": 2 * DIM * 4,
        "minio": 120,
        "mongodb": 0,
    }
    assert report.success and not report.capped


def test_the_audit_line_says_what_the_cascade_takes(rig: Rig) -> None:
    doc = expiring(rig, size=120)
    report = rig.cleanup(DOCUMENTS)
    [line] = rig.audit()
    [key] = rig.called("objects.remove")[0]
    assert line == {
        "run_id": report.run_id,
        "at": NOW.isoformat(),
        "dry_run": False,
        "store": "mongodb",
        "action": "expire_document",
        "target": doc,
        "size_bytes": 120,
        "reason": (
            f"not touched since {(NOW - EXPIRED).isoformat()} (FILES_TTL_DAYS=7.0) and no "
            "active session references it"
        ),
        "id_type": "ObjectId",
        "user_id": "user-1",
        "minio_bucket": rig.settings.minio_bucket,
        "minio_key": key,
        "points": 2,
        "cache_keys": [f"doc:text:{doc}"],
        "cascade": ["qdrant", "redis", "minio", "mongodb"],
    }


def test_a_record_with_a_string_id_and_no_object_is_audited_as_such(rig: Rig) -> None:
    doc = rig.seed.document(age=EXPIRED, doc_id="plain-id", oid=False, minio_key=None)
    report = rig.cleanup(DOCUMENTS)
    [line] = rig.audit()
    assert (line["target"], line["id_type"], line["size_bytes"]) == (doc, "str", 0)
    assert line["cascade"] == ["qdrant", "redis", "mongodb"]
    assert (line["points"], line["cache_keys"]) == (0, [])
    assert rig.documents() == set()
    assert report.skipped == {"minio": 0}  # no object is not a shared object


def test_a_dry_run_of_a_record_with_no_object_skips_nothing(rig: Rig) -> None:
    rig.seed.document(age=EXPIRED, minio_key=None)
    report = rig.cleanup(DOCUMENTS, dry_run=True)
    assert report.deleted_counts == {"redis": 0, "qdrant": 0, "minio": 0, "mongodb": 1}
    assert report.skipped == {}


def test_an_empty_object_frees_no_bytes(rig: Rig) -> None:
    rig.seed.document(age=EXPIRED, size=0)
    report = rig.cleanup(DOCUMENTS)
    assert rig.objects() == set()
    assert (report.deleted_counts["minio"], report.bytes_freed["minio"]) == (1, 0)


def test_objects_kept_for_other_documents_are_each_counted_skipped(rig: Rig) -> None:
    """One object shared from the start, one named by a new document just before its delete."""
    rig.seed.document(age=EXPIRED, key="shared/from-start.pdf")
    rig.seed.document(age=LIVE, key="shared/from-start.pdf", with_object=False)
    rig.seed.document(age=EXPIRED, key="shared/late.pdf")
    rig.seed.cache_key(b"cache:x", idle=0, ttl=60)
    mine = [rig.seed.document(age=EXPIRED) for _ in range(2)]
    rig.seed.cache_key(text_key(mine[0]), idle=0, ttl=60)
    rig.after["unlink"] = [
        lambda: rig.seed.document(age=timedelta(0), key="shared/late.pdf", with_object=False)
    ]
    report = rig.cleanup(DOCUMENTS)
    assert rig.objects() == {"shared/from-start.pdf", "shared/late.pdf"}
    assert report.deleted_counts["minio"] == 2
    assert report.skipped == {"minio": 2}


def test_live_in_flight_and_referenced_documents_stay(rig: Rig) -> None:
    live = rig.seed.document(age=LIVE)
    uploading = rig.seed.document(age=EXPIRED, status="uploading")
    processing = rig.seed.document(age=EXPIRED, status="processing")
    referenced = rig.seed.document(age=EXPIRED)
    rig.seed.session(idle=ACTIVE, documents=[{"doc_id": ObjectId(referenced)}])
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {live, uploading, processing, referenced}
    assert report.deleted_counts["mongodb"] == 0
    assert rig.writes() == []
    assert report.skipped == {}


def test_a_document_touched_exactly_files_ttl_ago_is_still_live(rig: Rig) -> None:
    at = rig.seed.document(age=timedelta(days=7))
    rig.seed.document(age=timedelta(days=7, milliseconds=1))
    rig.cleanup(DOCUMENTS)
    assert rig.documents() == {at}


def test_malformed_records_are_skipped_and_counted(rig: Rig) -> None:
    no_date = rig.seed.document(age=EXPIRED, created_at=None, updated_at=None)
    no_status = rig.seed.document(age=EXPIRED, status=7)
    no_bucket = rig.seed.document(age=EXPIRED, minio_bucket="")
    gone = rig.seed.document(age=EXPIRED)
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {no_date, no_status, no_bucket}
    assert report.skipped == {"mongodb": 3, "minio": 0}
    assert rig.audited() == [gone]


def test_a_document_whose_file_is_in_another_bucket_is_kept_and_counted(rig: Rig) -> None:
    before = rig.seed.document(age=EXPIRED, minio_bucket="archive", with_object=False)
    after = rig.seed.document(age=EXPIRED, minio_bucket="someone-elses", with_object=False)
    gone = rig.seed.document(age=EXPIRED)
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {before, after}
    assert report.skipped == {"minio": 2}
    assert rig.audited() == [gone]


def test_a_document_whose_key_is_unsafe_is_kept_with_an_error(rig: Rig) -> None:
    unsafe = rig.seed.document(age=EXPIRED, key="../escape.pdf", with_object=False)
    gone = rig.seed.document(age=EXPIRED)
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {unsafe}
    assert report.skipped == {"minio": 1}
    assert report.errors == [
        f"minio: document {unsafe} kept: its minio_key '../escape.pdf' has a '.', '..' or "
        "leading '/' segment, so its object could not be deleted safely"
    ]
    assert rig.audited() == [gone]


def test_a_document_referenced_after_the_claim_keeps_everything(rig: Rig) -> None:
    doc = expiring(rig)
    rig.after["claim_documents"] = [lambda: rig.seed.session(idle=timedelta(0), attached=[doc])]
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {doc}
    assert len(rig.points()) == 2 and rig.keys() == {text_key(doc)} and len(rig.objects()) == 1
    assert rig.writes() == [
        ("metadata.claim_documents", (doc,)),
        ("metadata.release_claims", (doc,)),
    ]
    assert CLAIM_FIELD not in str(rig.mongo.collections["documents"])
    assert report.deleted_counts["mongodb"] == 0
    assert rig.audit() == []


def test_a_record_changed_between_the_listing_and_the_claim_is_not_claimed(rig: Rig) -> None:
    doc = expiring(rig)
    touch = rig.mongo.collections["documents"][ObjectId(doc)]
    rig.before["claim_documents"] = [lambda: touch.update(updated_at=NOW.replace(tzinfo=None))]
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {doc}
    assert [name for name, _ in rig.writes()] == ["metadata.claim_documents"]
    assert report.deleted_counts["mongodb"] == 0


@pytest.mark.parametrize(
    ("after", "kept"),
    [
        ("", {"points", "keys", "object"}),
        ("delete_for_documents", {"keys", "object"}),
        ("unlink", {"object"}),
        ("remove", set()),
    ],
)
def test_a_document_picked_up_mid_cascade_keeps_what_is_left(
    rig: Rig, after: str, kept: set[str]
) -> None:
    """SPEC 4.1 (4): the claim and the references are read again before each store."""
    doc = expiring(rig)

    def pick_up() -> None:
        rig.seed.session(idle=timedelta(0), attached=[doc])

    if after:
        rig.after[after] = [pick_up]
    else:
        rig.before["claimed"] = [pick_up]  # the first re-check, before the points go
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {doc}
    left = {
        "points": bool(rig.points()),
        "keys": bool(rig.keys()),
        "object": bool(rig.objects()),
    }
    assert {name for name, there in left.items() if there} == kept
    assert report.skipped == {"mongodb": 1, "minio": 0}
    assert report.deleted_counts["mongodb"] == 0
    assert ("metadata.release_claims", (doc,)) in rig.writes()


def test_a_reupload_that_breaks_the_claim_mid_cascade_keeps_the_record(rig: Rig) -> None:
    doc = expiring(rig)
    raw = rig.mongo.collections["documents"][ObjectId(doc)]
    # the relink of a re-upload: a new object, the claim broken
    rig.after["unlink"] = [lambda: raw.update(minio_key="new/k.pdf", **{CLAIM_FIELD: None})]
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {doc}
    assert len(rig.objects()) == 1  # the old object stays too: the next run judges it
    assert report.skipped == {"mongodb": 1, "minio": 0}


def test_an_object_another_document_names_stays_and_is_counted_skipped(rig: Rig) -> None:
    doc = expiring(rig, key=False, points=0)
    [shared] = rig.objects()
    rig.seed.document(age=LIVE, key=shared, with_object=False)
    report = rig.cleanup(DOCUMENTS)
    assert rig.objects() == {shared}
    assert doc not in rig.documents()
    assert report.skipped == {"minio": 1}
    assert report.deleted_counts["minio"] == 0
    [line] = rig.audit()
    assert (line["size_bytes"], line["cascade"]) == (0, ["qdrant", "redis", "mongodb"])


def test_an_object_named_by_a_new_document_before_its_delete_stays(rig: Rig) -> None:
    doc = expiring(rig, points=0)
    [shared] = rig.objects()
    rig.after["unlink"] = [
        lambda: rig.seed.document(age=timedelta(0), key=shared, with_object=False)
    ]
    report = rig.cleanup(DOCUMENTS)
    assert rig.objects() == {shared}
    assert doc not in rig.documents()  # its record goes: the object is the new one's now
    assert report.skipped == {"minio": 1}
    assert report.deleted_counts["minio"] == 0


def test_two_expiring_documents_of_one_object_delete_it_once(rig: Rig) -> None:
    first = rig.seed.document(age=EXPIRED, key="same/k.pdf", size=50)
    second = rig.seed.document(age=EXPIRED, key="same/k.pdf", with_object=False)
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == set() and rig.objects() == set()
    assert report.deleted_counts == {"redis": 0, "qdrant": 0, "minio": 1, "mongodb": 2}
    assert report.bytes_freed["minio"] == 50
    assert [(x["target"], x["size_bytes"]) for x in rig.audit()] == [(first, 50), (second, 0)]


def test_an_object_the_store_refuses_keeps_its_record_for_the_next_run(rig: Rig) -> None:
    bad = rig.seed.document(age=EXPIRED, key="bad//key.pdf")
    good = rig.seed.document(age=EXPIRED, size=30)
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {bad}
    assert report.errors == ["minio: 1 object(s) could not be deleted"]
    assert (report.deleted_counts["minio"], report.bytes_freed["minio"]) == (1, 30)
    assert ("metadata.release_claims", (bad,)) in rig.writes()
    assert good not in rig.documents()


def test_a_missing_object_is_not_counted(rig: Rig) -> None:
    rig.seed.document(age=EXPIRED, with_object=False)
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == set()
    assert report.deleted_counts == {"redis": 0, "qdrant": 0, "minio": 0, "mongodb": 1}
    assert report.skipped == {"minio": 0}


def test_only_existing_cache_keys_are_planned_and_counted(rig: Rig) -> None:
    doc = expiring(rig, key=False)
    report = rig.cleanup(DOCUMENTS)
    assert report.deleted_counts["redis"] == 0
    assert rig.audit()[0]["cache_keys"] == []
    assert rig.writes("cache") == []
    assert doc not in rig.documents()


def test_every_template_names_a_key_of_the_document(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, redis_document_key_templates=("doc:text:{doc_id}", "cache:{doc_id}"))
    doc = expiring(rig)
    rig.seed.cache_key(f"cache:{doc}".encode(), idle=0, ttl=60)
    report = rig.cleanup(DOCUMENTS)
    assert rig.keys() == set()
    assert report.deleted_counts["redis"] == 2


def test_a_twin_record_keeps_the_points_and_keys_both_name(rig: Rig) -> None:
    """SPEC 4.1 (6): ObjectId(h) and "h" are two records; points name both by "h"."""
    doc = expiring(rig)
    rig.seed.document(age=LIVE, doc_id=doc, oid=False)
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == {doc}  # the string twin
    assert len(rig.points()) == 2 and rig.keys() == {text_key(doc)}
    assert (report.deleted_counts["qdrant"], report.deleted_counts["redis"]) == (0, 0)
    assert report.deleted_counts["mongodb"] == 1
    [line] = rig.audit()
    assert (line["points"], line["cache_keys"], line["id_type"]) == (0, [], "ObjectId")


def test_twins_that_both_expire_take_their_points_and_keys(rig: Rig) -> None:
    doc = expiring(rig)
    rig.seed.document(age=EXPIRED, doc_id=doc, oid=False, with_object=False, minio_key=None)
    report = rig.cleanup(DOCUMENTS)
    assert rig.documents() == set() and rig.points() == set() and rig.keys() == set()
    assert report.deleted_counts["mongodb"] == 2


def test_a_dry_run_reports_the_cascade_and_changes_nothing(rig: Rig) -> None:
    doc = expiring(rig, size=40)
    report = rig.cleanup(DOCUMENTS, dry_run=True)
    assert rig.documents() == {doc}
    assert rig.writes() == []
    assert report.deleted_counts == {"redis": 1, "qdrant": 2, "minio": 1, "mongodb": 1}
    assert report.bytes_freed["minio"] == 40
    assert report.bytes_freed["qdrant"] == 2 * DIM * 4
    assert report.bytes_freed["redis"] == key_memory(doc)
    assert [line["dry_run"] for line in rig.audit()] == [True]


def test_a_dry_run_counts_a_shared_object_as_skipped(rig: Rig) -> None:
    rig.seed.document(age=EXPIRED, key="shared/k.pdf")
    rig.seed.document(age=LIVE, key="shared/k.pdf", with_object=False)
    report = rig.cleanup(DOCUMENTS, dry_run=True)
    assert report.skipped == {"minio": 1}
    assert report.deleted_counts["minio"] == 0


def dry_and_real(tmp_path: Path, seed: object, **settings: object) -> tuple[Rig, Rig]:
    rigs = (make_rig(tmp_path / "dry", **settings), make_rig(tmp_path / "real", **settings))
    for r in rigs:
        seed(r)  # type: ignore[operator]
    return rigs


def test_a_dry_run_equals_the_real_run_across_batches_sharing_an_object(tmp_path: Path) -> None:
    """A document of a later batch names an object an earlier batch's document named."""

    def seed(r: Rig) -> None:
        r.seed.document(age=EXPIRED, key="shared/k.pdf", size=25)
        r.seed.document(age=EXPIRED, key="shared/k.pdf", with_object=False)
        expiring(r)

    dry, real = dry_and_real(tmp_path, seed, batch_size=1)
    dry_report, real_report = dry.cleanup(dry_run=True), real.cleanup()
    assert real.objects() == set() and real.documents() == set()
    assert real_report.deleted_counts["minio"] == 2
    assert (dry_report.deleted_counts, dry_report.bytes_freed, dry_report.skipped) == (
        real_report.deleted_counts,
        real_report.bytes_freed,
        real_report.skipped,
    )
    assert [x["target"] for x in dry.audit()] == [x["target"] for x in real.audit()]


def test_a_dry_run_equals_the_real_run_for_twins_in_two_batches(tmp_path: Path) -> None:
    def seed(r: Rig) -> None:
        doc = r.seed.document(age=EXPIRED, doc_id="a" * 24, oid=False, minio_key=None)
        r.seed.points(doc, "chat", age=OLD_POINT)
        r.seed.document(age=EXPIRED, doc_id=doc, with_object=False, minio_key=None)

    dry, real = dry_and_real(tmp_path, seed, batch_size=1)
    dry_report, real_report = dry.cleanup(DOCUMENTS, dry_run=True), real.cleanup(DOCUMENTS)
    assert real.documents() == set() and real.points() == set()
    assert dry_report.deleted_counts == real_report.deleted_counts
    assert [x["points"] for x in dry.audit()] == [x["points"] for x in real.audit()]


def test_documents_are_expired_batch_by_batch(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=2)
    docs = [rig.seed.document(age=EXPIRED) for _ in range(5)]
    report = rig.cleanup(DOCUMENTS)
    assert [len(d) for d in rig.called("metadata.delete_documents")] == [2, 2, 1]
    assert rig.audited() == docs
    assert report.deleted_counts["mongodb"] == 5


def test_the_cap_takes_whole_cascades_and_releases_the_rest(rig: Rig) -> None:
    first = expiring(rig)  # 2 points + 1 key + object + record = 5 items
    second = expiring(rig)
    report = rig.cleanup(DOCUMENTS, cap=7)
    assert rig.documents() == {second}
    assert report.capped
    assert report.total_deleted == 5
    assert rig.audited() == [first]
    assert ("metadata.release_claims", (second,)) in rig.writes()
    assert CLAIM_FIELD not in str(rig.mongo.collections["documents"])


def test_a_cap_that_fits_exactly_is_spent_and_reported(rig: Rig) -> None:
    expiring(rig)
    report = rig.cleanup(DOCUMENTS, cap=5)
    assert rig.documents() == set()
    assert report.total_deleted == 5
    assert report.capped


def test_a_cap_spent_in_one_batch_stops_the_listing(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=1)
    rig.seed.document(age=EXPIRED, with_object=False)
    rig.seed.document(age=EXPIRED, with_object=False)
    report = rig.cleanup(DOCUMENTS, cap=1)
    assert report.total_deleted == 1 and report.capped
    assert len(rig.called("metadata.claim_documents")) == 1


def test_a_cap_left_unspent_is_not_reported(rig: Rig) -> None:
    expiring(rig)
    report = rig.cleanup(DOCUMENTS, cap=6)
    assert report.total_deleted == 5
    assert not report.capped


def test_a_refused_document_keeps_the_object_a_granted_one_shares(rig: Rig) -> None:
    first = rig.seed.document(age=EXPIRED, key="shared/k.pdf", size=9)
    second = rig.seed.document(age=EXPIRED, key="shared/k.pdf", with_object=False)
    third = rig.seed.document(age=EXPIRED, with_object=False)
    # the first costs object + record = 2; the second 1 more than is left
    report = rig.cleanup(DOCUMENTS, cap=2)
    assert rig.documents() == {second, third}
    assert rig.objects() == {"shared/k.pdf"}
    assert report.deleted_counts == {"redis": 0, "qdrant": 0, "minio": 0, "mongodb": 1}
    assert report.capped
    assert rig.audit()[0]["target"] == first
    assert rig.audit()[0]["size_bytes"] == 0


def test_a_refused_document_stops_the_batch_even_if_later_ones_fit(rig: Rig) -> None:
    """The cap takes whole documents in order: none after the first that does not fit."""
    expiring(rig)  # 5 items
    rig.seed.document(age=EXPIRED, with_object=False)  # 1 item
    report = rig.cleanup(DOCUMENTS, cap=3, dry_run=True)
    assert report.total_deleted == 0
    assert report.capped
    assert rig.audit() == []


def test_a_refunded_object_is_spent_by_the_next_batch(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=2)
    first = rig.seed.document(age=EXPIRED, key="shared/k.pdf")
    second = rig.seed.document(age=EXPIRED, key="shared/k.pdf", with_object=False)
    third = rig.seed.document(age=EXPIRED, with_object=False)
    fourth = rig.seed.document(age=EXPIRED, with_object=False)
    # cap 2: the first takes its object and record, the second (1) is refused and names the
    # object, so the object stays and its item is given back: the third spends it.
    report = rig.cleanup(DOCUMENTS, cap=2)
    assert rig.documents() == {second, fourth}
    assert rig.objects() == {"shared/k.pdf"}
    assert report.deleted_counts == {"redis": 0, "qdrant": 0, "minio": 0, "mongodb": 2}
    assert report.capped
    assert rig.audited() == [first, third]


def test_a_refunded_object_leaves_room_for_the_next_document(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=10)
    rig.seed.document(age=EXPIRED, key="shared/k.pdf")
    rig.seed.document(age=EXPIRED, key="shared/k.pdf", with_object=False)
    report = rig.cleanup(DOCUMENTS, cap=2, dry_run=True)
    # first: object + record (2); refused second shares the object: the object is given back
    assert report.deleted_counts == {"redis": 0, "qdrant": 0, "minio": 0, "mongodb": 1}
    assert report.skipped == {}
