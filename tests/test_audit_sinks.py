"""Audit that outlives its worker (SPEC 8.1): file, s3 and mongodb sinks, durable before the
delete they record, read back by `rlm audit`, pruned after RLM_AUDIT_RETENTION_DAYS."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mongomock
import pytest
from minio import Minio
from pymongo import ReadPreference

from rlm_core.adapters.audit_sinks import MongoAuditSink, S3AuditSink
from rlm_core.audit import AuditEntry, AuditLog, FileAuditSink, audit_sink
from rlm_core.settings import ENV_VARIABLES, Settings
from tests.audit_crash_child import CRASH_CODE, LIVE, ORPHAN
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.mongo_wire import MongoWire, mongo_wire_server
from tests.services import S3Server

REPO = Path(__file__).resolve().parents[1]
DAY1 = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
DAY2 = datetime(2026, 1, 12, 9, 30, tzinfo=UTC)
ENTRY = AuditEntry("minio", "delete_orphan_object", "a/b.pdf", 10, "orphan")


def _line(run_id: str, at: datetime, target: str = "a/b.pdf") -> dict[str, object]:
    return {"run_id": run_id, "at": at.isoformat(), "target": target}


# ------------------------------------------------------------- every sink, one contract


@pytest.fixture(params=["file", "s3", "mongodb"])
def sink(
    request: pytest.FixtureRequest, tmp_path: Path, minio_client: Minio, bucket_name: str
) -> Iterator[FileAuditSink | S3AuditSink | MongoAuditSink]:
    """Each sink over a fresh folder, bucket or database."""
    made: FileAuditSink | S3AuditSink | MongoAuditSink
    if request.param == "file":
        made = FileAuditSink(tmp_path / "audit")
    elif request.param == "s3":
        made = S3AuditSink(minio_client, bucket_name, ".rlm-audit/")
    else:
        made = MongoAuditSink(mongomock.MongoClient(tz_aware=False)["rag"])
    made.ensure()
    made.ensure()  # idempotent
    yield made
    made.close()


def test_a_sink_reads_back_what_it_wrote_by_run_and_start_time(
    sink: FileAuditSink | S3AuditSink | MongoAuditSink,
) -> None:
    sink.write("run-1", DAY1, [_line("run-1", DAY1, "x"), _line("run-1", DAY1, "y")])
    sink.write("run-2", DAY2, [_line("run-2", DAY2, "z")])
    assert [line["target"] for line in sink.read(None, None)] == ["x", "y", "z"]
    assert [line["target"] for line in sink.read(None, "run-2")] == ["z"]
    assert [line["target"] for line in sink.read(DAY1 + timedelta(hours=1), None)] == ["z"]
    assert list(sink.read(DAY2 + timedelta(seconds=1), None)) == []


def test_prune_drops_the_days_before_the_cutoff_only(
    sink: FileAuditSink | S3AuditSink | MongoAuditSink,
) -> None:
    sink.write("old", DAY1, [_line("old", DAY1)])
    sink.write("new", DAY2, [_line("new", DAY2)])
    assert sink.prune(DAY2.replace(hour=0)) == 1
    assert [line["run_id"] for line in sink.read(None, None)] == ["new"]
    assert sink.prune(DAY2 + timedelta(hours=5)) == 0  # the cutoff's own day stays


def test_the_s3_sink_writes_one_object_per_record_under_its_prefix(
    minio_client: Minio, bucket_name: str
) -> None:
    sink = S3AuditSink(minio_client, bucket_name, "ops/audit/")
    sink.ensure()
    sink.write("run/../1", DAY1, [_line("r", DAY1)])
    sink.write("run/../1", DAY1, [_line("r", DAY1)])
    keys = [o.object_name for o in minio_client.list_objects(bucket_name, recursive=True)]
    assert len(keys) == 2
    assert all(k and k.startswith("ops/audit/2026-01-10/run____1-") for k in keys)
    assert sink.location == f"s3://{bucket_name}/ops/audit/"


def test_the_mongo_sink_writes_with_majority_journal_and_reads_the_primary() -> None:
    db = mongomock.MongoClient(tz_aware=False)["rag"]
    sink = MongoAuditSink(db)
    collection = sink._collection
    assert collection.name == "rlm_audit"
    assert collection.write_concern.document == {"w": "majority", "j": True}
    assert collection.read_preference == ReadPreference.PRIMARY
    sink.write("run-1", DAY1, [_line("run-1", DAY1)])
    stored = db["rlm_audit"].find_one()
    assert stored is not None
    assert stored["at"] == DAY1.replace(tzinfo=None)  # a BSON date: indexed, prunable


# ------------------------------------------------------------- AuditLog over a sink


def test_audit_log_prunes_past_retention_on_close_but_not_in_a_dry_run(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    old = FileAuditSink(folder)
    old.ensure()
    old.write("old", DAY1, [_line("old", DAY1)])
    old.close()
    dry = AuditLog(folder, "dry", True, DAY2, sink=FileAuditSink(folder), retention=timedelta(1))
    dry.record([ENTRY])
    dry.close()
    assert (folder / "audit-20260110.jsonl").exists()
    real = AuditLog(folder, "real", False, DAY2, sink=FileAuditSink(folder), retention=timedelta(1))
    real.close()
    assert not (folder / "audit-20260110.jsonl").exists()
    assert [line["run_id"] for line in FileAuditSink(folder).read(None, None)] == ["dry"]


def test_audit_log_names_its_sink(minio_client: Minio, bucket_name: str, tmp_path: Path) -> None:
    log = AuditLog(tmp_path, "r", False, DAY1, sink=S3AuditSink(minio_client, bucket_name, "a/"))
    assert log.path is None
    assert log.location == f"s3://{bucket_name}/a/"
    file_log = AuditLog(tmp_path, "r", False, DAY1)
    assert file_log.location == str(tmp_path / "audit-20260110.jsonl") == str(file_log.path)


def test_settings_pick_the_sink(tmp_path: Path) -> None:
    file_sink = audit_sink(Settings.from_env({"RLM_AUDIT_DIR": str(tmp_path)}))
    assert isinstance(file_sink, FileAuditSink)
    assert file_sink.location == str(tmp_path)
    s3 = Settings.from_env(
        {
            "RLM_AUDIT_SINK": "s3",
            "MINIO_ENDPOINT": "127.0.0.1:9",
            "MINIO_ACCESS_KEY": "k",
            "MINIO_SECRET_KEY": "s",
            "RLM_AUDIT_PREFIX": "ops/trail",
        }
    )
    assert audit_sink(s3).location == "s3://documents/ops/trail/"
    mongo = Settings.from_env({"RLM_AUDIT_SINK": "mongodb", "MONGODB_URL": "mongodb://h:1"})
    sink = audit_sink(mongo)
    assert sink.location == "mongodb:rag.rlm_audit"
    sink.close()


# ------------------------------------------------------------- a worker killed mid-run


def _env(tmp_path: Path, s3: S3Server, bucket: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}
    env.update(
        RLM_DATA_DIR=str(tmp_path / "data"),
        MINIO_ENDPOINT=s3.endpoint,
        MINIO_ACCESS_KEY=S3_ACCESS_KEY,
        MINIO_SECRET_KEY=S3_SECRET_KEY,
        MINIO_BUCKET=bucket,
        RLM_CLEANUP_MODE="enforce",
        **extra,
    )
    return env


def _child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.audit_crash_child"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _rlm_audit(env: dict[str, str], *args: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [str(REPO / ".venv" / "bin" / "rlm"), "audit", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def wire() -> Iterator[MongoWire]:
    """A Mongo wire endpoint the child process and `rlm audit` both reach."""
    with mongo_wire_server() as served:
        yield served


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["file", "s3", "mongodb"])
def test_an_entry_recorded_before_a_crash_is_readable_and_the_object_is_still_there(
    kind: str,
    tmp_path: Path,
    s3_srv: S3Server,
    minio_client: Minio,
    bucket_name: str,
    wire: MongoWire,
) -> None:
    run_env = _env(tmp_path, s3_srv, bucket_name, RLM_TEST_RUN_ID="run-crash")
    read_env = _env(tmp_path, s3_srv, bucket_name, RLM_AUDIT_SINK=kind)
    if kind == "s3":
        run_env["RLM_AUDIT_SINK"] = "s3"
    if kind == "mongodb":
        run_env["RLM_TEST_AUDIT_MONGO_URL"] = wire.url
        read_env["MONGODB_URL"] = wire.url
    crashed = _child(run_env)
    assert crashed.returncode == CRASH_CODE, crashed.stdout + crashed.stderr

    minio_client.stat_object(bucket_name, ORPHAN)  # the delete never ran
    entries = _rlm_audit(read_env, "--run", "run-crash")
    assert [(e["action"], e["target"]) for e in entries] == [("delete_orphan_object", ORPHAN)]
    since = (datetime.now(UTC) + timedelta(days=29)).isoformat()
    assert _rlm_audit(read_env, "--since", since) == entries
    if kind == "mongodb":
        stored = list(wire.client["rag"]["rlm_audit"].find())
        assert [doc["line"]["target"] for doc in stored] == [ORPHAN]


@pytest.mark.integration
def test_a_rerun_finishes_the_delete_and_never_sweeps_the_audit_prefix(
    tmp_path: Path, s3_srv: S3Server, minio_client: Minio, bucket_name: str
) -> None:
    env = _env(tmp_path, s3_srv, bucket_name, RLM_AUDIT_SINK="s3", RLM_TEST_RUN_ID="run-a")
    assert _child(env).returncode == CRASH_CODE
    trail = [o.object_name for o in minio_client.list_objects(bucket_name, ".rlm-audit/", True)]
    assert len(trail) == 1
    # The second run's clock is a month ahead too: the audit object is "old" and unreferenced.
    rerun = {"RLM_TEST_NO_CRASH": "1", "RLM_TEST_RUN_ID": "run-b", "RLM_TEST_DAYS_AHEAD": "31"}
    done = _child({**env, **rerun})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["deleted_counts"]["minio"] == 1, report
    left = {o.object_name for o in minio_client.list_objects(bucket_name, recursive=True)}
    assert ORPHAN not in left
    assert LIVE in left
    assert set(trail) <= left
    runs = [e["run_id"] for e in _rlm_audit(env, "--run", "run-b")]
    assert runs == ["run-b"]


def test_rlm_audit_refuses_a_bad_since(capsys: pytest.CaptureFixture[str]) -> None:
    from rlm_dagster.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--since", "yesterday"])
    assert exit_info.value.code == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_an_s3_object_store_put_is_not_confused_with_the_trail(
    minio_client: Minio, bucket_name: str
) -> None:
    # A user object whose name merely starts like the prefix folder is not audit data.
    sink = S3AuditSink(minio_client, bucket_name, ".rlm-audit/")
    sink.ensure()
    minio_client.put_object(bucket_name, ".rlm-audit-old.pdf", io.BytesIO(b"x"), 1)
    minio_client.put_object(bucket_name, ".rlm-audit/notes.txt", io.BytesIO(b"x"), 1)
    assert list(sink.read(None, None)) == []
    assert sink.prune(DAY2) == 0


def test_a_new_audit_file_has_its_folder_fsynced_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    sink = FileAuditSink(tmp_path)
    sink.write("r", DAY1, [_line("r", DAY1)])
    sink.write("r", DAY1, [_line("r", DAY1)])
    sink.close()
    assert synced == [True, False, False]  # the name once, the lines at every write
