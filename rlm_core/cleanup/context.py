"""The state one cleanup pass shares across its sweeps."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from rlm_core.audit import AuditLog
from rlm_core.domain import CleanupReport
from rlm_core.policy import Retention
from rlm_core.ports import CacheStore, MetadataStore, ObjectStore, StoreError, VectorStore
from rlm_core.settings import Settings

T = TypeVar("T")
# How long a run's lease on a store lasts without renewal (a crashed run blocks no longer).
LEASE_TTL = timedelta(minutes=20)


class Budget:
    """The optional cap on deletions per run, in items: points, keys, objects and records."""

    def __init__(self, limit: int | None) -> None:
        self.remaining = limit

    def take(self, cost: int) -> bool:
        """Spend `cost` only if all of it fits (a document's cascade goes whole or not at all)."""
        if self.remaining is not None:
            if cost > self.remaining:
                return False
            self.remaining -= cost
        return True

    def refund(self, count: int) -> None:
        """Give back what was taken for deletions that will not happen."""
        if self.remaining is not None:
            self.remaining += count

    def grant(self, wanted: int) -> int:
        """How many of `wanted` deletions may go ahead."""
        if self.remaining is None:
            return wanted
        granted = min(wanted, self.remaining)
        self.remaining -= granted
        return granted

    @property
    def exhausted(self) -> bool:
        """True once the cap is reached."""
        return self.remaining is not None and self.remaining <= 0


class StoreSet(Protocol):
    """Lazily opened store adapters; only what a pass touches gets connected."""

    def cache(self) -> CacheStore:
        """The Redis cache adapter."""
        ...

    def vectors(self) -> VectorStore:
        """The Qdrant adapter."""
        ...

    def objects(self) -> ObjectStore:
        """The object store adapter."""
        ...

    def metadata(self) -> MetadataStore:
        """The metadata store adapter."""
        ...


class Leases:
    """The per-store leases a real run holds, so two cleanups of one store never overlap,
    whatever launched them; renewed as the run goes, released at its end."""

    def __init__(
        self,
        metadata: MetadataStore,
        names: Iterable[str],
        holder: str,
        now: Callable[[], datetime],
        ttl: timedelta = LEASE_TTL,
    ) -> None:
        self._metadata = metadata
        self._names = sorted(set(names))
        self._holder = holder
        self._now = now
        self._ttl = ttl
        self._held: list[str] = []
        self._renewed: datetime | None = None

    def acquire(self) -> str | None:
        """Take every lease, or none; None on success, else which store is busy and by whom."""
        now = self._now()
        for name in self._names:
            try:
                busy = self._metadata.acquire_lease(name, self._holder, now, self._ttl)
            except StoreError:
                self._release_quietly()
                raise
            if busy is not None:
                self.release()
                return (
                    f"another cleanup of {name} is running ({busy}); this run deleted nothing, "
                    "run it again when that one ends"
                )
            self._held.append(name)
        self._renewed = now
        return None

    def renew(self) -> None:
        """Extend the leases once a quarter of their time has passed."""
        now = self._now()
        if self._renewed is None or now - self._renewed < self._ttl / 4:
            return
        for name in self._held:
            busy = self._metadata.acquire_lease(name, self._holder, now, self._ttl)
            if busy is not None:
                raise StoreError(f"the lease on {name} was taken over ({busy}); run stopped")
        self._renewed = now

    def release(self) -> None:
        """Give back every lease held."""
        for name in self._held:
            self._metadata.release_lease(name, self._holder)
        self._held = []

    def _release_quietly(self) -> None:
        # A store blip mid-acquire: give back what was taken (best effort; what cannot be
        # given back expires), so the next run is not refused for a lease nobody holds.
        try:
            self.release()
        except StoreError:
            self._held = []


@dataclass
class Planned:
    """What earlier steps of a dry run counted as gone, so later steps do not count it again
    (a real run's later steps never see it: the cascade deleted it)."""

    documents: set[tuple[str, bool]] = field(default_factory=set)
    points: set[str] = field(default_factory=set)
    cache_keys: set[bytes] = field(default_factory=set)


@dataclass(frozen=True)
class SweepOptions:
    """What the sweeps need besides the cut-offs (`Retention`): how to page, and which names
    are ours."""

    batch_size: int
    minio_bucket: str
    audit_prefix: str
    redis_document_key_templates: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepOptions:
        """The options of a run, from its settings."""
        return cls(
            batch_size=settings.batch_size,
            minio_bucket=settings.minio_bucket,
            audit_prefix=settings.audit_prefix,
            redis_document_key_templates=settings.redis_document_key_templates,
        )


@dataclass
class Sweep:
    """Everything a sweep needs: stores, the rules' cut-offs, the audit, the cap, the report."""

    options: SweepOptions
    stores: StoreSet
    retention: Retention
    audit: AuditLog
    budget: Budget
    report: CleanupReport
    run_id: str
    dry_run: bool
    metadata_populated: bool = True
    planned: Planned = field(default_factory=Planned)
    leases: Leases | None = None

    def heartbeat(self) -> None:
        """Called once per batch: keeps a long run's leases alive."""
        if self.leases is not None:
            self.leases.renew()

    def granted(self, items: Sequence[T]) -> list[T]:
        """The prefix of `items` the cap allows; marks the report capped if it cut any."""
        allowed = self.budget.grant(len(items))
        if allowed < len(items):
            self.report.capped = True
        return list(items[:allowed])
