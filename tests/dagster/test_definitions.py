"""The code location: loadable, binding names, workspace and instance files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from rlm_core.settings import Settings
from rlm_dagster.run_tags import STORE_TAG_PREFIX, cleanup_stores
from rlm_dagster.wiring import build_definitions
from tests.dagster.conftest import REPO_ROOT, clean_subprocess_env, dagster_home


def test_definitions_are_loadable_with_the_binding_names(rlm_env: Path) -> None:
    from rlm_dagster.definitions import defs

    dg.Definitions.validate_loadable(defs)
    built = build_definitions(Settings.from_env())
    graph = built.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {"usage/redis", "usage/qdrant", "usage/minio", "usage/mongodb", "usage/history"}
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("usage/mongodb", "usage_below_critical") in checks
    assert ("usage/redis", "cleanup_keeping_up") in checks
    assert len(checks) == 8
    assert built.resolve_job_def("snapshot_job") is not None
    assert built.resolve_job_def("cleanup_job") is not None
    assert built.resolve_sensor_def("usage_pressure_sensor") is not None
    assert built.resolve_sensor_def("alert_sensor") is not None
    for name in (
        "monitoring_schedule",
        "redis_cleanup_schedule",
        "qdrant_cleanup_schedule",
        "minio_cleanup_schedule",
    ):
        assert built.resolve_schedule_def(name) is not None


def test_workspace_points_at_the_code_location() -> None:
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    assert workspace["load_from"] == [
        {"python_module": {"module_name": "rlm_dagster.definitions", "attribute": "defs"}}
    ]


def test_packaged_instance_config_is_the_repository_one() -> None:
    packaged = REPO_ROOT / "rlm_dagster" / "dagster.yaml"
    assert packaged.read_text() == (REPO_ROOT / "dagster.yaml").read_text()


@pytest.mark.parametrize("template", ["dagster.yaml", "dagster.postgres.yaml"])
def test_instance_config_queues_by_priority_one_run_per_store(template: str) -> None:
    config = yaml.safe_load((REPO_ROOT / template).read_text())
    assert "tag_concurrency_limits" not in config["run_coordinator"]["config"]
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limits[0] == {
        "key": "rlm/resource_type",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    }
    # One limit per store tag that cleanup runs carry.
    assert {(limit["key"], limit["limit"]) for limit in limits[1:]} == {
        (f"{STORE_TAG_PREFIX}{store}", 1) for store in cleanup_stores(None)
    }


def test_instance_uses_current_conventions(tmp_path: Path) -> None:
    home = dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        assert not instance.telemetry_enabled
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 4
        assert len(queue.tag_concurrency_limits) == 5
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert not instance.run_retries_retry_on_asset_or_op_failure
        assert instance.managed_python_loggers == ["rlm"]
    assert yaml.safe_load((home / "dagster.yaml").read_text())["nux"] == {"enabled": False}


def test_dg_cli_validates_the_project(tmp_path: Path) -> None:
    """`dg check defs` finds the project through dg.toml, loads it and prints no deprecation."""
    env = clean_subprocess_env(
        DAGSTER_HOME=str(dagster_home(tmp_path / "home")), RLM_DATA_DIR=str(tmp_path / "data")
    )
    dg_cli = str(REPO_ROOT / ".venv" / "bin" / "dg")
    done = subprocess.run(
        [dg_cli, "check", "defs"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr
    for word in ("Warning", "superseded", "deprecated", "does not match"):
        assert word not in done.stdout + done.stderr


def test_invalid_settings_make_a_clear_load_error(tmp_path: Path) -> None:
    env = clean_subprocess_env(
        RLM_DATA_DIR=str(tmp_path / "data"), REDIS_CLEANUP_INTERVAL_SECONDS="5400"
    )
    done = subprocess.run(
        [sys.executable, "-c", "import rlm_dagster.definitions"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "SettingsError" in done.stderr
    assert "REDIS_CLEANUP_INTERVAL_SECONDS=5400 cannot be expressed" in done.stderr
