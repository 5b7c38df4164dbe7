"""SPEC 4.1 (3) at the edge of Python's numbers: a created_at too large even for a float (JSON
allows any integer) is no instant, so the point is UNKNOWN: kept, never a crash of the sweep."""

from __future__ import annotations

from datetime import UTC, datetime

from rlm_core.policy import PointVerdict, point_evidence
from rlm_core.ports import PointInfo

ACTIVE_SINCE = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)


def test_a_created_at_too_large_for_a_float_is_unknown() -> None:
    huge = PointInfo("p1", "s1", "d1", 10**400)
    assert point_evidence(huge, ACTIVE_SINCE) == (PointVerdict.UNKNOWN, None)
    assert point_evidence(PointInfo("p1", "s1", "d1", -(10**400)), ACTIVE_SINCE) == (
        PointVerdict.UNKNOWN,
        None,
    )
