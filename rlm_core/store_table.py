"""The store table: one row per ResourceType, the one place that says what rlm knows of a store.

The lifecycle's plans and leases, the Dagster targets, checks' TTLs, schedules' intervals and the
connection variables are all derived from it. A new store type is one more row here, plus its
port, adapter and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from rlm_core.cleanup.cache import sweep_cache
from rlm_core.cleanup.context import StoreSet, Sweep
from rlm_core.cleanup.documents import expire_documents
from rlm_core.cleanup.objects import sweep_orphan_objects
from rlm_core.cleanup.vectors import sweep_vectors
from rlm_core.domain import ResourceMetrics, ResourceType
from rlm_core.monitoring import measure_cache, measure_metadata, measure_objects, measure_vectors
from rlm_core.settings import Settings

Step = Callable[[Sweep], None]
V = TypeVar("V")


@dataclass(frozen=True)
class SettingRef(Generic[V]):
    """One setting: its environment variable and how to read it from Settings."""

    variable: str
    read: Callable[[Settings], V]


@dataclass(frozen=True)
class StoreRow:
    """Everything rlm knows of one store type."""

    resource_type: ResourceType
    measure: Callable[[StoreSet, Settings, datetime], ResourceMetrics]
    # The store's own sweep (None: its items only expire through the document cascade).
    sweep: Step | None
    # True when a cleanup of this store runs document expiry first (its items are documents').
    cascades: bool
    # The retention, in hours, that bounds the age of the store's items.
    ttl_hours: Callable[[Settings], float]
    # The *_CLEANUP_INTERVAL_SECONDS of its scheduled cleanup (None: no schedule of its own).
    interval: SettingRef[int] | None
    # The variable that points it at a server; unset, the embedded store under RLM_DATA_DIR.
    connection: SettingRef[str | None]

    @property
    def store(self) -> str:
        """The short store name: key of reports, audit entries, leases and run tags."""
        return self.resource_type.store

    @property
    def steps(self) -> tuple[Step, ...]:
        """The sweeps a cleanup of this store runs, in order (document expiry first)."""
        return ((expire_documents,) if self.cascades else ()) + (
            (self.sweep,) if self.sweep else ()
        )


STORE_TABLE: dict[ResourceType, StoreRow] = {
    row.resource_type: row
    for row in (
        StoreRow(
            ResourceType.REDIS_CACHE,
            measure=lambda stores, s, now: measure_cache(stores.cache(), s, now),
            sweep=sweep_cache,
            cascades=False,
            ttl_hours=lambda s: s.redis_cache_ttl_hours,
            interval=SettingRef(
                "REDIS_CLEANUP_INTERVAL_SECONDS", lambda s: s.redis_cleanup_interval_seconds
            ),
            connection=SettingRef("REDIS_URL", lambda s: s.redis_url),
        ),
        StoreRow(
            ResourceType.QDRANT_VECTORS,
            measure=lambda stores, s, now: measure_vectors(stores.vectors(), s, now),
            sweep=sweep_vectors,
            cascades=False,
            ttl_hours=lambda s: s.rag_session_ttl_hours,
            interval=SettingRef(
                "QDRANT_CLEANUP_INTERVAL_SECONDS", lambda s: s.qdrant_cleanup_interval_seconds
            ),
            connection=SettingRef("QDRANT_URL", lambda s: s.qdrant_url),
        ),
        StoreRow(
            ResourceType.MINIO_FILES,
            measure=lambda stores, s, now: measure_objects(stores.objects(), s, now),
            sweep=sweep_orphan_objects,
            cascades=True,
            ttl_hours=lambda s: s.files_ttl_hours,
            interval=SettingRef(
                "MINIO_CLEANUP_INTERVAL_SECONDS", lambda s: s.minio_cleanup_interval_seconds
            ),
            connection=SettingRef("MINIO_ENDPOINT", lambda s: s.minio_endpoint),
        ),
        StoreRow(
            ResourceType.MONGODB_METADATA,
            measure=lambda stores, s, now: measure_metadata(stores.metadata(), s, now),
            sweep=None,
            cascades=True,
            ttl_hours=lambda s: s.files_ttl_hours,
            # The seed had three cleanup loops: MongoDB records expire with the MinIO cascade.
            interval=None,
            connection=SettingRef("MONGODB_URL", lambda s: s.mongodb_url),
        ),
    )
}

# The cascade deletes from every store; it leases them all, and reports under the documents.
CASCADE_LABEL = "documents (cascade)"
# Store sweeps run after document expiry, so they see the cascade's result.
FULL_PLAN: tuple[Step, ...] = (
    expire_documents,
    *(row.sweep for row in STORE_TABLE.values() if row.sweep is not None),
)


def step_stores(step: Step) -> tuple[str, ...]:
    """The stores a step deletes from: its own store, or all of them for document expiry."""
    owners = tuple(row.store for row in STORE_TABLE.values() if row.sweep is step)
    return owners if step is not expire_documents else tuple(r.store for r in STORE_TABLE.values())


def step_label(step: Step) -> str:
    """The name a step's errors are reported under."""
    return CASCADE_LABEL if step is expire_documents else ", ".join(step_stores(step))


def is_embedded(settings: Settings) -> bool:
    """True when no store's connection is configured: everything runs under RLM_DATA_DIR."""
    return all(row.connection.read(settings) is None for row in STORE_TABLE.values())
