"""CacheStore in memory: a Redis keyspace with its own clock, and the adapter over it."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rlm_core.adapters.redis_cache import glob_regex
from rlm_core.clock import Clock, SystemClock
from rlm_core.ports import CacheKey, CacheSeed, NotOursError, StoreError

# What MEMORY USAGE adds to a key's own bytes (dict entry, object header, SDS headers).
ENTRY_OVERHEAD = 56
LFU_POLICIES = frozenset({"allkeys-lfu", "volatile-lfu"})
# The name of the one server, as shards() gives it.
SHARD = "memory"


@dataclass
class _Entry:
    value: bytes
    expires_at: float | None  # Unix seconds on the server's clock; None = no TTL
    touched_at: float  # the LRU clock OBJECT IDLETIME reads


class MemoryRedis:
    """One Redis database in memory, on an injected clock.

    Speaks the slice of redis-py that tests use to plant and inspect keys (`set`, `mset`, `get`,
    `exists`, `ttl`, `expire`, `persist`, `delete`, `dbsize`, `scan_iter`, `config_get`,
    `config_set`). As in Redis, reads and writes of a key reset its idle time; TTL, EXISTS,
    OBJECT IDLETIME and MEMORY USAGE do not.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.lock = threading.RLock()
        self._keys: dict[bytes, _Entry] = {}
        self._policy = "noeviction"

    # ------------------------------------------------------------ redis-py slice

    def set(self, key: bytes | str, value: bytes | str | int, ex: int | None = None) -> bool:
        """SET, with an optional TTL in seconds."""
        with self.lock:
            now = self._now()
            expires = now + ex if ex else None
            self._keys[_bytes(key)] = _Entry(_bytes(value), expires, now)
        return True

    def mset(self, mapping: dict[bytes, bytes]) -> bool:
        """MSET: every key without a TTL."""
        with self.lock:
            for key, value in mapping.items():
                self.set(key, value)
        return True

    def get(self, key: bytes | str) -> bytes | None:
        """GET (touches the key)."""
        with self.lock:
            entry = self._entry(_bytes(key))
            if entry is None:
                return None
            entry.touched_at = self._now()
            return entry.value

    def exists(self, *keys: bytes | str) -> int:
        """How many of the keys exist."""
        with self.lock:
            return sum(self._entry(_bytes(k)) is not None for k in keys)

    def ttl(self, key: bytes | str) -> int:
        """Seconds left, rounded as Redis does; -1 without a TTL, -2 when missing."""
        with self.lock:
            entry = self._entry(_bytes(key))
            if entry is None:
                return -2
            if entry.expires_at is None:
                return -1
            return int((entry.expires_at - self._now()) * 1000 + 500) // 1000

    def expire(self, key: bytes | str, seconds: int) -> bool:
        """EXPIRE (touches the key); zero or less deletes it, as in Redis."""
        with self.lock:
            entry = self._entry(_bytes(key))
            if entry is None:
                return False
            if seconds <= 0:
                del self._keys[_bytes(key)]
                return True
            entry.touched_at = self._now()
            entry.expires_at = entry.touched_at + seconds
            return True

    def persist(self, key: bytes | str) -> bool:
        """Drop the key's TTL (touches the key)."""
        with self.lock:
            entry = self._entry(_bytes(key))
            if entry is None or entry.expires_at is None:
                return False
            entry.expires_at = None
            entry.touched_at = self._now()
            return True

    def delete(self, *keys: bytes | str) -> int:
        """DEL; how many existed."""
        with self.lock:
            return sum(self._pop(_bytes(k)) is not None for k in keys)

    def dbsize(self) -> int:
        """Number of live keys."""
        with self.lock:
            return len(self._live_keys())

    def scan_iter(self, match: str | None = None, count: int | None = None) -> Iterator[bytes]:
        """Every live key (matching the glob), from a snapshot taken when iteration starts."""
        matcher = glob_regex(match) if match else None
        with self.lock:
            keys = self._live_keys()
        return iter([k for k in keys if matcher is None or matcher.fullmatch(k)])

    def config_get(self, name: str) -> dict[str, str]:
        """CONFIG GET of maxmemory-policy, the one setting the adapter depends on."""
        return {name: self._policy} if name == "maxmemory-policy" else {}

    def config_set(self, name: str, value: str) -> bool:
        """CONFIG SET maxmemory-policy: under an LFU policy OBJECT IDLETIME is an error."""
        if name != "maxmemory-policy":
            raise ValueError(f"the fake Redis only knows maxmemory-policy, not {name!r}")
        self._policy = value
        return True

    # ------------------------------------------------------------ what the adapter reads

    def describe(self, key: bytes, with_memory: bool) -> CacheKey | None:
        """TTL, OBJECT IDLETIME and MEMORY USAGE of a key, touching nothing; None when gone."""
        with self.lock:
            entry = self._entry(key)
            if entry is None:
                return None
            memory = _memory(key, entry) if with_memory else None
            return CacheKey(key, self.ttl(key), self.idle_seconds(key), memory)

    def idle_seconds(self, key: bytes) -> int | None:
        """OBJECT IDLETIME in whole seconds; None under an LFU policy (Redis answers an error)."""
        with self.lock:
            entry = self._entry(key)
            if entry is None or self._policy in LFU_POLICIES:
                return None
            return int(self._now() - entry.touched_at)

    def memory_usage(self, key: bytes) -> int | None:
        """MEMORY USAGE: the key's and value's bytes plus a fixed overhead."""
        with self.lock:
            entry = self._entry(key)
            return None if entry is None else _memory(key, entry)

    def unlink_measured(self, key: bytes) -> int | None:
        """UNLINK; the key's memory just before, or None when it did not exist."""
        with self.lock:
            entry = self._pop(key)
            return None if entry is None else _memory(key, entry)

    def restore(self, item: CacheSeed) -> None:
        """SET then RESTORE with a TTL and a backdated IDLETIME."""
        with self.lock:
            now = self._now()
            expires = now + item.ttl_seconds if item.ttl_seconds else None
            self._keys[item.key] = _Entry(item.value, expires, now - item.idle_seconds)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _entry(self, key: bytes) -> _Entry | None:
        """The live entry of a key; an expired one is removed on access, as Redis does."""
        entry = self._keys.get(key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= self._now():
            del self._keys[key]
            return None
        return entry

    def _pop(self, key: bytes) -> _Entry | None:
        entry = self._entry(key)
        if entry is not None:
            del self._keys[key]
        return entry

    def _live_keys(self) -> list[bytes]:
        return [k for k in list(self._keys) if self._entry(k) is not None]


class MemoryCache:
    """Cache keys matching `patterns` in a MemoryRedis; other keys are never touched.

    Patterns are Redis globs matched exactly as RedisCacheStore.is_ours matches them. Every
    check-and-act (unlink if still idle and persistent, expire if still persistent) is one step
    under the keyspace's lock, as the Lua scripts of the real adapter are.
    """

    def __init__(self, client: MemoryRedis, patterns: tuple[str, ...]) -> None:
        if not patterns:
            raise ValueError("at least one cache key pattern is required")
        self.patterns = patterns
        self._client = client
        self._matchers = tuple(glob_regex(p) for p in patterns)
        self._only: str | None = None  # the shard `scan` reads (see `restricted`)

    def scan(self, batch_size: int, with_memory: bool = False) -> Iterator[list[CacheKey]]:
        """Stream cache keys in batches; a key gone by the time its batch is read is left out."""
        if self._only not in (None, SHARD):
            raise StoreError(f"Redis shard {self._only} is not this server ({SHARD})")
        keys = [k for k in self._client.scan_iter() if self.is_ours(k)]
        for start in range(0, len(keys), batch_size):
            described = [
                self._client.describe(k, with_memory) for k in keys[start : start + batch_size]
            ]
            batch = [d for d in described if d is not None]
            if batch:
                yield batch

    def unlink_idle(self, keys: Sequence[bytes], min_idle_seconds: int) -> dict[bytes, int]:
        """UNLINK each key still without a TTL and idle >= min; return each with its memory."""
        self._require_ours(keys)
        gone: dict[bytes, int] = {}
        with self._client.lock:
            for key in keys:
                idle = self._client.idle_seconds(key)
                if self._client.ttl(key) == -1 and idle is not None and idle >= min_idle_seconds:
                    gone[key] = self._client.unlink_measured(key) or 0
        return gone

    def memory_usage(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        """MEMORY USAGE of each existing key (missing keys are absent)."""
        measured = {key: self._client.memory_usage(key) for key in keys}
        return {key: used for key, used in measured.items() if used is not None}

    def expire_if_persistent(self, items: Sequence[tuple[bytes, int]]) -> int:
        """EXPIRE each key to its seconds (at least 1) only if it still has no TTL."""
        self._require_ours([key for key, _ in items])
        set_count = 0
        with self._client.lock:
            for key, seconds in items:
                if self._client.ttl(key) == -1:
                    self._client.expire(key, max(1, int(seconds)))
                    set_count += 1
        return set_count

    def unlink(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        """UNLINK keys; return each that existed with its memory just before.

        Raises NotOursError if any key is outside the cache patterns."""
        self._require_ours(keys)
        removed = {key: self._client.unlink_measured(key) for key in keys}
        return {key: used for key, used in removed.items() if used is not None}

    def existing(self, keys: Sequence[bytes]) -> list[bytes]:
        """The subset of keys that exist."""
        return [key for key in keys if self._client.exists(key)]

    def shards(self) -> list[str]:
        """One server: one shard."""
        return [SHARD]

    def restricted(self, shard: str) -> MemoryCache:
        """The one shard is the whole store; any other name is gone (as after a failover), which
        its scan reports."""
        view = copy.copy(self)
        view._only = shard
        return view

    def seed(self, items: Sequence[CacheSeed]) -> None:
        """Write keys (any keys: seeding models the whole app), idle time backdated."""
        for item in items:
            self._client.restore(item)

    def close(self) -> None:
        """Nothing to release: the keyspace outlives its adapters, as a server does."""

    def is_ours(self, key: bytes) -> bool:
        """Whether the key matches one of the cache patterns (Redis glob semantics)."""
        return any(m.fullmatch(key) for m in self._matchers)

    def _require_ours(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            if not self.is_ours(key):
                raise NotOursError(
                    f"Redis key {key!r} matches none of the cache patterns {list(self.patterns)}"
                )


def _memory(key: bytes, entry: _Entry) -> int:
    return ENTRY_OVERHEAD + len(key) + len(entry.value)


def _bytes(value: bytes | str | int) -> bytes:
    """A key or value as redis-py sends it."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()
