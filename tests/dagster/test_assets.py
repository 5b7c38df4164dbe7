"""Usage assets: typed metadata, checks in the materialization, a down store fails only its asset."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from rlm_core.demo import seed_demo
from rlm_core.domain import CleanupPriority, ResourceMetrics, ResourceType
from rlm_core.lifecycle import LifecycleManager
from rlm_core.settings import Settings
from rlm_dagster.assets import (
    USAGE_ASSETS,
    measure,
    snapshot_metadata,
    snapshot_result,
    usage_history,
)
from rlm_dagster.resources import LifecycleResource
from rlm_dagster.snapshots import usage_key
from tests.dagster.fakes import SCENARIOS, FakeLifecycleResource, FakeManager
from tests.services import free_port

ALL_ASSETS = [*USAGE_ASSETS.values(), usage_history]


def sample(priority: CleanupPriority = CleanupPriority.HIGH) -> ResourceMetrics:
    return ResourceMetrics(
        resource_type=ResourceType.QDRANT_VECTORS,
        total_items=1200,
        size_mb=4.5,
        usage_percentage=78.5,
        cleanup_priority=priority,
        oldest_age_hours=30.0,
        measured_at=datetime(2025, 1, 20, 15, 30, tzinfo=UTC),
        sampled=True,
    )


def test_snapshot_metadata_is_typed_so_the_ui_plots_it() -> None:
    metadata = snapshot_metadata(sample())
    assert metadata["total_items"] == dg.MetadataValue.int(1200)
    assert metadata["usage_percentage"] == dg.MetadataValue.float(78.5)
    assert metadata["cleanup_priority"] == dg.MetadataValue.text("HIGH")
    assert metadata["cleanup_priority_level"] == dg.MetadataValue.int(2)
    assert metadata["oldest_age_hours"] == dg.MetadataValue.float(30.0)
    assert metadata["sampled"] == dg.MetadataValue.bool(True)


def test_snapshot_result_carries_both_checks() -> None:
    result = snapshot_result(sample(CleanupPriority.CRITICAL), ttl=24.0)
    checks = {c.check_name: c for c in result.check_results or []}
    assert not checks["usage_below_critical"].passed
    assert checks["cleanup_keeping_up"].passed


def test_store_down_is_a_retryable_failure_naming_the_store() -> None:
    SCENARIOS["down"] = FakeManager(down=frozenset({ResourceType.REDIS_CACHE}))
    resource = FakeLifecycleResource(scenario="down")
    with (
        dg.build_resources({"lifecycle": resource}) as resources,
        pytest.raises(dg.Failure) as excinfo,
    ):
        measure(resources.lifecycle, ResourceType.REDIS_CACHE)
    assert excinfo.value.allow_retries
    assert "redis is unreachable" in (excinfo.value.description or "")
    assert SCENARIOS["down"].closed


def test_usage_asset_declares_retry_and_checks() -> None:
    asset = USAGE_ASSETS[ResourceType.MINIO_FILES]
    assert asset.key == dg.AssetKey(["usage", "minio"])
    assert {key.name for key in asset.check_keys} == {"usage_below_critical", "cleanup_keeping_up"}
    policy = asset.op.retry_policy
    assert policy is not None and policy.max_retries == 3
    assert policy.backoff == dg.Backoff.EXPONENTIAL and policy.jitter is not None


@pytest.fixture
def seeded(rlm_env: Path) -> Path:
    """Embedded stores filled with the demo data set."""
    with LifecycleManager.from_settings(Settings.from_env()) as manager:
        seed_demo(manager, scale=1, seed=1)
    return rlm_env


def test_materialize_snapshots_and_history(seeded: Path, instance: dg.DagsterInstance) -> None:
    resources = {"lifecycle": LifecycleResource()}
    for _ in range(2):
        result = dg.materialize(ALL_ASSETS, resources=resources, instance=instance)
        assert result.success
    qdrant = result.asset_materializations_for_node("usage__qdrant")[0].metadata
    assert qdrant["total_items"].value > 0
    assert qdrant["cleanup_priority"].value in {p.name for p in CleanupPriority}
    checks = {(e.asset_key, e.check_name) for e in result.get_asset_check_evaluations()}
    assert (usage_key(ResourceType.REDIS_CACHE), "cleanup_keeping_up") in checks
    assert len(checks) == 8
    frame = result.output_for_node("usage__history")
    assert len(frame) == 8
    assert set(frame["resource"]) == {"redis", "qdrant", "minio", "mongodb"}
    history = result.asset_materializations_for_node("usage__history")[0].metadata
    assert "| qdrant | 2 |" in history["trends"].value


def test_one_store_down_fails_only_its_asset(
    rlm_env: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("RLM_STORE_TIMEOUT_SECONDS", "1")
    result = dg.materialize(
        list(USAGE_ASSETS.values()),
        resources={"lifecycle": LifecycleResource()},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    assert result.get_failed_step_keys() == {"usage__redis"}
    done = {m.asset_key for m in result.get_asset_materialization_events()}
    assert done == {usage_key(rt) for rt in ResourceType if rt is not ResourceType.REDIS_CACHE}
    assert result.retry_attempts_for_node("usage__redis") == 3
