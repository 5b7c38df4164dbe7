"""The HTTP API (the seed's endpoints) over the Dagster instance: `rlm api` serves it, and
`create_app()` returns the same ASGI app for a FastAPI or Starlette app to mount.

Bearer tokens: RLM_API_TOKEN reads, RLM_API_ADMIN_TOKEN reads, cleans and erases; with neither
set the app refuses to start. Every answer is JSON, errors included; bodies over 64 KB are refused.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dagster as dg
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.events import log_event
from rlm_core.lifecycle import LifecycleManager
from rlm_core.settings import MAX_COUNT, Settings, SettingsError
from rlm_dagster.erasure import ERASE_JOB, erase_run_config
from rlm_dagster.home import ensure_dagster_home
from rlm_dagster.jobs import cleanup_run_config
from rlm_dagster.live import measure_all
from rlm_dagster.logs import configure_logging
from rlm_dagster.mode import cleanup_mode, log_mode
from rlm_dagster.queue import CLEANUP_JOB, queue_json, queued_cleanup_runs
from rlm_dagster.run_reports import DONE, run_view, seed_response
from rlm_dagster.run_tags import (
    API_REASON,
    MODE_TAG,
    REASON_TAG,
    TRIGGER_TAG,
    Trigger,
    cleanup_tags,
)
from rlm_dagster.snapshots import iso_utc, latest_snapshot
from rlm_dagster.submit import GraphQLSubmitter, RunSubmitter, SubmitError

MAX_BODY_BYTES = 64 * 1024
# How long an answer of GET /metrics is reused: a snapshot lands once per monitoring interval
# (a minute or more), while pollers may be many and a read costs tens of milliseconds.
METRICS_CACHE_SECONDS = 1.0
MAX_WAIT_SECONDS = 600
POLL_SECONDS = 1.0
# ASCII digits only, and few enough that int() stays cheap: a larger number is over the limit
# anyway, so its exact value never matters.
DECIMAL = re.compile(r"[0-9]{1,20}")
RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UNPROTECTED_REFUSAL = (
    "RLM_API_TOKEN and RLM_API_ADMIN_TOKEN are both unset; allowed: set at least one "
    "(RLM_API_TOKEN reads, RLM_API_ADMIN_TOKEN also cleans and erases): the API never serves "
    "without a token"
)


class Role(enum.IntEnum):
    """What a token may do; a higher role includes the lower."""

    READ = 1
    ADMIN = 2


class ApiError(Exception):
    """An answer other than success: status, message, and the body field or request header at
    fault if any."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        header: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.header = header
        self.headers = headers or {}


class CleanupBody(BaseModel):
    """`POST /api/resources/cleanup`: unknown fields and wrong types are refused (422)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    resource_type: ResourceType | None = None
    dry_run: bool = False
    max_deletions: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    wait_seconds: float | None = Field(default=None, ge=0, le=MAX_WAIT_SECONDS)


class EraseBody(BaseModel):
    """`POST /api/resources/erase`: one user's data, everywhere (SPEC section 12)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: str = Field(max_length=1024)
    dry_run: bool = False
    wait_seconds: float | None = Field(default=None, ge=0, le=MAX_WAIT_SECONDS)

    @field_validator("user_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or whitespace")
        return value


Body = TypeVar("Body", bound=BaseModel)


@dataclass
class SnapshotCache:
    """GET /metrics' answer, read from the instance at most once per `ttl` seconds; while one
    request re-reads it, the others get the previous one (`as_of` dates each store)."""

    ttl: float = METRICS_CACHE_SECONDS
    _value: dict[str, Any] | None = None
    _read_at: float = 0.0
    _reading: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self) -> dict[str, Any] | None:
        """The answer to reuse; None when the caller must re-read (it then calls `refresh`)."""
        with self._lock:
            if self._value is None:
                return None
            if self._reading or time.monotonic() - self._read_at < self.ttl:
                return self._value
            self._reading = True
            return None

    def refresh(self, open_instance: Callable[[], dg.DagsterInstance]) -> dict[str, Any]:
        """Read the latest snapshots now and keep the answer."""
        started = time.monotonic()
        try:
            value = snapshot_metrics(open_instance())
        finally:
            with self._lock:
                self._reading = False
        with self._lock:
            if started >= self._read_at:
                self._value, self._read_at = value, started
        return value


