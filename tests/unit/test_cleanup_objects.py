"""The orphan object sweep over the fakes (SPEC 4, MinIO): objects no document names, older
than FILES_TTL_DAYS, are audited then deleted, 1,000 per request, references read after the
listing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from rlm_core.domain import ResourceType
from tests.unit.rig import NOW, Rig, make_rig

OLD = timedelta(days=8)  # FILES_TTL_DAYS = 7
YOUNG = timedelta(days=6)
FILES = ResourceType.MINIO_FILES
REFUSAL = (
    "minio: refusing the orphan sweep because the metadata store holds no documents "
    "(check MONGODB_URL, MONGODB_DATABASE and RLM_DOCUMENTS_COLLECTION)"
)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    rig = make_rig(tmp_path, files_ttl_days=7.0)
    rig.seed.document(age=timedelta(days=1), key="live/named.pdf")  # the store is not empty
    return rig


def test_an_old_orphan_is_audited_then_deleted_and_counted_by_its_stored_size(rig: Rig) -> None:
    rig.seed.object("gone/orphan.pdf", b"o" * 70, age=OLD)
    report = rig.cleanup(FILES)
    assert rig.objects() == {"live/named.pdf"}
    assert rig.writes("objects") == [("objects.remove", ("gone/orphan.pdf",))]
    assert rig.journal.index(("audit", ("minio", "gone/orphan.pdf"))) < rig.journal.index(
        ("objects.remove", ("gone/orphan.pdf",))
    )
    assert (report.deleted_counts["minio"], report.bytes_freed["minio"]) == (1, 70)
    [line] = rig.audit()
    assert line == {
        "run_id": report.run_id,
        "at": NOW.isoformat(),
        "dry_run": False,
        "store": "minio",
        "action": "delete_orphan_object",
        "target": "gone/orphan.pdf",
        "size_bytes": 70,
        "reason": (
            f"no document references it and last modified {(NOW - OLD).isoformat()} "
            "is older than FILES_TTL_DAYS=7.0"
        ),
        "bucket": rig.settings.minio_bucket,
    }


def test_young_orphans_referenced_objects_and_the_audit_trail_stay(rig: Rig) -> None:
    rig.seed.object("young/orphan.pdf", b"y", age=YOUNG)
    rig.seed.document(age=timedelta(days=1), key="old/named.pdf", object_age=OLD)
    rig.seed.object(".rlm-audit/2025/01/01/run.jsonl", b"{}", age=OLD)
    report = rig.cleanup(FILES)
    assert rig.objects() == {
        "live/named.pdf",
        "young/orphan.pdf",
        "old/named.pdf",
        ".rlm-audit/2025/01/01/run.jsonl",
    }
    assert report.deleted_counts["minio"] == 0
    assert rig.writes("objects") == []
    assert rig.audit() == []
    assert report.success


def test_the_audit_trail_is_passed_over_and_the_listing_goes_on(rig: Rig) -> None:
    rig.seed.object(".rlm-audit/2025/01/01/run.jsonl", b"{}", age=OLD)
    rig.seed.object("zz/orphan.pdf", b"z", age=OLD)  # listed after the audit trail
    report = rig.cleanup(FILES)
    assert rig.objects() == {"live/named.pdf", ".rlm-audit/2025/01/01/run.jsonl"}
    assert report.deleted_counts["minio"] == 1


def test_the_audit_prefix_is_read_from_the_settings(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, audit_prefix="trail/")
    rig.seed.document(age=timedelta(days=1), key="live/named.pdf")
    rig.seed.object("trail/run.jsonl", b"{}", age=OLD)
    rig.seed.object(".rlm-audit/run.jsonl", b"{}", age=OLD)
    rig.cleanup(FILES)
    assert rig.objects() == {"live/named.pdf", "trail/run.jsonl"}


def test_an_object_exactly_files_ttl_old_is_not_yet_an_orphan(rig: Rig) -> None:
    rig.seed.object("edge/at.pdf", b"e", age=timedelta(days=7))
    rig.seed.object("edge/past.pdf", b"e", age=timedelta(days=7, microseconds=1))
    rig.cleanup(FILES)
    assert rig.objects() == {"live/named.pdf", "edge/at.pdf"}


def test_an_object_referenced_after_the_listing_is_protected(rig: Rig) -> None:
    """List first, then read references: a document written in between protects its object."""
    rig.seed.object("racing/upload.pdf", b"r", age=OLD)
    rig.seed.object("racing/orphan.pdf", b"r", age=OLD)
    rig.before["referenced_object_keys"] = [
        lambda: rig.seed.document(age=timedelta(0), key="racing/upload.pdf", with_object=False)
    ]
    report = rig.cleanup(ResourceType.MINIO_FILES)
    assert "racing/upload.pdf" in rig.objects()
    assert "racing/orphan.pdf" not in rig.objects()
    assert report.deleted_counts["minio"] == 1


def test_an_object_named_by_a_document_of_another_form_is_protected(rig: Rig) -> None:
    # SPEC 4.1 (5): a document with no usable bucket names its key in our bucket.
    rig.seed.document(age=timedelta(days=1), key="nobucket/a.pdf", object_age=OLD, minio_bucket="")
    rig.seed.document(
        age=timedelta(days=1), key="nobucket/b.pdf", object_age=OLD, minio_bucket=None
    )
    rig.cleanup(FILES)
    assert {"nobucket/a.pdf", "nobucket/b.pdf"} <= rig.objects()


def test_keys_that_cannot_be_deleted_safely_by_name_are_skipped_and_counted(rig: Rig) -> None:
    rig.seed.object("a/../escape.pdf", b"x", age=OLD)
    rig.seed.object("ctl/\x07bell.pdf", b"x", age=OLD)
    rig.seed.object("ok/orphan.pdf", b"x", age=OLD)
    report = rig.cleanup(FILES)
    assert rig.objects() == {"live/named.pdf", "a/../escape.pdf", "ctl/\x07bell.pdf"}
    assert report.skipped == {"minio": 2}
    assert report.deleted_counts["minio"] == 1
    assert rig.audited("minio") == ["ok/orphan.pdf"]


def test_an_object_the_store_refuses_to_delete_is_reported_not_counted(rig: Rig) -> None:
    # An empty segment is safe by name (the sweep goes on) but the store refuses the key.
    rig.seed.object("fail/a//x.pdf", b"a" * 5, age=OLD)
    rig.seed.object("fail/b.pdf", b"b" * 7, age=OLD)
    report = rig.cleanup(FILES)
    assert (report.deleted_counts["minio"], report.bytes_freed["minio"]) == (1, 7)
    assert report.errors == ["minio: 1 object(s) could not be deleted"]
    assert rig.audited("minio") == ["fail/a//x.pdf", "fail/b.pdf"]  # both were going
    assert rig.objects() == {"live/named.pdf", "fail/a//x.pdf"}


def test_a_sweep_with_every_delete_done_reports_no_error(rig: Rig) -> None:
    rig.seed.object("ok/a.pdf", b"a", age=OLD)
    report = rig.cleanup(FILES)
    assert report.errors == []


def test_a_dry_run_reports_the_orphans_and_deletes_nothing(rig: Rig) -> None:
    rig.seed.object("dry/a.pdf", b"a" * 11, age=OLD)
    rig.seed.object("dry/b.pdf", b"b" * 13, age=OLD)
    report = rig.cleanup(FILES, dry_run=True)
    assert rig.objects() == {"live/named.pdf", "dry/a.pdf", "dry/b.pdf"}
    assert rig.writes() == []
    assert (report.deleted_counts["minio"], report.bytes_freed["minio"]) == (2, 24)
    assert [(x["target"], x["dry_run"]) for x in rig.audit()] == [
        ("dry/a.pdf", True),
        ("dry/b.pdf", True),
    ]


def test_an_empty_metadata_store_stops_the_sweep_with_a_clear_error(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.seed.object("any/a.pdf", b"a", age=OLD)
    report = rig.cleanup(FILES)
    assert rig.objects() == {"any/a.pdf"}
    assert report.errors == [REFUSAL]
    assert rig.audit() == []


def test_an_empty_metadata_store_with_no_old_object_is_not_an_error(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.seed.object("any/young.pdf", b"a", age=YOUNG)
    report = rig.cleanup(FILES)
    assert report.errors == []


def test_orphans_go_in_requests_of_at_most_1000(rig: Rig) -> None:
    for i in range(2500):
        rig.seed.object(f"bulk/{i:05d}.pdf", b"b", age=OLD)
    report = rig.cleanup(FILES)
    assert [len(keys) for keys in rig.called("objects.remove")] == [1000, 1000, 500]
    assert report.deleted_counts["minio"] == 2500
    assert rig.objects() == {"live/named.pdf"}
    # each request's objects are audited just before it
    removes = [i for i, (kind, _) in enumerate(rig.journal) if kind == "objects.remove"]
    audits = [i for i, (kind, _) in enumerate(rig.journal) if kind == "audit"]
    assert [sum(a < r for a in audits) for r in removes] == [1000, 2000, 2500]


def test_references_are_read_per_window_of_ten_thousand_old_objects(rig: Rig) -> None:
    for i in range(10_001):
        rig.seed.object(f"bulk/{i:05d}.pdf", b"b", age=OLD)
    rig.cleanup(FILES, dry_run=True)
    assert [len(keys) for keys in rig.called("metadata.referenced_object_keys")] == [10_000, 1]


def test_a_cap_reached_at_a_window_boundary_stops_the_listing(rig: Rig) -> None:
    for i in range(10_001):
        rig.seed.object(f"bulk/{i:05d}.pdf", b"b", age=OLD)
    report = rig.cleanup(FILES, dry_run=True, cap=10_000)
    assert report.capped
    assert report.deleted_counts["minio"] == 10_000
    assert len(rig.called("metadata.referenced_object_keys")) == 1


def test_the_refusal_is_reported_once_however_many_windows(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    for i in range(10_001):
        rig.seed.object(f"bulk/{i:05d}.pdf", b"b", age=OLD)
    report = rig.cleanup(FILES, dry_run=True)
    assert report.errors == [REFUSAL]
    assert report.deleted_counts["minio"] == 0


def test_the_cap_counts_objects_and_marks_the_report(rig: Rig) -> None:
    for name in ("cap/a.pdf", "cap/b.pdf", "cap/c.pdf"):
        rig.seed.object(name, b"c", age=OLD)
    report = rig.cleanup(FILES, cap=2)
    assert report.deleted_counts["minio"] == 2
    assert rig.objects() == {"live/named.pdf", "cap/c.pdf"}
    assert report.capped


def test_a_cap_left_unspent_is_not_reported_as_capped(rig: Rig) -> None:
    rig.seed.object("cap/a.pdf", b"c", age=OLD)
    report = rig.cleanup(FILES, cap=5)
    assert report.deleted_counts["minio"] == 1
    assert not report.capped


def test_a_cap_spent_exactly_by_the_last_window_is_reported(rig: Rig) -> None:
    for name in ("cap/a.pdf", "cap/b.pdf"):
        rig.seed.object(name, b"c", age=OLD)
    report = rig.cleanup(FILES, cap=2)
    assert report.deleted_counts["minio"] == 2
    assert report.capped
