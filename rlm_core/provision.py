"""`rlm init`: create what rlm relies on (indexes, bucket, collection, audit sink), idempotently."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm_core.audit import AuditSink
from rlm_core.cleanup.context import StoreSet
from rlm_core.domain import MINIO, MONGODB, QDRANT
from rlm_core.settings import Settings


@dataclass(frozen=True)
class InitStep:
    """One thing `rlm init` ensured: which store, what, on which target, and any failure."""

    store: str
    action: str
    target: str
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The step as printed by `rlm init`."""
        return {
            "store": self.store,
            "action": self.action,
            "target": self.target,
            "ok": self.error is None,
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class InitReport:
    """Every step of one `rlm init`, in order; success only if each step succeeded."""

    steps: list[InitStep] = field(default_factory=list)

    @property
    def success(self) -> bool:
        """True when every step succeeded."""
        return all(step.error is None for step in self.steps)

    def as_json(self) -> dict[str, Any]:
        """The report as printed by `rlm init`."""
        return {"success": self.success, "steps": [s.as_json() for s in self.steps]}


def initialize(settings: Settings, stores: StoreSet, audit: AuditSink) -> InitReport:
    """Ensure the metadata indexes, the bucket, the Qdrant collection and the audit sink exist.

    Each step is idempotent and runs even when an earlier one failed (a store that is down
    does not keep the others from being prepared)."""
    s = settings
    documents = f"{s.mongodb_database}.{s.documents_collection}"
    plan: list[tuple[str, str, str, Callable[[], None]]] = [
        (
            MONGODB,
            "ensure_indexes",
            f"{documents} (unique user_id + metadata.file_hash, lookups; sessions and "
            "messages indexed where they exist)",
            lambda: stores.metadata().ensure_indexes(),
        ),
        (MINIO, "ensure_bucket", s.minio_bucket, lambda: stores.objects().ensure_bucket()),
        (
            QDRANT,
            "ensure_collection",
            f"{s.qdrant_collection} ({s.qdrant_vector_size}-dim, cosine, payload indexes)",
            lambda: stores.vectors().ensure_collection(),
        ),
        ("audit", "ensure_sink", audit.location, audit.ensure),
    ]
    report = InitReport()
    for store, action, target, run in plan:
        report.steps.append(InitStep(store, action, target, _attempt(run)))
    return report


def _attempt(run: Callable[[], None]) -> str | None:
    try:
        run()
    # An auth or permission refusal is that step's result, reported like a store that is down.
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
