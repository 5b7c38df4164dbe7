"""Object sweep: orphan objects (no document names them) older than FILES_TTL_DAYS."""

from __future__ import annotations

from rlm_core.audit import AuditEntry
from rlm_core.batching import chunked
from rlm_core.cleanup.context import Sweep
from rlm_core.domain import MINIO
from rlm_core.policy import object_is_old, object_key_problem
from rlm_core.ports import ObjectInfo

S3_DELETE_BATCH = 1000
# Old objects whose references are read in one query: ten listing pages. Orphans are deleted
# right after each read, 1000 per request, so per 1,000 listed objects the sweep sends one
# LIST page, a tenth of a reference query and one DeleteObjects per 1,000 orphans.
REFERENCE_WINDOW = 10 * S3_DELETE_BATCH


def sweep_orphan_objects(sweep: Sweep) -> None:
    """List first, then read references per window, then batch-delete the old unreferenced."""
    window: list[ObjectInfo] = []
    audit_prefix = sweep.options.audit_prefix
    for obj in sweep.stores.objects().iter_objects():
        if obj.key.startswith(audit_prefix):
            continue  # rlm's own audit trail (RLM_AUDIT_SINK=s3): never an orphan
        if not object_is_old(obj, sweep.retention):
            continue
        if object_key_problem(obj.key) is not None:
            sweep.report.add_skipped(MINIO)  # not deletable safely by name
            continue
        window.append(obj)
        if len(window) == REFERENCE_WINDOW:
            _delete_orphans(sweep, window)
            window = []
            if sweep.budget.exhausted:
                sweep.report.capped = True
                return
    if window:
        _delete_orphans(sweep, window)
    if sweep.budget.exhausted:
        sweep.report.capped = True


def _delete_orphans(sweep: Sweep, old: list[ObjectInfo]) -> None:
    sweep.heartbeat()
    bucket = sweep.stores.objects().bucket
    referenced = sweep.stores.metadata().referenced_object_keys(bucket, [o.key for o in old])
    candidates = [o for o in old if o.key not in referenced]
    if not candidates:
        return
    if not sweep.metadata_populated:
        _refuse(sweep)
        return
    for batch in chunked(sweep.granted(candidates), S3_DELETE_BATCH):
        _delete_batch(sweep, batch)


def _delete_batch(sweep: Sweep, orphans: list[ObjectInfo]) -> None:
    # Audit each request's objects just before the request, so a crash leaves no audited-only
    # thousands behind it.
    sweep.audit.record([_entry(sweep, o) for o in orphans])
    if sweep.dry_run:
        sweep.report.add_deleted(MINIO, len(orphans), sum(o.size for o in orphans))
        return
    failed = set(sweep.stores.objects().remove([o.key for o in orphans]))
    done = [o for o in orphans if o.key not in failed]
    sweep.report.add_deleted(MINIO, len(done), sum(o.size for o in done))
    if failed:
        sweep.report.errors.append(f"minio: {len(failed)} object(s) could not be deleted")


def _refuse(sweep: Sweep) -> None:
    message = (
        "minio: refusing the orphan sweep because the metadata store holds no documents "
        "(check MONGODB_URL, MONGODB_DATABASE and RLM_DOCUMENTS_COLLECTION)"
    )
    sweep.report.refuse(message)


def _entry(sweep: Sweep, obj: ObjectInfo) -> AuditEntry:
    return AuditEntry(
        store=MINIO,
        action="delete_orphan_object",
        target=obj.key,
        size_bytes=obj.size,
        reason=(
            f"no document references it and last modified {obj.last_modified.isoformat()} "
            f"is older than FILES_TTL_DAYS={sweep.retention.files_ttl_days}"
        ),
        extra={"bucket": sweep.stores.objects().bucket},
    )
