"""Schedules replacing the seed's asyncio loops, with cron derived from the *_INTERVAL_SECONDS settings."""

from __future__ import annotations

import dagster as dg

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.settings import Settings
from rlm_core.store_table import STORE_TABLE, SettingRef
from rlm_dagster.fanout import fanout_run_config, redis_fanout_job
from rlm_dagster.jobs import cleanup_job, cleanup_run_config, snapshot_job
from rlm_dagster.mode import ModeDecision, cleanup_mode
from rlm_dagster.run_tags import MODE_TAG, SCHEDULED_REASON, Trigger, cleanup_tags

MINUTE = 60
HOUR = 3600
DAY = 86400
WEEK = 604800
# The seed's three cleanup loops: the store table rows with an interval setting.
CLEANUP_INTERVALS: dict[ResourceType, SettingRef[int]] = {
    rt: row.interval for rt, row in STORE_TABLE.items() if row.interval is not None
}
ALLOWED_INTERVALS = (
    "a whole number of minutes dividing 60 (60, 300, 900, 1800, ...), "
    "a whole number of hours dividing 24 (3600, 7200, 21600, 43200), 86400 (daily) "
    "or 604800 (weekly)"
)


def interval_to_cron(seconds: int, variable: str = "interval") -> str:
    """Cron for an interval in seconds; raises ValueError naming the variable and what is allowed."""
    if seconds == DAY:
        return "0 0 * * *"
    if seconds == WEEK:
        return "0 0 * * 0"
    if seconds > 0 and seconds % HOUR == 0 and DAY % seconds == 0:
        hours = seconds // HOUR
        return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
    if seconds > 0 and seconds % MINUTE == 0 and HOUR % seconds == 0:
        minutes = seconds // MINUTE
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    raise ValueError(
        f"{variable}={seconds} cannot be expressed as a cron schedule; allowed: {ALLOWED_INTERVALS}"
    )


def cleanup_schedule(
    name: str,
    resource_type: ResourceType,
    cron: str,
    decision: ModeDecision,
    fan_out: bool = False,
) -> dg.ScheduleDefinition:
    """A schedule running cleanup_job for one store at queue priority 0 (a dry run in observe
    mode); with `fan_out` (Redis in cluster mode), redis_fanout_job: one part per primary."""
    dry_run = decision.automatic_dry_run
    return dg.ScheduleDefinition(
        name=name,
        cron_schedule=cron,
        job=redis_fanout_job if fan_out else cleanup_job,
        run_config=(
            fanout_run_config(dry_run=dry_run)
            if fan_out
            else cleanup_run_config(resource_type, dry_run=dry_run)
        ),
        tags=cleanup_tags(
            resource_type, CleanupPriority.LOW, SCHEDULED_REASON, Trigger.SCHEDULE, decision.mode
        ),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Scheduled cleanup of {resource_type.store} ({decision.mode} mode).",
    )


def build_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    """The monitoring schedule and the three cleanup schedules of the seed."""
    decision = cleanup_mode(settings)
    monitoring = dg.ScheduleDefinition(
        name="monitoring_schedule",
        cron_schedule=interval_to_cron(
            settings.resource_monitoring_interval_seconds, "RESOURCE_MONITORING_INTERVAL_SECONDS"
        ),
        job=snapshot_job,
        tags={MODE_TAG: decision.mode.value},
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Usage snapshots of every store.",
    )
    cleanups = [
        cleanup_schedule(
            f"{rt.store}_cleanup_schedule",
            rt,
            interval_to_cron(interval.read(settings), interval.variable),
            decision,
            fan_out=rt is ResourceType.REDIS_CACHE and settings.redis_cluster,
        )
        for rt, interval in CLEANUP_INTERVALS.items()
    ]
    return [monitoring, *cleanups]
