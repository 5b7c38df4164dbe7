"""Pure policy: usage to priority, and the order cleanup tasks run in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rlm_core.clock import to_utc
from rlm_core.domain import CleanupPriority, CleanupTask


@dataclass(frozen=True)
class Thresholds:
    """Usage fractions at which priority rises (0 < medium < high < critical <= 1)."""

    medium: float = 0.5
    high: float = 0.75
    critical: float = 0.9


def classify_priority(usage: float, thresholds: Thresholds) -> CleanupPriority:
    """Priority of a store whose usage is `usage` (a fraction of its soft limit)."""
    if usage >= thresholds.critical:
        return CleanupPriority.CRITICAL
    if usage >= thresholds.high:
        return CleanupPriority.HIGH
    if usage >= thresholds.medium:
        return CleanupPriority.MEDIUM
    return CleanupPriority.LOW


def order_tasks(tasks: Iterable[CleanupTask], limit: int | None = None) -> list[CleanupTask]:
    """Most urgent first, then first in first out; at most `limit` tasks."""
    # to_utc: a naive created_at (as pymongo returns it) must not crash the sort against aware ones.
    indexed = sorted(
        enumerate(tasks), key=lambda it: (it[1].priority, to_utc(it[1].created_at), it[0])
    )
    ordered = [task for _, task in indexed]
    return ordered if limit is None else ordered[: max(0, limit)]


def usage_reason(usage: float) -> str:
    """The seed's reason text, e.g. `High resource usage: 78.5%`."""
    return f"High resource usage: {usage * 100:.1f}%"
