"""Dagster's current conventions (issue 12): the usage assets' FreshnessPolicy, and rlm's events
in each run's event log through the instance's managed Python loggers."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from rlm_core.settings import Settings
from rlm_dagster.jobs import CleanupConfig, CleanupTarget, cleanup_job
from rlm_dagster.wiring import build_definitions
from tests.dagster.conftest import dagster_home
from tests.dagster.fakes import SCENARIOS, FakeLifecycleResource, FakeManager

STORES = ("redis", "qdrant", "minio", "mongodb")


@pytest.mark.parametrize(("interval", "warn", "fail"), [(60, 90, 120), (300, 450, 600)])
def test_usage_assets_go_stale_after_missed_snapshots(
    rlm_env: Path, interval: int, warn: int, fail: int
) -> None:
    """Warn after 1.5 and fail after 2 monitoring intervals without a snapshot."""
    settings = Settings.from_env(
        {"RESOURCE_MONITORING_INTERVAL_SECONDS": str(interval), "RLM_DATA_DIR": str(rlm_env)}
    )
    specs = {spec.key: spec for spec in build_definitions(settings).resolve_all_asset_specs()}
    expected = dg.FreshnessPolicy.time_window(
        fail_window=timedelta(seconds=fail), warn_window=timedelta(seconds=warn)
    )
    for store in STORES:
        assert specs[dg.AssetKey(["usage", store])].freshness_policy == expected, store


def test_rlm_events_reach_the_run_event_log(rlm_env: Path, tmp_path: Path) -> None:
    """With the repository's dagster.yaml (managed_python_loggers: [rlm]), the core's JSON event
    `Cleanup task processed` is in the run's own event log, with its level."""
    SCENARIOS["conventions"] = FakeManager()
    home = dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = cleanup_job.execute_in_process(
            run_config=dg.RunConfig(
                ops={"cleanup": CleanupConfig(resource_type=CleanupTarget.redis_cache)}
            ),
            resources={"lifecycle": FakeLifecycleResource(scenario="conventions")},
            instance=instance,
        )
        entries = instance.all_logs(result.run_id)
    processed = [e for e in entries if e.user_message == "Cleanup task processed"]
    assert processed and processed[0].level == logging.INFO
    assert processed[0].dagster_event is None  # a log line, not a step event
