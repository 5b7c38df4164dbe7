"""alert_sensor against a real local HTTP receiver: one POST per change of state, never per tick."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pytest

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_dagster.alerts import AlertWebhook, alert_sensor
from rlm_dagster.jobs import CleanupConfig, cleanup_job
from rlm_dagster.snapshots import usage_key
from tests.dagster.conftest import report_snapshot
from tests.dagster.fakes import SCENARIOS, FakeLifecycleResource, FakeManager
from tests.services import free_port

SECRET_PATH = "/services/T000/B000/secret-path"


@dataclass
class Receiver:
    """What a local webhook received, and the status it answers with."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    status: int = 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A stdlib HTTP server on a free loopback port that records every POST."""
    state = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.posts.append(json.loads(self.rfile.read(length)))
            state.content_types.append(self.headers.get("Content-Type", ""))
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}{SECRET_PATH}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def tick(instance: dg.DagsterInstance, cursor: str | None, url: str) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"alerts": AlertWebhook(url=url)}
    )
    result = alert_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def kinds(receiver: Receiver) -> list[list[str]]:
    return [[alert["kind"] for alert in post["alerts"]] for post in receiver.posts]


def test_a_store_critical_for_ten_ticks_sends_one_alert(
    instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    cursor = None
    for _ in range(10):
        report_snapshot(instance, ResourceType.MONGODB_METADATA, 95.0, CleanupPriority.CRITICAL)
        cursor = tick(instance, cursor, receiver.url).cursor
    assert kinds(receiver) == [["store_critical"]]
    [post] = receiver.posts
    assert post["text"] == "rlm: mongodb entered CRITICAL: usage 95.0% of its limit"
    assert post["alerts"][0]["store"] == "mongodb" and post["alerts"][0]["usage_percentage"] == 95.0
    assert receiver.content_types == ["application/json"]
    # Leaving CRITICAL and entering it again is a new change of state.
    report_snapshot(instance, ResourceType.MONGODB_METADATA, 60.0, CleanupPriority.MEDIUM)
    cursor = tick(instance, cursor, receiver.url).cursor
    report_snapshot(instance, ResourceType.MONGODB_METADATA, 97.0, CleanupPriority.CRITICAL)
    tick(instance, cursor, receiver.url)
    assert kinds(receiver) == [["store_critical"], ["store_critical"]]


def check_result(instance: dg.DagsterInstance, passed: bool) -> None:
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=usage_key(ResourceType.QDRANT_VECTORS),
            check_name="cleanup_keeping_up",
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description="oldest qdrant item is 60.00 h old, beyond 2 x TTL = 48.00 h",
        )
    )


def test_a_check_alerts_when_it_starts_failing_not_while_it_keeps_failing(
    instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    check_result(instance, passed=True)
    cursor = tick(instance, None, receiver.url).cursor
    assert receiver.posts == []
    for _ in range(3):
        check_result(instance, passed=False)
        cursor = tick(instance, cursor, receiver.url).cursor
    assert kinds(receiver) == [["check_failing"]]
    alert = receiver.posts[0]["alerts"][0]
    assert alert["check"] == "usage/qdrant:cleanup_keeping_up" and alert["severity"] == "ERROR"
    check_result(instance, passed=True)
    cursor = tick(instance, cursor, receiver.url).cursor
    check_result(instance, passed=False)
    tick(instance, cursor, receiver.url)
    assert kinds(receiver) == [["check_failing"], ["check_failing"]]


def test_a_failed_cleanup_run_alerts_once(instance: dg.DagsterInstance, receiver: Receiver) -> None:
    SCENARIOS["alerts"] = FakeManager(cleanup_errors=[["qdrant: locked"]] * 4)
    failed = cleanup_job.execute_in_process(
        run_config=dg.RunConfig(ops={"cleanup": CleanupConfig()}),
        resources={"lifecycle": FakeLifecycleResource(scenario="alerts")},
        instance=instance,
        tags={"rlm/trigger": "schedule", "rlm/resource_type": "all"},
        raise_on_error=False,
    )
    assert not failed.success
    cursor = tick(instance, None, receiver.url).cursor
    tick(instance, cursor, receiver.url)
    assert kinds(receiver) == [["cleanup_failed"]]
    alert = receiver.posts[0]["alerts"][0]
    assert alert["run_id"] == failed.run_id and alert["trigger"] == "schedule"
    assert "qdrant: locked" in alert["message"]


def test_an_undeliverable_alert_is_logged_and_retried_never_raised(
    instance: dg.DagsterInstance, receiver: Receiver
) -> None:
    report_snapshot(instance, ResourceType.REDIS_CACHE, 99.0, CleanupPriority.CRITICAL)
    dead = f"http://127.0.0.1:{free_port()}{SECRET_PATH}"
    result = tick(instance, None, dead)
    assert result.skip_reason is not None
    message = result.skip_reason.skip_message or ""
    assert message.startswith("Alert not delivered: the webhook is unreachable")
    assert SECRET_PATH not in message and result.cursor is None
    receiver.status = 500
    refused = tick(instance, None, receiver.url)
    assert refused.skip_reason is not None
    assert "HTTP 500" in (refused.skip_reason.skip_message or "")
    receiver.status = 200
    delivered = tick(instance, refused.cursor, receiver.url)
    assert kinds(receiver) == [["store_critical"], ["store_critical"]]  # the 500 one, then ours
    assert delivered.cursor is not None


def test_no_webhook_configured_skips(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RLM_ALERT_WEBHOOK_URL", raising=False)
    context = dg.build_sensor_context(instance=instance, resources={"alerts": AlertWebhook()})
    result = alert_sensor(context)
    assert isinstance(result, dg.SensorResult) and result.skip_reason is not None
    assert result.skip_reason.skip_message == "RLM_ALERT_WEBHOOK_URL is not set"
