"""Redis sweep: cache keys without a TTL are the leak; unlink the idle ones, bound the rest."""

from __future__ import annotations

from rlm_core.audit import AuditEntry
from rlm_core.cleanup.context import Sweep
from rlm_core.domain import REDIS
from rlm_core.policy import CacheAction, cache_action
from rlm_core.ports import CacheKey


def sweep_cache(sweep: Sweep) -> None:
    """UNLINK persistent keys idle past REDIS_CACHE_TTL_HOURS; EXPIRE the others to time left."""
    cache = sweep.stores.cache()
    ttl_seconds = sweep.retention.cache_ttl_seconds
    for batch in cache.scan(sweep.options.batch_size):
        sweep.heartbeat()
        unlink: list[CacheKey] = []
        expire: list[tuple[bytes, int]] = []
        for key in batch:
            if sweep.dry_run and key.key in sweep.planned.cache_keys:
                continue  # the cascade of this dry run counted it already
            action, seconds = cache_action(key, ttl_seconds)
            if action is CacheAction.UNLINK:
                unlink.append(key)
            elif action is CacheAction.EXPIRE:
                expire.append((key.key, seconds))
        _unlink(sweep, sweep.granted(unlink), ttl_seconds)
        _repair(sweep, expire)


def _unlink(sweep: Sweep, keys: list[CacheKey], ttl_seconds: int) -> None:
    if not keys:
        return
    cache = sweep.stores.cache()
    memory = cache.memory_usage([k.key for k in keys])
    sweep.audit.record([_entry(key, memory.get(key.key, 0), ttl_seconds) for key in keys])
    if sweep.dry_run:
        sweep.report.add_deleted(REDIS, len(memory), sum(memory.values()))
        return
    # The script re-checks TTL and idleness atomically, so a key read or given a TTL since the
    # scan is kept; it returns the memory of each key it unlinked.
    gone = cache.unlink_idle([k.key for k in keys], ttl_seconds)
    sweep.report.add_deleted(REDIS, len(gone), sum(gone.values()))


def _repair(sweep: Sweep, items: list[tuple[bytes, int]]) -> None:
    if not items:
        return
    if sweep.dry_run:
        sweep.report.repaired += len(items)
        return
    sweep.report.repaired += sweep.stores.cache().expire_if_persistent(items)


def _entry(key: CacheKey, memory: int, ttl_seconds: int) -> AuditEntry:
    return AuditEntry(
        store=REDIS,
        action="unlink",
        target=key.key.decode("utf-8", "backslashreplace"),
        size_bytes=memory,
        reason=f"no TTL and idle {key.idle_seconds}s >= REDIS_CACHE_TTL ({ttl_seconds}s)",
    )
