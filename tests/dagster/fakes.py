"""A hand-written fake LifecycleManager for the Dagster layer's failure paths."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from rlm_core.domain import CleanupReport, ResourceMetrics, ResourceType
from rlm_core.lifecycle import LifecycleManager
from rlm_core.ports import StoreError
from rlm_core.settings import Settings
from rlm_dagster.resources import LifecycleResource


@dataclass
class FakeManager:
    """Answers cleanup() with scripted reports and metrics() with StoreError for down stores."""

    cleanup_errors: list[list[str]] = field(default_factory=list)
    # Errors reported as refusals (a wrong setting: report.refuse), per cleanup like the above.
    cleanup_refusals: list[list[str]] = field(default_factory=list)
    down: frozenset[ResourceType] = frozenset()
    cleanups: int = 0
    closed: bool = False
    audit_path: str = "/audit.jsonl"
    # When set, cleanup() says it started, then holds until `release` is set (overlap tests).
    started: threading.Event | None = None
    release: threading.Event | None = None
    spans: list[tuple[float, float]] = field(default_factory=list)

    def metrics(
        self, resource_types: Iterable[ResourceType] | None = None
    ) -> dict[ResourceType, ResourceMetrics]:
        wanted = set(resource_types or ResourceType)
        if wanted & self.down:
            raise StoreError("connection refused")
        raise AssertionError("the fake measures nothing")

    def cleanup(
        self,
        resource_type: ResourceType | None = None,
        dry_run: bool = False,
        max_deletions: int | None = None,
        run_id: str | None = None,
    ) -> CleanupReport:
        begin = time.monotonic()
        if self.started is not None:
            self.started.set()
        if self.release is not None:
            self.release.wait(timeout=60)
        errors = (
            self.cleanup_errors[self.cleanups] if self.cleanups < len(self.cleanup_errors) else []
        )
        self.cleanups += 1
        self.spans.append((begin, time.monotonic()))
        report = CleanupReport(run_id=run_id or "fake", dry_run=dry_run, audit_path=self.audit_path)
        report.add_deleted("redis", 3, 300)
        report.errors.extend(errors)
        if self.cleanups <= len(self.cleanup_refusals):
            for message in self.cleanup_refusals[self.cleanups - 1]:
                report.refuse(message)
        return report

    def close(self) -> None:
        self.closed = True


SCENARIOS: dict[str, FakeManager] = {}


class FakeLifecycleResource(LifecycleResource):
    """LifecycleResource whose manager is the fake registered under `scenario`."""

    scenario: str = "default"

    def open_manager(self, settings: Settings) -> LifecycleManager:
        return SCENARIOS[self.scenario]  # type: ignore[return-value]