@dataclass
class ApiState:
    """What every request shares: settings, tokens, the instance, the run submitter and the
    metrics cache."""

    settings: Settings
    submitter: RunSubmitter
    tokens: dict[Role, bytes] = field(default_factory=dict)
    instance: dg.DagsterInstance | None = None
    metrics_cache: SnapshotCache = field(default_factory=SnapshotCache)
    _opening: threading.Lock = field(default_factory=threading.Lock)

    def dagster(self) -> dg.DagsterInstance:
        """The Dagster instance ($DAGSTER_HOME, else <RLM_DATA_DIR>/dagster-home), opened once
        on first use (an app mounted in another app gets no lifespan of its own)."""
        with self._opening:
            if self.instance is None:
                ensure_dagster_home(self.settings)
                self.instance = dg.DagsterInstance.get()
            return self.instance


def api_tokens(settings: Settings) -> dict[Role, bytes]:
    """The configured tokens by role; SettingsError when there is none."""
    tokens = {
        role: token.encode()
        for role, token in ((Role.READ, settings.api_token), (Role.ADMIN, settings.api_admin_token))
        if token
    }
    if not tokens:
        raise SettingsError([UNPROTECTED_REFUSAL])
    return tokens


def authorize(request: Request, needed: Role) -> Role:
    """The caller's role from `Authorization: Bearer <token>`; 401 or 403 otherwise."""
    state: ApiState = request.app.state.rlm
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(
            401, "missing bearer token", headers={"WWW-Authenticate": 'Bearer realm="rlm"'}
        )
    given = presented.strip().encode()
    # Every configured token is compared, in constant time, whatever matched first.
    matches = [role for role, token in state.tokens.items() if hmac.compare_digest(given, token)]
    if not matches:
        raise ApiError(
            401,
            "invalid bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="rlm", error="invalid_token"'},
        )
    role = max(matches)
    if role < needed:
        raise ApiError(403, "this request needs the admin token (RLM_API_ADMIN_TOKEN)")
    return role


def declared_length(request: Request) -> int | None:
    """The Content-Length the client declared, if any; 400 naming the header when it is not a
    whole number of bytes, 413 when it is over the limit (nothing is read either way)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not DECIMAL.fullmatch(declared.strip()):
        raise ApiError(
            400,
            f"Content-Length: {declared[:32]!r} is not valid; allowed: a whole number of bytes "
            f"(at most {MAX_BODY_BYTES}), or no Content-Length with a chunked body",
            header="Content-Length",
        )
    if int(declared) > MAX_BODY_BYTES:
        raise too_large()
    return int(declared)


def too_large() -> ApiError:
    """413 for a body past the limit."""
    return ApiError(413, f"request body over {MAX_BODY_BYTES} bytes")


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) past 64 KB whether or not Content-Length says so: a
    chunked body is read only up to the first chunk past the limit (uvicorn then drops the rest
    as it arrives, keeping the connection usable for a client that sends it all first)."""
    declared_length(request)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large()
    return bytes(body)


def parse_body(model: type[Body], raw: bytes) -> Body:
    """The request body as `model`; 422 naming the first field at fault."""
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        name = ".".join(str(part) for part in first["loc"]) or "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        raise ApiError(422, f"{name}: {message}", field=name) from None


def flag(request: Request, name: str) -> bool:
    """A true/false query parameter; 422 naming it otherwise."""
    raw = request.query_params.get(name, "false").strip().lower()
    if raw not in {"true", "false", "1", "0"}:
        raise ApiError(422, f"{name}: {raw!r} is not valid; allowed: true or false", field=name)
    return raw in {"true", "1"}


