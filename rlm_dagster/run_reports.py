"""A cleanup run as recorded in the instance: status, tags, and the report its op attached."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from rlm_dagster.run_tags import (
    MODE_TAG,
    REASON_TAG,
    RESOURCE_TYPE_TAG,
    TRIGGER_TAG,
    priority_from_tags,
)
from rlm_dagster.snapshots import iso_utc

# The metadata entry holding a run's result: cleanup_job's report, erase_user_job's receipt.
REPORT_KEYS = ("report", "receipt")
DONE = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)


def _events(
    instance: dg.DagsterInstance, run_id: str, event_type: dg.DagsterEventType
) -> list[dg.DagsterEvent]:
    entries = instance.all_logs(run_id, of_type=event_type)
    return [entry.dagster_event for entry in entries if entry.dagster_event is not None]


def run_report(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any] | None:
    """The report (or receipt) the op attached to its output, or to its last failure, if any."""
    for event in reversed(_events(instance, run_id, dg.DagsterEventType.STEP_OUTPUT)):
        found = _report_in(event.step_output_data.metadata)
        if found is not None:
            return found
    for event in reversed(_events(instance, run_id, dg.DagsterEventType.STEP_FAILURE)):
        user = event.step_failure_data.user_failure_data
        found = _report_in(user.metadata) if user else None
        if found is not None:
            return found
    return None


def _report_in(metadata: Mapping[str, dg.MetadataValue]) -> dict[str, Any] | None:
    for key in REPORT_KEYS:
        value = metadata.get(key)
        if value is not None and isinstance(value.value, dict):
            return dict(value.value)
    return None


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run failed: its last step failure's description or error, else the run's message."""
    for event in reversed(_events(instance, run_id, dg.DagsterEventType.STEP_FAILURE)):
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            return data.error.message.strip()
    for event in reversed(_events(instance, run_id, dg.DagsterEventType.RUN_FAILURE)):
        return event.message or "run failed"
    return "run failed"


def seed_response(instance: dg.DagsterInstance, record: dg.RunRecord) -> dict[str, Any]:
    """The seed's `{success, deleted_counts, message}` (plus rlm's fields) of a finished run."""
    run = record.dagster_run
    report = run_report(instance, run.run_id)
    if report is None:
        report = {
            "success": False,
            "deleted_counts": {},
            "message": failure_message(instance, run.run_id),
        }
    if run.status is not dg.DagsterRunStatus.SUCCESS:
        report["success"] = False
    return {**report, "run_id": run.run_id}


def run_view(instance: dg.DagsterInstance, record: dg.RunRecord) -> dict[str, Any]:
    """A run's status, what it targets and why, and its report once it has one."""
    run = record.dagster_run
    tags = run.tags
    finished = run.status in DONE
    return {
        "run_id": run.run_id,
        "job": run.job_name,
        "status": run.status.value,
        "resource_type": tags.get(RESOURCE_TYPE_TAG),
        "priority": priority_from_tags(tags).name,
        "trigger": tags.get(TRIGGER_TAG),
        "mode": tags.get(MODE_TAG),
        "reason": tags.get(REASON_TAG),
        "created_at": _iso(record.create_timestamp.timestamp()),
        "start_time": _iso(record.start_time),
        "end_time": _iso(record.end_time),
        "report": seed_response(instance, record) if finished else None,
    }


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso_utc(timestamp)
