"""erase_user_job and `rlm erase`: typed config, the receipt as run metadata, refusals that are
never retried (exit 2), store failures that are (exit 1)."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from rlm_core.clock import FakeClock
from rlm_core.domain import ErasureReceipt, StoreErasure
from rlm_core.lifecycle import LifecycleManager
from rlm_core.settings import Settings
from rlm_dagster.cli import main
from rlm_dagster.erasure import ERASE_JOB, ERASE_OP, REFUSED, erase_run_config, erase_user_job
from rlm_dagster.resources import LifecycleResource
from rlm_dagster.wiring import build_definitions
from tests.lifecycle.world import World
from tests.services import free_port

HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def rlm_logger_on_this_tests_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rlm logger binds sys.stderr once; a stream captured by an earlier test is closed."""
    monkeypatch.setattr(logging.getLogger("rlm"), "handlers", [])


@pytest.fixture
def two_users(rlm_env: Path) -> dict[str, list[str]]:
    """Alice's and Bob's documents, sessions, chunks and cache keys in the embedded stores."""
    clock = FakeClock(datetime.now(UTC))
    ids: dict[str, list[str]] = {"alice": [], "bob": []}
    with LifecycleManager.from_settings(Settings.from_env(), clock=clock) as manager:
        world = World(manager.stores, clock)
        world.setup()
        for user in ("alice", "bob", "alice", "bob"):
            doc = world.document(age=HOUR, user=user)
            session = world.session(idle=HOUR, documents=(doc,), user=user)
            world.points(doc, session, age=HOUR, count=2)
            world.message(session, [doc])
            ids[user].append(doc)
        manager.ingest("bob", "notas.txt", io.BytesIO(b"bob's notes"))
    return ids


def documents_of(user: str) -> list[str]:
    with LifecycleManager.from_settings(Settings.from_env()) as manager:
        return sorted(d.id for d in manager.stores.metadata().documents_of_user(user))


def run_job(**config: Any) -> dg.ExecuteInProcessResult:
    return erase_user_job.execute_in_process(
        run_config=erase_run_config(**config),
        resources={"lifecycle": LifecycleResource()},
        raise_on_error=False,
    )


def output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def test_the_job_is_registered_and_its_config_is_typed(rlm_env: Path) -> None:
    defs = build_definitions(Settings.from_env())
    assert defs.resolve_job_def(ERASE_JOB) is not None
    config = erase_run_config("u1", dry_run=True).to_config_dict()
    assert config["ops"][ERASE_OP]["config"] == {
        "user_id": "u1",
        "dry_run": True,
        "allow_empty": False,
    }


def test_the_receipt_is_the_runs_metadata(two_users: dict[str, list[str]]) -> None:
    result = run_job(user_id="alice")
    assert result.success
    metadata = output_metadata(result)
    receipt = metadata["receipt"]
    assert receipt == result.output_for_node(ERASE_OP)
    assert receipt["user_id"] == "alice" and receipt["run_id"] == result.run_id
    assert receipt["verified"] is True and metadata["verified"] is True
    assert receipt["stores"]["mongodb"]["detail"]["documents"] == 2
    assert metadata["deleted_counts"] == {
        "qdrant": 2 * (3 + 2),
        "redis": 2,
        "minio": 2,
        "mongodb": 2 + 2 + 2,
    }
    assert documents_of("alice") == []
    assert len(documents_of("bob")) == 3


def test_a_dry_run_reports_the_same_counts_and_deletes_nothing(
    two_users: dict[str, list[str]],
) -> None:
    dry = output_metadata(run_job(user_id="alice", dry_run=True))
    assert dry["dry_run"] is True and "verified" not in dry
    assert documents_of("alice") == sorted(two_users["alice"])
    real = output_metadata(run_job(user_id="alice"))
    assert dry["deleted_counts"] == real["deleted_counts"]
    assert {n: s["found"] for n, s in dry["receipt"]["stores"].items()} == {
        n: s["found"] for n, s in real["receipt"]["stores"].items()
    }


@pytest.mark.parametrize("user_id", ["", "   ", "nobody"])
def test_refusals_fail_at_once_and_are_never_retried(
    two_users: dict[str, list[str]], user_id: str
) -> None:
    result = run_job(user_id=user_id)
    assert not result.success
    assert result.retry_attempts_for_node(ERASE_OP) == 0
    failure = result.failure_data_for_node(ERASE_OP)
    assert failure is not None and failure.user_failure_data is not None
    assert REFUSED in failure.user_failure_data.metadata
    assert "user_id:" in (failure.user_failure_data.description or "")
    assert len(documents_of("alice")) == 2


