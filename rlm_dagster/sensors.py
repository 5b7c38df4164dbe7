"""usage_pressure_sensor: each new HIGH or CRITICAL usage snapshot becomes one prioritized cleanup
run, unless a cleanup that already covers its store is queued or running.

The run queue keeps two cleanups of one store from running at once, but it queues every request:
without the check, a store that stays HIGH (always, in observe mode, where nothing is deleted)
would get one more full cleanup per snapshot, all waiting behind each other.
"""

# No `from __future__ import annotations`: Dagster inspects these annotations at runtime.

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.lifecycle import PLANS
from rlm_core.priority import usage_reason
from rlm_dagster.jobs import CLEANUP_OP, cleanup_run_config
from rlm_dagster.mode import ModeDecision
from rlm_dagster.queue import CLEANUP_JOB
from rlm_dagster.run_tags import Trigger, cleanup_tags
from rlm_dagster.snapshots import Snapshot, new_snapshot_records, snapshot_from_record

MAX_REQUESTS_PER_TICK = 5
PRESSURE = frozenset({CleanupPriority.CRITICAL, CleanupPriority.HIGH})
# Waiting in the queue or running: a cleanup that has not finished yet.
PENDING = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
)


@dataclass(frozen=True)
class PendingCleanup:
    """A cleanup_job run that is queued or running."""

    run_id: str
    status: str
    resource_type: ResourceType | None  # None: all stores
    dry_run: bool

    def covers(self, resource_type: ResourceType, dry_run: bool) -> bool:
        """True when this run does all a cleanup of `resource_type` would: every step of its plan
        (a cleanup of all stores covers each store), and deletes for real unless a dry run is
        all that is asked (a dry run never relieves pressure)."""
        steps_covered = set(PLANS[resource_type]) <= set(PLANS[self.resource_type])
        return steps_covered and (dry_run or not self.dry_run)


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


def pending_cleanups(instance: dg.DagsterInstance) -> list[PendingCleanup]:
    """The cleanup_job runs that are queued or running, whatever launched them."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=CLEANUP_JOB, statuses=list(PENDING))
    )
    return [pending_of(record.dagster_run) for record in records]


def pending_of(run: dg.DagsterRun) -> PendingCleanup:
    """A run as a pending cleanup, read from its run config (what its op will do; a run queued
    from the UI may not carry rlm's tags yet)."""
    ops = (run.run_config or {}).get("ops")
    op = ops.get(CLEANUP_OP) if isinstance(ops, dict) else None
    config = op.get("config") if isinstance(op, dict) else None
    config = config if isinstance(config, dict) else {}
    return PendingCleanup(
        run_id=run.run_id,
        status=run.status.value,
        resource_type=target_of(config.get("resource_type")),
        dry_run=config.get("dry_run") is True,
    )


def target_of(raw: object) -> ResourceType | None:
    """The store a cleanup config names; None (all stores) when unset or unreadable."""
    try:
        return ResourceType.parse(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Deduplicated:
    """The requests one tick makes, and why it leaves the other snapshots without one."""

    requests: tuple[Snapshot, ...]
    skipped: tuple[str, ...]


def drop_covered(
    snapshots: Sequence[Snapshot], pending: Sequence[PendingCleanup], decision: ModeDecision
) -> Deduplicated:
    """One request per store per tick (its latest snapshot), and none for a store a queued or
    running cleanup already covers."""
    dry_run = decision.automatic_dry_run
    latest: dict[ResourceType, Snapshot] = {}
    skipped: list[str] = []
    for snapshot in snapshots:
        earlier = latest.get(snapshot.resource_type)
        if earlier is not None:
            skipped.append(
                f"{snapshot.resource_type.store} snapshot {earlier.storage_id}: "
                f"superseded by snapshot {snapshot.storage_id} in the same tick"
            )
        latest[snapshot.resource_type] = snapshot
    requests: list[Snapshot] = []
    for snapshot in latest.values():
        blocker = next((p for p in pending if p.covers(snapshot.resource_type, dry_run)), None)
        if blocker is None:
            requests.append(snapshot)
            continue
        kind = "dry-run" if blocker.dry_run else "enforce"
        skipped.append(
            f"{snapshot.resource_type.store} snapshot {snapshot.storage_id}: {kind} cleanup run "
            f"{blocker.run_id} of {blocker.resource_type.value if blocker.resource_type else 'all'}"
            f" is already {blocker.status} ({decision.mode.value} mode)"
        )
    requests.sort(key=lambda s: s.storage_id)
    return Deduplicated(tuple(requests), tuple(skipped))


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
    kept = drop_covered(plan.requests, pending_cleanups(context.instance), decision)
    for line in kept.skipped:
        context.log.info(f"no cleanup requested for {line}")
    if not kept.requests:
        reason = "No cleanup requested: " + "; ".join(kept.skipped)
        return dg.SensorResult(skip_reason=reason, cursor=str(cursor))
    return dg.SensorResult(
        run_requests=[pressure_request(s, decision) for s in kept.requests], cursor=str(cursor)
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
