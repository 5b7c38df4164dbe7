"""erase_user_job: one op over LifecycleManager.erase; the receipt is the run's metadata."""

# No `from __future__ import annotations`: Dagster inspects these annotations at runtime.

from typing import Any

import dagster as dg

from rlm_core.domain import ErasureReceipt
from rlm_core.ports import StoreError
from rlm_dagster.resources import STORE_RETRY, LifecycleResource
from rlm_dagster.run_tags import TRIGGER_TAG, Trigger, store_tags

ERASE_OP = "erase_user"
ERASE_JOB = "erase_user_job"
# Failure metadata of a refused erase (blank user id, or one that matches nothing): bad input,
# never retried; the CLI exits 2 on it.
REFUSED = "refused"


class EraseConfig(dg.Config):
    """Config of erase_user_job: whose data goes, dry run, and whether no match is fine."""

    user_id: str
    dry_run: bool = False
    allow_empty: bool = False


def erase_run_config(
    user_id: str, dry_run: bool = False, allow_empty: bool = False
) -> dg.RunConfig:
    """Run config of one erase_user_job run."""
    config = EraseConfig(user_id=user_id, dry_run=dry_run, allow_empty=allow_empty)
    return dg.RunConfig(ops={ERASE_OP: config})


def receipt_metadata(receipt: ErasureReceipt) -> dict[str, dg.MetadataValue]:
    """The receipt as run metadata: the whole JSON, plus the figures the UI lists."""
    metadata: dict[str, dg.MetadataValue] = {
        "receipt": dg.MetadataValue.json(receipt.as_json()),
        "user_id": dg.MetadataValue.text(receipt.user_id),
        "dry_run": dg.MetadataValue.bool(receipt.dry_run),
        "total_deleted": dg.MetadataValue.int(receipt.total_deleted),
        "deleted_counts": dg.MetadataValue.json(
            {name: store.deleted for name, store in receipt.stores.items()}
        ),
        "audit_path": dg.MetadataValue.text(receipt.audit_path or ""),
        "core_run_id": dg.MetadataValue.text(receipt.run_id),
    }
    if receipt.verified is not None:
        metadata["verified"] = dg.MetadataValue.bool(receipt.verified)
    return metadata


def run_erase(
    context: dg.OpExecutionContext, lifecycle: LifecycleResource, config: EraseConfig
) -> ErasureReceipt:
    """Run the core's erase; bad input fails at once, a store that is down is retried."""
    try:
        return lifecycle.manager.erase(
            config.user_id,
            config.dry_run,
            allow_empty=config.allow_empty,
            run_id=context.run_id,
        )
    except StoreError as exc:
        raise dg.Failure(
            description=f"erase could not reach a store: {exc}", allow_retries=True
        ) from exc
    except ValueError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={REFUSED: dg.MetadataValue.text(str(exc))},
            allow_retries=False,
        ) from exc


@dg.op(name=ERASE_OP, retry_policy=STORE_RETRY)
def erase_user_op(
    context: dg.OpExecutionContext, lifecycle: LifecycleResource, config: EraseConfig
) -> dg.Output[dict[str, Any]]:
    """Erase one user's data from every store; the receipt is the run's metadata."""
    receipt = run_erase(context, lifecycle, config)
    metadata = receipt_metadata(receipt)
    context.log.info(f"erasure receipt: {receipt.as_json()}")
    if receipt.errors:
        # An erase is idempotent and a re-run finishes it: the whole op is retried, and the
        # failure carries the receipt of what this attempt did.
        raise dg.Failure(
            description="erase finished with errors: " + "; ".join(receipt.errors),
            metadata=metadata,
            allow_retries=True,
        )
    return dg.Output(receipt.as_json(), metadata=metadata)


@dg.job(
    name=ERASE_JOB,
    description="Erase every item of one user from the four stores (right to be forgotten).",
    tags=store_tags(None),
)
def erase_user_job() -> None:
    """Erase every item of one user from the four stores."""
    erase_user_op()


def erase_outcome(result: dg.ExecuteInProcessResult) -> tuple[int, dict[str, Any] | None, str]:
    """The CLI's exit code, the receipt to print (if any) and a message for stderr."""
    if result.success:
        return 0, dict(result.output_for_node(ERASE_OP)), ""
    failure = result.failure_data_for_node(ERASE_OP)
    user = failure.user_failure_data if failure else None
    metadata = user.metadata if user else {}
    description = (user.description if user else None) or "erase_user_job failed; see its logs"
    if REFUSED in metadata:
        return 2, None, description
    receipt = metadata.get("receipt")
    if receipt is not None and isinstance(receipt.value, dict):
        return 1, dict(receipt.value), description
    return 1, None, description


def erase_from_cli(
    user_id: str, dry_run: bool, allow_empty: bool
) -> tuple[int, dict[str, Any] | None, str]:
    """Run erase_user_job in this process, recorded in the Dagster instance (rlm/trigger=manual)."""
    with dg.DagsterInstance.get() as instance:
        result = erase_user_job.execute_in_process(
            run_config=erase_run_config(user_id, dry_run, allow_empty),
            instance=instance,
            resources={"lifecycle": LifecycleResource()},
            tags={TRIGGER_TAG: Trigger.MANUAL.value},
            raise_on_error=False,
        )
    return erase_outcome(result)
