"""Jobs: snapshot_job (the usage assets) and cleanup_job (one op over LifecycleManager.cleanup)."""

# No `from __future__ import annotations`: Dagster inspects these annotations at runtime.

import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from rlm_core.domain import CleanupReport, ResourceType
from rlm_core.events import CLEANUP_PROCESSED, log_event
from rlm_core.lifecycle import check_max_deletions
from rlm_core.ports import StoreError
from rlm_dagster.assets import GROUP
from rlm_dagster.guard import WAIT_SECONDS, refusal, wait_for_turn
from rlm_dagster.mode import CleanupMode
from rlm_dagster.resources import STORE_RETRY, LifecycleResource
from rlm_dagster.run_tags import (
    ALL_RESOURCES,
    AUTOMATIC_TRIGGERS,
    MODE_TAG,
    REASON_TAG,
    RESOURCE_TYPE_TAG,
    TRIGGER_TAG,
    cleanup_stores,
    priority_from_tags,
    resource_type_from_tags,
    store_tags,
)

CLEANUP_OP = "cleanup"
SNAPSHOT_JOB = "snapshot_job"


class CleanupTarget(enum.Enum):
    """The store a cleanup run sweeps; member names are the config values."""

    redis_cache = "redis_cache"
    qdrant_vectors = "qdrant_vectors"
    minio_files = "minio_files"
    mongodb_metadata = "mongodb_metadata"

    @property
    def resource_type(self) -> ResourceType:
        """The core's resource type for this target."""
        return ResourceType(self.value)


class CleanupConfig(dg.Config):
    """Config of cleanup_job's op: which store (null = all), dry run, and a deletion cap."""

    resource_type: CleanupTarget | None = None
    dry_run: bool = False
    max_deletions: int | None = None


def cleanup_run_config(
    resource_type: ResourceType | None, dry_run: bool = False, max_deletions: int | None = None
) -> dg.RunConfig:
    """Run config of one cleanup_job run."""
    target = CleanupTarget(resource_type.value) if resource_type else None
    config = CleanupConfig(resource_type=target, dry_run=dry_run, max_deletions=max_deletions)
    return dg.RunConfig(ops={CLEANUP_OP: config})


def validate_max_deletions(value: int | None) -> None:
    """Reject a cap the core refuses, before waiting for a turn; not retryable, the run config
    itself is wrong."""
    try:
        check_max_deletions(value)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def cleanup_response(report: CleanupReport) -> dict[str, Any]:
    """The seed's cleanup response plus rlm's fields; `audit_path` only names a file that exists
    (a dry run that plans nothing writes none)."""
    response = report.as_seed_json()
    if not (report.audit_path and Path(report.audit_path).is_file()):
        response["audit_path"] = None
    return response


def observe_metadata(tags: Mapping[str, str], report: CleanupReport) -> dict[str, dg.MetadataValue]:
    """The run's mode; for an automatic run that observe mode turned into a dry run, what it
    would have deleted."""
    mode = tags.get(MODE_TAG, "")
    metadata: dict[str, dg.MetadataValue] = {"mode": dg.MetadataValue.text(mode)}
    if (
        mode == CleanupMode.OBSERVE
        and report.dry_run
        and tags.get(TRIGGER_TAG) in AUTOMATIC_TRIGGERS
    ):
        metadata["observe_would_delete"] = dg.MetadataValue.json(dict(report.deleted_counts))
        metadata["observe_note"] = dg.MetadataValue.md(
            f"Observe mode: this {tags.get(TRIGGER_TAG)} run deleted nothing; enforce mode "
            f"would have deleted **{report.total_deleted}** items. Set `RLM_CLEANUP_MODE=enforce` "
            "once the dry-run reports and the audit look right."
        )
    return metadata


def report_metadata(report: CleanupReport) -> dict[str, dg.MetadataValue]:
    """What the cleanup did, as run metadata (counts per store, bytes, errors, audit file)."""
    audit_path = cleanup_response(report)["audit_path"]
    return {
        "dry_run": dg.MetadataValue.bool(report.dry_run),
        "total_deleted": dg.MetadataValue.int(report.total_deleted),
        "deleted_counts": dg.MetadataValue.json(dict(report.deleted_counts)),
        "bytes_freed": dg.MetadataValue.json(dict(report.bytes_freed)),
        "repaired": dg.MetadataValue.int(report.repaired),
        "unknown": dg.MetadataValue.json(dict(report.unknown)),
        "skipped": dg.MetadataValue.json(dict(report.skipped)),
        "capped": dg.MetadataValue.bool(report.capped),
        "errors": dg.MetadataValue.json(list(report.errors)),
        "audit_path": dg.MetadataValue.text(audit_path or ""),
        "core_run_id": dg.MetadataValue.text(report.run_id),
    }


