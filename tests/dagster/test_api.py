"""The HTTP API served by `rlm api` (real uvicorn on a free loopback port) over a real Dagster
instance, with a real webserver taking the submitted runs into the queue and, for the tests that
need runs to execute, a real `dagster-daemon`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from rlm_core.adapters.qdrant_vectors import connect_qdrant
from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.settings import Settings
from rlm_dagster.api import SnapshotCache, create_app
from rlm_dagster.run_reports import run_report
from rlm_dagster.wiring import build_definitions
from tests.dagster.conftest import REPO_ROOT, clean_subprocess_env, dagster_home, report_snapshot
from tests.dagster.test_integration import QUIET_SCHEDULES
from tests.services import free_port

BIN = REPO_ROOT / ".venv" / "bin"
READ = "read-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
SEED_FIELDS = {"total_items", "size_mb", "usage_percentage", "cleanup_priority", "oldest_age_hours"}
UNKNOWN_RUN = "00000000-0000-4000-8000-000000000000"
DONE = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    body: Any
    headers: dict[str, str]
    raw: str


@dataclass
class Stack:
    """The processes of one API test module, and how to reach them."""

    env: dict[str, str]
    api: str
    home: Path
    data_dir: Path
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        """Start a process of its own session (so its children stop with it), logging to a file."""
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every process this stack started, by its own process group."""
        for process in reversed(self.processes):
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))


def call(
    stack: Stack,
    method: str,
    path: str,
    token: str | None = None,
    body: bytes | None = None,
    scheme: str = "Bearer",
) -> Answer:
    """One request to the API; an HTTP error status is an answer like any other."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    return request(stack.api, method, path, headers, body)


def request(
    base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> Answer:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=700)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read().decode()
        got = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, json.loads(raw), got, raw)
    finally:
        connection.close()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError, KeyError):
            if predicate():
                return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def location_loaded(webserver: str) -> bool:
    query = (
        b'{"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"}'
    )
    answer = request(webserver, "POST", "/graphql", {"Content-Type": "application/json"}, query)
    entries = answer.body["data"]["workspaceOrError"]["locationEntries"]
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Demo data, a Dagster webserver and `rlm api`, all on free loopback ports."""
    root = tmp_path_factory.mktemp("api")
    web_port, api_port = free_port(), free_port()
    home = dagster_home(root / "home")
    env = clean_subprocess_env(
        DAGSTER_HOME=str(home),
        RLM_DATA_DIR=str(root / "data"),
        RLM_API_TOKEN=READ,
        RLM_API_ADMIN_TOKEN=ADMIN,
        RLM_DAGSTER_URL=f"http://127.0.0.1:{web_port}",
        **QUIET_SCHEDULES,
    )
    (root / "logs").mkdir()
    stack = Stack(env, f"http://127.0.0.1:{api_port}", home, root / "data", root / "logs")
    seeded = subprocess.run(
        [str(BIN / "rlm"), "demo", "seed"], env=env, capture_output=True, timeout=300, check=False
    )
    assert seeded.returncode == 0, seeded.stderr[-2000:]
    try:
        stack.start(
            "webserver",
            str(BIN / "dagster-webserver"),
            *("-h", "127.0.0.1", "-p", str(web_port), "-w", "workspace.yaml"),
        )
        stack.start("api", str(BIN / "rlm"), "api", "--port", str(api_port))
        wait_until(lambda: location_loaded(env["RLM_DAGSTER_URL"]), 240, "the webserver")
        wait_until(lambda: call(stack, "GET", "/api/health").status == 200, 60, "the API")
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def daemon(stack: Stack) -> Stack:
    """The run queue's daemon, started once the tests that need queued runs to wait are done."""
    drop_queued(stack)
    stack.start("daemon", str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml")
    return stack


def drop_queued(stack: Stack) -> None:
    """Delete runs left in the queue by earlier tests, so they never run later."""
    with stack.instance() as instance:
        for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])):
            instance.delete_run(run.run_id)


# --- refusing to start --------------------------------------------------------------------


