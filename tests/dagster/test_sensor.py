"""usage_pressure_sensor ticks against a real (temporary) instance with recorded snapshots."""

from __future__ import annotations

import dagster as dg
import pytest

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_dagster.mode import CleanupMode, ModeDecision
from rlm_dagster.sensors import build_pressure_sensor
from rlm_dagster.snapshots import new_snapshot_records
from tests.dagster.conftest import report_snapshot

LOW = CleanupPriority.LOW
HIGH = CleanupPriority.HIGH
CRITICAL = CleanupPriority.CRITICAL
ENFORCE = ModeDecision(CleanupMode.ENFORCE, "test")
OBSERVE = ModeDecision(CleanupMode.OBSERVE, "test")
usage_pressure_sensor = build_pressure_sensor(ENFORCE)


def tick(
    instance: dg.DagsterInstance, cursor: str | None, decision: ModeDecision = ENFORCE
) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = build_pressure_sensor(decision)(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def requests_of(result: dg.SensorResult | dg.SkipReason) -> list[dg.RunRequest]:
    assert isinstance(result, dg.SensorResult)
    return list(result.run_requests or [])


def test_no_snapshots_yet(instance: dg.DagsterInstance) -> None:
    result = tick(instance, None)
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == "No usage snapshots recorded yet"


def test_calm_snapshots_skip_with_reason_and_advance_the_cursor(
    instance: dg.DagsterInstance,
) -> None:
    report_snapshot(instance, ResourceType.REDIS_CACHE, 10.0, LOW)
    report_snapshot(instance, ResourceType.QDRANT_VECTORS, 60.0, CleanupPriority.MEDIUM)
    last = report_snapshot(instance, ResourceType.MINIO_FILES, 5.0, LOW)
    result = tick(instance, None)
    assert isinstance(result, dg.SensorResult)
    assert not result.run_requests
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message == (
        "3 new snapshots, none at HIGH or CRITICAL: redis LOW, qdrant MEDIUM, minio LOW"
    )
    assert result.cursor == str(last)
    again = tick(instance, result.cursor)
    assert isinstance(again, dg.SkipReason)
    assert again.skip_message == f"No new usage snapshots since storage id {last}"


def test_high_and_critical_become_prioritized_cleanup_runs(instance: dg.DagsterInstance) -> None:
    high = report_snapshot(instance, ResourceType.QDRANT_VECTORS, 78.5, HIGH)
    report_snapshot(instance, ResourceType.REDIS_CACHE, 12.0, LOW)
    critical = report_snapshot(instance, ResourceType.MONGODB_METADATA, 93.25, CRITICAL)
    result = tick(instance, None)
    high_request, critical_request = requests_of(result)
    assert high_request.run_key == f"usage-qdrant-{high}"
    assert high_request.tags == {
        "dagster/priority": "5",
        "rlm/resource_type": "qdrant_vectors",
        "rlm/reason": "High resource usage: 78.5%",
        "rlm/trigger": "sensor",
        "rlm/mode": "enforce",
        "rlm/store.qdrant": "cleanup",
    }
    assert high_request.run_config["ops"]["cleanup"]["config"] == {
        "resource_type": "qdrant_vectors",
        "dry_run": False,
    }
    assert critical_request.run_key == f"usage-mongodb-{critical}"
    assert critical_request.tags["dagster/priority"] == "10"
    assert critical_request.tags["rlm/resource_type"] == "mongodb_metadata"
    # A MongoDB cleanup cascades into all four stores: the queue keeps it apart from each.
    assert {k for k in critical_request.tags if k.startswith("rlm/store.")} == {
        "rlm/store.redis",
        "rlm/store.qdrant",
        "rlm/store.minio",
        "rlm/store.mongodb",
    }
    assert critical_request.tags["rlm/reason"] == "High resource usage: 93.2%"
    assert isinstance(result, dg.SensorResult) and result.cursor == str(critical)


def test_at_most_five_per_tick_and_none_lost_or_repeated(instance: dg.DagsterInstance) -> None:
    ids = [report_snapshot(instance, ResourceType.REDIS_CACHE, 80.0 + i, HIGH) for i in range(7)]
    calm = report_snapshot(instance, ResourceType.MINIO_FILES, 1.0, LOW)
    first = tick(instance, None)
    first_keys = [r.run_key for r in requests_of(first)]
    assert first_keys == [f"usage-redis-{sid}" for sid in ids[:5]]
    assert isinstance(first, dg.SensorResult) and first.cursor == str(ids[4])
    second = tick(instance, first.cursor)
    assert [r.run_key for r in requests_of(second)] == [f"usage-redis-{sid}" for sid in ids[5:]]
    assert isinstance(second, dg.SensorResult) and second.cursor == str(calm)
    assert set(first_keys).isdisjoint(r.run_key for r in requests_of(second))


def test_reading_pages_never_skips_a_snapshot(instance: dg.DagsterInstance) -> None:
    redis_ids = [report_snapshot(instance, ResourceType.REDIS_CACHE, 1.0, LOW) for _ in range(3)]
    minio_id = report_snapshot(instance, ResourceType.MINIO_FILES, 1.0, LOW)
    redis_ids += [report_snapshot(instance, ResourceType.REDIS_CACHE, 1.0, LOW) for _ in range(2)]
    page = [record.storage_id for _, record in new_snapshot_records(instance, None, limit=2)]
    assert page == redis_ids[:2]
    rest = [r.storage_id for _, r in new_snapshot_records(instance, page[-1], limit=2)]
    assert rest == [redis_ids[2], minio_id, redis_ids[3]]


def test_sensor_is_running_by_default() -> None:
    assert usage_pressure_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert usage_pressure_sensor.job_name == "cleanup_job"


def test_observe_mode_turns_sensor_runs_into_tagged_dry_runs(instance: dg.DagsterInstance) -> None:
    report_snapshot(instance, ResourceType.REDIS_CACHE, 95.0, CRITICAL)
    [request] = requests_of(tick(instance, None, OBSERVE))
    assert request.run_config["ops"]["cleanup"]["config"]["dry_run"] is True
    assert request.tags["rlm/mode"] == "observe"
    assert request.tags["rlm/trigger"] == "sensor"


def test_sensor_targets_cleanup_job_by_name_without_warnings(
    recwarn: pytest.WarningsRecorder,
) -> None:
    """job_name= keeps Definitions from rebinding the sensor (a spurious BetaWarning in 1.13)."""
    from rlm_core.settings import Settings
    from rlm_dagster.wiring import build_definitions

    dg.Definitions.validate_loadable(build_definitions(Settings.from_env({})))
    assert not [
        w for w in recwarn if "Warning" in type(w.message).__name__ and "dagster" in w.filename
    ]
