"""Run rlm's production topology as separate processes on one host and prove one cleanup
through it: `dagster api grpc` (code server), `dagster-webserver`, `dagster-daemon` and
`rlm api`, each in its own empty working directory, sharing only PostgreSQL (RLM_DAGSTER_PG_URL)
and the stores named by the environment.

The cleanup goes the production way: POST /api/resources/cleanup -> the webserver's GraphQL
queues it -> the daemon dequeues it -> the code server launches the run worker. Prints a JSON
summary; exits 0 when the run succeeded.

    RLM_DAGSTER_PG_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/dagster \\
    REDIS_URL=redis://127.0.0.1:6380/0 RLM_DATA_DIR=/tmp/rlm-data \\
      .venv/bin/python deploy/split_topology.py --resource-type redis_cache
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTUP_SECONDS = 180


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, procs: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
    """Until `url` answers (any HTTP status), failing early if one process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=5).close()  # noqa: S310 - our own loopback URL
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


def wait_grpc(port: int, procs: dict[str, subprocess.Popen[bytes]], timeout: float) -> None:
    """Until the code server on `port` passes `dagster api grpc-health-check`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs.values()):
            raise RuntimeError("the code server exited before it answered")
        check = [
            str(BIN / "dagster"),
            "api",
            "grpc-health-check",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        if subprocess.run(check, capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the code server on port {port} did not answer in {timeout}s")


def post_json(url: str, body: dict[str, Any], token: str, timeout: float) -> dict[str, Any]:
    """POST a JSON body with a bearer token; the JSON answer, whatever the status."""
    request = urllib.request.Request(  # noqa: S310 - our own loopback URL
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        answer = {"http_status": exc.code, **json.loads(exc.read() or b"{}")}
    return answer


def log_format(env: dict[str, str]) -> str:
    """Dagster's --log-format for RLM_LOG_FORMAT (json unless it says text), as `rlm run` does."""
    from rlm_core.settings import Settings
    from rlm_dagster.dev import dagster_log_format

    return dagster_log_format(Settings.from_env(env))


def topology_commands(
    grpc: int, web: int, api: int, workspace: Path, log_format: str
) -> dict[str, list[str]]:
    """The four processes' command lines; the three Dagster ones log in `log_format`."""
    logs = ["--log-format", log_format]
    return {
        "code-server": [
            "dagster", "api", "grpc", "--module-name", "rlm_dagster.definitions",
            "--attribute", "defs", "--host", "127.0.0.1", "--port", str(grpc), *logs,
        ],
        "webserver": [
            "dagster-webserver", "-h", "127.0.0.1", "-p", str(web), "-w", str(workspace), *logs,
        ],
        "daemon": ["dagster-daemon", "run", "-w", str(workspace), *logs],
        "api": ["rlm", "api", "--host", "127.0.0.1", "--port", str(api)],
    }  # fmt: skip


@contextmanager
def processes(root: Path, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Start the four processes, each in its own folder under root; stop them at the end."""
    grpc, web, api = free_port(), free_port(), free_port()
    (root / "workspace").mkdir()
    workspace = root / "workspace" / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {grpc}\n      location_name: rlm\n"
    )
    env = {**env, "RLM_DAGSTER_URL": f"http://127.0.0.1:{web}"}
    commands = topology_commands(grpc, web, api, workspace, log_format(env))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in commands.items():
            folder = root / name
            folder.mkdir()
            log = (folder / "process.log").open("wb")
            procs[name] = subprocess.Popen(
                [str(BIN / command[0]), *command[1:]],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            if name == "code-server":
                # The webserver loads the location once at start: the server must answer first.
                wait_grpc(grpc, procs, STARTUP_SECONDS)
        wait_http(f"http://127.0.0.1:{web}/server_info", procs, STARTUP_SECONDS)
        wait_http(f"http://127.0.0.1:{api}/api/resources/queue", procs, STARTUP_SECONDS)
        yield {"procs": procs, "api": f"http://127.0.0.1:{api}", "root": root}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def instance_home(root: Path) -> Path:
    """A DAGSTER_HOME holding the PostgreSQL instance config, and nothing else."""
    home = root / "dagster-home"
    home.mkdir()
    shutil.copy(REPO / "dagster.postgres.yaml", home / "dagster.yaml")
    return home


def run(resource_type: str, dry_run: bool, keep: bool) -> dict[str, Any]:
    """Start the topology, queue one cleanup through the API, wait for its answer."""
    if not os.environ.get("RLM_DAGSTER_PG_URL"):
        raise SystemExit("split_topology: RLM_DAGSTER_PG_URL is not set; allowed: a PostgreSQL URL")
    root = Path(tempfile.mkdtemp(prefix="rlm-split-"))
    token = secrets.token_hex(32)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(instance_home(root)),
        "RLM_API_ADMIN_TOKEN": token,
        "RLM_API_TOKEN": "",
    }
    try:
        with processes(root, env) as topology:
            body = {"resource_type": resource_type, "dry_run": dry_run, "wait_seconds": 600}
            answer = post_json(f"{topology['api']}/api/resources/cleanup", body, token, timeout=660)
            alive = {n: p.poll() is None for n, p in topology["procs"].items()}
        return {"cleanup": answer, "processes_alive_after_run": alive, "root": str(root)}
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    """Parse arguments, run, print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resource-type", default="redis_cache")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs folder")
    args = parser.parse_args()
    summary = run(args.resource_type, args.dry_run, args.keep)
    print(json.dumps(summary, indent=2, default=str))
    ok = summary["cleanup"].get("success") is True and all(
        summary["processes_alive_after_run"].values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
