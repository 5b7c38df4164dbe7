"""The Qdrant sweep over the fakes (SPEC 4 Qdrant, 4.1 (3)): a point goes only on positive
evidence, audited one line per point before the delete that names it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from rlm_core.domain import ResourceType
from tests.unit.rig import ABSENT, DIM, NOW, Rig, make_rig

OLD = timedelta(hours=25)  # RAG_SESSION_TTL_HOURS = 24
YOUNG = timedelta(hours=23)
LIVE = timedelta(days=1)  # a document touched within FILES_TTL_DAYS
VECTORS = ResourceType.QDRANT_VECTORS
POINT_BYTES = DIM * 4
GONE = "document no longer exists"
INACTIVE = (
    "session inactive past RAG_SESSION_TTL_HOURS and no active session references the document"
)
REFUSAL = (
    "qdrant: refusing to treat points as orphans because the metadata store holds no "
    "documents (check MONGODB_URL, MONGODB_DATABASE and RLM_DOCUMENTS_COLLECTION)"
)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return make_rig(tmp_path, rag_session_ttl_hours=24.0)


def test_old_points_of_a_vanished_document_are_audited_then_deleted(rig: Rig) -> None:
    rig.seed.document(age=LIVE)  # the metadata store is not empty
    gone = rig.seed.oid()
    a, b = rig.seed.points(gone, "chat-1", age=OLD, count=2)
    report = rig.cleanup(VECTORS)
    assert rig.points() == set()
    assert rig.journal == [
        ("audit", ("qdrant", a)),
        ("audit", ("qdrant", b)),
        ("vectors.delete_points", (a, b)),
    ]
    assert report.deleted_counts["qdrant"] == 2
    assert report.bytes_freed["qdrant"] == 2 * POINT_BYTES
    first = rig.audit()[0]
    assert first == {
        "run_id": report.run_id,
        "at": NOW.isoformat(),
        "dry_run": False,
        "store": "qdrant",
        "action": "delete_points",
        "target": a,
        "size_bytes": POINT_BYTES,
        "reason": GONE,
        "points": 1,
        "point_ids": [a],
        "session_id": "chat-1",
        "document_id": gone,
    }


def test_young_points_stay_whatever_they_name(rig: Rig) -> None:
    rig.seed.document(age=LIVE)
    young = rig.seed.points(rig.seed.oid(), "chat-1", age=YOUNG)
    report = rig.cleanup(VECTORS)
    assert rig.points() == set(young)
    assert report.deleted_counts["qdrant"] == 0
    assert rig.audit() == []


def test_points_of_an_inactive_session_whose_document_nobody_active_uses_go(rig: Rig) -> None:
    doc = rig.seed.document(age=LIVE)
    chat = rig.seed.session(idle=OLD, documents=[{"doc_id": doc}])
    doomed = rig.seed.points(doc, chat, age=OLD, count=2)
    report = rig.cleanup(VECTORS)
    assert rig.points() == set()
    assert [line["reason"] for line in rig.audit()] == [INACTIVE, INACTIVE]
    assert rig.called("vectors.delete_points") == [tuple(doomed)]
    assert report.deleted_counts["qdrant"] == 2


def test_an_active_session_protects_its_own_points(rig: Rig) -> None:
    """Even when it does not list the document among its references."""
    doc = rig.seed.document(age=LIVE)
    chat = rig.seed.session(idle=timedelta(hours=1))
    kept = rig.seed.points(doc, chat, age=OLD)
    report = rig.cleanup(VECTORS)
    assert rig.points() == set(kept)
    assert report.deleted_counts["qdrant"] == 0
    assert rig.audit() == []


def test_a_session_active_exactly_at_the_cut_off_protects_its_points(rig: Rig) -> None:
    doc = rig.seed.document(age=LIVE)
    chat = rig.seed.session(idle=timedelta(hours=24))
    kept = rig.seed.points(doc, chat, age=OLD)
    rig.cleanup(VECTORS)
    assert rig.points() == set(kept)


def test_a_document_an_active_session_references_protects_points_of_other_sessions(
    rig: Rig,
) -> None:
    doc = rig.seed.document(age=LIVE)
    rig.seed.session(idle=timedelta(hours=1), attached=[doc])
    old_chat = rig.seed.session(idle=OLD)
    kept = rig.seed.points(doc, old_chat, age=OLD)
    rig.cleanup(VECTORS)
    assert rig.points() == set(kept)


def test_upload_session_points_follow_their_document(rig: Rig) -> None:
    doc = rig.seed.document(age=LIVE)
    kept = rig.seed.points(doc, f"upload_{doc}", age=OLD)
    gone = rig.seed.oid()
    doomed = rig.seed.points(gone, f"upload_{gone}", age=OLD)
    report = rig.cleanup(VECTORS)
    assert rig.points() == set(kept)
    assert rig.audited("qdrant") == doomed
    assert report.unknown == {}


def test_an_upload_session_of_another_document_is_judged_as_a_chat_session(rig: Rig) -> None:
    doc, other = rig.seed.document(age=LIVE), rig.seed.document(age=LIVE)
    rig.seed.points(doc, f"upload_{other}", age=OLD)
    rig.cleanup(VECTORS)
    assert rig.points() == set()


def test_a_point_without_a_session_is_kept_and_counted_unless_its_document_is_gone(
    rig: Rig,
) -> None:
    doc = rig.seed.document(age=LIVE)
    kept = rig.seed.points(doc, ABSENT, age=OLD)
    kept += rig.seed.points(doc, "", age=OLD)
    doomed = rig.seed.points(rig.seed.oid(), ABSENT, age=OLD)
    report = rig.cleanup(VECTORS)
    assert rig.points() == set(kept)
    assert report.unknown == {"qdrant": 2}
    assert rig.audited() == doomed
    [line] = rig.audit()
    assert (line["reason"], line["session_id"]) == (GONE, None)


def test_points_that_cannot_be_judged_are_kept_and_counted_unknown(rig: Rig) -> None:
    rig.seed.document(age=LIVE)
    gone = rig.seed.oid()
    kept = rig.seed.points(gone, "chat", age=OLD, created_at="yesterday")
    kept += rig.seed.points(ABSENT, "chat", age=OLD)
    kept += rig.seed.points(gone, "chat", age=OLD, created_at=ABSENT)
    kept += rig.seed.points(gone, "chat", age=OLD, created_at=-(10**400))  # JSON allows it
    report = rig.cleanup(VECTORS)
    assert rig.points() == set(kept)
    assert report.unknown == {"qdrant": 4}
    assert report.deleted_counts["qdrant"] == 0


def test_a_point_changed_after_it_was_read_is_kept_and_not_counted(rig: Rig) -> None:
    rig.seed.document(age=LIVE)
    gone = rig.seed.oid()
    moved, _ = rig.seed.points(gone, "chat", age=OLD, count=2)
    collection = rig.qdrant.collections[rig.settings.qdrant_collection]
    rig.before["delete_points"] = [
        lambda: collection.points[moved].update(created_at=NOW.timestamp())
    ]
    report = rig.cleanup(VECTORS)
    assert rig.points() == {moved}
    assert report.deleted_counts["qdrant"] == 1
    assert report.bytes_freed["qdrant"] == POINT_BYTES


def test_a_session_that_turns_active_before_the_delete_keeps_its_points(rig: Rig) -> None:
    """The delete carries the created_at bound and the judged payload, so a point re-written
    by the app in between is not taken."""
    doc = rig.seed.document(age=LIVE)
    chat = rig.seed.session(idle=OLD)
    point = rig.seed.points(doc, chat, age=OLD)[0]
    collection = rig.qdrant.collections[rig.settings.qdrant_collection]
    rig.before["delete_points"] = [lambda: collection.points[point].update(session_id="new")]
    rig.cleanup(VECTORS)
    assert rig.points() == {point}


def test_an_empty_metadata_store_stops_the_sweep(rig: Rig) -> None:
    kept = rig.seed.points(rig.seed.oid(), "chat", age=OLD)
    report = rig.cleanup(VECTORS)
    assert rig.points() == set(kept)
    assert report.errors == [REFUSAL]
    assert rig.audit() == []


def test_an_empty_metadata_store_with_only_young_points_is_not_an_error(rig: Rig) -> None:
    rig.seed.points(rig.seed.oid(), "chat", age=YOUNG)
    report = rig.cleanup(VECTORS)
    assert report.errors == []


def test_a_refused_sweep_stops_at_the_first_page(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=1)
    rig.seed.points(rig.seed.oid(), "chat", age=OLD, count=3)
    report = rig.cleanup(VECTORS)
    assert report.errors == [REFUSAL]
    assert len(rig.called("metadata.document_identities")) == 1


def test_points_are_judged_and_deleted_page_by_page(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=2)
    rig.seed.document(age=LIVE)
    doomed = [p for _ in range(5) for p in rig.seed.points(rig.seed.oid(), "chat", age=OLD)]
    report = rig.cleanup(VECTORS)
    assert [len(p) for p in rig.called("vectors.delete_points")] == [2, 2, 1]
    assert rig.points() == set()
    assert sorted(rig.audited()) == sorted(doomed)
    assert report.deleted_counts["qdrant"] == 5


def test_the_cap_counts_points_and_stops_the_sweep(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=2)
    rig.seed.document(age=LIVE)
    for _ in range(5):
        rig.seed.points(rig.seed.oid(), "chat", age=OLD)
    report = rig.cleanup(VECTORS, cap=3)
    assert report.deleted_counts["qdrant"] == 3
    assert len(rig.points()) == 2
    assert report.capped
    assert len(rig.audit()) == 3
    # the sweep stops once the cap is spent: the last page is never judged
    assert len(rig.called("metadata.document_identities")) == 2


def test_a_cap_spent_exactly_at_a_page_end_stops_the_sweep(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, batch_size=2)
    rig.seed.document(age=LIVE)
    for _ in range(4):
        rig.seed.points(rig.seed.oid(), "chat", age=OLD)
    report = rig.cleanup(VECTORS, cap=2)
    assert report.capped
    assert len(rig.called("metadata.document_identities")) == 1


def test_a_cap_left_unspent_is_not_reported_as_capped(rig: Rig) -> None:
    rig.seed.document(age=LIVE)
    rig.seed.points(rig.seed.oid(), "chat", age=OLD)
    report = rig.cleanup(VECTORS, cap=5)
    assert report.deleted_counts["qdrant"] == 1
    assert not report.capped


def test_a_page_with_nothing_doomed_writes_nothing(rig: Rig) -> None:
    doc = rig.seed.document(age=LIVE)
    rig.seed.points(doc, f"upload_{doc}", age=OLD)
    rig.cleanup(VECTORS)
    assert rig.writes() == []


def test_a_dry_run_reports_each_point_and_deletes_nothing(rig: Rig) -> None:
    doc = rig.seed.document(age=LIVE)
    chat = rig.seed.session(idle=OLD)
    points = rig.seed.points(doc, chat, age=OLD, count=2)
    points += rig.seed.points(rig.seed.oid(), "chat", age=OLD)
    report = rig.cleanup(VECTORS, dry_run=True)
    assert rig.points() == set(points)
    assert rig.writes() == []
    assert report.deleted_counts["qdrant"] == 3
    assert report.bytes_freed["qdrant"] == 3 * POINT_BYTES
    assert [line["dry_run"] for line in rig.audit()] == [True] * 3


def test_a_dry_run_of_every_store_counts_a_documents_points_once(tmp_path: Path) -> None:
    """The cascade counts an expiring document's points; the Qdrant sweep must not again."""
    rigs = [make_rig(tmp_path / name) for name in ("dry", "real")]
    for r in rigs:
        r.seed.document(age=LIVE)
        doc = r.seed.document(age=timedelta(days=30))
        r.seed.points(doc, "chat-old", age=OLD, count=2)
        r.seed.points(r.seed.oid(), "chat-old", age=OLD)
    dry, real = rigs[0].cleanup(dry_run=True), rigs[1].cleanup()
    assert real.deleted_counts["qdrant"] == 3
    assert (dry.deleted_counts, dry.bytes_freed) == (real.deleted_counts, real.bytes_freed)
    assert len(rigs[0].audit()) == len(rigs[1].audit())
