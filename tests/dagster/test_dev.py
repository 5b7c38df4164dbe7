"""`rlm run` pieces: demo defaults never override the user, loopback binding, port validation,
and the `dg dev` it starts: no SupersessionWarning, JSON logs when RLM_LOG_FORMAT says json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from rlm_core import Settings
from rlm_core.store_table import is_embedded
from rlm_dagster import dev
from tests.dagster.conftest import REPO_ROOT, clean_subprocess_env, dagster_home
from tests.services import free_port

STARTUP_SECONDS = 180


def test_demo_limits_fill_only_what_the_user_left_unset() -> None:
    env = dev.demo_environment({"MAX_QDRANT_POINTS": "999", "MAX_MONGODB_DOCUMENTS": ""})
    assert env["MAX_QDRANT_POINTS"] == "999"
    assert env["MAX_MONGODB_DOCUMENTS"] == dev.DEMO_ENV["MAX_MONGODB_DOCUMENTS"]
    assert env["RESOURCE_MONITORING_INTERVAL_SECONDS"] == "60"
    Settings.from_env(env)


def test_embedded_means_no_store_url() -> None:
    assert is_embedded(Settings.from_env({}))
    assert not is_embedded(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6390/0"}))


@pytest.mark.parametrize("raw", ["0", "70000", "abc", "-1", "30 00"])
def test_a_bad_port_is_a_clear_error(raw: str) -> None:
    with pytest.raises(ValueError, match=r"RLM_PORT=.* allowed: a port number 1-65535"):
        dev.port_from_env({"RLM_PORT": raw})


def test_default_port_is_3000() -> None:
    assert dev.port_from_env({}) == 3000


def test_the_webserver_binds_to_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class _Child:
        pid = 0

        def __init__(self, command: list[str], **kwargs: Any) -> None:
            seen["command"] = command

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", _Child)
    monkeypatch.setattr(dev, "_first_snapshot", lambda port, env: None)
    assert dev._serve(3123, {}, "json") == 0
    command = seen["command"]
    assert command[:2] == [str(REPO_ROOT / ".venv" / "bin" / "dg"), "dev"]
    assert command[command.index("-h") + 1] == "127.0.0.1"
    assert command[command.index("-p") + 1] == "3123"
    assert command[command.index("-m") + 1] == "rlm_dagster.definitions"
    assert command[command.index("--log-format") + 1] == "json"


@pytest.mark.parametrize(
    ("setting", "flag"), [(None, "json"), ("json", "json"), ("text", "colored")]
)
def test_rlm_log_format_picks_the_webserver_and_daemon_format(
    setting: str | None, flag: str
) -> None:
    env = {"RLM_LOG_FORMAT": setting} if setting else {}
    log_format = dev.dagster_log_format(Settings.from_env(env))
    assert log_format == flag
    command = dev.dev_command(3000, log_format)
    assert command[command.index("--log-format") + 1] == flag


def _wait_for_ui(child: subprocess.Popen[bytes], port: int) -> None:
    """Until the webserver answers /server_info (the UI is up), failing if dg dev exits first."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert child.poll() is None, "dg dev exited before the UI answered"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the UI on port {port} did not answer in {STARTUP_SECONDS}s")


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_dg_dev_logs_json_without_a_supersession_warning(tmp_path: Path) -> None:
    """The command `rlm run` starts, from the repository root as `make run` does: the webserver
    and the daemon log JSON lines, nothing says the command is superseded, Ctrl-C stops it."""
    port = free_port()
    env = clean_subprocess_env(
        DAGSTER_HOME=str(dagster_home(tmp_path / "home")),
        RLM_DATA_DIR=str(tmp_path / "data"),
        RLM_LOG_FORMAT="json",
    )
    log_format = dev.dagster_log_format(Settings.from_env(env))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(
            dev.dev_command(port, log_format),
            cwd=REPO_ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            # A shell's background job starts with SIGINT ignored; give dg dev a terminal's Ctrl-C.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            _wait_for_ui(child, port)
        finally:
            os.killpg(child.pid, signal.SIGINT)
            try:
                code = child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise
    text = out.read_text() + err.read_text()
    assert code == 0, text[-3000:]
    for word in ("SupersessionWarning", "superseded", "DeprecationWarning", "does not match"):
        assert word not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every line is JSON, or this fails naming it
    loggers = {event.get("logger") for event in events}
    assert {"dagster", "dagster-webserver", "dagster.daemon"} <= loggers, loggers
    served = [e for e in events if e.get("logger") == "dagster-webserver"]
    assert any(f"http://127.0.0.1:{port}" in e["event"] for e in served), served