def snapshot_metrics(instance: dg.DagsterInstance) -> dict[str, Any]:
    """The seed's metrics JSON from the latest usage snapshot of each store, with `as_of`."""
    out: dict[str, Any] = {}
    for rt in ResourceType:
        snapshot = latest_snapshot(instance, rt)
        out[rt.store] = (
            snapshot.as_seed_json()
            if snapshot is not None
            else {"error": "no usage snapshot recorded yet (run snapshot_job)", "as_of": None}
        )
    return out


def live_metrics(settings: Settings) -> dict[str, Any]:
    """The seed's metrics JSON measured now, `as_of` the time of measuring."""
    with LifecycleManager.from_settings(settings) as manager:
        measured = measure_all(manager)
    now = iso_utc(time.time())
    return {store: {**entry, "as_of": now} for store, entry in measured.items()}


async def metrics(request: Request) -> Response:
    """GET /api/resources/metrics[?live=true]: from the latest snapshots (read at most once a
    second), or measured now (admin)."""
    state: ApiState = request.app.state.rlm
    authorize(request, Role.READ)
    if flag(request, "live"):
        authorize(request, Role.ADMIN)
        return JSONResponse(await run_in_threadpool(live_metrics, state.settings))
    cached = state.metrics_cache.current()
    if cached is not None:
        return JSONResponse(cached)
    return JSONResponse(await run_in_threadpool(state.metrics_cache.refresh, state.dagster))


async def queue(request: Request) -> Response:
    """GET /api/resources/queue: the seed's queue JSON from the queued cleanup_job runs."""
    state: ApiState = request.app.state.rlm
    authorize(request, Role.READ)
    instance = await run_in_threadpool(state.dagster)
    return JSONResponse(await run_in_threadpool(lambda: queue_json(queued_cleanup_runs(instance))))


async def run_status(request: Request) -> Response:
    """GET /api/resources/runs/{run_id}: status, target, trigger, mode, and report once done."""
    state: ApiState = request.app.state.rlm
    authorize(request, Role.READ)
    run_id = request.path_params["run_id"]
    instance = await run_in_threadpool(state.dagster)
    record = await run_in_threadpool(find_run, instance, run_id)
    return JSONResponse(await run_in_threadpool(run_view, instance, record))


def find_run(instance: dg.DagsterInstance, run_id: str) -> dg.RunRecord:
    """The run's record; 404 for an id that is not a run of this instance."""
    record = instance.get_run_record_by_id(run_id) if RUN_ID.match(run_id) else None
    if record is None:
        raise ApiError(404, f"no run {run_id[:64]!r} in this Dagster instance")
    return record


async def cleanup(request: Request) -> Response:
    """POST /api/resources/cleanup: queue a cleanup_job run (202), or wait for its report."""
    state: ApiState = request.app.state.rlm
    authorize(request, Role.ADMIN)
    body = parse_body(CleanupBody, await read_body(request))
    tags = cleanup_tags(
        body.resource_type,
        CleanupPriority.HIGH,
        API_REASON,
        Trigger.API,
        cleanup_mode(state.settings).mode,
    )
    config = cleanup_run_config(body.resource_type, body.dry_run, body.max_deletions)
    return await queue_and_answer(state, CLEANUP_JOB, config, tags, body.wait_seconds)


async def erase(request: Request) -> Response:
    """POST /api/resources/erase (admin): queue an erase_user_job run, or wait for its receipt."""
    state: ApiState = request.app.state.rlm
    authorize(request, Role.ADMIN)
    body = parse_body(EraseBody, await read_body(request))
    tags = {
        TRIGGER_TAG: Trigger.API.value,
        REASON_TAG: "Erasure requested through the API",
        MODE_TAG: cleanup_mode(state.settings).mode.value,
    }
    config = erase_run_config(body.user_id, body.dry_run)
    return await queue_and_answer(state, ERASE_JOB, config, tags, body.wait_seconds)


