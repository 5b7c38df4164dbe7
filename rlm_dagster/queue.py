"""The seed's cleanup queue, read from the instance's QUEUED cleanup_job runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

import dagster as dg

from rlm_core.domain import CleanupTask
from rlm_dagster.run_tags import (
    REASON_TAG,
    priority_from_tags,
    queue_priority,
    resource_type_from_tags,
)

CLEANUP_JOB = "cleanup_job"


def queued_cleanup_runs(instance: dg.DagsterInstance) -> list[dg.RunRecord]:
    """QUEUED cleanup_job runs in the order the QueuedRunCoordinator launches them."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED], job_name=CLEANUP_JOB),
        ascending=True,
    )
    # Same rule as the coordinator: higher dagster/priority first, then submission order.
    return sorted(records, key=lambda record: -queue_priority(record.dagster_run.tags))


def task_of(record: dg.RunRecord) -> CleanupTask:
    """A queued run as the seed's CleanupTask."""
    tags = record.dagster_run.tags
    return CleanupTask(
        priority=priority_from_tags(tags),
        resource_type=resource_type_from_tags(tags),
        created_at=record.create_timestamp.astimezone(UTC),
        reason=tags.get(REASON_TAG, ""),
    )


def task_json(task: CleanupTask, run_id: str) -> dict[str, Any]:
    """One entry of the seed's queue JSON (plus the Dagster run id)."""
    return {
        "priority": task.priority.name,
        "resource_type": task.resource_type.value if task.resource_type else None,
        "target_id": task.target_id,
        "created_at": task.created_at.isoformat().replace("+00:00", "Z"),
        "reason": task.reason,
        "run_id": run_id,
    }


def queue_json(records: Sequence[dg.RunRecord]) -> dict[str, Any]:
    """The seed's `/api/resources/queue` response for these queued runs."""
    return {
        "queue_size": len(records),
        "tasks": [task_json(task_of(r), r.dagster_run.run_id) for r in records],
    }
