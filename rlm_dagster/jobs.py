"""Jobs: snapshot_job (the usage assets) and cleanup_job (one op over LifecycleManager.cleanup)."""

# No `from __future__ import annotations`: Dagster inspects these annotations at runtime.

import enum
import json
from typing import Any

import dagster as dg

from rlm_core.domain import CleanupReport, ResourceType
from rlm_core.events import CLEANUP_PROCESSED, log_event
from rlm_core.ports import StoreError
from rlm_dagster.assets import GROUP, STORE_RETRY
from rlm_dagster.resources import LifecycleResource
from rlm_dagster.run_tags import REASON_TAG, priority_from_tags

CLEANUP_OP = "cleanup"


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
    """Reject a cap below 1; not retryable, the run config itself is wrong."""
    if value is not None and value < 1:
        raise dg.Failure(
            description=(
                f"max_deletions: {value} is not valid; allowed: a whole number > 0, "
                "or null for no cap"
            ),
            allow_retries=False,
        )


def report_metadata(report: CleanupReport) -> dict[str, dg.MetadataValue]:
    """What the cleanup did, as run metadata (counts per store, bytes, errors, audit file)."""
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
        "audit_path": dg.MetadataValue.text(report.audit_path or ""),
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
    context.log.info(f"cleanup report: {json.dumps(report.as_seed_json())}")
    log_event(
        CLEANUP_PROCESSED,
        resource_type=config.resource_type.value if config.resource_type else None,
        priority=priority_from_tags(tags).name,
        deleted_count=report.total_deleted,
        reason=tags.get(REASON_TAG, ""),
        dry_run=report.dry_run,
    )


@dg.op(name=CLEANUP_OP, retry_policy=STORE_RETRY)
def cleanup_op(
    context: dg.OpExecutionContext, lifecycle: LifecycleResource, config: CleanupConfig
) -> dg.Output[dict[str, Any]]:
    """Clean one store (or all), record what was done, then fail if any store reported errors."""
    validate_max_deletions(config.max_deletions)
    report = run_cleanup(context, lifecycle, config)
    metadata = report_metadata(report)
    log_processed(context, config, report)
    if report.errors:
        # The core reports a store that failed mid-sweep (StoreError) instead of raising, and a
        # sweep is idempotent, so the whole op is retried; the failure carries the report, so a
        # partial run still shows what it deleted.
        raise dg.Failure(
            description="cleanup finished with errors: " + "; ".join(report.errors),
            metadata={**metadata, "report": dg.MetadataValue.json(report.as_seed_json())},
            allow_retries=True,
        )
    return dg.Output(report.as_seed_json(), metadata=metadata)


@dg.job(description="Clean expired data from one store (or all), as the seed's cleanup task.")
def cleanup_job() -> None:
    """Clean expired data from one store (or all)."""
    cleanup_op()


snapshot_job = dg.define_asset_job(
    "snapshot_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Take one usage snapshot of every store, then refresh usage/history.",
)