def run_cleanup(
    context: dg.OpExecutionContext, lifecycle: LifecycleResource, config: CleanupConfig
) -> CleanupReport:
    """Run the core's cleanup; a store that is down becomes a retryable Failure."""
    target = config.resource_type.resource_type if config.resource_type else None
    try:
        return lifecycle.manager.cleanup(
            resource_type=target,
            dry_run=config.dry_run,
            max_deletions=config.max_deletions,
            run_id=context.run_id,
        )
    except StoreError as exc:
        raise dg.Failure(
            description=f"cleanup could not reach a store: {exc}", allow_retries=True
        ) from exc


def log_processed(
    context: dg.OpExecutionContext, config: CleanupConfig, report: CleanupReport
) -> None:
    """The seed's `Cleanup task processed` event, priority and reason taken from the run tags."""
    tags = context.run.tags
    context.log.info(f"cleanup report: {json.dumps(cleanup_response(report))}")
    log_event(
        CLEANUP_PROCESSED,
        resource_type=config.resource_type.value if config.resource_type else None,
        priority=priority_from_tags(tags).name,
        deleted_count=report.total_deleted,
        reason=tags.get(REASON_TAG, ""),
        dry_run=report.dry_run,
    )


def failure_description(what: str, report: CleanupReport) -> str:
    """`<what> finished with errors: ...`, saying when a setting must change before a rerun."""
    text = f"{what} finished with errors: " + "; ".join(report.errors)
    if not report.retryable:
        text += " (not retried: fix the setting named above, then run it again)"
    return text


def tag_untagged_run(context: dg.OpExecutionContext, target: ResourceType | None) -> None:
    """Give a run launched without rlm's tags (e.g. from the launchpad) its store tags, so the
    run queue and other runs' guards see which stores it holds."""
    tags = context.run.tags
    wanted = {RESOURCE_TYPE_TAG: target.value if target else ALL_RESOURCES, **store_tags(target)}
    if RESOURCE_TYPE_TAG in tags and resource_type_from_tags(tags) != target:
        return  # tags chosen by whoever launched it: left as they are
    missing = {key: value for key, value in wanted.items() if key not in tags}
    if missing:
        context.instance.add_run_tags(context.run_id, missing)


def take_turn(context: dg.OpExecutionContext, target: ResourceType | None) -> None:
    """Wait for older cleanup runs of the same stores; refuse (no retry) if they outlast the wait."""
    tag_untagged_run(context, target)
    stores = cleanup_stores(target)
    busy = wait_for_turn(context.instance, context.run_id, stores, context.log.info, WAIT_SECONDS)
    if busy:
        raise dg.Failure(description=refusal(busy, WAIT_SECONDS), allow_retries=False)
    context.log.info(f"cleanup of {', '.join(sorted(stores))} begins")


@dg.op(name=CLEANUP_OP, retry_policy=STORE_RETRY)
def cleanup_op(
    context: dg.OpExecutionContext, lifecycle: LifecycleResource, config: CleanupConfig
) -> dg.Output[dict[str, Any]]:
    """Clean one store (or all), record what was done, then fail if any store reported errors."""
    validate_max_deletions(config.max_deletions)
    take_turn(context, config.resource_type.resource_type if config.resource_type else None)
    report = run_cleanup(context, lifecycle, config)
    response = cleanup_response(report)
    metadata = {
        **report_metadata(report),
        **observe_metadata(context.run.tags, report),
        "report": dg.MetadataValue.json(response),
    }
    log_processed(context, config, report)
    if report.errors:
        # The core reports a store that failed mid-sweep (StoreError) instead of raising, and a
        # sweep is idempotent, so the whole op is retried; the failure carries the report, so a
        # partial run still shows what it deleted. A refusal (a setting is wrong: no documents,
        # a missing bucket or collection) is not retried: a retry would only repeat it.
        raise dg.Failure(
            description=failure_description("cleanup", report),
            metadata=metadata,
            allow_retries=report.retryable,
        )
    return dg.Output(response, metadata=metadata)


@dg.job(description="Clean expired data from one store (or all), as the seed's cleanup task.")
def cleanup_job() -> None:
    """Clean expired data from one store (or all)."""
    cleanup_op()


snapshot_job = dg.define_asset_job(
    SNAPSHOT_JOB,
    selection=dg.AssetSelection.groups(GROUP),
    description="Take one usage snapshot of every store, then refresh usage/history.",
)
