"""The pure priority policy: usage to priority, task ordering, the seed's reason text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlm_core.domain import CleanupPriority, CleanupTask, ResourceType
from rlm_core.priority import Thresholds, classify_priority, order_tasks, usage_reason
from rlm_core.settings import Settings

DEFAULTS = Thresholds()
T0 = datetime(2025, 1, 20, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (0.0, CleanupPriority.LOW),
        (0.4999, CleanupPriority.LOW),
        (0.5, CleanupPriority.MEDIUM),
        (0.7499, CleanupPriority.MEDIUM),
        (0.75, CleanupPriority.HIGH),
        (0.8999, CleanupPriority.HIGH),
        (0.9, CleanupPriority.CRITICAL),
        (1.0, CleanupPriority.CRITICAL),
        (1.7, CleanupPriority.CRITICAL),
    ],
)
def test_priority_boundaries_with_default_thresholds(
    usage: float, expected: CleanupPriority
) -> None:
    assert classify_priority(usage, DEFAULTS) is expected
    assert classify_priority(usage, Settings.from_env({}).thresholds) is expected


def test_default_thresholds_are_the_seed_values() -> None:
    assert (DEFAULTS.medium, DEFAULTS.high, DEFAULTS.critical) == (0.5, 0.75, 0.9)


def test_configured_thresholds_move_the_boundaries() -> None:
    thresholds = Settings.from_env(
        {
            "CLEANUP_THRESHOLD_MEDIUM": "0.2",
            "CLEANUP_THRESHOLD_HIGH": "0.4",
            "CLEANUP_THRESHOLD_CRITICAL": "0.6",
        }
    ).thresholds
    assert classify_priority(0.19, thresholds) is CleanupPriority.LOW
    assert classify_priority(0.2, thresholds) is CleanupPriority.MEDIUM
    assert classify_priority(0.4, thresholds) is CleanupPriority.HIGH
    assert classify_priority(0.6, thresholds) is CleanupPriority.CRITICAL


@given(st.floats(min_value=0, max_value=10, allow_nan=False))
def test_priority_never_falls_as_usage_rises(usage: float) -> None:
    assert classify_priority(usage * 1.01 + 0.001, DEFAULTS) <= classify_priority(usage, DEFAULTS)


def test_priority_numeric_order() -> None:
    assert [p.value for p in CleanupPriority] == [1, 2, 3, 4]
    assert [p.name for p in CleanupPriority] == ["CRITICAL", "HIGH", "MEDIUM", "LOW"]
    assert CleanupPriority.CRITICAL < CleanupPriority.HIGH < CleanupPriority.MEDIUM
    assert CleanupPriority.MEDIUM < CleanupPriority.LOW
    assert sorted(CleanupPriority, reverse=True)[0] is CleanupPriority.LOW


def test_usage_reason_matches_the_seed() -> None:
    assert usage_reason(0.785) == "High resource usage: 78.5%"
    assert usage_reason(0.0) == "High resource usage: 0.0%"
    assert usage_reason(1.2) == "High resource usage: 120.0%"


# --- task ordering ---------------------------------------------------------------------------


def task(priority: CleanupPriority, minutes: int, name: str, when: datetime = T0) -> CleanupTask:
    """A task created `minutes` after `when`, told apart by its target_id."""
    return CleanupTask(
        priority=priority,
        resource_type=ResourceType.REDIS_CACHE,
        created_at=when + timedelta(minutes=minutes),
        reason="test",
        target_id=name,
    )


@st.composite
def task_lists(draw: st.DrawFn) -> list[CleanupTask]:
    """Tasks with few distinct priorities and timestamps, so ties are common."""
    size = draw(st.integers(min_value=0, max_value=30))
    return [
        CleanupTask(
            priority=draw(st.sampled_from(CleanupPriority)),
            resource_type=draw(st.sampled_from([*ResourceType, None])),
            created_at=T0 + timedelta(minutes=draw(st.integers(min_value=0, max_value=5))),
            reason=draw(st.sampled_from(["scheduled", "High resource usage: 91.0%"])),
            target_id=f"t{i}",
        )
        for i in range(size)
    ]


def ids(tasks: list[CleanupTask]) -> list[str]:
    return [t.target_id for t in tasks]


@given(task_lists())
def test_order_is_a_sorted_permutation_with_fifo_ties(tasks: list[CleanupTask]) -> None:
    ordered = order_tasks(tasks)
    assert sorted(ids(ordered)) == sorted(ids(tasks))
    position = {t.target_id: i for i, t in enumerate(tasks)}
    keys = [(t.priority, t.created_at, position[t.target_id]) for t in ordered]
    assert keys == sorted(keys)


@given(task_lists(), st.integers(min_value=0, max_value=40))
def test_limit_returns_the_n_most_urgent(tasks: list[CleanupTask], limit: int) -> None:
    ordered = order_tasks(tasks)
    limited = order_tasks(tasks, limit=limit)
    assert len(limited) == min(limit, len(tasks))
    assert limited == ordered[:limit]
    assert len(set(ids(limited))) == len(limited)
    left_out = [t for t in tasks if t.target_id not in set(ids(limited))]
    if limited and left_out:
        worst_taken = max((t.priority, t.created_at) for t in limited)
        best_left = min((t.priority, t.created_at) for t in left_out)
        assert worst_taken <= best_left


@given(task_lists())
def test_order_accepts_any_iterable_and_leaves_input_alone(tasks: list[CleanupTask]) -> None:
    before = list(tasks)
    assert order_tasks(iter(tasks)) == order_tasks(tasks)
    assert tasks == before


def test_fifo_within_equal_priority() -> None:
    tasks = [
        task(CleanupPriority.LOW, 0, "low-first"),
        task(CleanupPriority.HIGH, 5, "high-late"),
        task(CleanupPriority.HIGH, 1, "high-early"),
        task(CleanupPriority.CRITICAL, 9, "critical"),
        task(CleanupPriority.HIGH, 1, "high-early-second"),
        task(CleanupPriority.LOW, 0, "low-second"),
    ]
    assert ids(order_tasks(tasks)) == [
        "critical",
        "high-early",
        "high-early-second",
        "high-late",
        "low-first",
        "low-second",
    ]
    assert ids(order_tasks(tasks, limit=2)) == ["critical", "high-early"]


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_zero_or_negative_returns_nothing(limit: int) -> None:
    assert order_tasks([task(CleanupPriority.CRITICAL, 0, "a")], limit=limit) == []


def test_naive_created_at_is_taken_as_utc_when_ordering() -> None:
    naive = T0.replace(tzinfo=None)
    tasks = [
        task(CleanupPriority.HIGH, 10, "aware-late"),
        task(CleanupPriority.HIGH, 5, "naive-middle", when=naive),
        task(CleanupPriority.HIGH, 0, "aware-early"),
    ]
    assert ids(order_tasks(tasks)) == ["aware-early", "naive-middle", "aware-late"]


# --- resource types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis_cache", ResourceType.REDIS_CACHE),
        ("qdrant_vectors", ResourceType.QDRANT_VECTORS),
        ("minio_files", ResourceType.MINIO_FILES),
        ("mongodb_metadata", ResourceType.MONGODB_METADATA),
        ("redis", ResourceType.REDIS_CACHE),
        ("qdrant", ResourceType.QDRANT_VECTORS),
        ("minio", ResourceType.MINIO_FILES),
        ("mongodb", ResourceType.MONGODB_METADATA),
    ],
)
def test_resource_type_parse_accepts_values_and_store_names(
    text: str, expected: ResourceType
) -> None:
    assert ResourceType.parse(text) is expected


def test_resource_type_values_and_stores() -> None:
    assert [r.value for r in ResourceType] == [
        "redis_cache",
        "qdrant_vectors",
        "minio_files",
        "mongodb_metadata",
    ]
    assert [r.store for r in ResourceType] == ["redis", "qdrant", "minio", "mongodb"]
    assert ResourceType("minio_files") is ResourceType.MINIO_FILES


@pytest.mark.parametrize("text", ["postgres", "", "REDIS", "redis_cache_x"])
def test_resource_type_parse_error_lists_every_valid_value(text: str) -> None:
    with pytest.raises(ValueError, match="allowed") as info:
        ResourceType.parse(text)
    message = str(info.value)
    assert repr(text) in message
    for member in ResourceType:
        assert member.value in message
