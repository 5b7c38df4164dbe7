"""Injected clocks: every age in rlm is `clock.now() - timestamp`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Source of the current time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """Current UTC time."""
        return datetime.now(UTC)


class FakeClock:
    """A clock tests and simulations move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = to_utc(start) if start else datetime(2025, 1, 20, 15, 30, tzinfo=UTC)

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move the clock forward and return the new time."""
        self._now += delta if delta is not None else timedelta(**kwargs)
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to a given time."""
        self._now = to_utc(when)


def to_utc(value: datetime) -> datetime:
    """Aware UTC datetime; naive values are taken as UTC, as pymongo returns them."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def age_hours(now: datetime, then: datetime) -> float:
    """Hours between two instants, never negative (clock skew counts as zero)."""
    return max(0.0, (to_utc(now) - to_utc(then)).total_seconds() / 3600.0)
