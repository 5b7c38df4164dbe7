"""Domain values shared by every part of rlm: resource types, priorities, metrics, tasks, reports."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class ResourceType(enum.StrEnum):
    """A store rlm manages, named as the seed's API names it."""

    REDIS_CACHE = "redis_cache"
    QDRANT_VECTORS = "qdrant_vectors"
    MINIO_FILES = "minio_files"
    MONGODB_METADATA = "mongodb_metadata"

    @property
    def store(self) -> str:
        """Short store name used as the key of metrics and deleted counts."""
        return _STORE_NAMES[self]

    @classmethod
    def parse(cls, value: str) -> ResourceType:
        """Parse a resource type or a store name; the error lists what is allowed."""
        for member in cls:
            if value in (member.value, member.store):
                return member
        allowed = ", ".join(m.value for m in cls)
        raise ValueError(f"resource_type: {value!r} is not valid; allowed: {allowed}")


_STORE_NAMES = {
    ResourceType.REDIS_CACHE: "redis",
    ResourceType.QDRANT_VECTORS: "qdrant",
    ResourceType.MINIO_FILES: "minio",
    ResourceType.MONGODB_METADATA: "mongodb",
}

# The short store names as constants, for code that names one store (reports, audit, leases).
REDIS = ResourceType.REDIS_CACHE.store
QDRANT = ResourceType.QDRANT_VECTORS.store
MINIO = ResourceType.MINIO_FILES.store
MONGODB = ResourceType.MONGODB_METADATA.store


class CleanupPriority(enum.IntEnum):
    """Urgency of a cleanup; lower value is more urgent (the seed's ordering)."""

    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4


@dataclass(frozen=True)
class ResourceMetrics:
    """One measured usage snapshot of a store (SPEC section 6)."""

    resource_type: ResourceType
    total_items: int
    size_mb: float
    usage_percentage: float
    cleanup_priority: CleanupPriority
    oldest_age_hours: float
    measured_at: datetime
    sampled: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def as_seed_json(self) -> dict[str, Any]:
        """The seed's `/api/resources/metrics` entry for this store."""
        return {
            "total_items": self.total_items,
            "size_mb": round(self.size_mb, 3),
            "usage_percentage": round(self.usage_percentage, 3),
            "cleanup_priority": self.cleanup_priority.name,
            "oldest_age_hours": round(self.oldest_age_hours, 3),
        }


@dataclass(frozen=True)
class CleanupTask:
    """A request to clean one store, as the seed's priority queue held it."""

    priority: CleanupPriority
    resource_type: ResourceType | None
    created_at: datetime
    reason: str
    target_id: str = "all"


@dataclass
class CleanupReport:
    """What one cleanup pass did (or, in a dry run, would do)."""

    run_id: str
    dry_run: bool
    deleted_counts: dict[str, int] = field(default_factory=dict)
    bytes_freed: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    unknown: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    capped: bool = False
    audit_path: str | None = None
    # Errors that a retry would only repeat (a setting is wrong), also listed in `errors`.
    refusals: list[str] = field(default_factory=list)

    @property
    def total_deleted(self) -> int:
        """Items deleted across all stores."""
        return sum(self.deleted_counts.values())

    @property
    def success(self) -> bool:
        """True when no store reported an error."""
        return not self.errors

    def add_deleted(self, store: str, count: int, size_bytes: int = 0) -> None:
        """Count deletions (and their bytes) against a store."""
        self.deleted_counts[store] = self.deleted_counts.get(store, 0) + count
        self.bytes_freed[store] = self.bytes_freed.get(store, 0) + size_bytes

    def refuse(self, message: str) -> None:
        """Record an error that running again will not fix (a setting is wrong): it fails the
        report like any error, and a retry is pointless."""
        if message not in self.errors:
            self.errors.append(message)
        if message not in self.refusals:
            self.refusals.append(message)

    @property
    def retryable(self) -> bool:
        """Whether a retry may succeed: some error is not a refusal (a store blip)."""
        return any(error not in self.refusals for error in self.errors)

    def add_unknown(self, store: str, count: int = 1) -> None:
        """Count items kept because their shape could not be trusted."""
        self.unknown[store] = self.unknown.get(store, 0) + count

    def add_skipped(self, store: str, count: int = 1) -> None:
        """Count items skipped conservatively (malformed metadata and the like)."""
        self.skipped[store] = self.skipped.get(store, 0) + count

    def message(self) -> str:
        """The seed's human message."""
        verb = "would be deleted" if self.dry_run else "deleted"
        text = f"Cleanup completed. Total items {verb}: {self.total_deleted}"
        if self.dry_run:
            text = "Dry run: " + text
        if self.errors:
            text += f" ({len(self.errors)} error(s): {'; '.join(self.errors)})"
        return text

    def as_seed_json(self) -> dict[str, Any]:
        """The seed's `/api/resources/cleanup` response, plus rlm's extra fields."""
        return {
            "success": self.success,
            "deleted_counts": dict(self.deleted_counts),
            "message": self.message(),
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "bytes_freed": dict(self.bytes_freed),
            "repaired": self.repaired,
            "unknown": dict(self.unknown),
            "skipped": dict(self.skipped),
            "capped": self.capped,
            "errors": list(self.errors),
            "refusals": list(self.refusals),
            "audit_path": self.audit_path,
        }


@dataclass(frozen=True)
class IngestResult:
    """Outcome of one upload through deduplication."""

    document_id: str
    duplicate: bool
    file_hash: str
    size_bytes: int
    minio_key: str


@dataclass(frozen=True)
class StoreErasure:
    """One store's part of an erasure receipt: items of the user found, deleted (or, in a dry
    run, that would be), kept with the reason, and what the re-scan after the erase found left."""

    found: int
    deleted: int
    kept: dict[str, int] = field(default_factory=dict)
    left: int | None = None
    verified: bool | None = None
    detail: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """This store's entry of the receipt JSON."""
        out: dict[str, Any] = {
            "found": self.found,
            "deleted": self.deleted,
            "kept": dict(self.kept),
            "left": self.left,
            "verified": self.verified,
        }
        if self.detail:
            out["detail"] = dict(self.detail)
        return out


@dataclass(frozen=True)
class ErasureReceipt:
    """What one per-user erase did (or, in a dry run, would do) in each store (SPEC section 12).

    `verified` is None in a dry run (nothing was erased, so nothing was re-scanned).
    """

    run_id: str
    user_id: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime
    stores: dict[str, StoreErasure]
    errors: tuple[str, ...] = ()
    audit_path: str | None = None

    @property
    def success(self) -> bool:
        """True when no store failed and, in a real run, the re-scan found nothing left."""
        return not self.errors

    @property
    def verified(self) -> bool | None:
        """Whether the re-scan after the erase found nothing of the user left in any store."""
        if self.dry_run:
            return None
        return not self.errors and all(s.verified for s in self.stores.values())

    @property
    def total_deleted(self) -> int:
        """Items deleted (or that would be) across all stores."""
        return sum(s.deleted for s in self.stores.values())

    def as_json(self) -> dict[str, Any]:
        """The receipt as JSON: the CLI prints it, Dagster and the audit keep it."""
        return {
            "run_id": self.run_id,
            "user_id": self.user_id,
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "success": self.success,
            "verified": self.verified,
            "total_deleted": self.total_deleted,
            "stores": {name: store.as_json() for name, store in self.stores.items()},
            "errors": list(self.errors),
            "audit_path": self.audit_path,
        }
