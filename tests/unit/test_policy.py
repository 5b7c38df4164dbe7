"""The pure lifecycle rules (SPEC 4 and 4.1), value in, verdict out: every boundary and shape."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rlm_core.policy import (
    IN_FLIGHT_STATUSES,
    CacheAction,
    DocumentVerdict,
    ParsedPoint,
    PointEvidence,
    PointVerdict,
    Retention,
    cache_action,
    document_verdict,
    is_upload_session,
    last_touched,
    object_is_old,
    object_key_problem,
    parse_point,
    point_evidence,
)
from rlm_core.ports import CacheKey, DocumentRecord, ObjectInfo, PointInfo

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SESSION_TTL = timedelta(hours=24)
FILES_TTL = timedelta(days=7)
RETENTION = Retention(
    now=NOW, session_ttl=SESSION_TTL, files_ttl=FILES_TTL, cache_ttl=timedelta(hours=1)
)
CUTOFF = NOW - FILES_TTL
ACTIVE_SINCE = NOW - SESSION_TTL
TICK = timedelta(microseconds=1)
CACHE_TTL = 3600

# Numbers that are no instant: each makes datetime.fromtimestamp raise a different exception.
OVERFLOW = (1e300, -1e300, 1e20, -1e20)  # OverflowError
OS_ERROR = (1e18, -1e18)  # OSError (EOVERFLOW)
VALUE_ERROR = (1e15, -1e15, float(253402300800), float(-62135596801))  # ValueError (year range)
NOT_A_DATE = (*OVERFLOW, *OS_ERROR, *VALUE_ERROR, math.nan, math.inf, -math.inf)
NOT_A_NUMBER: tuple[Any, ...] = (True, False, None, "", "1700000000", b"1", [1], {"t": 1}, (1,))


def doc(
    status: Any = "ready",
    updated_at: datetime | None = None,
    created_at: datetime | None = None,
    problem: str | None = None,
) -> DocumentRecord:
    return DocumentRecord(
        id="d1",
        user_id="u1",
        status=status,
        created_at=created_at,
        updated_at=updated_at,
        minio_bucket="bucket",
        minio_key="u1/d1.pdf",
        size_bytes=10,
        conversation_id=None,
        file_hash="h",
        problem=problem,
    )


def point(created_at: Any, session_id: Any = "s1", document_id: Any = "d1") -> PointInfo:
    return PointInfo("p1", session_id, document_id, created_at)


# --- Retention --------------------------------------------------------------------------------


def test_retention_cutoffs_are_now_minus_each_ttl() -> None:
    assert RETENTION.active_since == datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
    assert RETENTION.files_cutoff == datetime(2026, 1, 8, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (RETENTION, "now"),
        (ParsedPoint("s", "d", NOW), "session_id"),
        (PointEvidence("p", "d", "s"), "session_id"),
    ],
)
def test_policy_values_are_frozen(value: object, field: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field, None)


# --- last_touched and document_verdict ----------------------------------------------------------


def test_last_touched_prefers_updated_at_then_created_at() -> None:
    old, new = CUTOFF - timedelta(days=1), NOW
    assert last_touched(doc(updated_at=old, created_at=new)) == old
    assert last_touched(doc(updated_at=new, created_at=old)) == new
    assert last_touched(doc(updated_at=None, created_at=old)) == old
    assert last_touched(doc(updated_at=None, created_at=None)) is None


@pytest.mark.parametrize("status", ["ready", "processed", "failed", "deleted", "READY"])
@pytest.mark.parametrize(
    ("touched", "verdict"),
    [
        (CUTOFF, DocumentVerdict.RECENT),  # touched exactly FILES_TTL ago: still live
        (CUTOFF + TICK, DocumentVerdict.RECENT),
        (NOW, DocumentVerdict.RECENT),
        (NOW + timedelta(days=1), DocumentVerdict.RECENT),
        (CUTOFF - TICK, DocumentVerdict.CANDIDATE),
        (CUTOFF - timedelta(days=365), DocumentVerdict.CANDIDATE),
    ],
)
def test_document_age_boundary_is_inclusive(
    status: str, touched: datetime, verdict: DocumentVerdict
) -> None:
    assert document_verdict(doc(status, updated_at=touched), RETENTION) is verdict
    assert document_verdict(doc(status, created_at=touched), RETENTION) is verdict


def test_document_age_uses_updated_at_before_created_at() -> None:
    old, new = CUTOFF - TICK, CUTOFF
    assert document_verdict(doc(updated_at=old, created_at=new), RETENTION) is (
        DocumentVerdict.CANDIDATE
    )
    assert document_verdict(doc(updated_at=new, created_at=old), RETENTION) is (
        DocumentVerdict.RECENT
    )


@pytest.mark.parametrize("status", sorted(IN_FLIGHT_STATUSES))
@pytest.mark.parametrize("touched", [CUTOFF - timedelta(days=400), CUTOFF - TICK, CUTOFF, NOW])
def test_in_flight_documents_are_never_candidates(status: str, touched: datetime) -> None:
    assert {"uploading", "processing"} == IN_FLIGHT_STATUSES
    assert document_verdict(doc(status, updated_at=touched), RETENTION) is (
        DocumentVerdict.IN_FLIGHT
    )


@pytest.mark.parametrize(
    "record",
    [
        doc(problem="created_at is not a date", updated_at=CUTOFF - TICK),
        doc(problem="x", updated_at=NOW),
        doc("uploading", problem="x", updated_at=NOW),
        doc(updated_at=None, created_at=None),
        doc("processing", updated_at=None, created_at=None),
        doc(None, updated_at=CUTOFF - TICK),
        doc(None, updated_at=NOW),
        doc(5, updated_at=CUTOFF - TICK),
        doc(["ready"], updated_at=CUTOFF - TICK),
    ],
)
def test_malformed_documents_are_never_judged_by_age(record: DocumentRecord) -> None:
    assert document_verdict(record, RETENTION) is DocumentVerdict.MALFORMED


# --- cache_action -------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [-2, 0, 1, 5, CACHE_TTL, 10**9])
@pytest.mark.parametrize("idle", [None, 0, CACHE_TTL, 10**9])
def test_keys_with_a_ttl_or_gone_are_kept(ttl: int, idle: int | None) -> None:
    assert cache_action(CacheKey(b"k", ttl, idle), CACHE_TTL) == (CacheAction.KEEP, 0)


@pytest.mark.parametrize(
    ("idle", "expected"),
    [
        (None, (CacheAction.EXPIRE, CACHE_TTL)),  # idleness unknown: bound it, never guess idle
        (0, (CacheAction.EXPIRE, CACHE_TTL)),
        (1, (CacheAction.EXPIRE, CACHE_TTL - 1)),
        (100, (CacheAction.EXPIRE, CACHE_TTL - 100)),
        (CACHE_TTL - 1, (CacheAction.EXPIRE, 1)),
        (CACHE_TTL, (CacheAction.UNLINK, 0)),  # idle exactly the TTL: gone
        (CACHE_TTL + 1, (CacheAction.UNLINK, 0)),
        (10**9, (CacheAction.UNLINK, 0)),
    ],
)
def test_persistent_keys_unlink_from_the_ttl_and_expire_below_it(
    idle: int | None, expected: tuple[CacheAction, int]
) -> None:
    assert cache_action(CacheKey(b"k", -1, idle), CACHE_TTL) == expected


def test_cache_ttl_is_the_argument_not_a_constant() -> None:
    assert cache_action(CacheKey(b"k", -1, None), 60) == (CacheAction.EXPIRE, 60)
    assert cache_action(CacheKey(b"k", -1, 59), 60) == (CacheAction.EXPIRE, 1)
    assert cache_action(CacheKey(b"k", -1, 60), 60) == (CacheAction.UNLINK, 0)
    assert cache_action(CacheKey(b"k", -1, 7), 10) == (CacheAction.EXPIRE, 3)


# --- parse_point --------------------------------------------------------------------------------


@pytest.mark.parametrize("created", [0, 1, 1_700_000_000, 1_700_000_000.25, -86_400, 4e9])
def test_parse_point_reads_a_well_formed_payload(created: float) -> None:
    assert parse_point(point(created)) == ParsedPoint(
        "s1", "d1", datetime.fromtimestamp(created, UTC)
    )


@pytest.mark.parametrize("created", [*NOT_A_NUMBER, *NOT_A_DATE, 10**400])
def test_parse_point_rejects_a_created_at_that_is_no_instant(created: Any) -> None:
    assert parse_point(point(created)) is None


@pytest.mark.parametrize("bad", [None, "", 5, b"s1", ["s1"], True])
def test_parse_point_rejects_a_missing_or_malformed_id(bad: Any) -> None:
    assert parse_point(point(1_700_000_000, session_id=bad)) is None
    assert parse_point(point(1_700_000_000, document_id=bad)) is None
    assert parse_point(point(1_700_000_000, session_id=bad, document_id=bad)) is None


# --- point_evidence (SPEC 4.1 item 3) ------------------------------------------------------------

EDGE = ACTIVE_SINCE.timestamp()


@pytest.mark.parametrize("created", [int(EDGE), EDGE, EDGE + 0.001, EDGE + 1, NOW.timestamp(), 4e9])
def test_a_point_created_at_or_after_the_session_cutoff_is_young(created: float) -> None:
    assert int(EDGE) == EDGE  # the boundary is exact in both int and float
    assert point_evidence(point(created), ACTIVE_SINCE) == (PointVerdict.YOUNG, None)


@pytest.mark.parametrize("created", [int(EDGE) - 1, EDGE - 0.001, 0, 1, -86_400, -1e9])
def test_a_point_created_before_the_session_cutoff_is_old(created: float) -> None:
    assert point_evidence(point(created), ACTIVE_SINCE) == (
        PointVerdict.OLD,
        PointEvidence("p1", "d1", "s1"),
    )


@pytest.mark.parametrize("created", [*NOT_A_NUMBER, *NOT_A_DATE])
def test_a_created_at_that_is_no_number_or_no_instant_is_unknown(created: Any) -> None:
    assert point_evidence(point(created), ACTIVE_SINCE) == (PointVerdict.UNKNOWN, None)


@pytest.mark.parametrize("document", [None, "", 5, b"d1", ["d1"], True, {"id": "d1"}])
@pytest.mark.parametrize("created", [EDGE - 1, EDGE, EDGE + 1])
def test_a_point_without_a_well_formed_document_id_is_unknown(
    document: Any, created: float
) -> None:
    assert point_evidence(point(created, document_id=document), ACTIVE_SINCE) == (
        PointVerdict.UNKNOWN,
        None,
    )


@pytest.mark.parametrize("session", [None, "", 5, b"s1", ["s1"], True])
def test_an_old_point_with_a_malformed_session_keeps_only_its_document(session: Any) -> None:
    verdict, evidence = point_evidence(point(EDGE - 1, session_id=session), ACTIVE_SINCE)
    assert (verdict, evidence) == (PointVerdict.OLD, PointEvidence("p1", "d1", None))


@pytest.mark.parametrize("session", [None, "", 5])
def test_a_young_point_is_young_whatever_its_session(session: Any) -> None:
    assert point_evidence(point(EDGE, session_id=session), ACTIVE_SINCE) == (
        PointVerdict.YOUNG,
        None,
    )


def test_point_evidence_carries_the_point_and_its_payload() -> None:
    info = PointInfo("a-point", "upload_d9", "d9", EDGE - 10)
    assert point_evidence(info, ACTIVE_SINCE) == (
        PointVerdict.OLD,
        PointEvidence("a-point", "d9", "upload_d9"),
    )


def test_the_cutoff_is_the_argument() -> None:
    later = ACTIVE_SINCE + timedelta(hours=1)
    created = EDGE + 60
    assert point_evidence(point(created), ACTIVE_SINCE)[0] is PointVerdict.YOUNG
    assert point_evidence(point(created), later)[0] is PointVerdict.OLD


# --- object keys and objects --------------------------------------------------------------------


def test_an_empty_key_is_refused() -> None:
    assert object_key_problem("") == "an empty key"


@pytest.mark.parametrize(
    "key", ["/a", "/", "//a", "..", ".", "../a", "./a", "a/..", "a/.", "a/../b", "a/./b", "a/b/.."]
)
def test_keys_that_may_leave_the_bucket_are_refused(key: str) -> None:
    assert object_key_problem(key) == f"{key!r} has a '.', '..' or leading '/' segment"


@pytest.mark.parametrize("key", ["a\x00b", "a\nb", "a\tb", "\x1f", "a\x1fb", "a\x7f", "\x7fa"])
def test_keys_with_control_characters_are_refused(key: str) -> None:
    assert object_key_problem(key) == f"{key!r} has a control character"


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "u1/d1.pdf",
        "a..b",
        "a/.hidden",
        "a/..b",
        "...",
        "a/.../b",
        "a b",  # space (32) is the first printable character
        "a//b",
        "a/",
        "café/naïve.pdf",
        "a\x80b",
        "~!@#$%^&*()",
        "x" * 1024,
    ],
)
def test_ordinary_keys_are_accepted(key: str) -> None:
    assert object_key_problem(key) is None


def test_a_leading_slash_is_reported_before_control_characters() -> None:
    assert object_key_problem("/\x00") == "'/\\x00' has a '.', '..' or leading '/' segment"


@pytest.mark.parametrize(
    ("session", "document", "expected"),
    [
        ("upload_d1", "d1", True),
        ("upload_", "", True),
        ("upload_d2", "d1", False),  # sorts after the upload session of d1
        ("upload_d0", "d1", False),  # sorts before it
        ("d1", "d1", False),
        ("upload_D1", "d1", False),
        ("xupload_d1", "d1", False),
        ("upload_d1 ", "d1", False),
    ],
)
def test_upload_sessions_are_named_after_their_document(
    session: str, document: str, expected: bool
) -> None:
    assert is_upload_session(session, document) is expected


@pytest.mark.parametrize(
    ("modified", "old"),
    [
        (CUTOFF - timedelta(days=30), True),
        (CUTOFF - TICK, True),
        (CUTOFF, False),  # modified exactly FILES_TTL ago: not old yet
        (CUTOFF + TICK, False),
        (NOW, False),
    ],
)
def test_objects_are_old_strictly_before_the_files_cutoff(modified: datetime, old: bool) -> None:
    assert object_is_old(ObjectInfo("k", 1, modified), RETENTION) is old


@pytest.mark.parametrize(
    ("cache_ttl", "seconds"),
    [
        (timedelta(hours=0.5), 1800),
        (timedelta(seconds=1.6), 2),
        (timedelta(seconds=1.4), 1),
        (timedelta(seconds=0.2), 1),  # Redis counts idle time in whole seconds: at least 1
        (timedelta(0), 1),
    ],
)
def test_retention_gives_the_cache_ttl_in_whole_seconds(cache_ttl: timedelta, seconds: int) -> None:
    assert dataclasses.replace(RETENTION, cache_ttl=cache_ttl).cache_ttl_seconds == seconds


def test_retention_gives_the_files_ttl_in_days_as_the_setting_reads() -> None:
    assert dataclasses.replace(RETENTION, files_ttl=timedelta(days=7)).files_ttl_days == 7.0
    assert dataclasses.replace(RETENTION, files_ttl=timedelta(hours=12)).files_ttl_days == 0.5
