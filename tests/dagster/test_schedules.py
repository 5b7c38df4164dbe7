"""Schedules: cron from *_INTERVAL_SECONDS, clear errors, and the runs each schedule requests."""

from __future__ import annotations

import dagster as dg
import pytest

from rlm_core.settings import Settings, SettingsError
from rlm_dagster.schedules import build_schedules, interval_to_cron
from rlm_dagster.wiring import build_definitions


@pytest.mark.parametrize(
    ("seconds", "cron"),
    [
        (60, "* * * * *"),
        (300, "*/5 * * * *"),
        (1800, "*/30 * * * *"),
        (3600, "0 * * * *"),
        (7200, "0 */2 * * *"),
        (21600, "0 */6 * * *"),
        (43200, "0 */12 * * *"),
        (86400, "0 0 * * *"),
        (604800, "0 0 * * 0"),
    ],
)
def test_interval_to_cron(seconds: int, cron: str) -> None:
    assert interval_to_cron(seconds) == cron


@pytest.mark.parametrize("seconds", [90, 5400, 420, 25200, 172800, 30, 0, -60])
def test_interval_cron_cannot_express_is_a_clear_error(seconds: int) -> None:
    with pytest.raises(ValueError, match="allowed") as excinfo:
        interval_to_cron(seconds, "REDIS_CLEANUP_INTERVAL_SECONDS")
    message = str(excinfo.value)
    assert f"REDIS_CLEANUP_INTERVAL_SECONDS={seconds}" in message
    assert "3600" in message and "86400" in message


def _crons(settings: Settings) -> dict[str, str]:
    return {s.name: str(s.cron_schedule) for s in build_schedules(settings)}


def test_default_schedules_follow_the_seed_intervals() -> None:
    assert _crons(Settings.from_env({})) == {
        "monitoring_schedule": "*/30 * * * *",
        "redis_cleanup_schedule": "0 * * * *",
        "qdrant_cleanup_schedule": "0 */6 * * *",
        "minio_cleanup_schedule": "0 0 * * *",
    }


def test_custom_intervals_and_profile() -> None:
    settings = Settings.from_env(
        {"RLM_RETENTION_PROFILE": "development", "QDRANT_CLEANUP_INTERVAL_SECONDS": "900"}
    )
    crons = _crons(settings)
    assert crons["redis_cleanup_schedule"] == "*/30 * * * *"
    assert crons["qdrant_cleanup_schedule"] == "*/15 * * * *"


def test_bad_interval_fails_definitions_with_settings_error() -> None:
    settings = Settings.from_env({"MINIO_CLEANUP_INTERVAL_SECONDS": "5400"})
    with pytest.raises(SettingsError, match="MINIO_CLEANUP_INTERVAL_SECONDS=5400"):
        build_definitions(settings)


def test_cleanup_schedule_requests_a_tagged_cleanup_run() -> None:
    schedules = {s.name: s for s in build_schedules(Settings.from_env({}))}
    schedule = schedules["qdrant_cleanup_schedule"]
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    data = schedule.evaluate_tick(dg.build_schedule_context())
    [request] = data.run_requests or []
    assert request.tags["dagster/priority"] == "0"
    assert request.tags["rlm/trigger"] == "schedule"
    assert request.tags["rlm/resource_type"] == "qdrant_vectors"
    assert request.tags["rlm/reason"] == "Scheduled cleanup"
    assert request.run_config["ops"]["cleanup"]["config"]["resource_type"] == "qdrant_vectors"


def test_monitoring_schedule_targets_snapshot_job() -> None:
    schedules = {s.name: s for s in build_schedules(Settings.from_env({}))}
    assert schedules["monitoring_schedule"].job_name == "snapshot_job"
    assert schedules["monitoring_schedule"].default_status == dg.DefaultScheduleStatus.RUNNING
