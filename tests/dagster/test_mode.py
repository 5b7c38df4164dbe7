"""RLM_CLEANUP_MODE: observe makes automatic cleanups dry runs; every run carries rlm/mode."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
import pytest

from rlm_core.settings import Settings
from rlm_dagster.jobs import CleanupConfig, CleanupTarget, cleanup_job
from rlm_dagster.mode import CleanupMode, cleanup_mode
from rlm_dagster.schedules import build_schedules
from rlm_dagster.wiring import build_definitions
from tests.dagster.fakes import SCENARIOS, FakeLifecycleResource, FakeManager

SERVER_URLS = [
    {"REDIS_URL": "redis://127.0.0.1:6390/0"},
    {"QDRANT_URL": "http://127.0.0.1:6333"},
    {"MONGODB_URL": "mongodb://127.0.0.1:27017"},
    {"MINIO_ENDPOINT": "127.0.0.1:9000", "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "b"},
]


def test_embedded_default_enforces() -> None:
    assert cleanup_mode(Settings.from_env({})).mode is CleanupMode.ENFORCE


@pytest.mark.parametrize("urls", SERVER_URLS)
def test_any_store_url_observes_until_the_operator_chooses(urls: dict[str, str]) -> None:
    decision = cleanup_mode(Settings.from_env(urls))
    assert decision.mode is CleanupMode.OBSERVE and decision.automatic_dry_run
    assert "RLM_CLEANUP_MODE=enforce" in decision.reason
    chosen = cleanup_mode(Settings.from_env({**urls, "RLM_CLEANUP_MODE": "enforce"}))
    assert chosen.mode is CleanupMode.ENFORCE and not chosen.automatic_dry_run


def test_observe_can_be_chosen_on_the_embedded_default() -> None:
    assert cleanup_mode(Settings.from_env({"RLM_CLEANUP_MODE": "observe"})).automatic_dry_run


@pytest.mark.parametrize(("mode", "dry_run"), [("observe", True), ("enforce", False)])
def test_scheduled_cleanups_follow_the_mode(mode: str, dry_run: bool) -> None:
    schedules = {s.name: s for s in build_schedules(Settings.from_env({"RLM_CLEANUP_MODE": mode}))}
    for name in ("redis_cleanup_schedule", "qdrant_cleanup_schedule", "minio_cleanup_schedule"):
        [request] = schedules[name].evaluate_tick(dg.build_schedule_context()).run_requests or []
        assert request.run_config["ops"]["cleanup"]["config"]["dry_run"] is dry_run
        assert request.tags["rlm/mode"] == mode
    [snapshot] = (
        schedules["monitoring_schedule"].evaluate_tick(dg.build_schedule_context()).run_requests
        or []
    )
    assert snapshot.tags["rlm/mode"] == mode


def test_startup_logs_the_mode_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rlm"):
        build_definitions(Settings.from_env({"MONGODB_URL": "mongodb://127.0.0.1:27017"}))
    [line] = [r for r in caplog.records if r.getMessage() == "Cleanup mode"]
    fields = line.rlm_fields  # type: ignore[attr-defined]
    assert fields["mode"] == "observe" and fields["component"] == "code location"


def run_tagged(tags: dict[str, str], dry_run: bool) -> dg.ExecuteInProcessResult:
    SCENARIOS["mode"] = FakeManager()
    return cleanup_job.execute_in_process(
        run_config=dg.RunConfig(
            ops={"cleanup": CleanupConfig(resource_type=CleanupTarget.redis_cache, dry_run=dry_run)}
        ),
        resources={"lifecycle": FakeLifecycleResource(scenario="mode")},
        tags=tags,
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def test_an_observed_automatic_run_shows_what_it_would_have_deleted() -> None:
    result = run_tagged({"rlm/mode": "observe", "rlm/trigger": "sensor"}, dry_run=True)
    metadata = output_metadata(result)
    assert metadata["mode"] == "observe"
    assert metadata["observe_would_delete"] == {"redis": 3}
    assert "would have deleted **3** items" in str(metadata["observe_note"])


def test_a_manual_run_in_observe_mode_obeys_its_own_dry_run() -> None:
    result = run_tagged({"rlm/mode": "observe", "rlm/trigger": "manual"}, dry_run=False)
    metadata = output_metadata(result)
    assert metadata["dry_run"] is False and "observe_would_delete" not in metadata


def test_a_run_launched_without_tags_is_tagged_with_mode_and_stores(rlm_env: Path) -> None:
    with dg.instance_for_test() as instance:
        SCENARIOS["bare"] = FakeManager()
        result = cleanup_job.execute_in_process(
            run_config=dg.RunConfig(
                ops={"cleanup": CleanupConfig(resource_type=CleanupTarget.qdrant_vectors)}
            ),
            resources={"lifecycle": FakeLifecycleResource(scenario="bare")},
            instance=instance,
        )
        run = instance.get_run_by_id(result.run_id)
    assert run is not None
    assert run.tags["rlm/mode"] == "enforce"
    assert run.tags["rlm/resource_type"] == "qdrant_vectors"
    assert run.tags["rlm/store.qdrant"] == "cleanup"
