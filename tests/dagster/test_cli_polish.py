"""The `rlm` command for people: fast help, version, examples, tables, honest audit paths."""

from __future__ import annotations

import argparse
import json
import logging
import os
import pty
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pytest

from rlm_core.domain import ResourceType
from rlm_dagster.cli import RESOURCE_TYPES, build_parser, main
from tests.dagster.conftest import REPO_ROOT, clean_subprocess_env

RLM = str(REPO_ROOT / ".venv" / "bin" / "rlm")


@pytest.fixture(autouse=True)
def rlm_logger_on_this_tests_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rlm logger binds sys.stderr once; a stream captured by an earlier test is closed."""
    monkeypatch.setattr(logging.getLogger("rlm"), "handlers", [])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_importing_the_cli_loads_neither_dagster_nor_the_core() -> None:
    """What keeps `rlm --help` fast; its wall time is measured in bench/run (bench/api_bench.py),
    not timed here."""
    probe = "import sys, rlm_dagster.cli; print(sorted({m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert not loaded & {"dagster", "rlm_core", "pandas", "redis", "qdrant_client", "pymongo"}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"rlm {metadata.version('rlm')}\n"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand parser, nested ones (demo seed) included, by path."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in subcommands(sub).items()})
    return found


def test_every_subcommand_help_ends_with_an_example() -> None:
    commands = subcommands(build_parser())
    assert {"metrics", "cleanup", "queue", "ingest", "demo seed", "settings", "api"} <= set(
        commands
    )
    for name, parser in commands.items():
        text = parser.format_help()
        example = text.rsplit("example:\n", 1)[-1].strip()
        assert "example:\n" in text and "rlm " in example, name


def test_top_help_documents_the_exit_codes() -> None:
    text = build_parser().format_help()
    assert "exit codes: 0 ok, 1 a store or run failed, 2 bad input or configuration" in text


def test_help_lists_exactly_the_core_resource_types() -> None:
    assert tuple(rt.value for rt in ResourceType) == RESOURCE_TYPES


@pytest.mark.parametrize("port", ["0", "65536", "http", "-1"])
def test_a_bad_api_port_exits_2(capsys: pytest.CaptureFixture[str], port: str) -> None:
    code, out, err = run(capsys, "api", "--port", port)
    assert code == 2 and out == "" and "a port from 1 to 65535" in err


def test_tables_for_people(rlm_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "demo", "seed")[0] == 0
    code, out, _ = run(capsys, "metrics", "--format", "table")
    header, rule, *rows = out.splitlines()
    assert code == 0 and header.split() == [
        "store",
        "total_items",
        "size_mb",
        "usage_percentage",
        "cleanup_priority",
        "oldest_age_hours",
    ]
    assert set(rule) <= {"-", " "} and [r.split()[0] for r in rows] == [
        "redis",
        "qdrant",
        "minio",
        "mongodb",
    ]
    code, out, _ = run(capsys, "queue", "--format", "table")
    assert code == 0 and out.splitlines()[-1] == "0 queued"
    code, out, _ = run(
        capsys, "cleanup", "--dry-run", "--resource-type", "redis_cache", "--format", "table"
    )
    assert code == 0 and out.splitlines()[0].split() == ["store", "deleted", "bytes_freed"]
    assert out.splitlines()[-1].startswith("Dry run: Cleanup completed.")


def test_a_dry_run_that_plans_nothing_names_no_audit_file(
    rlm_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "cleanup", "--dry-run", "--resource-type", "redis_cache")
    response = json.loads(out)
    assert code == 0 and response["success"] and response["deleted_counts"]["redis"] == 0
    assert response["audit_path"] is None
    audit = rlm_env / "audit"
    assert not audit.exists() or not any(audit.iterdir())  # nothing was written anywhere


def test_cleanup_runs_carry_the_mode(rlm_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import dagster as dg

    code, out, _ = run(capsys, "cleanup", "--dry-run", "--resource-type", "redis_cache")
    assert code == 0
    run_id = json.loads(out)["run_id"]
    with dg.DagsterInstance.from_config(str(rlm_env / "dagster-home")) as instance:
        tagged = instance.get_run_by_id(run_id)
    assert tagged is not None and tagged.tags["rlm/mode"] == "enforce"
    assert tagged.tags["rlm/store.redis"] == "cleanup"


def test_json_stays_the_default_for_scripts(tmp_path: Path) -> None:
    env = clean_subprocess_env(RLM_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [RLM, "settings"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and json.loads(done.stdout)["log_format"] == "json"


def run_cleanup_with_stderr(env: dict[str, str], stderr: int) -> tuple[int, str]:
    """`rlm cleanup --dry-run` of Redis with stderr on the given descriptor; exit code, stdout."""
    done = subprocess.run(
        [RLM, "cleanup", "--dry-run", "--resource-type", "redis_cache"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout


def test_a_cleanup_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal stderr a spinner names the cleanup while it runs; stdout keeps the JSON, and
    a stderr that is a file gets the log lines only."""
    env = clean_subprocess_env(RLM_DATA_DIR=str(tmp_path / "data"), TERM="xterm", COLUMNS="120")
    controller, terminal = pty.openpty()
    shown: list[str] = []
    # Read while the command runs: a full terminal buffer would block its writes.
    reader = threading.Thread(target=lambda: shown.append(read_all(controller)))
    reader.start()
    try:
        code, out = run_cleanup_with_stderr(env, terminal)
    finally:
        os.close(terminal)
        reader.join(timeout=60)
        os.close(controller)
    assert code == 0 and json.loads(out)["success"] is True
    assert "rlm cleanup of redis_cache (dry run)" in shown[0]
    logged = tmp_path / "stderr.log"
    with logged.open("w") as file:
        code, out = run_cleanup_with_stderr(env, file.fileno())
    assert code == 0 and json.loads(out)["dry_run"] is True
    text = logged.read_text()
    assert "RUN_SUCCESS" in text and "rlm cleanup of" not in text and "\x1b[" not in text


def read_all(controller: int) -> str:
    """Everything written to a pseudo-terminal whose other end is closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