async def queue_and_answer(
    state: ApiState, job: str, config: dg.RunConfig, tags: dict[str, str], wait: float | None
) -> Response:
    """Queue the run; answer 202 at once, or its report once done within `wait` seconds."""
    run_id = await run_in_threadpool(submit, state.submitter, job, config, tags)
    if not wait:
        return JSONResponse(queued_answer(run_id, "QUEUED"), status_code=202)
    instance = await run_in_threadpool(state.dagster)
    record = await wait_for_run(instance, run_id, wait)
    if record.dagster_run.status in DONE:
        return JSONResponse(await run_in_threadpool(seed_response, instance, record))
    answer = queued_answer(run_id, record.dagster_run.status.value)
    answer["message"] = f"still {answer['status']} after {wait:g} s"
    return JSONResponse(answer, status_code=202)


def submit(submitter: RunSubmitter, job: str, config: dg.RunConfig, tags: dict[str, str]) -> str:
    """Queue the run; 503 when the webserver is down, 502 when it refuses."""
    try:
        return submitter.submit(job, config, tags)
    except SubmitError as exc:
        raise ApiError(503 if exc.unreachable else 502, str(exc)) from exc


def queued_answer(run_id: str, status: str) -> dict[str, Any]:
    """The 202 answer: where to follow the run."""
    return {"run_id": run_id, "status": status, "status_url": f"/api/resources/runs/{run_id}"}


async def wait_for_run(instance: dg.DagsterInstance, run_id: str, seconds: float) -> dg.RunRecord:
    """Poll the run until it finishes or `seconds` pass; its latest record either way."""
    deadline = time.monotonic() + seconds
    while True:
        record = await run_in_threadpool(find_run, instance, run_id)
        if record.dagster_run.status in DONE or time.monotonic() >= deadline:
            return record
        await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


async def health(request: Request) -> Response:
    """GET /api/health: liveness, no token needed and nothing revealed."""
    return JSONResponse({"status": "ok"})


def error_body(
    status: int, message: str, field: str | None = None, header: str | None = None
) -> dict[str, Any]:
    """Every error's JSON shape."""
    body: dict[str, Any] = {"error": message, "status": status}
    if field is not None:
        body["field"] = field
    if header is not None:
        body["header"] = header
    return body


async def on_api_error(request: Request, exc: Exception) -> Response:
    """An ApiError as its JSON answer."""
    assert isinstance(exc, ApiError)
    return JSONResponse(
        error_body(exc.status, exc.message, exc.field, exc.header), exc.status, exc.headers
    )


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 as JSON."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code, exc.headers)


async def on_crash(request: Request, exc: Exception) -> Response:
    """Anything unexpected: logged (type and route only), answered 500 without a traceback."""
    log_event("API request failed", error=type(exc).__name__, path=request.url.path)
    return JSONResponse(error_body(500, "internal error; see the API's log"), 500)


Endpoint = Callable[[Request], Awaitable[Response]]
ROUTES: list[tuple[str, Endpoint, list[str]]] = [
    ("/api/health", health, ["GET"]),
    ("/api/resources/metrics", metrics, ["GET"]),
    ("/api/resources/cleanup", cleanup, ["POST"]),
    ("/api/resources/queue", queue, ["GET"]),
    ("/api/resources/runs/{run_id}", run_status, ["GET"]),
    ("/api/resources/erase", erase, ["POST"]),
]


def create_app(
    settings: Settings | None = None, submitter: RunSubmitter | None = None
) -> Starlette:
    """The API as an ASGI app; SettingsError (no token, bad variable) before anything serves."""
    settings = settings if settings is not None else Settings.from_env()
    state = ApiState(
        settings=settings,
        submitter=submitter or GraphQLSubmitter(settings.dagster_url),
        tokens=api_tokens(settings),
    )
    configure_logging(settings)
    log_mode(cleanup_mode(settings), "api")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if state.instance is not None:
            state.instance.dispose()

    app = Starlette(
        routes=[Route(path, endpoint, methods=methods) for path, endpoint, methods in ROUTES],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
        lifespan=lifespan,
    )
    app.state.rlm = state
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve the API with uvicorn until interrupted."""
    app = create_app(settings)
    log_event("API serving", host=host, port=port)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