def test_allow_empty_gives_an_empty_verified_receipt(two_users: dict[str, list[str]]) -> None:
    result = run_job(user_id="nobody", allow_empty=True)
    assert result.success
    receipt = output_metadata(result)["receipt"]
    assert receipt["verified"] is True and receipt["total_deleted"] == 0


@dataclass
class ErroringManager:
    """A manager whose erase reports a store error on its first `failures` attempts."""

    failures: int
    calls: list[str] = field(default_factory=list)

    def erase(
        self, user_id: str, dry_run: bool = False, *, allow_empty: bool = False, run_id: str = ""
    ) -> ErasureReceipt:
        self.calls.append(run_id)
        errors = ("redis: connection refused",) if len(self.calls) <= self.failures else ()
        now = datetime.now(UTC)
        store = StoreErasure(found=1, deleted=0 if errors else 1, left=1 if errors else 0)
        stores = {"redis": store}
        return ErasureReceipt(run_id, user_id, dry_run, now, now, stores, errors, "/audit.jsonl")

    def close(self) -> None:
        pass


MANAGERS: dict[str, ErroringManager] = {}


class ErroringResource(LifecycleResource):
    """LifecycleResource whose manager is the registered ErroringManager."""

    def open_manager(self, settings: Settings) -> LifecycleManager:
        return MANAGERS["current"]  # type: ignore[return-value]


def test_store_errors_are_retried_and_the_failure_keeps_the_receipt(rlm_env: Path) -> None:
    MANAGERS["current"] = ErroringManager(failures=10)
    result = erase_user_job.execute_in_process(
        run_config=erase_run_config("alice"),
        resources={"lifecycle": ErroringResource()},
        raise_on_error=False,
    )
    assert not result.success
    assert result.retry_attempts_for_node(ERASE_OP) == 3
    failure = result.failure_data_for_node(ERASE_OP)
    assert failure is not None and failure.user_failure_data is not None
    receipt = failure.user_failure_data.metadata["receipt"].value
    assert receipt["errors"] == ["redis: connection refused"] and receipt["verified"] is False


def test_a_transient_store_error_then_a_verified_erase(rlm_env: Path) -> None:
    MANAGERS["current"] = ErroringManager(failures=1)
    result = erase_user_job.execute_in_process(
        run_config=erase_run_config("alice"),
        resources={"lifecycle": ErroringResource()},
        raise_on_error=False,
    )
    assert result.success and result.retry_attempts_for_node(ERASE_OP) == 1


# ---------------------------------------------------------------- rlm erase


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `rlm argv` in-process; an argparse refusal (SystemExit) counts as its exit code."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_rlm_erase_prints_the_receipt_and_records_the_run(
    two_users: dict[str, list[str]], rlm_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "erase", "--user", "alice", "--dry-run")
    dry = json.loads(out)
    assert code == 0 and dry["dry_run"] is True and dry["verified"] is None
    code, out, _ = cli(capsys, "erase", "--user", "alice")
    receipt = json.loads(out)
    assert code == 0 and receipt["verified"] is True
    assert {n: s["deleted"] for n, s in receipt["stores"].items()} == {
        n: s["deleted"] for n, s in dry["stores"].items()
    }
    with dg.DagsterInstance.from_config(str(rlm_env / "dagster-home")) as instance:
        run = instance.get_run_by_id(receipt["run_id"])
        assert run is not None and run.job_name == ERASE_JOB
        assert run.tags["rlm/trigger"] == "manual"
    assert documents_of("alice") == []


@pytest.mark.parametrize("user", ["", "  ", "\t"])
def test_rlm_erase_refuses_a_blank_user_with_exit_2(
    rlm_env: Path, capsys: pytest.CaptureFixture[str], user: str
) -> None:
    code, out, err = cli(capsys, "erase", "--user", user)
    assert code == 2 and out == ""
    assert "is not valid; allowed: a non-empty user id" in err


def test_rlm_erase_refuses_a_user_that_matches_nothing_unless_allowed(
    two_users: dict[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "erase", "--user", "alicia")
    assert code == 2 and out == ""
    assert "'alicia' matches no document and no chat session" in err
    assert "Traceback" not in err
    code, out, _ = cli(capsys, "erase", "--user", "alicia", "--allow-empty")
    assert code == 0 and json.loads(out)["total_deleted"] == 0
    assert len(documents_of("alice")) == 2


def test_rlm_erase_exits_1_when_a_store_fails(
    two_users: dict[str, list[str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("RLM_STORE_TIMEOUT_SECONDS", "1")
    code, out, err = cli(capsys, "erase", "--user", "alice")
    assert code == 1
    receipt = json.loads(out)
    assert receipt["verified"] is False and receipt["errors"]
    assert "erase finished with errors" in err
    assert len(documents_of("alice")) == 2  # the Redis step failed before any record went
