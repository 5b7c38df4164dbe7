"""The `rlm` command: errors exit 2 with a message, JSON shapes of the seed, runs recorded in Dagster."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from rlm_dagster.cli import main
from tests.dagster.conftest import clean_subprocess_env, dagster_home, launch

SEED_FIELDS = {"total_items", "size_mb", "usage_percentage", "cleanup_priority", "oldest_age_hours"}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
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
        config = {"ops": {"cleanup": {"config": {"resource_type": resource_type}}}}
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
