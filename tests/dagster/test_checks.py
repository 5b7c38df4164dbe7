"""Asset checks called directly with measured snapshots: severities at the boundaries."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from rlm_core.domain import CleanupPriority, ResourceMetrics, ResourceType
from rlm_core.settings import Settings
from rlm_dagster.checks import cleanup_keeping_up, ttl_hours, usage_below_critical


def metrics(
    priority: CleanupPriority = CleanupPriority.LOW,
    oldest_age_hours: float = 0.0,
    resource_type: ResourceType = ResourceType.REDIS_CACHE,
) -> ResourceMetrics:
    return ResourceMetrics(
        resource_type=resource_type,
        total_items=10,
        size_mb=1.0,
        usage_percentage=42.0,
        cleanup_priority=priority,
        oldest_age_hours=oldest_age_hours,
        measured_at=datetime(2025, 1, 20, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("priority", "passed", "severity"),
    [
        (CleanupPriority.LOW, True, dg.AssetCheckSeverity.WARN),
        (CleanupPriority.MEDIUM, True, dg.AssetCheckSeverity.WARN),
        (CleanupPriority.HIGH, False, dg.AssetCheckSeverity.WARN),
        (CleanupPriority.CRITICAL, False, dg.AssetCheckSeverity.ERROR),
    ],
)
def test_usage_below_critical(
    priority: CleanupPriority, passed: bool, severity: dg.AssetCheckSeverity
) -> None:
    result = usage_below_critical(metrics(priority))
    assert result.check_name == "usage_below_critical"
    assert result.passed is passed
    assert result.severity == severity


@pytest.mark.parametrize(
    ("age", "passed"), [(0.0, True), (1.99, True), (2.0, True), (2.0001, False), (50.0, False)]
)
def test_cleanup_keeping_up_boundary_is_twice_the_ttl(age: float, passed: bool) -> None:
    result = cleanup_keeping_up(metrics(oldest_age_hours=age), ttl=1.0)
    assert result.check_name == "cleanup_keeping_up"
    assert result.passed is passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert result.metadata["limit_hours"] == dg.MetadataValue.float(2.0)


def test_ttl_per_store_follows_the_seed() -> None:
    settings = Settings.from_env(
        {"REDIS_CACHE_TTL_HOURS": "0.5", "RAG_SESSION_TTL_HOURS": "12", "FILES_TTL_DAYS": "2"}
    )
    assert ttl_hours(settings, ResourceType.REDIS_CACHE) == 0.5
    assert ttl_hours(settings, ResourceType.QDRANT_VECTORS) == 12.0
    assert ttl_hours(settings, ResourceType.MINIO_FILES) == 48.0
    assert ttl_hours(settings, ResourceType.MONGODB_METADATA) == 48.0
