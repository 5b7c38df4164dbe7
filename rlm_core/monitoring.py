"""Measured usage of each store (SPEC section 6): counts, bytes and ages read, never guessed."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from rlm_core.clock import age_hours
from rlm_core.domain import ResourceMetrics, ResourceType
from rlm_core.policy import parse_point
from rlm_core.ports import CacheStore, MetadataStore, ObjectStore, PointInfo, VectorStore
from rlm_core.priority import classify_priority
from rlm_core.settings import Settings

MIB = 1024 * 1024
PAYLOAD_SAMPLE_POINTS = 2000
OLDEST_CANDIDATES = 64


@dataclass(frozen=True)
class _Usage:
    total_items: int
    size_bytes: int
    oldest_age_hours: float
    usage_fraction: float
    sampled: bool = False


def measure_cache(cache: CacheStore, settings: Settings, now: datetime) -> ResourceMetrics:
    """Memory and idle age of the cache keys only (SCAN + pipelined MEMORY USAGE)."""
    total = size = 0
    oldest_idle = 0
    for batch in cache.scan(settings.batch_size, with_memory=True):
        total += len(batch)
        size += sum(k.memory_bytes or 0 for k in batch)
        oldest_idle = max([oldest_idle, *(k.idle_seconds or 0 for k in batch)])
    limit = settings.max_redis_memory_mb * MIB
    usage = _Usage(total, size, oldest_idle / 3600.0, size / limit)
    return _metrics(ResourceType.REDIS_CACHE, usage, settings, now)


def measure_vectors(vectors: VectorStore, settings: Settings, now: datetime) -> ResourceMetrics:
    """Exact point count; size = points x dim x 4 + payload (sampled); oldest created_at.

    One pass over the collection reading created_at alone: its first scroll request reads the
    whole payloads of a PAYLOAD_SAMPLE_POINTS prefix and weighs them. The oldest well-formed
    point (parse_point) is found among the OLDEST_CANDIDATES lowest numeric created_at values,
    whose lifecycle fields are then read by id; only when none of those is well-formed while
    lower-ranked points exist are the lifecycle fields of every point read (a second pass)."""
    count = vectors.count()
    weight = seen = numbers = 0
    # A max-heap (negated) of the lowest numeric created_at values and their point ids; the
    # running count breaks ties, so ids (an int and a str may tie) are never compared.
    lowest: list[tuple[float, int, str | int]] = []
    for batch in vectors.iter_created(settings.batch_size, weigh_first=PAYLOAD_SAMPLE_POINTS):
        for point_id, created, size in batch:
            if size is not None:
                seen, weight = seen + 1, weight + size
            if isinstance(created, bool) or not isinstance(created, int | float):
                continue
            if created != created:
                continue  # NaN: no instant, and it would break the heap's order
            numbers += 1
            if len(lowest) < OLDEST_CANDIDATES:
                heapq.heappush(lowest, (-created, numbers, point_id))
            elif created < -lowest[0][0]:
                heapq.heapreplace(lowest, (-created, numbers, point_id))
    candidates = [point_id for _, _, point_id in lowest]
    points = vectors.points_by_id(candidates) if candidates else []
    # A candidate that cannot be read back (deleted since, or an id form the store would not
    # take back) may have been the oldest: then, as when every candidate is malformed while
    # lower-ranked numbers exist, the lifecycle fields of every point are read.
    complete = len(points) == len(candidates)
    oldest = _oldest_created(iter([points])) if complete else None
    if oldest is None and (numbers > len(lowest) or not complete):
        oldest = _oldest_created(vectors.iter_points(settings.batch_size))
    # Payload text is the bulk of a point's bytes; reading all of it to weigh it is the cost of
    # a full export, so a prefix sample (the scan's first request) is weighed and extrapolated
    # (flagged); a collection no bigger than the sample is weighed whole.
    sampled = 0 < seen < count
    payload = round(weight / seen * count) if sampled else weight
    size = count * settings.qdrant_vector_size * 4 + payload
    age = age_hours(now, oldest) if oldest else 0.0
    usage = _Usage(count, size, age, count / settings.max_qdrant_points, sampled)
    return _metrics(ResourceType.QDRANT_VECTORS, usage, settings, now)


def _oldest_created(pages: Iterator[list[PointInfo]]) -> datetime | None:
    """The oldest created_at of the well-formed points: a comparison per point; only a number
    below the oldest so far is checked in full (parse_point) and turned into a date."""
    lowest: float | None = None
    oldest: datetime | None = None
    for batch in pages:
        for point in batch:
            created = point.created_at
            if isinstance(created, bool) or not isinstance(created, int | float):
                continue
            if lowest is not None and not created < lowest:
                continue
            parsed = parse_point(point)
            if parsed is not None:
                lowest, oldest = created, parsed.created_at
    return oldest


def measure_objects(objects: ObjectStore, settings: Settings, now: datetime) -> ResourceMetrics:
    """Object count, bytes and oldest last_modified from a full (paginated) listing."""
    total = size = 0
    oldest: datetime | None = None
    for obj in objects.iter_objects():
        total += 1
        size += obj.size
        if oldest is None or obj.last_modified < oldest:
            oldest = obj.last_modified
    limit = settings.max_minio_storage_gb * 1024 * MIB
    age = age_hours(now, oldest) if oldest else 0.0
    usage = _Usage(total, size, age, size / limit)
    return _metrics(ResourceType.MINIO_FILES, usage, settings, now)


def measure_metadata(metadata: MetadataStore, settings: Settings, now: datetime) -> ResourceMetrics:
    """Document count, storage size and oldest created_at."""
    stats = metadata.stats()
    age = age_hours(now, stats.oldest_created_at) if stats.oldest_created_at else 0.0
    fraction = stats.total_items / settings.max_mongodb_documents
    usage = _Usage(stats.total_items, stats.size_bytes, age, fraction, stats.sampled)
    return _metrics(ResourceType.MONGODB_METADATA, usage, settings, now)


def _metrics(
    resource: ResourceType, usage: _Usage, settings: Settings, now: datetime
) -> ResourceMetrics:
    return ResourceMetrics(
        resource_type=resource,
        total_items=usage.total_items,
        size_mb=usage.size_bytes / MIB,
        usage_percentage=usage.usage_fraction * 100.0,
        cleanup_priority=classify_priority(usage.usage_fraction, settings.thresholds),
        oldest_age_hours=usage.oldest_age_hours,
        measured_at=now.astimezone(UTC),
        sampled=usage.sampled,
        detail={"size_bytes": usage.size_bytes, "usage_fraction": usage.usage_fraction},
    )
