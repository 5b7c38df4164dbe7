"""The state one cleanup pass shares across its sweeps."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol, TypeVar

from rlm_core.audit import AuditLog
from rlm_core.domain import CleanupReport
from rlm_core.policy import Retention
from rlm_core.ports import CacheStore, MetadataStore, ObjectStore, VectorStore
from rlm_core.settings import Settings

T = TypeVar("T")


class Budget:
    """The optional cap on deletions per run; each audit entry costs one."""

    def __init__(self, limit: int | None) -> None:
        self.remaining = limit

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


@dataclass
class Sweep:
    """Everything a sweep needs: stores, the rules' cut-offs, the audit, the cap, the report."""

    settings: Settings
    stores: StoreSet
    retention: Retention
    audit: AuditLog
    budget: Budget
    report: CleanupReport
    metadata_populated: bool = True

    @property
    def dry_run(self) -> bool:
        """Report what would go; change nothing."""
        return self.report.dry_run

    def granted(self, items: Sequence[T]) -> list[T]:
        """The prefix of `items` the cap allows; marks the report capped if it cut any."""
        allowed = self.budget.grant(len(items))
        if allowed < len(items):
            self.report.capped = True
        return list(items[:allowed])


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of at most `size` items, streaming."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
