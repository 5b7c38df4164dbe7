"""`rlm run` pieces: demo defaults never override the user, loopback binding, port validation."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from rlm_core import Settings
from rlm_dagster import dev


def test_demo_limits_fill_only_what_the_user_left_unset() -> None:
    env = dev.demo_environment({"MAX_QDRANT_POINTS": "999", "MAX_MONGODB_DOCUMENTS": ""})
    assert env["MAX_QDRANT_POINTS"] == "999"
    assert env["MAX_MONGODB_DOCUMENTS"] == dev.DEMO_ENV["MAX_MONGODB_DOCUMENTS"]
    assert env["RESOURCE_MONITORING_INTERVAL_SECONDS"] == "60"
    Settings.from_env(env)


def test_embedded_means_no_store_url() -> None:
    assert dev.is_embedded(Settings.from_env({}))
    assert not dev.is_embedded(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6390/0"}))


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
    assert dev._serve(3123, {}) == 0
    command = seen["command"]
    assert command[command.index("-h") + 1] == "127.0.0.1"
    assert command[command.index("-p") + 1] == "3123"
