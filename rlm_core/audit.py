"""Audit trail: one JSON line per deletion, written and flushed before the delete happens."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class AuditEntry:
    """What is about to be deleted (or would be, in a dry run), where, how big and why."""

    store: str
    action: str
    target: str
    size_bytes: int
    reason: str
    extra: dict[str, Any] | None = None


class AuditLog:
    """Appends entries to `<dir>/audit-YYYYMMDD.jsonl`; fsyncs each batch before deletes run."""

    def __init__(self, folder: Path, run_id: str, dry_run: bool, now: datetime) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"audit-{now:%Y%m%d}.jsonl"
        self.run_id = run_id
        self.dry_run = dry_run
        self._now = now
        self._file: TextIO | None = None
        self.count = 0

    def record(self, entries: list[AuditEntry]) -> None:
        """Write entries durably; the caller deletes only after this returns."""
        if not entries:
            return
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        for entry in entries:
            self._file.write(json.dumps(self._line(entry), default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.count += len(entries)

    def _line(self, entry: AuditEntry) -> dict[str, Any]:
        line: dict[str, Any] = {
            "run_id": self.run_id,
            "at": self._now.isoformat(),
            "dry_run": self.dry_run,
            "store": entry.store,
            "action": entry.action,
            "target": entry.target,
            "size_bytes": entry.size_bytes,
            "reason": entry.reason,
        }
        if entry.extra:
            line.update(entry.extra)
        return line

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit file (for tests and operators)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
