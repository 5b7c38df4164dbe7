"""Audit trail: one JSON line per deletion, durable in its sink before the delete happens."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rlm_core.clock import to_utc
from rlm_core.ports import StoreError

if TYPE_CHECKING:
    from rlm_core.settings import Settings

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    """What is about to be deleted (or would be, in a dry run), where, how big and why."""

    store: str
    action: str
    target: str
    size_bytes: int
    reason: str
    extra: dict[str, Any] | None = None


class AuditSink(Protocol):
    """Where audit lines go: `write` returns only once they are durable (the delete follows)."""

    location: str

    def ensure(self) -> None:
        """Create the folder, collection indexes or bucket the sink writes to (idempotent)."""
        ...

    def write(self, run_id: str, at: datetime, lines: list[dict[str, Any]]) -> None:
        """Store lines durably: fsynced, PUT answered, or insert acknowledged by a majority."""
        ...

    def read(self, since: datetime | None, run_id: str | None) -> Iterator[dict[str, Any]]:
        """Stored lines of runs started at or after `since`, of one run if given, oldest first."""
        ...

    def prune(self, before: datetime) -> int:
        """Drop audit data of runs started before the day of `before`; return how many units
        (files, objects, entries) went."""
        ...

    def close(self) -> None:
        """Release what the sink holds open."""
        ...


class FileAuditSink:
    """`<dir>/audit-YYYYMMDD.jsonl` by run start date; each write is flushed and fsynced."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.location = str(folder)
        self._fd: int | None = None
        self._open_path: Path | None = None

    def file_for(self, at: datetime) -> Path:
        """The file holding the lines of runs started on that day."""
        return self.folder / f"audit-{at:%Y%m%d}.jsonl"

    def ensure(self) -> None:
        """Create the folder."""
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, run_id: str, at: datetime, lines: list[dict[str, Any]]) -> None:
        """Append lines in one O_APPEND write, then fsync before returning.

        Runs in other processes (parallel cleanups, the parts of a fan-out) append to the same
        day's file: one write per batch keeps their lines whole, where a buffered file would
        flush a batch in pieces that another process's lines could land between."""
        fd = self._handle(self.file_for(at))
        data = memoryview("".join(json.dumps(line, default=str) + "\n" for line in lines).encode())
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)

    def _handle(self, path: Path) -> int:
        if self._fd is not None and self._open_path == path:
            return self._fd
        self.close()
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._open_path = path
        if created:
            _fsync_folder(path.parent)  # the new file's name is durable too, not only its bytes
        return self._fd

    def read(self, since: datetime | None, run_id: str | None) -> Iterator[dict[str, Any]]:
        """Lines of the dated files from since's day on, filtered by start time and run."""
        first = f"audit-{to_utc(since):%Y%m%d}.jsonl" if since is not None else ""
        for path in sorted(self.folder.glob("audit-*.jsonl")):
            if path.name >= first:
                yield from (line for line in read_audit(path) if is_selected(line, since, run_id))

    def prune(self, before: datetime) -> int:
        """Remove the dated files of days before `before`'s day."""
        cutoff = f"audit-{before:%Y%m%d}.jsonl"
        old = [p for p in self.folder.glob("audit-*.jsonl") if p.name < cutoff]
        for path in old:
            path.unlink(missing_ok=True)
        return len(old)

    def close(self) -> None:
        """Close the open file."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._open_path = None


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_selected(line: dict[str, Any], since: datetime | None, run_id: str | None) -> bool:
    if run_id is not None and line.get("run_id") != run_id:
        return False
    if since is None:
        return True
    try:
        return to_utc(datetime.fromisoformat(str(line.get("at")))) >= to_utc(since)
    except ValueError:
        return False


class AuditLog:
    """One run's audit: a line per deletion, durable in its sink before the delete happens.

    Without a sink it writes `<folder>/audit-YYYYMMDD.jsonl` (RLM_AUDIT_SINK=file)."""

    def __init__(
        self,
        folder: Path,
        run_id: str,
        dry_run: bool,
        now: datetime,
        sink: AuditSink | None = None,
        retention: timedelta | None = None,
    ) -> None:
        self._sink: AuditSink = sink if sink is not None else FileAuditSink(folder)
        if isinstance(self._sink, FileAuditSink):
            self._sink.ensure()
        self.path: Path | None = (
            self._sink.file_for(now) if isinstance(self._sink, FileAuditSink) else None
        )
        self.location = str(self.path) if self.path is not None else self._sink.location
        self.run_id = run_id
        self.dry_run = dry_run
        self._now = now
        self._retention = retention
        self.count = 0

    def record(self, entries: list[AuditEntry]) -> None:
        """Write entries durably; the caller deletes only after this returns."""
        if not entries:
            return
        self._sink.write(self.run_id, self._now, [self._line(entry) for entry in entries])
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
        """Prune audit data past RLM_AUDIT_RETENTION_DAYS (real runs only), then close the sink."""
        try:
            if self._retention is not None and not self.dry_run:
                self._prune(self._now - self._retention)
        finally:
            self._sink.close()

    def _prune(self, before: datetime) -> None:
        # Housekeeping never fails the run it follows: the next run prunes again.
        try:
            self._sink.prune(before)
        except (StoreError, OSError) as exc:
            _log.warning("audit retention: pruning %s failed: %s", self._sink.location, exc)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit file (for tests and operators)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def audit_sink(settings: Settings) -> AuditSink:
    """The sink RLM_AUDIT_SINK names: the audit folder, our bucket's prefix, or `rlm_audit`."""
    if settings.audit_sink == "s3":
        from rlm_core.adapters.audit_sinks import s3_audit_sink

        return s3_audit_sink(settings)
    if settings.audit_sink == "mongodb":
        from rlm_core.adapters.audit_sinks import mongo_audit_sink

        return mongo_audit_sink(settings)
    return FileAuditSink(settings.audit_path)


def open_audit(settings: Settings, run_id: str, dry_run: bool, now: datetime) -> AuditLog:
    """The audit of one run, in the configured sink, pruned to RLM_AUDIT_RETENTION_DAYS."""
    return AuditLog(
        settings.audit_path,
        run_id,
        dry_run,
        now,
        sink=audit_sink(settings),
        retention=timedelta(days=settings.audit_retention_days),
    )
