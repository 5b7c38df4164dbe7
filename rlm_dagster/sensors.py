"""usage_pressure_sensor: each new HIGH or CRITICAL usage snapshot becomes one prioritized cleanup run."""

# No `from __future__ import annotations`: Dagster inspects these annotations at runtime.

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from rlm_core.domain import CleanupPriority
from rlm_core.priority import usage_reason
from rlm_dagster.jobs import cleanup_run_config
from rlm_dagster.mode import ModeDecision
from rlm_dagster.queue import CLEANUP_JOB
from rlm_dagster.run_tags import Trigger, cleanup_tags
from rlm_dagster.snapshots import Snapshot, new_snapshot_records, snapshot_from_record

MAX_REQUESTS_PER_TICK = 5
PRESSURE = frozenset({CleanupPriority.CRITICAL, CleanupPriority.HIGH})


@dataclass(frozen=True)
class PressurePlan:
    """What one tick does with the new snapshots, in storage order."""

    requests: tuple[Snapshot, ...]
    calm: tuple[Snapshot, ...]
    held_from: int | None  # storage id of the first snapshot left for the next tick


def plan_pressure(
    snapshots: Sequence[Snapshot], limit: int = MAX_REQUESTS_PER_TICK
) -> PressurePlan:
    """Request cleanup for snapshots under pressure, at most `limit`; later ones wait."""
    requests: list[Snapshot] = []
    calm: list[Snapshot] = []
    for snapshot in snapshots:
        if snapshot.cleanup_priority not in PRESSURE:
            calm.append(snapshot)
        elif len(requests) < limit:
            requests.append(snapshot)
        else:
            return PressurePlan(tuple(requests), tuple(calm), snapshot.storage_id)
    return PressurePlan(tuple(requests), tuple(calm), None)


def next_cursor(
    storage_ids: Sequence[int], held_from: int | None, previous: int | None
) -> int | None:
    """The last storage id handled this tick; nothing at or after `held_from` is passed over."""
    handled = [sid for sid in storage_ids if held_from is None or sid < held_from]
    return max(handled, default=previous)


def pressure_request(snapshot: Snapshot, decision: ModeDecision) -> dg.RunRequest:
    """One cleanup_job run for the snapshot's store, keyed by the snapshot so it runs once;
    a dry run in observe mode."""
    reason = usage_reason(snapshot.usage_percentage / 100.0)
    return dg.RunRequest(
        run_key=f"usage-{snapshot.resource_type.store}-{snapshot.storage_id}",
        run_config=cleanup_run_config(snapshot.resource_type, dry_run=decision.automatic_dry_run),
        tags=cleanup_tags(
            snapshot.resource_type,
            snapshot.cleanup_priority,
            reason,
            Trigger.SENSOR,
            decision.mode,
        ),
    )


def calm_reason(new_count: int, calm: Sequence[Snapshot], unreadable: int) -> str:
    """Why a tick with new snapshots requested nothing."""
    latest = {s.resource_type.store: s.cleanup_priority.name for s in calm}
    levels = ", ".join(f"{store} {name}" for store, name in latest.items())
    text = f"{new_count} new snapshots, none at HIGH or CRITICAL"
    text += f": {levels}" if levels else ""
    return text + (f" ({unreadable} without usage metadata skipped)" if unreadable else "")


def no_news_reason(previous: int | None) -> str:
    """Why a tick found nothing to look at."""
    if previous is None:
        return "No usage snapshots recorded yet"
    return f"No new usage snapshots since storage id {previous}"


def evaluate_pressure(
    context: dg.SensorEvaluationContext, decision: ModeDecision
) -> dg.SensorResult | dg.SkipReason:
    """One tick: a cleanup_job run request per new HIGH or CRITICAL snapshot."""
    previous = int(context.cursor) if context.cursor else None
    records = new_snapshot_records(context.instance, previous)
    if not records:
        return dg.SkipReason(no_news_reason(previous))
    parsed = [snapshot_from_record(rt, record) for rt, record in records]
    snapshots = [s for s in parsed if s is not None]
    plan = plan_pressure(snapshots)
    cursor = next_cursor([record.storage_id for _, record in records], plan.held_from, previous)
    if plan.held_from is not None:
        context.log.info(f"snapshots from storage id {plan.held_from} wait for the next tick")
    if not plan.requests:
        reason = calm_reason(len(records), plan.calm, len(parsed) - len(snapshots))
        return dg.SensorResult(skip_reason=reason, cursor=str(cursor))
    return dg.SensorResult(
        run_requests=[pressure_request(s, decision) for s in plan.requests], cursor=str(cursor)
    )


def build_pressure_sensor(decision: ModeDecision) -> dg.SensorDefinition:
    """usage_pressure_sensor for the cleanup mode in force (observe: its runs are dry runs)."""

    # job_name rather than job=: Definitions rebinds a sensor's job objects to the resources,
    # and that copy trips a spurious BetaWarning (`owners`) in Dagster 1.13.
    @dg.sensor(
        name="usage_pressure_sensor",
        job_name=CLEANUP_JOB,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New HIGH/CRITICAL snapshots -> cleanup_job runs ({decision.mode} mode).",
    )
    def usage_pressure_sensor(
        context: dg.SensorEvaluationContext,
    ) -> dg.SensorResult | dg.SkipReason:
        """Turn each new HIGH or CRITICAL usage snapshot into one prioritized cleanup_job run."""
        return evaluate_pressure(context, decision)

    return usage_pressure_sensor
