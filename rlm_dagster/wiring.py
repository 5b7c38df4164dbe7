"""The one wiring point: Definitions built from settings (cron needs them at load time)."""

from __future__ import annotations

import dagster as dg

from rlm_core.settings import Settings, SettingsError
from rlm_dagster.alerts import AlertWebhook, alert_sensor
from rlm_dagster.assets import fresh_usage_assets, usage_history
from rlm_dagster.erasure import erase_user_job
from rlm_dagster.fanout import redis_fanout_job
from rlm_dagster.jobs import cleanup_job, snapshot_job
from rlm_dagster.logs import configure_logging
from rlm_dagster.mode import cleanup_mode, log_mode
from rlm_dagster.resources import LifecycleResource
from rlm_dagster.schedules import build_schedules
from rlm_dagster.sensors import build_pressure_sensor


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every rlm definition; an interval that cron cannot express raises SettingsError."""
    try:
        schedules = build_schedules(settings)
    except ValueError as exc:
        raise SettingsError([str(exc)]) from exc
    configure_logging(settings)
    decision = cleanup_mode(settings)
    log_mode(decision, "code location")
    return dg.Definitions(
        assets=[*fresh_usage_assets(settings), usage_history],
        jobs=[snapshot_job, cleanup_job, redis_fanout_job, erase_user_job],
        schedules=schedules,
        sensors=[build_pressure_sensor(decision), alert_sensor],
        resources={"lifecycle": LifecycleResource(), "alerts": AlertWebhook()},
    )
