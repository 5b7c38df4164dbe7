"""The one wiring point: Definitions built from settings (cron needs them at load time)."""

from __future__ import annotations

import dagster as dg

from rlm_core.settings import Settings, SettingsError
from rlm_dagster.assets import USAGE_ASSETS, usage_history
from rlm_dagster.jobs import cleanup_job, snapshot_job
from rlm_dagster.resources import LifecycleResource
from rlm_dagster.schedules import build_schedules
from rlm_dagster.sensors import usage_pressure_sensor


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every rlm definition; an interval that cron cannot express raises SettingsError."""
    try:
        schedules = build_schedules(settings)
    except ValueError as exc:
        raise SettingsError([str(exc)]) from exc
    return dg.Definitions(
        assets=[*USAGE_ASSETS.values(), usage_history],
        jobs=[snapshot_job, cleanup_job],
        schedules=schedules,
        sensors=[usage_pressure_sensor],
        resources={"lifecycle": LifecycleResource()},
    )