def test_api_refuses_to_start_without_any_token(tmp_path: Path) -> None:
    env = clean_subprocess_env(RLM_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [str(BIN / "rlm"), "api", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "RLM_API_TOKEN and RLM_API_ADMIN_TOKEN are both unset" in done.stderr
    assert "Traceback" not in done.stderr


# --- the auth matrix ------------------------------------------------------------------------

DRY_CLEANUP = b'{"resource_type": "redis_cache", "dry_run": true}'
ROUTES = [
    ("GET", "/api/resources/metrics", None),
    ("GET", "/api/resources/metrics?live=true", None),
    ("GET", "/api/resources/queue", None),
    ("GET", f"/api/resources/runs/{UNKNOWN_RUN}", None),
    ("POST", "/api/resources/cleanup", DRY_CLEANUP),
    ("POST", "/api/resources/erase", b'{"user_id": "user-0001", "dry_run": true}'),
]
# (route index, token) -> status; 404 is the unknown run id, reached only once authorized.
EXPECTED = {
    READ: [200, 403, 200, 404, 403, 403],
    ADMIN: [200, 200, 200, 404, 202, 202],
}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    ("token", "scheme", "challenge"),
    [
        (None, "Bearer", 'Bearer realm="rlm"'),
        ("not-the-token-0123456789", "Bearer", 'Bearer realm="rlm", error="invalid_token"'),
        (READ[:-1], "Bearer", 'Bearer realm="rlm", error="invalid_token"'),
        (READ, "Basic", 'Bearer realm="rlm"'),
        ("", "Bearer", 'Bearer realm="rlm"'),
    ],
)
def test_missing_or_wrong_token_is_401_with_a_bearer_challenge(
    stack: Stack,
    method: str,
    path: str,
    body: bytes | None,
    token: str | None,
    scheme: str,
    challenge: str,
) -> None:
    answer = call(stack, method, path, token, body, scheme=scheme)
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == challenge
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.body) == {"error", "status"}


@pytest.mark.parametrize("token", [READ, ADMIN])
@pytest.mark.parametrize("route", range(len(ROUTES)))
def test_read_and_admin_tokens(stack: Stack, token: str, route: int) -> None:
    method, path, body = ROUTES[route]
    answer = call(stack, method, path, token, body)
    assert answer.status == EXPECTED[token][route], answer.raw
    if answer.status == 403:
        assert answer.body["error"] == "this request needs the admin token (RLM_API_ADMIN_TOKEN)"
    if answer.status == 202:
        assert answer.body["status"] == "QUEUED"


def test_health_needs_no_token_and_unknown_routes_are_json(stack: Stack) -> None:
    assert call(stack, "GET", "/api/health").body == {"status": "ok"}
    missing = call(stack, "GET", "/api/resources/nothing", READ)
    assert missing.status == 404 and missing.body == {"error": "Not Found", "status": 404}
    wrong = call(stack, "DELETE", "/api/resources/queue", ADMIN)
    assert wrong.status == 405 and wrong.body["status"] == 405


# --- bad bodies -----------------------------------------------------------------------------

BAD_BODIES = [
    (b'{"resource_type": "bogus"}', "resource_type", "'redis_cache', 'qdrant_vectors'"),
    (b'{"resource_type": 3}', "resource_type", "Input should be"),
    (b'{"max_deletions": -1}', "max_deletions", "greater than or equal to 1"),
    (b'{"max_deletions": 0}', "max_deletions", "greater than or equal to 1"),
    (b'{"max_deletions": 2.5}', "max_deletions", "valid integer"),
    (b'{"max_deletions": "10"}', "max_deletions", "valid integer"),
    (b'{"dry_run": "yes"}', "dry_run", "valid boolean"),
    (b'{"wait_seconds": 601}', "wait_seconds", "less than or equal to 600"),
    (b'{"wait_seconds": -1}', "wait_seconds", "greater than or equal to 0"),
    (b'{"dry_run": true, "surprise": 1}', "surprise", "unknown field"),
    (b'{"resource_type": null, "user_id": "u1"}', "user_id", "unknown field"),
    (b"[1, 2]", "body", "object"),
    (b"not json", "body", "Invalid JSON"),
    (b'{"dry_run": tru', "body", "Invalid JSON"),
]


