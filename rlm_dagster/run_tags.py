"""Run tags rlm puts on cleanup runs, and the queue priority each cleanup priority maps to."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.lifecycle import PLANS, STEP_LEASES
from rlm_dagster.mode import CleanupMode

PRIORITY_TAG = "dagster/priority"
RESOURCE_TYPE_TAG = "rlm/resource_type"
REASON_TAG = "rlm/reason"
TRIGGER_TAG = "rlm/trigger"
MODE_TAG = "rlm/mode"
# One tag per store a cleanup run deletes from; dagster.yaml allows one in-progress run per key.
STORE_TAG_PREFIX = "rlm/store."
STORE_TAG_VALUE = "cleanup"

ALL_RESOURCES = "all"
SCHEDULED_REASON = "Scheduled cleanup"
MANUAL_REASON = "Manual cleanup"
API_REASON = "Cleanup requested through the API"


class Trigger(enum.StrEnum):
    """What started a cleanup run (the rlm/trigger tag)."""

    SENSOR = "sensor"
    SCHEDULE = "schedule"
    MANUAL = "manual"
    API = "api"


# Runs nobody asked for by hand: observe mode makes these dry runs.
AUTOMATIC_TRIGGERS = frozenset({Trigger.SENSOR, Trigger.SCHEDULE})


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


def cleanup_stores(resource_type: ResourceType | None) -> frozenset[str]:
    """The stores a cleanup of `resource_type` deletes from: the leases the core takes for it
    (a MinIO or MongoDB cleanup cascades into all four; a cleanup of all is one of each)."""
    return frozenset(store for step in PLANS[resource_type] for store in STEP_LEASES[step])


def store_tags(resource_type: ResourceType | None) -> dict[str, str]:
    """One `rlm/store.<store>` tag per store the run deletes from."""
    return {
        f"{STORE_TAG_PREFIX}{store}": STORE_TAG_VALUE
        for store in sorted(cleanup_stores(resource_type))
    }


def cleanup_tags(
    resource_type: ResourceType | None,
    priority: CleanupPriority,
    reason: str,
    trigger: Trigger,
    mode: CleanupMode,
) -> dict[str, str]:
    """Tags of one cleanup run: queue priority, target store, reason, trigger, cleanup mode,
    and the per-store tags the run queue limits to one run at a time."""
    return {
        PRIORITY_TAG: str(QUEUE_PRIORITY[priority]),
        RESOURCE_TYPE_TAG: resource_type.value if resource_type else ALL_RESOURCES,
        REASON_TAG: reason,
        TRIGGER_TAG: trigger.value,
        MODE_TAG: mode.value,
        **store_tags(resource_type),
    }


def resource_type_from_tags(tags: Mapping[str, str]) -> ResourceType | None:
    """The store a run targets, or None for all stores (or an unreadable tag)."""
    raw = tags.get(RESOURCE_TYPE_TAG, ALL_RESOURCES)
    try:
        return ResourceType.parse(raw)
    except ValueError:
        return None
