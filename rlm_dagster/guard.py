"""One cleanup per store, whatever launched it: a run waits for older cleanup runs of its stores.

The run queue already keeps queued runs apart (one in-progress run per `rlm/store.<store>` tag,
dagster.yaml). Runs that bypass the queue (`rlm cleanup` executes in its own process, a UI launch
without tags) and a queued run launched in the same instant meet here: inside the run, before any
store is touched, the newer of two overlapping runs waits for the older to end. The core's
per-store lease stays the atomic last word: two runs that still met would not both delete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg

from rlm_dagster.queue import CLEANUP_JOB
from rlm_dagster.run_tags import (
    STORE_TAG_PREFIX,
    TRIGGER_TAG,
    cleanup_stores,
    resource_type_from_tags,
)

IN_PROGRESS = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
# Longer than any cleanup the benchmarks measured; a run still waiting then is refused.
WAIT_SECONDS = 900.0
POLL_SECONDS = 2.0
# A run "in progress" for longer than the core's lease (20 min) lost its worker long ago; its
# lease has expired too, so waiting for it would block the store for nothing.
STALE_SECONDS = 20 * 60.0


@dataclass(frozen=True)
class Busy:
    """An older cleanup run of an overlapping store set."""

    run_id: str
    stores: frozenset[str]
    trigger: str

    def describe(self) -> str:
        """`run <id> (sensor) on qdrant, redis`."""
        return f"run {self.run_id} ({self.trigger}) on {', '.join(sorted(self.stores))}"


def run_stores(job_name: str, tags: Mapping[str, str]) -> frozenset[str]:
    """The stores a run deletes from, by its `rlm/store.*` tags (erase_user_job has them too); a
    cleanup_job run without them holds the stores its resource type names (all four if none)."""
    tagged = frozenset(
        k.removeprefix(STORE_TAG_PREFIX) for k in tags if k.startswith(STORE_TAG_PREFIX)
    )
    if tagged or job_name != CLEANUP_JOB:
        return tagged
    return cleanup_stores(resource_type_from_tags(tags))


def overlapping_older_runs(
    records: Sequence[dg.RunRecord], run_id: str, stores: frozenset[str], now: float
) -> list[Busy]:
    """In-progress runs created before `run_id` that delete from one of `stores`."""
    mine = next((r for r in records if r.dagster_run.run_id == run_id), None)
    if mine is None:
        return []
    order = (mine.create_timestamp.timestamp(), run_id)
    busy: list[Busy] = []
    for record in records:
        run = record.dagster_run
        created = record.create_timestamp.timestamp()
        if (created, run.run_id) >= order or now - created > STALE_SECONDS:
            continue
        theirs = run_stores(run.job_name, run.tags)
        if theirs & stores:
            busy.append(Busy(run.run_id, theirs & stores, run.tags.get(TRIGGER_TAG, "unknown")))
    return busy


def find_busy(instance: dg.DagsterInstance, run_id: str, stores: frozenset[str]) -> list[Busy]:
    """Older in-progress runs (this one included in the read) deleting from `stores`."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS))
    return overlapping_older_runs(records, run_id, stores, time.time())


def wait_for_turn(
    instance: dg.DagsterInstance,
    run_id: str,
    stores: frozenset[str],
    log: Callable[[str], None],
    timeout: float = WAIT_SECONDS,
) -> list[Busy]:
    """Wait until no older run overlaps; returns what still overlaps after `timeout` (else [])."""
    deadline = time.monotonic() + timeout
    waited_for: set[str] = set()
    while busy := find_busy(instance, run_id, stores):
        new = [b for b in busy if b.run_id not in waited_for]
        for other in new:
            log(f"another cleanup is in progress ({other.describe()}); waiting for it to end")
            waited_for.add(other.run_id)
        if time.monotonic() >= deadline:
            return busy
        time.sleep(POLL_SECONDS)
    if waited_for:
        log(f"{len(waited_for)} earlier cleanup run(s) ended; this run starts now")
    return []


def refusal(busy: Sequence[Busy], waited: float) -> str:
    """The message of a run that waited in vain."""
    stores = sorted({store for b in busy for store in b.stores})
    runs = "; ".join(b.describe() for b in busy)
    return (
        f"another cleanup of {', '.join(stores)} is running ({runs}); this run waited "
        f"{waited:.0f} s, deleted nothing, and can be run again when that one ends"
    )
