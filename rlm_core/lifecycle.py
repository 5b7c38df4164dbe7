"""LifecycleManager: the binding Python API that composes ports, policy and sweeps."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from rlm_core.audit import open_audit
from rlm_core.cleanup.cache import sweep_cache
from rlm_core.cleanup.context import Budget, Leases, StoreSet, Sweep, SweepOptions
from rlm_core.cleanup.documents import expire_documents
from rlm_core.cleanup.objects import sweep_orphan_objects
from rlm_core.cleanup.vectors import sweep_vectors
from rlm_core.clock import Clock, SystemClock
from rlm_core.dedup import ingest
from rlm_core.domain import (
    MONGODB,
    REDIS,
    CleanupReport,
    ErasureReceipt,
    IngestResult,
    ResourceMetrics,
    ResourceType,
)
from rlm_core.erasure import erase_user
from rlm_core.events import MONITORING_COMPLETED, log_event
from rlm_core.policy import Retention
from rlm_core.ports import (
    CacheStore,
    MetadataStore,
    MissingStoreError,
    ObjectStore,
    ReferencesUnknownError,
    StoreError,
    VectorStore,
)
from rlm_core.settings import Settings
from rlm_core.store_table import FULL_PLAN, STORE_TABLE, Step, step_label, step_stores
from rlm_core.stores import Stores

if TYPE_CHECKING:
    from minio import Minio
    from pymongo.database import Database
    from qdrant_client import QdrantClient
    from redis import Redis

T = TypeVar("T")

# Which sweeps each resource type runs, in order; derived from the store table.
PLANS: dict[ResourceType | None, tuple[Step, ...]] = {
    **{rt: row.steps for rt, row in STORE_TABLE.items()},
    None: FULL_PLAN,
}

# The stores each step deletes from: a run leases them all before it starts.
STEP_LEASES: dict[Step, tuple[str, ...]] = {step: step_stores(step) for step in FULL_PLAN}

# Steps that judge items by references: they refuse when references cannot be read.
REFERENCE_STEPS = frozenset({expire_documents, sweep_vectors})


class LifecycleManager:
    """Measures, cleans and deduplicates the RAG stores."""

    def __init__(self, settings: Settings, stores: Stores, clock: Clock) -> None:
        self.settings = settings
        self.stores = stores
        self.clock = clock
        self._ingest_ready = False

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> LifecycleManager:
        """Connect lazily to the configured servers, or to the embedded stores under RLM_DATA_DIR."""
        return cls(settings, Stores.from_settings(settings), clock or SystemClock())

    @classmethod
    def from_clients(
        cls,
        settings: Settings,
        *,
        redis: Redis,
        qdrant: QdrantClient,
        minio: Minio,
        mongo_db: Database[Any],
        clock: Clock,
    ) -> LifecycleManager:
        """Wrap already-built clients (redis.Redis, QdrantClient, Minio, pymongo Database)."""
        stores = Stores.from_clients(
            settings, redis=redis, qdrant=qdrant, minio=minio, mongo_db=mongo_db
        )
        return cls(settings, stores, clock)

    def metrics(
        self, resource_types: Iterable[ResourceType] | None = None
    ) -> dict[ResourceType, ResourceMetrics]:
        """Measure each store asked for (all by default); raises StoreError if one is down."""
        wanted = list(resource_types) if resource_types is not None else list(ResourceType)
        now = self.clock.now()
        result = {rt: STORE_TABLE[rt].measure(self.stores, self.settings, now) for rt in wanted}
        log_event(
            MONITORING_COMPLETED,
            metrics={
                rt.store: {
                    "usage_percentage": m.usage_percentage / 100.0,
                    "priority": m.cleanup_priority.name,
                }
                for rt, m in result.items()
            },
            timestamp=now.isoformat().replace("+00:00", "Z"),
        )
        return result

    def cleanup(
        self,
        resource_type: ResourceType | None = None,
        dry_run: bool = False,
        max_deletions: int | None = None,
        run_id: str | None = None,
        shard: str | None = None,
    ) -> CleanupReport:
        """Clean one store (or all, when None) by the rules of SPEC section 4.

        `shard` (Redis only, one of `cache_shards()`) sweeps one part of the cache: a fan-out
        runs one such cleanup per shard, each with its own share of the cap (`split_cap`)."""
        _check_cleanup_args(resource_type, dry_run, max_deletions)
        _check_shard(resource_type, shard)
        cap = max_deletions if max_deletions is not None else self.settings.max_deletions_per_run
        stores = self.stores if shard is None else _ShardStores(self.stores, shard)
        sweep = self._sweep(run_id or uuid.uuid4().hex, dry_run, cap, stores)
        steps = PLANS[resource_type]
        try:
            if not dry_run and not self._lease(sweep, steps, shard):
                return sweep.report
            if REFERENCE_STEPS & set(steps) and not self._references_readable(sweep):
                return sweep.report
            if {sweep_vectors, sweep_orphan_objects} & set(steps):
                sweep.metadata_populated = self._metadata_populated(sweep)
            if REFERENCE_STEPS & set(steps):
                self._count_unreadable_sessions(sweep)
            for step in steps:
                self._run_step(step, sweep)
        finally:
            sweep.audit.close()
            if sweep.leases is not None:
                self._release(sweep.leases, sweep)
        return sweep.report

    def cache_shards(self) -> list[str]:
        """The parts a Redis sweep can be split into (a cluster's primaries); StoreError if down."""
        return self.stores.cache().shards()

    def _shards_to_lease(self, sweep: Sweep) -> list[str]:
        # The cluster down: reported now (a sweep of it fails on its own); the other stores
        # still run, and no part of a fan-out can sweep a cluster that does not answer.
        try:
            return self.cache_shards()
        except StoreError as exc:
            sweep.report.errors.append(f"{REDIS}: cannot read the cluster's primaries: {exc}")
            return []

    def _lease(self, sweep: Sweep, steps: tuple[Step, ...], shard: str | None = None) -> bool:
        names = {store for step in steps for store in STEP_LEASES[step]}
        if shard is not None:
            # The parts of one fan-out run side by side: each leases its own shard, so two
            # sweeps of one primary never overlap.
            names = {f"{REDIS}@{shard}"}
        elif REDIS in names and self.settings.redis_cluster:
            # A run touching the whole cluster also leases every primary, so it never overlaps
            # a fan-out's part, whatever the run-level guard saw.
            names |= {f"{REDIS}@{name}" for name in self._shards_to_lease(sweep)}
        leases = Leases(self.stores.metadata(), names, sweep.run_id, self.clock.now)
        try:
            busy = leases.acquire()
        except StoreError as exc:
            if set(steps) == {sweep_cache}:
                # Leases live in the metadata store; a Redis sweep needs no other store, and
                # its atomic check-and-unlink never counts a key two runs both saw.
                return True
            sweep.report.errors.append(f"{MONGODB}: cannot take the cleanup lease: {exc}")
            return False
        if busy is not None:
            sweep.report.errors.append(busy)
            return False
        sweep.leases = leases
        return True

    def _release(self, leases: Leases, sweep: Sweep) -> None:
        try:
            leases.release()
        except StoreError as exc:
            sweep.report.errors.append(f"{MONGODB}: lease not released (it expires): {exc}")

    def _references_readable(self, sweep: Sweep) -> bool:
        # SPEC 4.1 (2): with a reference source missing or unreadable, every document would look
        # unreferenced. The whole run refuses, Redis included: it deletes nothing.
        try:
            self.stores.metadata().check_references()
        except StoreError as exc:
            _record(sweep, f"{MONGODB}: {exc}", exc)
            return False
        return True

    def _sweep(self, run_id: str, dry_run: bool, cap: int | None, stores: StoreSet) -> Sweep:
        now = self.clock.now()
        s = self.settings
        retention = Retention(
            now=now,
            session_ttl=timedelta(hours=s.rag_session_ttl_hours),
            files_ttl=timedelta(days=s.files_ttl_days),
            cache_ttl=timedelta(hours=s.redis_cache_ttl_hours),
        )
        audit = open_audit(s, run_id, dry_run, now)
        report = CleanupReport(run_id=run_id, dry_run=dry_run, audit_path=audit.location)
        for row in STORE_TABLE.values():
            report.deleted_counts.setdefault(row.store, 0)
            report.bytes_freed.setdefault(row.store, 0)
        options = SweepOptions.from_settings(s)
        return Sweep(options, stores, retention, audit, Budget(cap), report, run_id, dry_run)

    def _metadata_populated(self, sweep: Sweep) -> bool:
        # An empty metadata store makes every point and object look orphaned: far likelier a
        # wrong database name than a real state, so orphan sweeps stop instead of emptying the
        # stores. It is read before the cascade, which may legitimately empty it.
        try:
            return any(batch for batch in self.stores.metadata().iter_documents(1))
        except StoreError as exc:
            sweep.report.errors.append(f"{MONGODB}: {exc}")
            return False

    def _count_unreadable_sessions(self, sweep: Sweep) -> None:
        # Sessions whose activity cannot be read count as active (they protect, never doom):
        # reported as skipped under mongodb, so they do not go unseen.
        try:
            unreadable = self.stores.metadata().unreadable_sessions()
        except StoreError as exc:
            sweep.report.errors.append(f"{MONGODB}: {exc}")
            return
        if unreadable:
            sweep.report.add_skipped(MONGODB, unreadable)

    def _run_step(self, step: Step, sweep: Sweep) -> None:
        if sweep.budget.exhausted:
            sweep.report.capped = True
            return
        try:
            step(sweep)
        except StoreError as exc:
            # One store down stops its own sweep; the others still run. The report fails.
            _record(sweep, f"{step_label(step)}: {exc}", exc)

    def ingest(
        self, user_id: str, filename: str, stream: BinaryIO, content_type: str | None = None
    ) -> IngestResult:
        """Upload with per-user SHA-256 dedup (SPEC section 5)."""
        if not self._ingest_ready:
            # The unique (user_id, file_hash) index is what makes dedup race-free: it must exist
            # before the first upload, on a real server too. Both calls are idempotent.
            self.stores.metadata().ensure_indexes()
            self.stores.objects().ensure_bucket()
            self._ingest_ready = True
        return ingest(
            self.stores.objects(),
            self.stores.metadata(),
            self.clock,
            user_id=user_id,
            filename=filename,
            stream=stream,
            content_type=content_type,
        )

    def erase(
        self,
        user_id: str,
        dry_run: bool = False,
        *,
        allow_empty: bool = False,
        run_id: str | None = None,
    ) -> ErasureReceipt:
        """Erase every item of one user from the four stores (SPEC section 12); a user id that
        is blank, or that matches nothing unless allow_empty, raises ValueError."""
        if not isinstance(dry_run, bool):
            raise ValueError(f"dry_run: {dry_run!r} is not valid; allowed: True or False")
        return erase_user(
            self.settings,
            self.stores,
            self.clock,
            user_id,
            dry_run=dry_run,
            allow_empty=allow_empty,
            run_id=run_id,
        )

    def close(self) -> None:
        """Close every opened client (releases Qdrant local mode's folder lock)."""
        self.stores.close()

    def __enter__(self) -> LifecycleManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(sweep: Sweep, message: str, exc: StoreError) -> None:
    """A store error in the report; a missing collection or bucket, or references that cannot
    be read, is a refusal: a setting is wrong, and a retry would only repeat it."""
    if isinstance(exc, MissingStoreError | ReferencesUnknownError):
        sweep.report.refuse(message)
    else:
        sweep.report.errors.append(message)


def split_cap(cap: int | None, parts: int) -> list[int | None]:
    """Shares of one run's deletion cap for `parts` shards, adding up to the cap and never past
    it: a shard whose share is 0 gets 0 (it deletes nothing and says it was capped)."""
    if parts < 1:
        raise ValueError(f"parts: {parts!r} is not valid; allowed: a whole number >= 1")
    if cap is None:
        return [None] * parts
    base, extra = divmod(cap, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class _ShardStores:
    """The run's stores, with the cache scanning one shard only."""

    def __init__(self, stores: Stores, shard: str) -> None:
        self._stores = stores
        self._shard = shard
        self._cache: CacheStore | None = None

    def cache(self) -> CacheStore:
        if self._cache is None:
            self._cache = self._stores.cache().restricted(self._shard)
        return self._cache

    def vectors(self) -> VectorStore:
        return self._stores.vectors()

    def objects(self) -> ObjectStore:
        return self._stores.objects()

    def metadata(self) -> MetadataStore:
        return self._stores.metadata()


def _check_shard(resource_type: ResourceType | None, shard: object) -> None:
    if shard is None:
        return
    if resource_type is not ResourceType.REDIS_CACHE:
        raise ValueError(
            f"shard: {shard!r} is not valid for resource_type {resource_type!r}; allowed: a "
            "shard only with ResourceType.REDIS_CACHE, None otherwise"
        )
    if not isinstance(shard, str) or not shard.strip():
        raise ValueError(f"shard: {shard!r} is not valid; allowed: one of cache_shards()")


def _check_cleanup_args(resource_type: object, dry_run: object, max_deletions: object) -> None:
    """Refuse bad arguments with one message naming the argument, the value and what is allowed."""
    if resource_type is not None and not isinstance(resource_type, ResourceType):
        allowed = ", ".join(m.value for m in ResourceType)
        raise ValueError(
            f"resource_type: {resource_type!r} is not valid; allowed: a ResourceType ({allowed}) "
            "or None"
        )
    if not isinstance(dry_run, bool):
        raise ValueError(f"dry_run: {dry_run!r} is not valid; allowed: True or False")
    check_max_deletions(max_deletions)


def check_max_deletions(value: object) -> None:
    """The one check of a deletion cap (API, CLI, Dagster config): ValueError naming the value."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"max_deletions: {value!r} is not valid; allowed: a whole number >= 1 or None"
        )
