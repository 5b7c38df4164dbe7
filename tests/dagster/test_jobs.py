"""cleanup_job: typed config, run metadata, the seed's log event, failures that keep the report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dagster as dg
import pytest

from rlm_core.demo import seed_demo
from rlm_core.domain import ResourceType
from rlm_core.lifecycle import LifecycleManager
from rlm_core.settings import Settings
from rlm_dagster.jobs import CleanupConfig, CleanupTarget, cleanup_job, cleanup_run_config
from rlm_dagster.resources import LifecycleResource
from tests.dagster.fakes import SCENARIOS, FakeLifecycleResource, FakeManager

TAGS = {"dagster/priority": "10", "rlm/reason": "High resource usage: 93.0%"}


def run_fake(scenario: FakeManager, config: CleanupConfig) -> dg.ExecuteInProcessResult:
    SCENARIOS["jobs"] = scenario
    return cleanup_job.execute_in_process(
        run_config=dg.RunConfig(ops={"cleanup": config}),
        resources={"lifecycle": FakeLifecycleResource(scenario="jobs")},
        tags=TAGS,
        raise_on_error=False,
    )


def test_config_values_are_the_seed_resource_types() -> None:
    assert [t.value for t in CleanupTarget] == [rt.value for rt in ResourceType]
    config = cleanup_run_config(ResourceType.MINIO_FILES, dry_run=True).to_config_dict()
    assert config["ops"]["cleanup"]["config"] == {"resource_type": "minio_files", "dry_run": True}


def test_success_records_metadata_and_logs_the_seed_event(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rlm"):
        result = run_fake(FakeManager(), CleanupConfig(resource_type=CleanupTarget.redis_cache))
    assert result.success
    assert result.output_for_node("cleanup")["deleted_counts"] == {"redis": 3}
    [event] = [r for r in caplog.records if r.getMessage() == "Cleanup task processed"]
    fields = event.rlm_fields  # type: ignore[attr-defined]
    assert fields["resource_type"] == "redis_cache"
    assert fields["priority"] == "CRITICAL"
    assert fields["deleted_count"] == 3
    assert fields["reason"] == "High resource usage: 93.0%"
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = output.step_output_data.metadata
    assert metadata["bytes_freed"].value == {"redis": 300}
    # The fake's /audit.jsonl was never written: the run names no audit file.
    assert metadata["audit_path"].value == ""
    assert metadata["report"].value == result.output_for_node("cleanup")
    assert result.output_for_node("cleanup")["audit_path"] is None


def test_an_audit_file_that_was_written_is_named(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text("{}\n")
    result = run_fake(FakeManager(audit_path=str(audit)), CleanupConfig())
    assert result.output_for_node("cleanup")["audit_path"] == str(audit)


def test_store_errors_fail_after_recording_the_report_and_are_retried() -> None:
    result = run_fake(FakeManager(cleanup_errors=[["qdrant: locked"]] * 4), CleanupConfig())
    assert not result.success
    assert result.retry_attempts_for_node("cleanup") == 3
    failure = result.failure_data_for_node("cleanup")
    assert failure is not None and failure.user_failure_data is not None
    assert "qdrant: locked" in (failure.user_failure_data.description or "")
    report = failure.user_failure_data.metadata["report"].value
    assert report["success"] is False and report["deleted_counts"] == {"redis": 3}


def test_a_refusal_fails_at_once_and_is_not_retried() -> None:
    refusal = "minio: refusing the orphan sweep because the metadata store holds no documents"
    scenario = FakeManager(cleanup_refusals=[[refusal]] * 4)
    result = run_fake(scenario, CleanupConfig())
    assert not result.success
    assert result.retry_attempts_for_node("cleanup") == 0
    assert scenario.cleanups == 1
    failure = result.failure_data_for_node("cleanup")
    assert failure is not None and failure.user_failure_data is not None
    assert "not retried: fix the setting" in (failure.user_failure_data.description or "")
    assert failure.user_failure_data.metadata["report"].value["refusals"] == [refusal]


def test_a_refusal_beside_a_store_error_is_retried() -> None:
    scenario = FakeManager(
        cleanup_errors=[["qdrant: locked"]] * 4, cleanup_refusals=[["minio: refusing"]] * 4
    )
    result = run_fake(scenario, CleanupConfig())
    assert not result.success
    assert result.retry_attempts_for_node("cleanup") == 3


def test_transient_error_then_success() -> None:
    result = run_fake(FakeManager(cleanup_errors=[["redis: timeout"]]), CleanupConfig())
    assert result.success
    assert result.retry_attempts_for_node("cleanup") == 1


def test_max_deletions_below_one_fails_at_once_naming_the_field() -> None:
    scenario = FakeManager()
    result = run_fake(scenario, CleanupConfig(max_deletions=0))
    assert not result.success
    assert result.retry_attempts_for_node("cleanup") == 0
    failure = result.failure_data_for_node("cleanup")
    assert failure is not None and failure.user_failure_data is not None
    assert "max_deletions: 0 is not valid; allowed" in (failure.user_failure_data.description or "")
    assert scenario.cleanups == 0


def test_unknown_resource_type_is_rejected_by_config() -> None:
    with pytest.raises(dg.DagsterInvalidConfigError, match="resource_type"):
        cleanup_job.execute_in_process(
            run_config={"ops": {"cleanup": {"config": {"resource_type": "bogus"}}}},
            resources={"lifecycle": FakeLifecycleResource()},
        )


def test_cleanup_job_on_real_stores(rlm_env: Path) -> None:
    settings = Settings.from_env()
    with LifecycleManager.from_settings(settings) as manager:
        seed_demo(manager, scale=1, seed=2)
        before = manager.metrics([ResourceType.QDRANT_VECTORS])[ResourceType.QDRANT_VECTORS]
    resources = {"lifecycle": LifecycleResource()}
    with dg.instance_for_test() as instance:
        dry = cleanup_job.execute_in_process(
            run_config=cleanup_run_config(ResourceType.QDRANT_VECTORS, dry_run=True),
            instance=instance,
            resources=resources,
        )
        wet = cleanup_job.execute_in_process(
            run_config=cleanup_run_config(ResourceType.QDRANT_VECTORS),
            instance=instance,
            resources=resources,
        )
        assert instance.get_run_by_id(wet.run_id) is not None
    would = dry.output_for_node("cleanup")
    did = wet.output_for_node("cleanup")
    assert would["dry_run"] and not did["dry_run"]
    assert did["deleted_counts"]["qdrant"] == would["deleted_counts"]["qdrant"] > 0
    assert Path(did["audit_path"]).exists()
    json.dumps(did)
    with LifecycleManager.from_settings(settings) as manager:
        after = manager.metrics([ResourceType.QDRANT_VECTORS])[ResourceType.QDRANT_VECTORS]
    assert after.total_items == before.total_items - did["deleted_counts"]["qdrant"]
