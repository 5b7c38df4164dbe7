"""usage/history's pure computation: the DataFrame, growth by least squares, hours to HIGH/CRITICAL."""

from __future__ import annotations

import pytest

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.priority import Thresholds
from rlm_dagster.history import (
    COLUMNS,
    growth_per_hour,
    hours_to_level,
    snapshots_frame,
    trends,
    trends_markdown,
)
from rlm_dagster.snapshots import Snapshot

HOUR = 3600.0


def snap(rt: ResourceType, hour: float, usage: float, sid: int = 0) -> Snapshot:
    return Snapshot(
        resource_type=rt,
        storage_id=sid,
        timestamp=1_737_000_000 + hour * HOUR,
        total_items=int(usage * 10),
        size_mb=usage / 10,
        usage_percentage=usage,
        cleanup_priority=CleanupPriority.LOW,
        oldest_age_hours=hour,
    )


def test_frame_has_one_row_per_snapshot_oldest_first() -> None:
    frame = snapshots_frame(
        [snap(ResourceType.QDRANT_VECTORS, 2, 30), snap(ResourceType.REDIS_CACHE, 1, 10)]
    )
    assert tuple(frame.columns) == COLUMNS
    assert list(frame["resource"]) == ["redis", "qdrant"]
    assert str(frame["timestamp"].dt.tz) == "UTC"


def test_empty_history_is_an_empty_frame_with_no_trends() -> None:
    frame = snapshots_frame([])
    assert frame.empty and tuple(frame.columns) == COLUMNS
    assert trends(frame, Thresholds()) == []


def test_growth_is_the_least_squares_slope() -> None:
    frame = snapshots_frame([snap(ResourceType.REDIS_CACHE, h, 10 + 2 * h) for h in (0, 1, 2, 3)])
    assert growth_per_hour(frame) == pytest.approx(2.0)


def test_growth_needs_two_distinct_times() -> None:
    assert growth_per_hour(snapshots_frame([snap(ResourceType.REDIS_CACHE, 0, 10)])) is None


@pytest.mark.parametrize(
    ("current", "level", "growth", "hours"),
    [
        (50, 75, 5.0, 5.0),
        (80, 75, 5.0, 0.0),
        (50, 75, 0.0, None),
        (50, 75, -1.0, None),
        (50, 75, None, None),
    ],
)
def test_hours_to_level(
    current: float, level: float, growth: float | None, hours: float | None
) -> None:
    assert hours_to_level(current, level, growth) == hours


def test_trends_project_to_high_and_critical() -> None:
    rows = [snap(ResourceType.QDRANT_VECTORS, h, 50 + 5 * h) for h in (0, 1, 2)]
    rows += [snap(ResourceType.REDIS_CACHE, h, 20) for h in (0, 1)]
    by_resource = {t.resource: t for t in trends(snapshots_frame(rows), Thresholds())}
    qdrant = by_resource["qdrant"]
    assert qdrant.usage_percentage == 60
    assert qdrant.hours_to_high == pytest.approx(3.0)
    assert qdrant.hours_to_critical == pytest.approx(6.0)
    assert by_resource["redis"].hours_to_high is None
    table = trends_markdown(by_resource.values())
    assert "| qdrant | 3 | 60.00 | 5.00 | 3.00 | 6.00 |" in table
    assert "| redis | 2 | 20.00 | 0.00 | n/a | n/a |" in table


def test_trend_uses_only_the_recent_window() -> None:
    old = [snap(ResourceType.MINIO_FILES, h, 90 - h) for h in (0, 1)]
    recent = [snap(ResourceType.MINIO_FILES, 100 + h, 10 + h) for h in (0, 1, 2)]
    [trend] = trends(snapshots_frame(old + recent), Thresholds())
    assert trend.growth_per_hour == pytest.approx(1.0)
    assert trend.snapshots == 5
