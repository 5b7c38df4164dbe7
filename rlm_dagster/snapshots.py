"""Usage snapshots as recorded in the Dagster instance's event log (read by the sensor and history)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from rlm_core.domain import CleanupPriority, ResourceType

USAGE_PREFIX = "usage"
PAGE_SIZE = 500


def usage_key(resource_type: ResourceType) -> dg.AssetKey:
    """The asset key of a store's usage snapshots, e.g. usage/redis."""
    return dg.AssetKey([USAGE_PREFIX, resource_type.store])


USAGE_KEYS: dict[ResourceType, dg.AssetKey] = {rt: usage_key(rt) for rt in ResourceType}


@dataclass(frozen=True)
class Snapshot:
    """One materialization of a usage asset, read back from the event log."""

    resource_type: ResourceType
    storage_id: int
    timestamp: float
    total_items: int
    size_mb: float
    usage_percentage: float
    cleanup_priority: CleanupPriority
    oldest_age_hours: float

    def as_seed_json(self) -> dict[str, Any]:
        """The seed's metrics entry for this store, plus `as_of` (when it was measured)."""
        return {
            "total_items": self.total_items,
            "size_mb": round(self.size_mb, 3),
            "usage_percentage": round(self.usage_percentage, 3),
            "cleanup_priority": self.cleanup_priority.name,
            "oldest_age_hours": round(self.oldest_age_hours, 3),
            "as_of": iso_utc(self.timestamp),
        }


def iso_utc(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC with a trailing Z, like the seed's timestamps."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _values(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {name: getattr(value, "value", value) for name, value in metadata.items()}


def snapshot_from_record(resource_type: ResourceType, record: dg.EventLogRecord) -> Snapshot | None:
    """Parse one materialization record; None when its metadata is not a usage snapshot."""
    materialization = record.asset_materialization
    if materialization is None:
        return None
    values = _values(materialization.metadata)
    try:
        return Snapshot(
            resource_type=resource_type,
            storage_id=record.storage_id,
            timestamp=record.timestamp,
            total_items=int(values["total_items"]),
            size_mb=float(values["size_mb"]),
            usage_percentage=float(values["usage_percentage"]),
            cleanup_priority=CleanupPriority[str(values["cleanup_priority"])],
            oldest_age_hours=float(values["oldest_age_hours"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _page(
    instance: dg.DagsterInstance, resource_type: ResourceType, after: int | None, limit: int
) -> list[dg.EventLogRecord]:
    records_filter = dg.AssetRecordsFilter(
        asset_key=USAGE_KEYS[resource_type], after_storage_id=after
    )
    result = instance.fetch_materializations(records_filter, limit=limit, ascending=True)
    return list(result.records)


def iter_snapshot_records(
    instance: dg.DagsterInstance, resource_type: ResourceType
) -> Iterator[dg.EventLogRecord]:
    """Every materialization record of one usage asset, oldest first, page by page."""
    after: int | None = None
    while True:
        records = _page(instance, resource_type, after, PAGE_SIZE)
        yield from records
        if len(records) < PAGE_SIZE:
            return
        after = records[-1].storage_id


def new_snapshot_records(
    instance: dg.DagsterInstance, after: int | None, limit: int = PAGE_SIZE
) -> list[tuple[ResourceType, dg.EventLogRecord]]:
    """Records of all usage assets after a storage id, in storage order, with no gap.

    Each asset is read one page at a time; when a page is full, later records of the other assets
    are held back (past the smallest full page's last id) so that nothing is ever skipped.
    """
    pages = {rt: _page(instance, rt, after, limit) for rt in ResourceType}
    full = [records[-1].storage_id for records in pages.values() if len(records) >= limit]
    horizon = min(full) if full else None
    merged = [
        (rt, record)
        for rt, records in pages.items()
        for record in records
        if horizon is None or record.storage_id <= horizon
    ]
    return sorted(merged, key=lambda item: item[1].storage_id)


def latest_snapshot(instance: dg.DagsterInstance, resource_type: ResourceType) -> Snapshot | None:
    """The most recent usage snapshot of one store, or None before the first one."""
    result = instance.fetch_materializations(USAGE_KEYS[resource_type], limit=1)
    if not result.records:
        return None
    return snapshot_from_record(resource_type, result.records[0])