@pytest.mark.parametrize(("body", "named", "says"), BAD_BODIES)
def test_a_bad_body_is_422_naming_the_field(
    stack: Stack, body: bytes, named: str, says: str
) -> None:
    answer = call(stack, "POST", "/api/resources/cleanup", ADMIN, body)
    assert answer.status == 422, answer.raw
    assert answer.body["field"] == named
    assert answer.body["error"].startswith(f"{named}: ") and says in answer.body["error"]
    assert "Traceback" not in answer.raw


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{}", "user_id: Field required"),
        (b'{"user_id": "   "}', "user_id: must not be empty or whitespace"),
        (b'{"user_id": 7}', "user_id: Input should be a valid string"),
        (b'{"user_id": "u1", "resource_type": null}', "resource_type: unknown field"),
    ],
)
def test_a_bad_erase_body_is_422_naming_the_field(stack: Stack, body: bytes, says: str) -> None:
    answer = call(stack, "POST", "/api/resources/erase", ADMIN, body)
    assert answer.status == 422 and answer.body["error"] == says


def test_a_bad_query_flag_is_422_naming_it(stack: Stack) -> None:
    answer = call(stack, "GET", "/api/resources/metrics?live=maybe", ADMIN)
    assert answer.status == 422 and answer.body["field"] == "live"


def test_the_read_token_is_refused_before_the_body_is_judged(stack: Stack) -> None:
    assert call(stack, "POST", "/api/resources/cleanup", READ, b"not json").status == 403


