"""Run tags rlm puts on cleanup runs, and the queue priority each cleanup priority maps to."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from rlm_core.domain import CleanupPriority, ResourceType

PRIORITY_TAG = "dagster/priority"
RESOURCE_TYPE_TAG = "rlm/resource_type"
REASON_TAG = "rlm/reason"
TRIGGER_TAG = "rlm/trigger"

ALL_RESOURCES = "all"
SCHEDULED_REASON = "Scheduled cleanup"
MANUAL_REASON = "Manual cleanup"


class Trigger(enum.StrEnum):
    """What started a cleanup run (the rlm/trigger tag)."""

    SENSOR = "sensor"
    SCHEDULE = "schedule"
    MANUAL = "manual"


# The QueuedRunCoordinator launches higher dagster/priority first, FIFO within one value.
QUEUE_PRIORITY: dict[CleanupPriority, int] = {
    CleanupPriority.CRITICAL: 10,
    CleanupPriority.HIGH: 5,
    CleanupPriority.MEDIUM: 1,
    CleanupPriority.LOW: 0,
}


def queue_priority(tags: Mapping[str, str]) -> int:
    """The integer the run coordinator orders a run by (0 when missing or malformed)."""
    try:
        return int(tags.get(PRIORITY_TAG, "0"))
    except ValueError:
        return 0


def priority_from_tags(tags: Mapping[str, str]) -> CleanupPriority:
    """The cleanup priority a run's dagster/priority tag stands for."""
    value = queue_priority(tags)
    for priority in CleanupPriority:
        if value >= QUEUE_PRIORITY[priority]:
            return priority
    return CleanupPriority.LOW


def cleanup_tags(
    resource_type: ResourceType | None, priority: CleanupPriority, reason: str, trigger: Trigger
) -> dict[str, str]:
    """Tags of one cleanup run: queue priority, target store, reason and trigger."""
    return {
        PRIORITY_TAG: str(QUEUE_PRIORITY[priority]),
        RESOURCE_TYPE_TAG: resource_type.value if resource_type else ALL_RESOURCES,
        REASON_TAG: reason,
        TRIGGER_TAG: trigger.value,
    }


def resource_type_from_tags(tags: Mapping[str, str]) -> ResourceType | None:
    """The store a run targets, or None for all stores (or an unreadable tag)."""
    raw = tags.get(RESOURCE_TYPE_TAG, ALL_RESOURCES)
    try:
        return ResourceType.parse(raw)
    except ValueError:
        return None
