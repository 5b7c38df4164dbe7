"""The audit trail: one JSON line per deletion, durable on disk before `record` returns."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from rlm_core.audit import (
    AuditEntry,
    AuditLog,
    FileAuditSink,
    audit_sink,
    is_selected,
    open_audit,
    read_audit,
)
from rlm_core.ports import StoreError
from rlm_core.settings import Settings
from tests.unit.fakes import MemoryAuditSink

NOW = datetime(2026, 1, 15, 12, 30, 5, tzinfo=UTC)
ENTRY = AuditEntry("qdrant", "delete_points", "s1/d1", 123, "session inactive")


def base_line(entry: AuditEntry, *, dry_run: bool = False, run_id: str = "run-1") -> dict:
    return {
        "run_id": run_id,
        "at": "2026-01-15T12:30:05+00:00",
        "dry_run": dry_run,
        "store": entry.store,
        "action": entry.action,
        "target": entry.target,
        "size_bytes": entry.size_bytes,
        "reason": entry.reason,
    }


def test_the_log_is_one_dated_file_in_a_folder_created_on_demand(tmp_path: Path) -> None:
    folder = tmp_path / "deep" / "er" / "audit"
    log = AuditLog(folder, "run-1", False, NOW)
    assert folder.is_dir()
    assert log.path == folder / "audit-20260115.jsonl"
    assert not log.path.exists()  # nothing is written before there is something to record
    assert (log.run_id, log.dry_run, log.count) == ("run-1", False, 0)


def test_record_writes_one_json_line_per_entry(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "run-1", False, NOW)
    other = AuditEntry("minio", "remove_object", "u1/d1.pdf", 0, "orphan")
    log.record([ENTRY, other])
    text = log.path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert [json.loads(line) for line in text.splitlines()] == [
        base_line(ENTRY),
        base_line(other),
    ]
    assert read_audit(log.path) == [base_line(ENTRY), base_line(other)]
    log.close()


@pytest.mark.parametrize("dry_run", [True, False])
def test_every_line_says_whether_the_run_was_dry(tmp_path: Path, dry_run: bool) -> None:
    log = AuditLog(tmp_path, "run-dry", dry_run, NOW)
    log.record([ENTRY, ENTRY])
    log.close()
    lines = read_audit(log.path)
    assert [line["dry_run"] for line in lines] == [dry_run, dry_run]
    assert lines[0] == base_line(ENTRY, dry_run=dry_run, run_id="run-dry")


def test_extra_fields_are_merged_and_non_json_values_are_stringified(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "run-1", False, NOW)
    extra = {"bucket": "b", "ids": ["p1", "p2"], "read_at": NOW}
    log.record([dataclasses.replace(ENTRY, extra=extra)])
    log.record([dataclasses.replace(ENTRY, extra={})])
    log.close()
    with_extra, with_empty = read_audit(log.path)
    assert with_extra == {
        **base_line(ENTRY),
        "bucket": "b",
        "ids": ["p1", "p2"],
        "read_at": str(NOW),
    }
    assert with_empty == base_line(ENTRY)


def test_an_empty_batch_writes_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "run-1", False, NOW)
    log.record([])
    assert not log.path.exists()
    assert log.count == 0
    log.close()


def test_count_adds_up_the_entries_of_every_batch(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "run-1", False, NOW)
    assert log.count == 0
    log.record([ENTRY, ENTRY])
    assert log.count == 2
    log.record([ENTRY, ENTRY, ENTRY])
    assert log.count == 5
    log.close()
    assert len(read_audit(log.path)) == 5


def test_lines_are_written_and_fsynced_before_record_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_at_fsync: list[list[dict]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        # Read through another handle: only what was flushed to the OS is visible. The
        # folder's own fsync (making a new file's name durable) is not a data fsync.
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            seen_at_fsync.append(read_audit(log.path))
        real_fsync(fd)

    log = AuditLog(tmp_path, "run-1", False, NOW)
    monkeypatch.setattr(os, "fsync", spy)
    log.record([ENTRY, ENTRY])
    assert seen_at_fsync == [[base_line(ENTRY)] * 2]
    assert read_audit(log.path) == [base_line(ENTRY)] * 2  # durable before any close
    log.record([ENTRY])
    assert len(seen_at_fsync) == 2
    assert len(seen_at_fsync[1]) == 3
    log.close()


def test_logs_of_one_day_append_to_one_file(tmp_path: Path) -> None:
    first = AuditLog(tmp_path, "run-1", False, NOW)
    first.record([ENTRY])
    first.close()
    second = AuditLog(tmp_path, "run-2", True, NOW.replace(hour=23))
    assert second.path == first.path
    second.record([ENTRY])
    second.close()
    assert [line["run_id"] for line in read_audit(first.path)] == ["run-1", "run-2"]
    assert [line["at"] for line in read_audit(first.path)] == [
        NOW.isoformat(),
        NOW.replace(hour=23).isoformat(),
    ]


def test_close_is_safe_before_any_record_and_twice(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "run-1", False, NOW)
    log.close()
    log.close()
    log.record([ENTRY])
    log.close()
    log.close()


def test_record_after_close_reopens_and_appends(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "run-1", False, NOW)
    log.record([ENTRY])
    log.close()
    log.record([ENTRY])
    log.close()
    assert read_audit(log.path) == [base_line(ENTRY)] * 2


def test_read_audit_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_audit(tmp_path / "audit-20260101.jsonl") == []


def test_read_audit_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('\n{"a": 1}\n   \n\n{"b": [2]}\n \t\n', encoding="utf-8")
    assert read_audit(path) == [{"a": 1}, {"b": [2]}]


def test_audit_entries_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ENTRY.reason = "changed"  # type: ignore[misc]
    assert ENTRY.extra is None


# --- AuditLog over any sink --------------------------------------------------------------------


def test_a_log_over_another_sink_writes_there_with_no_file(tmp_path: Path) -> None:
    sink = MemoryAuditSink("s3://bucket/.rlm-audit/")
    log = AuditLog(tmp_path / "unused", "run-9", True, NOW, sink=sink)
    assert (log.path, log.location) == (None, "s3://bucket/.rlm-audit/")
    assert not (tmp_path / "unused").exists()
    log.record([])
    log.record([ENTRY, ENTRY])
    assert sink.writes == [("run-9", NOW, [base_line(ENTRY, dry_run=True, run_id="run-9")] * 2)]
    assert log.count == 2
    assert list(sink.read(None, "run-9")) == [base_line(ENTRY, dry_run=True, run_id="run-9")] * 2


def test_a_file_sink_given_explicitly_names_the_file(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path / "real")
    log = AuditLog(tmp_path / "ignored", "run-1", False, NOW, sink=sink)
    assert log.path == tmp_path / "real" / "audit-20260115.jsonl"
    assert log.location == str(log.path)
    assert (tmp_path / "real").is_dir()
    assert not (tmp_path / "ignored").exists()


@pytest.mark.parametrize(
    ("retention", "dry_run", "pruned"),
    [
        (timedelta(days=90), False, [NOW - timedelta(days=90)]),
        (timedelta(days=1), False, [NOW - timedelta(days=1)]),
        (timedelta(days=90), True, []),  # a dry run changes nothing, the audit included
        (None, False, []),
        (None, True, []),
    ],
)
def test_close_prunes_past_the_retention_on_real_runs_only(
    retention: timedelta | None, dry_run: bool, pruned: list[datetime]
) -> None:
    sink = MemoryAuditSink()
    AuditLog(Path("unused"), "run-1", dry_run, NOW, sink=sink, retention=retention).close()
    assert sink.pruned == pruned
    assert sink.closed == 1


@pytest.mark.parametrize("error", [StoreError("s3 down"), OSError("disk gone")])
def test_a_failed_prune_is_logged_and_never_fails_the_run(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    sink = MemoryAuditSink("memory://x", prune_error=error)
    log = AuditLog(Path("unused"), "run-1", False, NOW, sink=sink, retention=timedelta(days=3))
    with caplog.at_level(logging.WARNING, logger="rlm_core.audit"):
        log.close()
    assert sink.closed == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"audit retention: pruning memory://x failed: {error}"
    ]


def test_an_unexpected_prune_error_propagates_but_the_sink_is_closed() -> None:
    sink = MemoryAuditSink(prune_error=RuntimeError("bug"))
    log = AuditLog(Path("unused"), "run-1", False, NOW, sink=sink, retention=timedelta(days=3))
    with pytest.raises(RuntimeError, match="bug"):
        log.close()
    assert sink.closed == 1


# --- the file sink -----------------------------------------------------------------------------


def day_file(folder: Path, day: datetime) -> Path:
    return folder / f"audit-{day:%Y%m%d}.jsonl"


def write_lines(path: Path, *lines: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def test_the_file_sink_is_named_after_its_folder(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path / "a")
    assert (sink.folder, sink.location) == (tmp_path / "a", str(tmp_path / "a"))
    sink.ensure()
    sink.ensure()
    assert (tmp_path / "a").is_dir()


def test_writes_go_to_the_file_of_their_runs_start_day(tmp_path: Path) -> None:
    sink = FileAuditSink(tmp_path)
    sink.ensure()
    day2 = NOW + timedelta(days=1)
    sink.write("r1", NOW, [{"n": 1}])
    sink.write("r2", day2, [{"n": 2}])
    sink.write("r3", NOW, [{"n": 3}])
    sink.close()
    assert read_audit(day_file(tmp_path, NOW)) == [{"n": 1}, {"n": 3}]
    assert read_audit(day_file(tmp_path, day2)) == [{"n": 2}]


def test_the_file_sink_keeps_one_handle_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = os.open

    def counting_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    sink = FileAuditSink(tmp_path)
    for n in range(3):
        sink.write("r1", NOW, [{"n": n}])
    assert opened.count(str(day_file(tmp_path, NOW))) == 1
    sink.close()
    sink.write("r1", NOW, [{"n": 3}])
    assert opened.count(str(day_file(tmp_path, NOW))) == 2
    sink.close()
    assert len(read_audit(day_file(tmp_path, NOW))) == 4


def test_the_file_sink_appends_a_batch_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Other processes append to the same day's file (parallel cleanups, a fan-out's parts): a
    # batch written in pieces could have their lines land between the pieces.
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: Any) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    sink = FileAuditSink(tmp_path)
    batch = [{"n": n, "pad": "x" * 200} for n in range(400)]  # ~90 KB, past any buffer
    sink.write("r1", NOW, batch)
    sink.close()
    assert len(writes) == 1
    assert writes[0] > 64 * 1024
    with open(day_file(tmp_path, NOW), "ab") as other:
        other.write(b'{"n": "other"}\n')
    sink.write("r1", NOW, [{"n": "again"}])
    sink.close()
    assert [line["n"] for line in read_audit(day_file(tmp_path, NOW))][-3:] == [
        399,
        "other",
        "again",
    ]


def test_a_new_file_makes_its_folder_entry_durable_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    first = FileAuditSink(tmp_path)
    first.write("r1", NOW, [{"n": 1}])
    first.write("r1", NOW, [{"n": 2}])
    first.close()
    assert synced == ["dir", "file", "file"]
    synced.clear()
    FileAuditSink(tmp_path).write("r2", NOW, [{"n": 3}])  # the file exists: no folder fsync
    assert synced == ["file"]


def test_read_returns_the_lines_of_the_selected_days_and_run_oldest_first(tmp_path: Path) -> None:
    days = [NOW - timedelta(days=2), NOW - timedelta(days=1), NOW, NOW + timedelta(days=1)]
    for i, day in enumerate(days):
        write_lines(
            day_file(tmp_path, day),
            {"run_id": f"r{i}", "at": day.isoformat()},
            {"run_id": "x", "at": day.isoformat()},
        )
    sink = FileAuditSink(tmp_path)
    assert [line["run_id"] for line in sink.read(None, None)] == [
        "r0", "x", "r1", "x", "r2", "x", "r3", "x"
    ]  # fmt: skip
    assert [line["run_id"] for line in sink.read(NOW - timedelta(days=1), None)] == [
        "r1", "x", "r2", "x", "r3", "x"
    ]  # fmt: skip
    assert [line["run_id"] for line in sink.read(None, "r2")] == ["r2"]
    assert [line["run_id"] for line in sink.read(NOW, "x")] == ["x", "x"]


def test_read_skips_files_of_days_before_since_whatever_they_hold(tmp_path: Path) -> None:
    # Files are named by their runs' start day; lines a file should not hold are not looked for.
    late = NOW.replace(hour=23, minute=30)
    write_lines(
        day_file(tmp_path, NOW - timedelta(days=3)), {"run_id": "a", "at": late.isoformat()}
    )
    write_lines(day_file(tmp_path, NOW), {"run_id": "b", "at": late.isoformat()})
    sink = FileAuditSink(tmp_path)
    assert [line["run_id"] for line in sink.read(NOW - timedelta(hours=1), None)] == ["b"]
    # since's day is taken in UTC: 01:00 on the 16th at +02:00 is 23:00 on the 15th.
    east = datetime(2026, 1, 16, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert [line["run_id"] for line in sink.read(east, None)] == ["b"]


def test_prune_removes_the_files_of_days_before_the_cutoffs_day(tmp_path: Path) -> None:
    days = [NOW - timedelta(days=2), NOW - timedelta(days=1), NOW, NOW + timedelta(days=1)]
    for day in days:
        write_lines(day_file(tmp_path, day), {"at": day.isoformat()})
    write_lines(tmp_path / "notes.txt", {"keep": True})
    write_lines(tmp_path / "audit-old.json", {"keep": True})
    sink = FileAuditSink(tmp_path)
    assert sink.prune(NOW.replace(hour=23, minute=59)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "notes.txt",
            "audit-old.json",
            day_file(tmp_path, NOW).name,
            day_file(tmp_path, days[3]).name,
        ]
    )
    assert sink.prune(NOW) == 0


def test_prune_tolerates_a_file_another_run_removed_first(tmp_path: Path) -> None:
    gone = day_file(tmp_path, NOW - timedelta(days=9))

    class RacingFolder(type(tmp_path)):  # type: ignore[misc]
        def glob(self, pattern: str) -> Any:
            return [*super().glob(pattern), gone]

    write_lines(day_file(tmp_path, NOW - timedelta(days=5)), {"at": 1})
    sink = FileAuditSink(RacingFolder(tmp_path))
    assert sink.prune(NOW) == 2
    assert list(tmp_path.iterdir()) == []


# --- selecting lines and choosing the sink -------------------------------------------------------

SINCE = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "selected"),
    [
        ("2026-01-15T12:00:00+00:00", True),  # started exactly at `since`
        ("2026-01-15T12:00:00.000001+00:00", True),
        ("2026-01-16T00:00:00+00:00", True),
        ("2026-01-15T11:59:59.999999+00:00", False),
        ("2026-01-15T14:00:00+02:00", True),  # the same instant in another zone
        ("2026-01-15T13:59:59+02:00", False),
        ("2026-01-15T12:00:00", True),  # naive: taken as UTC
        ("2026-01-15T11:00:00", False),
        ("not a date", False),
        ("", False),
        (None, False),
    ],
)
def test_lines_are_selected_from_since_inclusive(at: str | None, selected: bool) -> None:
    assert is_selected({"run_id": "r", "at": at}, SINCE, None) is selected
    assert is_selected({"run_id": "r", "at": at}, SINCE, "r") is selected
    assert is_selected({"run_id": "r", "at": at}, SINCE, "other") is False
    assert is_selected({"run_id": "r", "at": at}, None, None) is True


def test_a_line_without_a_start_time_is_never_selected_by_time() -> None:
    assert is_selected({"run_id": "r"}, SINCE, None) is False
    assert is_selected({"run_id": "r"}, None, "r") is True
    assert is_selected({}, None, "r") is False
    assert is_selected({}, None, None) is True


def test_the_file_sink_is_the_default_in_the_audit_folder(tmp_path: Path) -> None:
    settings = Settings.from_env({"RLM_AUDIT_DIR": str(tmp_path / "audit")})
    sink = audit_sink(settings)
    assert isinstance(sink, FileAuditSink)
    assert sink.folder == tmp_path / "audit"


SINK_ENV = {
    "s3": {
        "RLM_AUDIT_SINK": "S3",
        "MINIO_ENDPOINT": "127.0.0.1:9000",
        "MINIO_ACCESS_KEY": "key",
        "MINIO_SECRET_KEY": "secret-value",
    },
    "mongodb": {"RLM_AUDIT_SINK": "MongoDB", "MONGODB_URL": "mongodb://127.0.0.1:27017"},
}


@pytest.mark.parametrize(
    ("kind", "factory"), [("s3", "s3_audit_sink"), ("mongodb", "mongo_audit_sink")]
)
def test_the_configured_sink_is_built_from_the_settings(
    kind: str, factory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlm_core.adapters import audit_sinks

    built: list[Settings] = []
    monkeypatch.setattr(audit_sinks, factory, lambda s: built.append(s) or MemoryAuditSink(kind))
    settings = Settings.from_env(SINK_ENV[kind])  # the name as read from the environment
    assert settings.audit_sink == kind
    sink = audit_sink(settings)
    assert isinstance(sink, MemoryAuditSink)
    assert (sink.location, built) == (kind, [settings])


@pytest.mark.parametrize("kind", ["file", "zzz", "s4", "mongodc", ""])
def test_any_other_sink_name_means_the_file_sink(kind: str, tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings.from_env({}), audit_sink=kind, audit_dir=tmp_path)
    sink = audit_sink(settings)
    assert isinstance(sink, FileAuditSink)
    assert sink.folder == tmp_path


@pytest.mark.parametrize(("dry_run", "left"), [(False, 2), (True, 3)])
def test_open_audit_writes_the_configured_sink_and_prunes_by_retention(
    tmp_path: Path, dry_run: bool, left: int
) -> None:
    settings = Settings.from_env({"RLM_AUDIT_DIR": str(tmp_path), "RLM_AUDIT_RETENTION_DAYS": "2"})
    for age in (3, 2, 1):
        write_lines(day_file(tmp_path, NOW - timedelta(days=age)), {"at": 1})
    log = open_audit(settings, "run-7", dry_run, NOW)
    assert (log.run_id, log.dry_run, log.path) == ("run-7", dry_run, day_file(tmp_path, NOW))
    log.record([ENTRY])
    log.close()
    assert read_audit(day_file(tmp_path, NOW)) == [
        base_line(ENTRY, dry_run=dry_run, run_id="run-7")
    ]
    assert len(list(tmp_path.glob("audit-*.jsonl"))) == left + 1
