"""usage_pressure_sensor ticks against a real (temporary) instance with recorded snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.settings import Settings
from rlm_dagster.jobs import cleanup_run_config
from rlm_dagster.mode import CleanupMode, ModeDecision
from rlm_dagster.queue import CLEANUP_JOB
from rlm_dagster.run_tags import Trigger, cleanup_tags
from rlm_dagster.sensors import build_pressure_sensor
from rlm_dagster.snapshots import new_snapshot_records
from rlm_dagster.wiring import build_definitions
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
    """Five snapshots a tick are read; one store's several snapshots make one request (its latest)."""
    ids = [report_snapshot(instance, ResourceType.REDIS_CACHE, 80.0 + i, HIGH) for i in range(7)]
    calm = report_snapshot(instance, ResourceType.MINIO_FILES, 1.0, LOW)
    first = tick(instance, None)
    first_keys = [r.run_key for r in requests_of(first)]
    assert first_keys == [f"usage-redis-{ids[4]}"]
    assert isinstance(first, dg.SensorResult) and first.cursor == str(ids[4])
    second = tick(instance, first.cursor)
    assert [r.run_key for r in requests_of(second)] == [f"usage-redis-{ids[6]}"]
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


# --- no second cleanup while one that covers the store is queued or running -------------------


@pytest.fixture
def cleanup_job(rlm_env: Path) -> Iterator[dg.JobDefinition]:
    """The real cleanup_job, so the runs below are the ones the daemon would launch."""
    yield build_definitions(Settings.from_env()).resolve_job_def(CLEANUP_JOB)


# Where the code location serves cleanup_job (workspace.yaml's module); a queued run records it.
ORIGIN = RemoteJobOrigin(
    repository_origin=RemoteRepositoryOrigin(
        code_location_origin=InProcessCodeLocationOrigin(
            LoadableTargetOrigin(module_name="rlm_dagster.definitions", attribute="defs")
        ),
        repository_name="__repository__",
    ),
    job_name=CLEANUP_JOB,
)


def submit(
    instance: dg.DagsterInstance, job: dg.JobDefinition, request: dg.RunRequest
) -> dg.DagsterRun:
    """What the sensor daemon does with a request under the QueuedRunCoordinator: a QUEUED run."""
    return instance.create_run_for_job(
        job,
        run_config=request.run_config,
        tags=request.tags,
        status=dg.DagsterRunStatus.QUEUED,
        remote_job_origin=ORIGIN,
    )


def manual(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    resource_type: ResourceType | None,
    dry_run: bool,
    started: bool = False,
) -> dg.DagsterRun:
    """A cleanup launched by hand (UI, CLI, API), queued, then moved to `started` if asked."""
    tags = cleanup_tags(resource_type, HIGH, "Manual cleanup", Trigger.MANUAL, CleanupMode.ENFORCE)
    config = cleanup_run_config(resource_type, dry_run=dry_run)
    run = submit(instance, job, dg.RunRequest(run_config=config, tags=tags))
    if started:
        move(instance, run, dg.DagsterEventType.RUN_START)
    return run


def move(instance: dg.DagsterInstance, run: dg.DagsterRun, event: dg.DagsterEventType) -> None:
    """Report a run event, as the run worker does; the run's status follows it."""
    instance.report_dagster_event(
        dg.DagsterEvent(event_type_value=event.value, job_name=run.job_name), run.run_id
    )


def skip_message(result: dg.SensorResult | dg.SkipReason) -> str:
    assert isinstance(result, dg.SensorResult) and not result.run_requests
    assert result.skip_reason is not None and result.skip_reason.skip_message
    return result.skip_reason.skip_message


