"""Alerts to RLM_ALERT_WEBHOOK_URL: a store entering CRITICAL, an asset check starting to fail,
a cleanup run failing. One Slack-compatible POST per change of state, never one per tick.

`alert_sensor` keeps the last state it reported in its cursor (stored in the Dagster instance),
so a store that stays CRITICAL for ten ticks alerts once, and again only after it left CRITICAL.
An alert that cannot be delivered is logged and retried on the next tick; it fails nothing.
"""

# No `from __future__ import annotations`: Dagster inspects these annotations at runtime.

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_dagster.checks import CLEANUP_KEEPING_UP, USAGE_BELOW_CRITICAL
from rlm_dagster.queue import CLEANUP_JOB
from rlm_dagster.resources import load_settings
from rlm_dagster.run_reports import failure_message
from rlm_dagster.run_tags import RESOURCE_TYPE_TAG, TRIGGER_TAG
from rlm_dagster.snapshots import USAGE_KEYS, Snapshot, iso_utc, latest_snapshot

CHECK_NAMES = (USAGE_BELOW_CRITICAL, CLEANUP_KEEPING_UP)
DELIVERY_TIMEOUT_SECONDS = 5.0
# On its first tick the sensor reports cleanup runs that failed in the last hour, not all history.
FIRST_LOOKBACK_SECONDS = 3600.0
FAILED_RUNS_PER_TICK = 50
SEEN_RUNS_KEPT = 200


@dataclass(frozen=True)
class Alert:
    """One change of state worth a message."""

    kind: str  # store_critical | check_failing | cleanup_failed
    text: str
    fields: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The structured form sent next to the text."""
        return {"kind": self.kind, "text": self.text, **self.fields}


@dataclass(frozen=True)
class AlertState:
    """What the last tick saw: each store's priority, each check's verdict, failed runs seen."""

    priorities: Mapping[str, str] = field(default_factory=dict)
    checks: Mapping[str, bool] = field(default_factory=dict)
    failures_since: float = 0.0
    failed_seen: tuple[str, ...] = ()

    def to_cursor(self) -> str:
        """The sensor cursor holding this state."""
        return json.dumps(
            {
                "priorities": dict(self.priorities),
                "checks": dict(self.checks),
                "failures_since": self.failures_since,
                "failed_seen": list(self.failed_seen),
            },
            sort_keys=True,
        )

    @classmethod
    def from_cursor(cls, cursor: str | None, now: float) -> "AlertState":
        """The state a cursor holds; a first tick (or an unreadable cursor) starts fresh."""
        if not cursor:
            return cls(failures_since=now - FIRST_LOOKBACK_SECONDS)
        try:
            data = json.loads(cursor)
            return cls(
                priorities=dict(data["priorities"]),
                checks={k: bool(v) for k, v in data["checks"].items()},
                failures_since=float(data["failures_since"]),
                failed_seen=tuple(data["failed_seen"]),
            )
        except (TypeError, ValueError, KeyError, AttributeError):
            return cls(failures_since=now - FIRST_LOOKBACK_SECONDS)


@dataclass(frozen=True)
class CheckVerdict:
    """The latest evaluation of one asset check."""

    key: str  # usage/redis:usage_below_critical
    passed: bool
    severity: str
    description: str


@dataclass(frozen=True)
class FailedRun:
    """A cleanup_job run that ended in FAILURE."""

    run_id: str
    updated: float
    resource_type: str
    trigger: str
    message: str


def store_alerts(previous: Mapping[str, str], snapshots: Iterable[Snapshot]) -> list[Alert]:
    """A store whose latest snapshot is CRITICAL while the last one seen was not."""
    alerts = []
    for snap in snapshots:
        store = snap.resource_type.store
        if snap.cleanup_priority is CleanupPriority.CRITICAL and previous.get(store) != "CRITICAL":
            alerts.append(
                Alert(
                    "store_critical",
                    f"{store} entered CRITICAL: usage {snap.usage_percentage:.1f}% of its limit",
                    {
                        "store": store,
                        "usage_percentage": snap.usage_percentage,
                        "total_items": snap.total_items,
                        "as_of": iso_utc(snap.timestamp),
                    },
                )
            )
    return alerts


def check_alerts(previous: Mapping[str, bool], verdicts: Iterable[CheckVerdict]) -> list[Alert]:
    """A check that fails now and did not fail at the last tick (or was never seen)."""
    return [
        Alert(
            "check_failing",
            f"asset check {v.key} started failing ({v.severity}): {v.description}",
            {"check": v.key, "severity": v.severity, "description": v.description},
        )
        for v in verdicts
        if not v.passed and previous.get(v.key, True)
    ]


def failure_alerts(failed: Iterable[FailedRun]) -> list[Alert]:
    """One alert per failed cleanup run."""
    return [
        Alert(
            "cleanup_failed",
            f"cleanup run {run.run_id} of {run.resource_type} ({run.trigger}) failed: "
            f"{run.message}",
            {
                "run_id": run.run_id,
                "resource_type": run.resource_type,
                "trigger": run.trigger,
                "message": run.message,
            },
        )
        for run in failed
    ]


def next_state(
    state: AlertState,
    snapshots: Sequence[Snapshot],
    verdicts: Sequence[CheckVerdict],
    failed: Sequence[FailedRun],
) -> AlertState:
    """The state after this tick's observations."""
    since = max([state.failures_since, *(run.updated for run in failed)])
    seen = [*state.failed_seen, *(run.run_id for run in failed)][-SEEN_RUNS_KEPT:]
    return AlertState(
        priorities={
            **state.priorities,
            **{s.resource_type.store: s.cleanup_priority.name for s in snapshots},
        },
        checks={**state.checks, **{v.key: v.passed for v in verdicts}},
        failures_since=since,
        failed_seen=tuple(seen),
    )


