"""The seeding interface: writes that only the demo and the tests make, kept off the ports.

A port offers the lifecycle what it needs and nothing that goes around its own guards: the cache
port never writes a key, and no port writes raw records or points. The adapters (and the test
fakes) implement these protocols too; code that wants to seed asks for a seeder here, and code
that holds only a port type cannot reach them. Nothing under `rlm_core.lifecycle` imports this.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from rlm_core.ports import CacheSeed, VectorPoint


@runtime_checkable
class CacheSeeder(Protocol):
    """Writes cache keys, any keys: seeding models the whole app, not only rlm's keys."""

    def seed(self, items: Sequence[CacheSeed]) -> None:
        """Write keys with their TTL; RESTORE IDLETIME backdates their idle time."""
        ...


@runtime_checkable
class VectorSeeder(Protocol):
    """Writes points into the configured collection."""

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Write points (a point id already there is overwritten)."""
        ...


@runtime_checkable
class MetadataSeeder(Protocol):
    """Writes raw records shaped as SPEC section 3."""

    def insert_raw(self, collection: str, docs: Iterable[dict[str, Any]]) -> None:
        """Insert records into `documents`, `chat_sessions` or `messages` as given."""
        ...


def cache_seeder(store: object) -> CacheSeeder:
    """The seeding writes of a cache adapter; TypeError if it has none."""
    if not isinstance(store, CacheSeeder):
        raise TypeError(f"{type(store).__name__} does not implement CacheSeeder")
    return store


def vector_seeder(store: object) -> VectorSeeder:
    """The seeding writes of a vector adapter; TypeError if it has none."""
    if not isinstance(store, VectorSeeder):
        raise TypeError(f"{type(store).__name__} does not implement VectorSeeder")
    return store


def metadata_seeder(store: object) -> MetadataSeeder:
    """The seeding writes of a metadata adapter; TypeError if it has none."""
    if not isinstance(store, MetadataSeeder):
        raise TypeError(f"{type(store).__name__} does not implement MetadataSeeder")
    return store
