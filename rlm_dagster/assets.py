"""Usage snapshot assets (usage/redis, usage/qdrant, usage/minio, usage/mongodb) and usage/history."""

# No `from __future__ import annotations`: Dagster inspects these annotations at runtime.

from datetime import timedelta

import dagster as dg
import pandas as pd

from rlm_core.domain import ResourceMetrics, ResourceType
from rlm_core.ports import StoreError
from rlm_core.settings import Settings
from rlm_dagster.checks import (
    CLEANUP_KEEPING_UP,
    USAGE_BELOW_CRITICAL,
    cleanup_keeping_up,
    ttl_hours,
    usage_below_critical,
)
from rlm_dagster.history import snapshots_frame, trends, trends_markdown
from rlm_dagster.resources import STORE_RETRY, LifecycleResource
from rlm_dagster.snapshots import (
    USAGE_KEYS,
    USAGE_PREFIX,
    iter_snapshot_records,
    snapshot_from_record,
)

GROUP = "usage"
HISTORY_KEY = dg.AssetKey([USAGE_PREFIX, "history"])


def snapshot_metadata(metrics: ResourceMetrics) -> dict[str, dg.MetadataValue]:
    """The five seed fields (plus level, sampled, time) as typed metadata the UI plots."""
    return {
        "total_items": dg.MetadataValue.int(metrics.total_items),
        "size_mb": dg.MetadataValue.float(float(metrics.size_mb)),
        "usage_percentage": dg.MetadataValue.float(float(metrics.usage_percentage)),
        "cleanup_priority": dg.MetadataValue.text(metrics.cleanup_priority.name),
        "cleanup_priority_level": dg.MetadataValue.int(int(metrics.cleanup_priority)),
        "oldest_age_hours": dg.MetadataValue.float(float(metrics.oldest_age_hours)),
        "sampled": dg.MetadataValue.bool(metrics.sampled),
        "measured_at": dg.MetadataValue.timestamp(metrics.measured_at),
    }


def snapshot_result(metrics: ResourceMetrics, ttl: float) -> dg.MaterializeResult[None]:
    """One snapshot's materialization: metadata plus both check results."""
    return dg.MaterializeResult(
        metadata=snapshot_metadata(metrics),
        check_results=[usage_below_critical(metrics), cleanup_keeping_up(metrics, ttl)],
    )


def measure(lifecycle: LifecycleResource, resource_type: ResourceType) -> ResourceMetrics:
    """Measure one store; a store that is down becomes a retryable Failure."""
    try:
        return lifecycle.manager.metrics([resource_type])[resource_type]
    except StoreError as exc:
        raise dg.Failure(
            description=f"{resource_type.store} is unreachable, snapshot not taken: {exc}",
            allow_retries=True,
        ) from exc


def build_usage_asset(resource_type: ResourceType) -> dg.AssetsDefinition:
    """The usage asset of one store, with its checks declared next to it."""
    key = USAGE_KEYS[resource_type]

    @dg.asset(
        key=key,
        group_name=GROUP,
        description=f"Usage snapshot of {resource_type.store}: the seed's five metrics.",
        retry_policy=STORE_RETRY,
        check_specs=[
            dg.AssetCheckSpec(USAGE_BELOW_CRITICAL, asset=key, description="Usage below CRITICAL"),
            dg.AssetCheckSpec(
                CLEANUP_KEEPING_UP, asset=key, description="Oldest item within 2 x TTL"
            ),
        ],
    )
    # Dagster recognizes the bare class only: a parametrized annotation reads as multiple outputs.
    def usage_asset(lifecycle: LifecycleResource) -> dg.MaterializeResult:  # type: ignore[type-arg]
        metrics = measure(lifecycle, resource_type)
        return snapshot_result(metrics, ttl_hours(lifecycle.settings, resource_type))

    return usage_asset


USAGE_ASSETS: dict[ResourceType, dg.AssetsDefinition] = {
    rt: build_usage_asset(rt) for rt in ResourceType
}


@dg.asset(key=HISTORY_KEY, group_name=GROUP, deps=list(USAGE_KEYS.values()))
def usage_history(
    context: dg.AssetExecutionContext, lifecycle: LifecycleResource
) -> dg.Output[pd.DataFrame]:
    """All usage snapshots as a DataFrame, with per-store growth and time to HIGH/CRITICAL."""
    snapshots = [
        snapshot
        for rt in ResourceType
        for record in iter_snapshot_records(context.instance, rt)
        if (snapshot := snapshot_from_record(rt, record)) is not None
    ]
    frame = snapshots_frame(snapshots)
    table = trends_markdown(trends(frame, lifecycle.settings.thresholds))
    return dg.Output(
        frame,
        metadata={
            "snapshots": dg.MetadataValue.int(len(frame)),
            "trends": dg.MetadataValue.md(table),
            "preview": dg.MetadataValue.md(frame.tail(20).to_markdown(index=False)),
        },
    )


def usage_freshness(settings: Settings) -> dg.FreshnessPolicy:
    """Stale when no snapshot came for 1.5 monitoring intervals (warn) or 2 (fail): the
    monitoring schedule or the daemon has stopped."""
    interval = timedelta(seconds=settings.resource_monitoring_interval_seconds)
    return dg.FreshnessPolicy.time_window(fail_window=2 * interval, warn_window=1.5 * interval)


def fresh_usage_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    """The usage assets with the freshness policy their snapshot interval implies."""
    policy = usage_freshness(settings)
    return [
        asset.map_asset_specs(lambda spec: spec.replace_attributes(freshness_policy=policy))
        for asset in USAGE_ASSETS.values()
    ]
