"""The `rlm` command: errors exit 2 with a message, JSON shapes of the seed, runs recorded in Dagster."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dagster as dg
import pytest

from rlm_dagster.cli import main
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.dagster.conftest import clean_subprocess_env, dagster_home, launch
from tests.services import S3Server, free_port

SEED_FIELDS = {"total_items", "size_mb", "usage_percentage", "cleanup_priority", "oldest_age_hours"}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def rlm_logger_on_this_tests_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rlm logger binds sys.stderr once; a stream captured by an earlier test is closed."""
    monkeypatch.setattr(logging.getLogger("rlm"), "handlers", [])


def exit_code(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `rlm argv` in-process; an argparse refusal (SystemExit) counts as its exit code."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_bogus_resource_type_exits_2_listing_valid_values(
    rlm_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["cleanup", "--resource-type", "bogus"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "'bogus' is not valid" in err
    assert "redis_cache, qdrant_vectors, minio_files, mongodb_metadata" in err


def test_bad_max_deletions_exits_2(rlm_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["cleanup", "--max-deletions", "0"])
    assert excinfo.value.code == 2
    assert "a whole number > 0" in capsys.readouterr().err


def test_settings_error_exits_2_without_traceback(
    rlm_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_CACHE_TTL_HOURS", "soon")
    monkeypatch.setenv("MAX_QDRANT_POINTS", "-1")
    code, out, err = run_cli(capsys, "metrics")
    assert code == 2 and out == ""
    assert "REDIS_CACHE_TTL_HOURS='soon' is invalid" in err
    assert "MAX_QDRANT_POINTS='-1' is invalid" in err
    assert "Traceback" not in err


def test_settings_are_printed_with_secrets_redacted(
    rlm_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIO_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("MINIO_ACCESS_KEY", "access-id")
    monkeypatch.setenv("MINIO_SECRET_KEY", "very-secret-value")
    code, out, _ = run_cli(capsys, "settings")
    assert code == 0
    assert "very-secret-value" not in out
    assert json.loads(out)["minio_secret_key"] == "***"


def test_demo_seed_refuses_real_servers_unless_allowed(
    rlm_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    code, out, err = run_cli(capsys, "demo", "seed")
    assert code == 2 and out == ""
    assert "--allow-servers" in err


def test_demo_metrics_ingest_and_cleanup(
    rlm_env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run_cli(capsys, "demo", "seed", "--scale", "1")
    assert code == 0 and json.loads(out)
    code, out, _ = run_cli(capsys, "metrics")
    metrics = json.loads(out)
    assert code == 0 and set(metrics) == {"redis", "qdrant", "minio", "mongodb"}
    assert all(set(entry) == SEED_FIELDS for entry in metrics.values())
    upload = tmp_path / "report.pdf"
    upload.write_bytes(b"%PDF-1.4 quarterly numbers")
    first = json.loads(run_cli(capsys, "ingest", "--user", "u1", str(upload))[1])
    second = json.loads(run_cli(capsys, "ingest", "--user", "u1", str(upload))[1])
    assert set(first) == {"document_id", "duplicate", "file_hash", "size_bytes"}
    assert second["duplicate"] and second["document_id"] == first["document_id"]
    code, out, _ = run_cli(capsys, "cleanup", "--dry-run", "--resource-type", "qdrant_vectors")
    response = json.loads(out)
    assert code == 0 and response["success"] and response["dry_run"]
    assert response["message"].startswith("Dry run: Cleanup completed.")
    home = rlm_env / "dagster-home"
    assert (home / "dagster.yaml").exists()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(response["run_id"])
        assert run is not None and run.job_name == "cleanup_job"
        assert run.tags["rlm/trigger"] == "manual"
        assert run.tags["rlm/resource_type"] == "qdrant_vectors"


def test_queue_lists_queued_cleanup_runs_in_dequeue_order(
    rlm_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = dagster_home(tmp_path / "home")
    env = clean_subprocess_env(DAGSTER_HOME=str(home), RLM_DATA_DIR=str(rlm_env))
    submitted = [
        ("0", "redis_cache", "Scheduled cleanup"),
        ("5", "qdrant_vectors", "High resource usage: 78.5%"),
        ("10", "mongodb_metadata", "High resource usage: 95.0%"),
        ("5", "minio_files", "High resource usage: 80.0%"),
    ]
    for priority, resource_type, reason in submitted:
        tags = {
            "dagster/priority": priority,
            "rlm/resource_type": resource_type,
            "rlm/reason": reason,
        }
        config: dict[str, object] = {
            "ops": {"cleanup": {"config": {"resource_type": resource_type}}}
        }
        launch(env, "cleanup_job", tags, config)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    code, out, _ = run_cli(capsys, "queue")
    queue = json.loads(out)
    assert code == 0 and queue["queue_size"] == 4
    tasks = queue["tasks"]
    assert [(t["priority"], t["resource_type"]) for t in tasks] == [
        ("CRITICAL", "mongodb_metadata"),
        ("HIGH", "qdrant_vectors"),
        ("HIGH", "minio_files"),
        ("LOW", "redis_cache"),
    ]
    assert tasks[1]["reason"] == "High resource usage: 78.5%"
    assert tasks[0]["target_id"] == "all"
    assert tasks[0]["created_at"].endswith("Z")


# --- bad input: exit 2, one message naming the argument, the value and what is allowed -------

BAD_ARGUMENTS = [
    (("ingest", "--user", "", "{file}"), "argument --user: '' is not valid", "non-empty user id"),
    (("ingest", "--user", "   ", "{file}"), "argument --user: '   ' is not valid", "non-empty"),
    (("ingest", "--user", "u1", "{missing}"), "FILE='{missing}' is not valid", "readable file"),
    (("ingest", "--user", "u1", "{folder}"), "FILE='{folder}' is not valid", "readable file"),
    (
        ("cleanup", "--resource-type", ""),
        "argument --resource-type: resource_type: '' is not valid",
        "redis_cache",
    ),
    (("cleanup", "--resource-type", "Redis"), "'Redis' is not valid", "mongodb_metadata"),
    (("cleanup", "--max-deletions", "-1"), "argument --max-deletions", "whole number > 0"),
    (("cleanup", "--max-deletions", "3.5"), "'3.5' is not valid", "whole number > 0"),
    (("cleanup", "--max-deletions", "abc"), "'abc' is not valid", "whole number > 0"),
    (("cleanup", "--max-deletions", "²"), "'²' is not valid", "whole number > 0"),
    (("cleanup", "--max-deletions", "9" * 5000), "--max-deletions", "<= 1000000000000000"),
    (("cleanup", "--max-deletions", str(2**64)), f"'{2**64}' is not valid", "whole number > 0"),
    (("demo", "seed", "--scale", "0"), "argument --scale: '0' is not valid", "whole number > 0"),
]


@pytest.mark.parametrize(("argv", "named", "allowed"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_message(
    rlm_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    named: str,
    allowed: str,
) -> None:
    upload = tmp_path / "report.pdf"
    upload.write_bytes(b"%PDF-1.4")
    paths = {"file": str(upload), "missing": str(tmp_path / "missing.pdf"), "folder": str(tmp_path)}
    code, out, err = exit_code(capsys, *(a.format(**paths) for a in argv))
    assert code == 2 and out == ""
    assert named.format(**paths) in err and "allowed: " in err and allowed in err, err
    assert "Traceback" not in err
    # Refused before any store was opened: nothing was written.
    assert not rlm_env.exists()


BAD_SETTINGS = [
    ("FILES_TTL_DAYS", "1000000", "<= 36500"),
    ("RAG_SESSION_TTL_HOURS", "1e9", "<= 876000"),
    ("MINIO_BUCKET", "My_Docs", "S3 bucket name"),
    ("MONGODB_DATABASE", "rag.x", "MongoDB database name"),
    ("RLM_SESSIONS_COLLECTION", "system.sessions", "not starting with 'system.'"),
    ("REDIS_URL", "redis://h:notaport", "port from 1 to 65535"),
    ("MINIO_ENDPOINT", "minio:abc", "port from 1 to 65535"),
    ("QDRANT_URL", "http://qdrant:99999", "port from 1 to 65535"),
    ("MONGODB_URL", "mongodb://h1:27017,h2:abc", "ports from 1 to 65535"),
]


@pytest.mark.parametrize("command", ["metrics", "ingest", "cleanup", "queue", "settings"])
@pytest.mark.parametrize(("variable", "value", "allowed"), BAD_SETTINGS)
def test_bad_settings_exit_2_naming_variable_value_and_what_is_allowed(
    rlm_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    variable: str,
    value: str,
    allowed: str,
) -> None:
    monkeypatch.setenv(variable, value)
    argv = ["ingest", "--user", "u1", str(tmp_path)] if command == "ingest" else [command]
    code, out, err = exit_code(capsys, *argv)
    assert code == 2 and out == ""
    assert f"{variable}={value!r} is invalid; allowed: " in err and allowed in err, err
    assert err.count(" is invalid") == 1 and "Traceback" not in err


def test_a_store_that_is_down_exits_1_with_its_message(
    rlm_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MONGODB_URL", f"mongodb://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RLM_STORE_TIMEOUT_SECONDS", "1")
    upload = tmp_path / "report.pdf"
    upload.write_bytes(b"%PDF-1.4")
    code, out, err = exit_code(capsys, "ingest", "--user", "u1", str(upload))
    assert code == 1 and out == ""
    assert err.startswith("rlm: a store failed: MongoDB") and "Traceback" not in err


def test_metrics_with_redis_down_still_report_the_other_stores(
    rlm_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = exit_code(capsys, "metrics")
    metrics = json.loads(out)
    assert code == 1 and "Traceback" not in err
    assert set(metrics["redis"]) == {"error"} and "Redis" in metrics["redis"]["error"]
    assert all(set(metrics[store]) == SEED_FIELDS for store in ("qdrant", "minio", "mongodb"))


def test_metrics_with_a_missing_bucket_still_report_the_other_stores(
    rlm_env: Path,
    s3_srv: S3Server,
    bucket_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SPEC 4.1 item 10: a missing bucket is that store's error; metrics report the others."""
    monkeypatch.setenv("MINIO_ENDPOINT", s3_srv.endpoint)
    monkeypatch.setenv("MINIO_ACCESS_KEY", S3_ACCESS_KEY)
    monkeypatch.setenv("MINIO_SECRET_KEY", S3_SECRET_KEY)
    monkeypatch.setenv("MINIO_BUCKET", bucket_name)  # never created
    code, out, err = exit_code(capsys, "metrics")
    metrics = json.loads(out)
    assert code == 1 and "Traceback" not in err
    assert set(metrics["minio"]) == {"error"} and bucket_name in metrics["minio"]["error"]
    assert all(set(metrics[store]) == SEED_FIELDS for store in ("redis", "qdrant", "mongodb"))


@pytest.mark.parametrize("command", ["cleanup", "queue"])
def test_a_dagster_home_that_does_not_exist_exits_2(
    rlm_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    missing = tmp_path / "no-such-home"
    monkeypatch.setenv("DAGSTER_HOME", str(missing))
    code, out, err = exit_code(capsys, command)
    assert code == 2 and out == ""
    assert f"DAGSTER_HOME={str(missing)!r} is not valid; allowed: an existing folder" in err
    assert not missing.exists()