def test_bodies_over_64_kb_are_refused(stack: Stack) -> None:
    padded = b'{"dry_run": true' + b" " * (64 * 1024) + b"}"
    answer = call(stack, "POST", "/api/resources/cleanup", ADMIN, padded)
    assert answer.status == 413
    assert answer.body == {"error": "request body over 65536 bytes", "status": 413}
    # Without a Content-Length (chunked), the limit holds as the body streams in.
    host, port = stack.api.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = iter([b'{"dry_run": true'] + [b" " * 10_000] * 7 + [b"}"])
    connection.request(
        "POST",
        "/api/resources/cleanup",
        body=chunks,
        headers={"Authorization": f"Bearer {ADMIN}", "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["status"] == 413
    connection.close()


MALFORMED_LENGTHS = ["abc", "-1", "+5", "1e3", "1.5", "0x10", ""]


@pytest.mark.parametrize("declared", ["abc", "-1", "+5", "1e3"])
def test_a_malformed_content_length_is_400_through_uvicorn(stack: Stack, declared: str) -> None:
    """uvicorn's HTTP parser refuses it before the app (its own text/plain 400); never a 413."""
    drop_queued(stack)
    host, port = stack.api.removeprefix("http://").split(":")
    head = (
        f"POST /api/resources/cleanup HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {ADMIN}\r\nContent-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode() + DRY_CLEANUP)
        status, _ = read_response(sock)
    assert status == 400
    assert call(stack, "GET", "/api/resources/queue", READ).body["queue_size"] == 0


def test_the_mounted_app_answers_a_malformed_content_length_400_naming_the_header(
    tmp_path: Path,
) -> None:
    """Mounted in another ASGI app (whose server may pass the header on), the API itself refuses a
    Content-Length that is not a whole number of bytes: 400, JSON, the header named; an
    over-limit one stays 413."""
    settings = Settings.from_env({"RLM_API_ADMIN_TOKEN": ADMIN, "RLM_DATA_DIR": str(tmp_path)})
    parent = Starlette(routes=[Mount("/rlm", app=create_app(settings))])
    answers = asyncio.run(post_mounted(parent, [*MALFORMED_LENGTHS, str(64 * 1024 + 1)]))
    for declared, answer in zip(MALFORMED_LENGTHS, answers[:-1], strict=True):
        assert answer.status_code == 400, (declared, answer.text)
        assert answer.json()["header"] == "Content-Length"
        assert answer.json()["error"].startswith(f"Content-Length: {declared!r} is not valid")
    over = answers[-1]
    assert over.status_code == 413 and over.json()["status"] == 413


async def post_mounted(app: Starlette, lengths: list[str]) -> list[httpx.Response]:
    """A dry-run cleanup POSTed to the app mounted at /rlm, once per declared Content-Length."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rlm.test") as client:
        assert (await client.get("/rlm/api/health")).json() == {"status": "ok"}
        return [
            await client.post(
                "/rlm/api/resources/cleanup",
                content=DRY_CLEANUP,
                headers={"Authorization": f"Bearer {ADMIN}", "Content-Length": declared},
            )
            for declared in lengths
        ]


def test_a_chunked_body_past_the_limit_is_refused_before_it_ends(stack: Stack) -> None:
    """No Content-Length: the 413 comes once 64 KB have streamed in, while the body has not
    ended (its last chunk is not sent yet), so the body is never held whole."""
    host, port = stack.api.removeprefix("http://").split(":")
    head = (
        f"POST /api/resources/cleanup HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {ADMIN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * 10_000
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode() + b'10\r\n{"dry_run": true\r\n')
        for _ in range(7):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, body = read_response(sock)
        assert status == 413 and json.loads(body) == {
            "error": "request body over 65536 bytes",
            "status": 413,
        }
        # The connection stays usable: the rest of the body is dropped as it comes.
        sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
        sock.sendall(f"GET /api/health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert read_response(sock)[1] == b'{"status":"ok"}'


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of one HTTP/1.1 answer with a Content-Length, off a raw socket."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        got = sock.recv(65536)
        assert got, f"connection closed mid-answer: {raw!r}"
        raw += got
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        got = sock.recv(65536)
        assert got, "connection closed mid-body"
        body += got
    return int(status_line.split()[1]), body


# --- the queue while runs wait (no daemon yet: submitted runs stay QUEUED) -------------------


def test_queue_json_while_runs_wait(stack: Stack) -> None:
    drop_queued(stack)
    bodies = [
        b'{"resource_type": "redis_cache", "dry_run": true}',
        b'{"resource_type": "qdrant_vectors", "dry_run": true, "max_deletions": 5}',
        b'{"resource_type": null, "dry_run": true}',
    ]
    run_ids = []
    for body in bodies:
        answer = call(stack, "POST", "/api/resources/cleanup", ADMIN, body)
        assert answer.status == 202, answer.raw
        assert answer.body["status_url"] == f"/api/resources/runs/{answer.body['run_id']}"
        run_ids.append(answer.body["run_id"])
    queue = call(stack, "GET", "/api/resources/queue", READ)
    assert queue.status == 200 and queue.body["queue_size"] == 3
    tasks = queue.body["tasks"]
    assert [t["run_id"] for t in tasks] == run_ids  # one priority: first in, first out
    assert [t["resource_type"] for t in tasks] == ["redis_cache", "qdrant_vectors", None]
    for task in tasks:
        assert set(task) == {
            "priority",
            "resource_type",
            "target_id",
            "created_at",
            "reason",
            "run_id",
        }
        assert task["priority"] == "HIGH" and task["target_id"] == "all"
        assert task["reason"] == "Cleanup requested through the API"
        assert task["created_at"].endswith("Z")
    view = call(stack, "GET", f"/api/resources/runs/{run_ids[1]}", READ)
    assert view.status == 200
    assert view.body["status"] == "QUEUED" and view.body["report"] is None
    assert (view.body["trigger"], view.body["mode"]) == ("api", "enforce")
    with stack.instance() as instance:
        run = instance.get_run_by_id(run_ids[2])
        assert run is not None
        # A cleanup of all stores holds each store in the queue.
        assert {k for k in run.tags if k.startswith("rlm/store.")} == {
            "rlm/store.redis",
            "rlm/store.qdrant",
            "rlm/store.minio",
            "rlm/store.mongodb",
        }
        config = run.run_config["ops"]["cleanup"]["config"]
        assert config.get("resource_type") is None and config["dry_run"] is True
    drop_queued(stack)


# --- metrics --------------------------------------------------------------------------------


def test_metrics_come_from_the_latest_snapshots_and_live_measures_now(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = call(stack, "GET", "/api/resources/metrics", READ).body
    assert before["redis"]["as_of"] is None and "no usage snapshot" in before["redis"]["error"]
    monkeypatch.setenv("RLM_DATA_DIR", str(stack.data_dir))
    job = build_definitions(Settings.from_env()).resolve_job_def("snapshot_job")
    with stack.instance() as instance:
        assert job.execute_in_process(instance=instance).success
        latest = {
            key.path[-1]: instance.fetch_materializations(key, limit=1).records[0]
            for key in (dg.AssetKey(["usage", s]) for s in ("redis", "qdrant", "minio", "mongodb"))
        }
    # The API reuses an answer for up to a second (SnapshotCache): wait for one read after the job.
    wait_until(
        lambda: call(stack, "GET", "/api/resources/metrics", READ).body["redis"]["as_of"],
        30,
        "the new snapshots in the API's answer",
    )
    answer = call(stack, "GET", "/api/resources/metrics", READ)
    assert answer.status == 200 and set(answer.body) == set(latest)
    for store, record in latest.items():
        entry = answer.body[store]
        assert set(entry) == SEED_FIELDS | {"as_of"}
        metadata = record.asset_materialization.metadata  # type: ignore[union-attr]
        assert entry["total_items"] == metadata["total_items"].value
        assert entry["cleanup_priority"] == metadata["cleanup_priority"].value
        assert entry["usage_percentage"] == round(float(metadata["usage_percentage"].value), 3)
        assert abs(_unix(entry["as_of"]) - record.timestamp) < 0.001
    live = call(stack, "GET", "/api/resources/metrics?live=true", ADMIN)
    assert live.status == 200
    assert all(set(entry) == SEED_FIELDS | {"as_of"} for entry in live.body.values())
    assert live.body["mongodb"]["total_items"] == answer.body["mongodb"]["total_items"]


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_the_metrics_cache_rereads_once_aged_and_never_sticks(
    instance: dg.DagsterInstance,
) -> None:
    """One request re-reads an aged answer while the others get the previous one; a failed read
    leaves the next request to re-read."""
    cache = SnapshotCache(ttl=3600)
    report_snapshot(instance, ResourceType.REDIS_CACHE, 10.0, CleanupPriority.LOW)
    assert cache.current() is None
    first = cache.refresh(lambda: instance)
    assert first["redis"]["cleanup_priority"] == "LOW"
    report_snapshot(instance, ResourceType.REDIS_CACHE, 95.0, CleanupPriority.CRITICAL)
    assert cache.current() is first  # within the ttl
    cache.ttl = 0
    assert cache.current() is None  # aged: this request re-reads...
    assert cache.current() is first  # ...while the others get the previous answer
    assert cache.refresh(lambda: instance)["redis"]["cleanup_priority"] == "CRITICAL"

    def broken() -> dg.DagsterInstance:
        raise RuntimeError("instance unreachable")

    assert cache.current() is None
    with pytest.raises(RuntimeError):
        cache.refresh(broken)
    assert cache.current() is None


# --- runs through the queue (daemon) ---------------------------------------------------------


def test_a_waited_cleanup_answers_the_report_of_its_run(daemon: Stack) -> None:
    answer = call(
        daemon,
        "POST",
        "/api/resources/cleanup",
        ADMIN,
        b'{"resource_type": "qdrant_vectors", "wait_seconds": 420}',
    )
    assert answer.status == 200, answer.raw
    body = answer.body
    assert {"success", "deleted_counts", "message", "run_id"} <= set(body)
    assert body["success"] is True and body["dry_run"] is False
    assert body["deleted_counts"]["qdrant"] > 0  # the demo plants expired vectors
    assert (
        body["message"]
        == f"Cleanup completed. Total items deleted: {sum(body['deleted_counts'].values())}"
    )
    with daemon.instance() as instance:
        run = instance.get_run_by_id(body["run_id"])
        report = run_report(instance, body["run_id"])
    assert run is not None and run.status is dg.DagsterRunStatus.SUCCESS
    assert run.tags["rlm/trigger"] == "api" and run.tags["rlm/mode"] == "enforce"
    assert report is not None and {**report, "run_id": body["run_id"]} == body
    view = call(daemon, "GET", f"/api/resources/runs/{body['run_id']}", READ).body
    assert view["status"] == "SUCCESS" and view["report"] == body


def test_a_waited_dry_run_erase_answers_its_receipt(daemon: Stack) -> None:
    answer = call(
        daemon,
        "POST",
        "/api/resources/erase",
        ADMIN,
        b'{"user_id": "user-0002", "dry_run": true, "wait_seconds": 420}',
    )
    assert answer.status == 200, answer.raw
    receipt = answer.body
    assert receipt["user_id"] == "user-0002" and receipt["dry_run"] is True
    assert receipt["success"] is True and receipt["stores"]["mongodb"]["found"] > 0
    with daemon.instance() as instance:
        run = instance.get_run_by_id(receipt["run_id"])
    assert run is not None and run.job_name == "erase_user_job"
    assert run.tags["rlm/trigger"] == "api" and "rlm/store.mongodb" in run.tags


def test_a_cli_cleanup_waits_for_a_queued_run_of_the_same_store(daemon: Stack) -> None:
    """Item 3: the queued run holds qdrant (stuck on Qdrant's folder lock, which the test holds);
    `rlm cleanup` of qdrant started meanwhile waits for it, never overlaps it."""
    lock = connect_qdrant(None, None, daemon.data_dir, 10.0, lock_wait=0)
    try:
        queued = call(
            daemon, "POST", "/api/resources/cleanup", ADMIN, b'{"resource_type": "qdrant_vectors"}'
        ).body["run_id"]
        wait_until(lambda: _status(daemon, queued) == "STARTED", 180, "the queued run to start")
        cli = subprocess.Popen(
            [str(BIN / "rlm"), "cleanup", "--resource-type", "qdrant_vectors"],
            env=daemon.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_until(lambda: _waiting_cli_run(daemon, queued) is not None, 120, "the CLI run to wait")
        # Its own log says it waits for the queued run; the start/end times below prove it.
        assert cli.poll() is None, "the CLI run did not wait"
        assert _status(daemon, queued) == "STARTED"
    finally:
        lock.close()
    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err[-3000:]
    response = json.loads(out)
    assert response["success"] is True
    with daemon.instance() as instance:
        first = instance.get_run_record_by_id(queued)
        second_begins = _begins(instance, response["run_id"])
    assert first is not None and first.dagster_run.status is dg.DagsterRunStatus.SUCCESS
    assert first.end_time is not None and second_begins >= first.end_time


def _status(stack: Stack, run_id: str) -> str:
    return str(call(stack, "GET", f"/api/resources/runs/{run_id}", READ).body["status"])


def _waiting_cli_run(stack: Stack, other: str) -> str | None:
    with stack.instance() as instance:
        for run in instance.get_runs(
            dg.RunsFilter(job_name="cleanup_job", tags={"rlm/trigger": "manual"})
        ):
            logs = [entry.user_message for entry in instance.all_logs(run.run_id)]
            if any(f"another cleanup is in progress (run {other}" in m for m in logs):
                return run.run_id
    return None


def _begins(instance: dg.DagsterInstance, run_id: str) -> float:
    [entry] = [e for e in instance.all_logs(run_id) if e.user_message.endswith(" begins")]
    return entry.timestamp


def test_the_api_listens_on_loopback_only_by_default(stack: Stack) -> None:
    """`rlm api --port P` (no --host): the listening socket is 127.0.0.1:P, per the kernel."""
    port = int(stack.api.rsplit(":", 1)[1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.add(address)
    assert listening == {"0100007F"}  # 127.0.0.1, little-endian hex; no 0.0.0.0 or IPv6


def test_tokens_never_reach_the_logs(stack: Stack) -> None:
    for log in stack.logs.glob("*.log"):
        text = log.read_text(errors="replace")
        assert READ not in text and ADMIN not in text, log.name
