"""In-memory fakes of the four store ports: the cheap rung of the testing ladder.

Each fake passes its port's contract suite (tests/contracts/) next to the real adapters, so a
rule tested over the fakes holds over the real stores too, in milliseconds. Each is an adapter
over a small in-memory server (MemoryRedis, MemoryQdrant, MemoryS3, MemoryMongo) that several
adapters can share and that tests plant and inspect directly, as they would a raw client.
"""

from tests.fakes.cache import MemoryCache, MemoryRedis
from tests.fakes.metadata import MemoryMetadata, MemoryMongo
from tests.fakes.objects import MemoryObjects, MemoryS3
from tests.fakes.stores import memory_stores
from tests.fakes.vectors import MemoryQdrant, MemoryVectors

__all__ = [
    "MemoryCache",
    "MemoryMetadata",
    "MemoryMongo",
    "MemoryObjects",
    "MemoryQdrant",
    "MemoryRedis",
    "MemoryS3",
    "MemoryVectors",
    "memory_stores",
]
