"""In-memory fakes for the fast tier."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from rlm_core.audit import is_selected


class MemoryAuditSink:
    """An AuditSink in memory that records what was asked of it; `prune_error` makes prune fail."""

    def __init__(self, location: str = "memory://audit", prune_error: Exception | None = None):
        self.location = location
        self.prune_error = prune_error
        self.writes: list[tuple[str, datetime, list[dict[str, Any]]]] = []
        self.pruned: list[datetime] = []
        self.ensured = 0
        self.closed = 0

    def ensure(self) -> None:
        self.ensured += 1

    def write(self, run_id: str, at: datetime, lines: list[dict[str, Any]]) -> None:
        self.writes.append((run_id, at, [dict(line) for line in lines]))

    def read(self, since: datetime | None, run_id: str | None) -> Iterator[dict[str, Any]]:
        for _, _, lines in self.writes:
            yield from (line for line in lines if is_selected(line, since, run_id))

    def prune(self, before: datetime) -> int:
        self.pruned.append(before)
        if self.prune_error is not None:
            raise self.prune_error
        return 0

    def close(self) -> None:
        self.closed += 1