def slack_payload(alerts: Sequence[Alert]) -> dict[str, Any]:
    """Slack's `text` (one line per alert) plus the structured alerts."""
    lines = [f"rlm: {alert.text}" for alert in alerts]
    return {"text": "\n".join(lines), "alerts": [alert.as_json() for alert in alerts]}


class AlertWebhook(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Posts alerts to a Slack-compatible webhook; the URL defaults to RLM_ALERT_WEBHOOK_URL,
    read when used, so the secret never enters run config or the UI."""

    url: str | None = None

    def target(self) -> str | None:
        """The webhook URL, or None when alerts are off."""
        return self.url or load_settings().alert_webhook_url

    def deliver(self, payload: Mapping[str, Any]) -> str | None:
        """POST the payload once; None when delivered, else why not (the URL never appears)."""
        url = self.target()
        if url is None:
            return "RLM_ALERT_WEBHOOK_URL is not set"
        if not url.lower().startswith(("http://", "https://")):
            return "the webhook URL is not http(s)"
        request = urllib.request.Request(  # noqa: S310 - scheme checked above
            url,
            data=json.dumps(payload, default=str).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT_SECONDS):  # noqa: S310
                return None
        except urllib.error.HTTPError as exc:
            return f"the webhook answered HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            return f"the webhook is unreachable: {type(reason).__name__}"


def check_verdicts(instance: dg.DagsterInstance) -> list[CheckVerdict]:
    """The latest completed evaluation of every usage check."""
    verdicts = []
    for asset_key in USAGE_KEYS.values():
        for name in CHECK_NAMES:
            check_key = dg.AssetCheckKey(asset_key, name)
            record = instance.get_latest_asset_check_evaluation_record(check_key)
            evaluation = record.evaluation if record is not None else None
            if evaluation is None:
                continue  # never evaluated, or still running
            verdicts.append(
                CheckVerdict(
                    key=f"{asset_key.to_user_string()}:{name}",
                    passed=evaluation.passed,
                    severity=evaluation.severity.value,
                    description=evaluation.description or "",
                )
            )
    return verdicts


def failed_cleanups(instance: dg.DagsterInstance, state: AlertState) -> list[FailedRun]:
    """cleanup_job runs that failed since the last tick and were not reported yet."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            job_name=CLEANUP_JOB,
            statuses=[dg.DagsterRunStatus.FAILURE],
            updated_after=datetime.fromtimestamp(state.failures_since - 1.0, UTC),
        ),
        limit=FAILED_RUNS_PER_TICK,
        order_by="update_timestamp",
        ascending=True,
    )
    seen = set(state.failed_seen)
    return [
        FailedRun(
            run_id=r.dagster_run.run_id,
            updated=r.update_timestamp.timestamp(),
            resource_type=r.dagster_run.tags.get(RESOURCE_TYPE_TAG, "all"),
            trigger=r.dagster_run.tags.get(TRIGGER_TAG, "unknown"),
            message=failure_message(instance, r.dagster_run.run_id),
        )
        for r in records
        if r.dagster_run.run_id not in seen
    ]


def evaluate_alerts(
    context: dg.SensorEvaluationContext, webhook: AlertWebhook, now: float
) -> dg.SensorResult:
    """One tick: compare with the cursor, send one POST if anything changed, advance the cursor
    only once the POST went through."""
    state = AlertState.from_cursor(context.cursor, now)
    snapshots = [s for rt in ResourceType if (s := latest_snapshot(context.instance, rt))]
    verdicts = check_verdicts(context.instance)
    failed = failed_cleanups(context.instance, state)
    alerts = [
        *store_alerts(state.priorities, snapshots),
        *check_alerts(state.checks, verdicts),
        *failure_alerts(failed),
    ]
    after = next_state(state, snapshots, verdicts, failed).to_cursor()
    if not alerts:
        return dg.SensorResult(skip_reason="No change of state to alert on", cursor=after)
    problem = webhook.deliver(slack_payload(alerts))
    if problem is not None:
        context.log.warning(f"{len(alerts)} alert(s) not delivered ({problem}); next tick retries")
        return dg.SensorResult(skip_reason=f"Alert not delivered: {problem}", cursor=context.cursor)
    return dg.SensorResult(skip_reason=f"Sent {len(alerts)} alert(s) in one POST", cursor=after)


@dg.sensor(
    name="alert_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts to RLM_ALERT_WEBHOOK_URL once per change of state (CRITICAL, checks, failed cleanups).",
)
def alert_sensor(context: dg.SensorEvaluationContext, alerts: AlertWebhook) -> dg.SensorResult:
    """Alert once when a store enters CRITICAL, a check starts failing or a cleanup run fails."""
    if alerts.target() is None:
        return dg.SensorResult(
            skip_reason="RLM_ALERT_WEBHOOK_URL is not set", cursor=context.cursor
        )
    return evaluate_alerts(context, alerts, time.time())