def test_observe_mode_requests_no_dry_run_while_one_is_queued_or_running(
    instance: dg.DagsterInstance, cleanup_job: dg.JobDefinition
) -> None:
    """Observe mode deletes nothing, so the store stays CRITICAL: without the check, every
    snapshot would queue one more full dry run."""
    report_snapshot(instance, ResourceType.REDIS_CACHE, 95.0, CRITICAL)
    first = tick(instance, None, OBSERVE)
    run = submit(instance, cleanup_job, requests_of(first)[0])
    assert isinstance(first, dg.SensorResult)

    second_id = report_snapshot(instance, ResourceType.REDIS_CACHE, 96.0, CRITICAL)
    queued = tick(instance, first.cursor, OBSERVE)
    assert skip_message(queued) == (
        f"No cleanup requested: redis snapshot {second_id}: dry-run cleanup run {run.run_id} "
        "of redis_cache is already QUEUED (observe mode)"
    )
    assert isinstance(queued, dg.SensorResult) and queued.cursor == str(second_id)

    move(instance, run, dg.DagsterEventType.RUN_START)
    third_id = report_snapshot(instance, ResourceType.REDIS_CACHE, 96.5, CRITICAL)
    running = tick(instance, queued.cursor, OBSERVE)
    assert f"run {run.run_id} of redis_cache is already STARTED (observe mode)" in skip_message(
        running
    )

    move(instance, run, dg.DagsterEventType.RUN_SUCCESS)
    fourth_id = report_snapshot(instance, ResourceType.REDIS_CACHE, 97.0, CRITICAL)
    assert isinstance(running, dg.SensorResult)
    [again] = requests_of(tick(instance, running.cursor, OBSERVE))
    assert again.run_key == f"usage-redis-{fourth_id}" and third_id < fourth_id
    assert again.run_config["ops"]["cleanup"]["config"]["dry_run"] is True


def test_enforce_mode_requests_no_cleanup_a_pending_real_cleanup_covers(
    instance: dg.DagsterInstance, cleanup_job: dg.JobDefinition
) -> None:
    everything = manual(instance, cleanup_job, None, dry_run=False)
    minio = manual(instance, cleanup_job, ResourceType.MINIO_FILES, dry_run=False, started=True)
    qdrant_id = report_snapshot(instance, ResourceType.QDRANT_VECTORS, 85.0, HIGH)
    message = skip_message(tick(instance, None))
    # A cleanup of all stores covers each store.
    assert message == (
        f"No cleanup requested: qdrant snapshot {qdrant_id}: enforce cleanup run "
        f"{everything.run_id} of all is already QUEUED (enforce mode)"
    )
    instance.report_run_canceled(everything)
    # A running MinIO cleanup expires documents: all that a MongoDB cleanup does.
    mongo_id = report_snapshot(instance, ResourceType.MONGODB_METADATA, 93.0, CRITICAL)
    assert skip_message(tick(instance, str(qdrant_id))) == (
        f"No cleanup requested: mongodb snapshot {mongo_id}: enforce cleanup run {minio.run_id} "
        "of minio_files is already STARTED (enforce mode)"
    )
    # With the all-stores run canceled, Qdrant gets its cleanup.
    later_qdrant = report_snapshot(instance, ResourceType.QDRANT_VECTORS, 86.0, HIGH)
    result = tick(instance, str(mongo_id))
    assert [r.run_key for r in requests_of(result)] == [f"usage-qdrant-{later_qdrant}"]


def test_a_pending_dry_run_does_not_hold_back_a_real_cleanup(
    instance: dg.DagsterInstance, cleanup_job: dg.JobDefinition
) -> None:
    """A dry run relieves no pressure: enforce mode still queues the real cleanup. In observe
    mode, a pending real cleanup makes a dry run of the same store pointless."""
    manual(instance, cleanup_job, ResourceType.REDIS_CACHE, dry_run=True)
    snapshot_id = report_snapshot(instance, ResourceType.REDIS_CACHE, 90.0, HIGH)
    [request] = requests_of(tick(instance, None))
    assert request.run_key == f"usage-redis-{snapshot_id}"
    real = manual(instance, cleanup_job, ResourceType.REDIS_CACHE, dry_run=False)
    assert skip_message(tick(instance, None, OBSERVE)).endswith(
        f"enforce cleanup run {real.run_id} of redis_cache is already QUEUED (observe mode)"
    )


def test_other_stores_are_not_held_back(
    instance: dg.DagsterInstance, cleanup_job: dg.JobDefinition
) -> None:
    manual(instance, cleanup_job, ResourceType.REDIS_CACHE, dry_run=False, started=True)
    report_snapshot(instance, ResourceType.REDIS_CACHE, 90.0, HIGH)
    qdrant_id = report_snapshot(instance, ResourceType.QDRANT_VECTORS, 90.0, HIGH)
    [request] = requests_of(tick(instance, None))
    assert request.run_key == f"usage-qdrant-{qdrant_id}"
