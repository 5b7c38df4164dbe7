"""The four fakes wired as one Stores, the way Stores.from_settings wires the real adapters."""

from __future__ import annotations

from rlm_core.clock import Clock
from rlm_core.settings import Settings
from rlm_core.stores import Stores
from tests.fakes.cache import MemoryCache, MemoryRedis
from tests.fakes.metadata import MemoryMetadata, MemoryMongo
from tests.fakes.objects import MemoryObjects, MemoryS3
from tests.fakes.vectors import MemoryQdrant, MemoryVectors


def memory_stores(settings: Settings, servers_clock: Clock | None = None) -> Stores:
    """Fresh in-memory stores named by settings; `servers_clock` is the servers' own time
    (cache TTLs and idle times, object last_modified), the wall clock by default."""
    cache = MemoryCache(MemoryRedis(servers_clock), settings.redis_cache_key_patterns)
    vectors = MemoryVectors(MemoryQdrant(), settings.qdrant_collection, settings.qdrant_vector_size)
    objects = MemoryObjects(MemoryS3(servers_clock), settings.minio_bucket)
    metadata = MemoryMetadata(
        MemoryMongo(),
        documents=settings.documents_collection,
        sessions=settings.sessions_collection,
        messages=settings.messages_collection,
    )
    return Stores(lambda: cache, lambda: vectors, lambda: objects, lambda: metadata)
