"""redis_fanout_job: one Redis cleanup split over a cluster's primaries, one op per primary.

A Redis sweep is bound by the worker's CPU (SCAN pages and script replies parsed in Python), so
one worker covers a fixed number of keys per second (README, "Scale past one machine"). In
cluster mode the keys are already split by primary: this job plans one part per primary
(Dagster dynamic outputs), runs the parts side by side on the run's executor (processes with the
default multiprocess executor, pods with the k8s_job_executor), and adds their reports up. Each
part leases its own primary, takes its share of the run's deletion cap, and writes its audit
under the run's id; the run as a whole holds the `redis` store like any Redis cleanup run, so
the run queue and the in-run guard keep it apart from every other Redis cleanup.
"""

# No `from __future__ import annotations`: Dagster inspects these annotations at runtime.

from collections.abc import Iterator
from typing import Any

import dagster as dg

from rlm_core.domain import CleanupReport, ResourceType
from rlm_core.events import CLEANUP_PROCESSED, log_event
from rlm_core.lifecycle import split_cap
from rlm_core.ports import StoreError
from rlm_dagster.jobs import (
    cleanup_response,
    failure_description,
    observe_metadata,
    report_metadata,
    take_turn,
    validate_max_deletions,
)
from rlm_dagster.resources import STORE_RETRY, LifecycleResource
from rlm_dagster.run_tags import REASON_TAG, RESOURCE_TYPE_TAG, priority_from_tags, store_tags

FANOUT_JOB = "redis_fanout_job"
PLAN_OP = "plan_redis_parts"
PART_OP = "sweep_redis_part"
COMBINE_OP = "combine_redis_parts"
REDIS = ResourceType.REDIS_CACHE


class FanoutConfig(dg.Config):
    """Config of the planning op: dry run and the run's deletion cap (null: the setting's)."""

    dry_run: bool = False
    max_deletions: int | None = None


def fanout_run_config(dry_run: bool = False, max_deletions: int | None = None) -> dg.RunConfig:
    """Run config of one redis_fanout_job run."""
    return dg.RunConfig(ops={PLAN_OP: FanoutConfig(dry_run=dry_run, max_deletions=max_deletions)})


def _store_down(exc: StoreError) -> dg.Failure:
    return dg.Failure(description=f"cleanup could not reach Redis: {exc}", allow_retries=True)


@dg.op(name=PLAN_OP, out=dg.DynamicOut(dict), retry_policy=STORE_RETRY)
def plan_parts(
    context: dg.OpExecutionContext, lifecycle: LifecycleResource, config: FanoutConfig
) -> Iterator[dg.DynamicOutput[dict[str, Any]]]:
    """Wait for older Redis cleanups, then plan one part per primary with its share of the cap."""
    validate_max_deletions(config.max_deletions)
    take_turn(context, REDIS)
    try:
        shards = lifecycle.manager.cache_shards()
    except StoreError as exc:
        raise _store_down(exc) from exc
    cap = (
        config.max_deletions
        if config.max_deletions is not None
        else lifecycle.settings.max_deletions_per_run
    )
    shares = split_cap(cap, len(shards))
    context.log.info(
        f"Redis cleanup in {len(shards)} part(s): "
        + ", ".join(
            f"{s} (cap {c if c is not None else 'none'})"
            for s, c in zip(shards, shares, strict=True)
        )
    )
    for index, (shard, share) in enumerate(zip(shards, shares, strict=True)):
        yield dg.DynamicOutput(
            {"shard": shard, "max_deletions": share, "dry_run": config.dry_run},
            mapping_key=f"part_{index}",
        )


@dg.op(name=PART_OP, retry_policy=STORE_RETRY)
def sweep_part(
    context: dg.OpExecutionContext, lifecycle: LifecycleResource, part: dict[str, Any]
) -> dg.Output[dict[str, Any]]:
    """Sweep one primary; a part that reports a store error fails (and is retried) on its own."""
    shard, share, dry_run = part["shard"], part["max_deletions"], part["dry_run"]
    if share == 0:
        # The cap is smaller than the number of parts: this one may delete nothing.
        report = CleanupReport(run_id=context.run_id, dry_run=dry_run, capped=True)
        report.add_deleted(REDIS.store, 0)
    else:
        try:
            report = lifecycle.manager.cleanup(
                REDIS, dry_run=dry_run, max_deletions=share, run_id=context.run_id, shard=shard
            )
        except StoreError as exc:
            raise _store_down(exc) from exc
    response = {**cleanup_response(report), "shard": shard}
    metadata = {**report_metadata(report), "shard": dg.MetadataValue.text(shard)}
    if report.errors:
        raise dg.Failure(
            description=failure_description(f"Redis part {shard}", report),
            metadata=metadata,
            allow_retries=report.retryable,
        )
    return dg.Output(response, metadata=metadata)


def combine_reports(run_id: str, parts: list[dict[str, Any]]) -> CleanupReport:
    """The parts' responses added up into one report of the run."""
    report = CleanupReport(run_id=run_id, dry_run=any(p["dry_run"] for p in parts))
    for part in parts:
        for store, count in part["deleted_counts"].items():
            report.add_deleted(store, count, part["bytes_freed"].get(store, 0))
        report.repaired += part["repaired"]
        for store, count in part["unknown"].items():
            report.add_unknown(store, count)
        for store, count in part["skipped"].items():
            report.add_skipped(store, count)
        report.capped = report.capped or part["capped"]
        report.audit_path = report.audit_path or part["audit_path"]
    return report


@dg.op(name=COMBINE_OP)
def combine_parts(
    context: dg.OpExecutionContext, parts: list[dict[str, Any]]
) -> dg.Output[dict[str, Any]]:
    """One report for the run, as cleanup_job's, with each part's counts beside it."""
    report = combine_reports(context.run_id, parts)
    response = {
        **cleanup_response(report),
        "parts": {p["shard"]: sum(p["deleted_counts"].values()) for p in parts},
    }
    # Read again: the lifecycle resource tags a run launched without `rlm/mode` as it starts.
    run = context.instance.get_run_by_id(context.run_id)
    tags = run.tags if run is not None else context.run.tags
    log_event(
        CLEANUP_PROCESSED,
        resource_type=REDIS.value,
        priority=priority_from_tags(tags).name,
        deleted_count=report.total_deleted,
        reason=tags.get(REASON_TAG, ""),
        dry_run=report.dry_run,
    )
    metadata = {
        **report_metadata(report),
        **observe_metadata(tags, report),
        "parts": dg.MetadataValue.json(response["parts"]),
        "report": dg.MetadataValue.json(response),
    }
    return dg.Output(response, metadata=metadata)


@dg.job(
    name=FANOUT_JOB,
    description=(
        "Clean the Redis cache split over the cluster's primaries, one op per primary (the "
        "Redis schedule's job when REDIS_CLUSTER=true)."
    ),
    tags={RESOURCE_TYPE_TAG: REDIS.value, **store_tags(REDIS)},
)
def redis_fanout_job() -> None:
    """Plan one part per primary, sweep them side by side, add the reports up."""
    combine_parts(plan_parts().map(sweep_part).collect())
