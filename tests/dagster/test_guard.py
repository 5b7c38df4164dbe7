"""One cleanup per store: a run waits inside cleanup_job for an older run of an overlapping store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_dagster.guard import run_stores
from rlm_dagster.jobs import cleanup_job, cleanup_run_config
from rlm_dagster.mode import CleanupMode
from rlm_dagster.run_tags import MANUAL_REASON, Trigger, cleanup_tags
from tests.dagster.conftest import dagster_home
from tests.dagster.fakes import SCENARIOS, FakeLifecycleResource, FakeManager

# Two runs execute in one process here (threads), where `rlm cleanup` runs one per process. The
# default compute log manager mirrors the process's stdout and stderr through `tail -F`
# subprocesses per step; two steps doing that at once in one process can each wait 30 s for the
# other's tail to end (seen in a full-suite run: the newer run took over 60 s to finish). The
# guard under test does not read compute logs, so this instance keeps none.
NO_COMPUTE_LOGS = """
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A DAGSTER_HOME each run thread opens its own instance on (SQLite, one file per table)."""
    path = dagster_home(tmp_path / "home")
    with (path / "dagster.yaml").open("a") as config:
        config.write(NO_COMPUTE_LOGS)
    yield path


def start_run(
    home: Path, scenario: str, resource_type: ResourceType | None, results: dict[str, object]
) -> threading.Thread:
    """Execute cleanup_job in a thread, as `rlm cleanup` does, against the fake `scenario`."""

    def target() -> None:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            results[scenario] = cleanup_job.execute_in_process(
                run_config=cleanup_run_config(resource_type),
                instance=instance,
                resources={"lifecycle": FakeLifecycleResource(scenario=scenario)},
                tags=cleanup_tags(
                    resource_type,
                    CleanupPriority.HIGH,
                    MANUAL_REASON,
                    Trigger.MANUAL,
                    CleanupMode.ENFORCE,
                ),
                raise_on_error=False,
            )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def blocking_fake() -> FakeManager:
    return FakeManager(started=threading.Event(), release=threading.Event())


def logs_of(home: Path, result: object) -> str:
    """Every message the run logged, as the instance recorded them."""
    assert isinstance(result, dg.ExecuteInProcessResult)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (ResourceType.REDIS_CACHE, ResourceType.REDIS_CACHE),
        (None, ResourceType.QDRANT_VECTORS),  # a cleanup of all stores holds each store
        (ResourceType.MINIO_FILES, ResourceType.REDIS_CACHE),  # the cascade reaches Redis
    ],
)
def test_a_second_cleanup_of_the_same_store_waits_for_the_first(
    home: Path, first: ResourceType | None, second: ResourceType
) -> None:
    older, newer = blocking_fake(), FakeManager()
    SCENARIOS.update({"older": older, "newer": newer})
    results: dict[str, object] = {}
    first_thread = start_run(home, "older", first, results)
    assert older.started is not None and older.started.wait(60)
    second_thread = start_run(home, "newer", second, results)
    second_thread.join(timeout=6)
    assert second_thread.is_alive() and newer.cleanups == 0, "the newer run did not wait"
    assert older.release is not None
    older.release.set()
    first_thread.join(60)
    second_thread.join(60)
    (_, older_end), (newer_begin, _) = older.spans[0], newer.spans[0]
    assert newer_begin >= older_end, "the two cleanups overlapped"
    assert "another cleanup is in progress" in logs_of(home, results["newer"])
    assert "earlier cleanup run(s) ended; this run starts now" in logs_of(home, results["newer"])


def test_cleanups_of_other_stores_do_not_wait(home: Path) -> None:
    older, newer = blocking_fake(), FakeManager()
    SCENARIOS.update({"older-r": older, "newer-q": newer})
    results: dict[str, object] = {}
    first_thread = start_run(home, "older-r", ResourceType.REDIS_CACHE, results)
    assert older.started is not None and older.started.wait(60)
    second_thread = start_run(home, "newer-q", ResourceType.QDRANT_VECTORS, results)
    second_thread.join(60)
    assert not second_thread.is_alive() and newer.cleanups == 1
    assert older.release is not None
    older.release.set()
    first_thread.join(60)


def test_a_run_that_waits_too_long_is_refused_and_deletes_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rlm_dagster.jobs.WAIT_SECONDS", 1.0)
    older, newer = blocking_fake(), FakeManager()
    SCENARIOS.update({"older-t": older, "newer-t": newer})
    results: dict[str, object] = {}
    first_thread = start_run(home, "older-t", ResourceType.REDIS_CACHE, results)
    assert older.started is not None and older.started.wait(60)
    second_thread = start_run(home, "newer-t", ResourceType.REDIS_CACHE, results)
    second_thread.join(60)
    assert older.release is not None
    older.release.set()
    first_thread.join(60)
    refused = results["newer-t"]
    assert isinstance(refused, dg.ExecuteInProcessResult) and not refused.success
    assert newer.cleanups == 0
    assert refused.retry_attempts_for_node("cleanup") == 0
    failure = refused.failure_data_for_node("cleanup")
    assert failure is not None and failure.user_failure_data is not None
    description = failure.user_failure_data.description or ""
    assert description.startswith("another cleanup of redis is running (run ")
    assert "deleted nothing" in description


ALL_STORES = frozenset({"redis", "qdrant", "minio", "mongodb"})


@pytest.mark.parametrize(
    ("job", "tags", "stores"),
    [
        ("cleanup_job", {"rlm/store.redis": "cleanup"}, {"redis"}),
        ("cleanup_job", {"rlm/resource_type": "qdrant_vectors"}, {"qdrant"}),
        ("cleanup_job", {"rlm/resource_type": "minio_files"}, ALL_STORES),  # the cascade
        ("cleanup_job", {}, ALL_STORES),  # launched bare: held as a cleanup of all
        ("erase_user_job", {f"rlm/store.{s}": "cleanup" for s in ALL_STORES}, ALL_STORES),
        ("snapshot_job", {}, set()),
    ],
)
def test_which_stores_a_run_holds(job: str, tags: dict[str, str], stores: set[str]) -> None:
    assert run_stores(job, tags) == stores
