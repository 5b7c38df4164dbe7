"""Asset check evaluations for usage snapshots: pure functions of one measured snapshot.

`usage_below_critical` fails with ERROR at CRITICAL and with WARN at HIGH, so the UI shows pressure
before it becomes urgent. `cleanup_keeping_up` fails with ERROR when the oldest item is older than
twice its store's TTL: the seed's sign that cleanup is not working. Exactly 2 x TTL still passes.
"""

from __future__ import annotations

import dagster as dg

from rlm_core.domain import CleanupPriority, ResourceMetrics, ResourceType
from rlm_core.settings import Settings
from rlm_core.store_table import STORE_TABLE

USAGE_BELOW_CRITICAL = "usage_below_critical"
CLEANUP_KEEPING_UP = "cleanup_keeping_up"
TTL_FACTOR = 2.0


def ttl_hours(settings: Settings, resource_type: ResourceType) -> float:
    """The retention in hours that bounds the age of a store's items (its store table row)."""
    return STORE_TABLE[resource_type].ttl_hours(settings)


def usage_below_critical(metrics: ResourceMetrics) -> dg.AssetCheckResult:
    """Fail (ERROR) at CRITICAL usage, warn (WARN) at HIGH, pass below."""
    priority = metrics.cleanup_priority
    severity = (
        dg.AssetCheckSeverity.ERROR
        if priority is CleanupPriority.CRITICAL
        else dg.AssetCheckSeverity.WARN
    )
    return dg.AssetCheckResult(
        check_name=USAGE_BELOW_CRITICAL,
        passed=priority > CleanupPriority.HIGH,
        severity=severity,
        description=f"{metrics.resource_type.store} usage is {priority.name}",
        metadata={
            "usage_percentage": dg.MetadataValue.float(metrics.usage_percentage),
            "cleanup_priority": dg.MetadataValue.text(priority.name),
        },
    )


def cleanup_keeping_up(metrics: ResourceMetrics, ttl: float) -> dg.AssetCheckResult:
    """Fail (ERROR) when the oldest item is older than 2 x the store's TTL."""
    limit = TTL_FACTOR * ttl
    passed = metrics.oldest_age_hours <= limit
    verdict = "within" if passed else "beyond"
    return dg.AssetCheckResult(
        check_name=CLEANUP_KEEPING_UP,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"oldest {metrics.resource_type.store} item is {metrics.oldest_age_hours:.2f} h old, "
            f"{verdict} 2 x TTL = {limit:.2f} h"
        ),
        metadata={
            "oldest_age_hours": dg.MetadataValue.float(metrics.oldest_age_hours),
            "limit_hours": dg.MetadataValue.float(limit),
        },
    )
