"""`rlm run`: the embedded demo end to end: seed, keep the embedded Redis up, run `dg dev`.

`dg dev` (dagster-dg-cli, pinned to the dagster release it was built with) replaces the superseded
`dagster dev`: given the module (`-m`), it starts the same webserver, daemon and code server with
no project scaffolding, and prints no SupersessionWarning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

from rlm_core.demo import seed_demo
from rlm_core.lifecycle import LifecycleManager
from rlm_core.settings import Settings
from rlm_core.store_table import is_embedded
from rlm_core.stores import hold_embedded_cache
from rlm_dagster.home import ensure_dagster_home
from rlm_dagster.jobs import SNAPSHOT_JOB
from rlm_dagster.run_tags import REASON_TAG, TRIGGER_TAG, Trigger

DEFAULT_PORT = 3000
CODE_LOCATION_MODULE = "rlm_dagster.definitions"
STOP_TIMEOUT_SECONDS = 30
STARTUP_TIMEOUT_SECONDS = 180

# Soft limits sized to the demo data (seed 0, scale 1: 290 documents, about 2,300 points) so
# the pressure path shows within minutes: Mongo starts CRITICAL, Qdrant HIGH, and both drop
# after the cleanups the sensor requests. Any variable set explicitly wins.
DEMO_ENV = {
    "MAX_MONGODB_DOCUMENTS": "320",
    "MAX_QDRANT_POINTS": "2800",
    "RESOURCE_MONITORING_INTERVAL_SECONDS": "60",
}


def demo_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment with the demo's limits filled in where the user set nothing."""
    env = dict(environ)
    for name, value in DEMO_ENV.items():
        if not env.get(name):
            env[name] = value
    return env


def port_from_env(environ: Mapping[str, str]) -> int:
    """RLM_PORT, validated."""
    raw = environ.get("RLM_PORT", "") or str(DEFAULT_PORT)
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"RLM_PORT={raw!r} is invalid; allowed: a port number 1-65535")
    return int(raw)


def dagster_log_format(settings: Settings) -> str:
    """The webserver's and daemon's log format for RLM_LOG_FORMAT: JSON lines like rlm's own
    events, or Dagster's colored lines for `text`."""
    return "json" if settings.log_format == "json" else "colored"


def dg_executable() -> str:
    """The `dg` console script of this interpreter's environment (installed with rlm)."""
    return str(Path(sysconfig.get_path("scripts")) / "dg")


def dev_command(port: int, log_format: str) -> list[str]:
    """`dg dev` serving rlm's code location on 127.0.0.1:`port`."""
    return [
        dg_executable(),
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-m",
        CODE_LOCATION_MODULE,
        "--log-format",
        log_format,
    ]


def run(settings: Settings) -> int:
    """Seed the embedded stores if empty, then serve Dagster on 127.0.0.1 until Ctrl-C."""
    port = port_from_env(os.environ)
    env = dict(os.environ)
    if is_embedded(settings) and os.environ.get("RLM_DEMO", "1") != "0":
        env = demo_environment(env)
        settings = Settings.from_env(env)
    env["DAGSTER_HOME"] = str(ensure_dagster_home(settings))
    env["RLM_DATA_DIR"] = str(settings.data_dir.resolve())
    log_format = dagster_log_format(settings)
    if not is_embedded(settings):
        return _serve(port, env, log_format)
    # The seeding manager is closed before serving: Qdrant's local mode locks its folder for as
    # long as a client is open, and the runs need it.
    with LifecycleManager.from_settings(settings) as manager:
        if _empty(manager):
            print(f"rlm: seeding demo data: {seed_demo(manager)}", flush=True)
    # Holding a cache connection keeps the embedded Redis server up between runs, so idle times
    # (which a server restart resets) keep growing and the Redis sweep has work to do.
    keepalive = hold_embedded_cache(settings)
    try:
        return _serve(port, env, log_format)
    finally:
        keepalive.close()


def _empty(manager: LifecycleManager) -> bool:
    return all(m.total_items == 0 for m in manager.metrics().values())


def _serve(port: int, env: dict[str, str], log_format: str) -> int:
    command = dev_command(port, log_format)
    print(f"rlm: Dagster UI on http://127.0.0.1:{port} (Ctrl-C stops everything)", flush=True)
    child = subprocess.Popen(command, env=env, start_new_session=True)
    threading.Thread(target=_first_snapshot, args=(port, env), daemon=True).start()
    # dg dev runs in its own session so one signal reaches its whole group; SIGTERM and
    # SIGHUP to rlm stop it the same way Ctrl-C does.
    # SIGINT too: a shell's background job inherits it as ignored, and Ctrl-C must still work.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _interrupt) for sig in signals}
    try:
        return child.wait()
    except KeyboardInterrupt:
        return _stop(child)
    finally:
        if child.poll() is None:
            _stop(child)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _first_snapshot(port: int, env: dict[str, str]) -> None:
    """Queue one snapshot_job as soon as the UI answers, so a newcomer need not wait for cron."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        return
    tags = {TRIGGER_TAG: Trigger.MANUAL.value, REASON_TAG: "First snapshot at start"}
    launch = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "launch",
        "-m",
        CODE_LOCATION_MODULE,
        "-j",
        SNAPSHOT_JOB,
        "--tags",
        json.dumps(tags),
    ]
    subprocess.run(
        launch, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(child: subprocess.Popen[bytes]) -> int:
    # dg dev shuts its webserver, daemon and code servers down on SIGINT; the group kill
    # afterwards catches anything that outlived it.
    with suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGINT)
    try:
        child.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    with suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    return 0
