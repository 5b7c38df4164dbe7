"""Request counters and rlm's own memory: a urllib3 PoolManager for the minio client, a proxy for
any store or client (a generator counts one request per page it yields), SQL statements of the
embedded metadata store, and a tracemalloc sampler filtered to rlm's modules."""

from __future__ import annotations

import gc
import inspect
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import urllib3

RLM_CORE = Path(__file__).resolve().parent.parent / "rlm_core"


class CountingPoolManager(urllib3.PoolManager):
    """Counts every HTTP request the minio client sends, by kind."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counts: Counter[str] = Counter()

    def urlopen(self, method: str, url: str, redirect: bool = True, **kw: Any) -> Any:
        self.counts[_kind(method, url)] += 1
        return super().urlopen(method, url, redirect=redirect, **kw)


def _kind(method: str, url: str) -> str:
    query = url.partition("?")[2]
    if method == "GET" and "list-type=2" in query:
        return "list"
    if method == "GET" and "location" in query:
        return "bucket_location"
    if method == "POST" and query.startswith("delete"):
        return "delete_batch"
    if method == "HEAD":
        return "stat"
    if method == "DELETE":
        return "delete_one"
    return f"{method.lower()}_other"


class CountingProxy:
    """Wraps an object; counts calls of its public methods by name. With `paged`, a call that
    returns a generator counts one per item it yields (each item is a page the store sent), at
    least one; otherwise (a stream of single items) it counts once.
    `on_call` runs after each call and each page (the memory sampler hooks in there)."""

    def __init__(
        self, target: Any, on_call: Callable[[], None] | None = None, paged: bool = True
    ) -> None:
        self._target = target
        self._on_call = on_call
        self._paged = paged
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not callable(value):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if inspect.isgenerator(result) and self._paged:
                return self._pages(name, result)
            self.calls[name] += 1
            self._after()
            return result

        return counted

    def _pages(self, name: str, pages: Iterator[Any]) -> Iterator[Any]:
        yielded = 0
        for page in pages:
            yielded += 1
            self.calls[name] += 1
            self._after()
            yield page
        if not yielded:
            self.calls[name] += 1

    def _after(self) -> None:
        if self._on_call is not None:
            self._on_call()


def counting_redis(port: int) -> Any:
    """A redis.Redis that counts its round trips: each command or script call is one, and each
    pipeline is one however many commands it carries."""
    import redis

    class CountingRedis(redis.Redis):
        round_trips = 0

        def execute_command(self, *args: Any, **options: Any) -> Any:
            CountingRedis.round_trips += 1
            return super().execute_command(*args, **options)

        def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
            pipe = super().pipeline(transaction, shard_hint)
            execute = pipe.execute

            def counted(raise_on_error: bool = True) -> Any:
                CountingRedis.round_trips += 1
                return execute(raise_on_error)

            pipe.execute = counted  # type: ignore[method-assign]
            return pipe

    return CountingRedis(port=port)


class _CountingConnection:
    """A sqlite3 connection that counts the statements sent (transaction control aside)."""

    def __init__(self, conn: Any, counts: Counter[str]) -> None:
        self._conn = conn
        self._counts = counts

    def execute(self, sql: str, *args: Any) -> Any:
        self._count(sql)
        return self._conn.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._count(sql)
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def _count(self, sql: str) -> None:
        verb = sql.split(None, 1)[0].upper() if sql.strip() else ""
        if verb not in {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA"}:
            self._counts[verb.lower()] += 1


def count_statements(store: Any) -> Counter[str]:
    """Count every SQL statement an embedded SqliteMetadataStore sends from now on: the stand-in
    for a Mongo round trip (a page query counts like a getMore; BEGIN/COMMIT are not counted)."""
    counts: Counter[str] = Counter()
    store._conn = _CountingConnection(store._conn, counts)
    return counts


class OwnMemory:
    """Peak bytes held by allocations made in rlm_core's own code (tracemalloc, innermost frame
    in rlm_core), sampled after every store call and page and at every audit write.

    Started once the store is loaded, so only what the measured run allocates is traced; the
    store clients' own buffers (redis-py, minio, qdrant-client's local engine) are not rlm's.
    A candidate peak is counted after a full collection (see sample): what the interpreter's
    free lists keep of rlm's freed objects is not counted.
    """

    def __init__(self) -> None:
        self._prefix = str(RLM_CORE) + "/"
        self.peak = 0
        self.top: list[tuple[str, int]] = []
        self.samples = 0
        self.seconds = 0.0

    def start(self) -> None:
        from rlm_core.audit import AuditLog

        record = AuditLog.record

        def sampled(log: AuditLog, entries: list[Any]) -> None:
            self.sample()
            record(log, entries)

        AuditLog.record = sampled  # type: ignore[method-assign]
        tracemalloc.start(1)

    def sample(self) -> None:
        if not tracemalloc.is_tracing():
            return
        start = time.perf_counter()
        ours = self._ours()
        held = sum(t[1] for t in ours)
        if held > self.peak:
            # A candidate peak: count it again after a full collection. CPython keeps freed
            # tuples, lists, dicts and floats on free lists, still traced under the line that
            # first allocated them (2-tuples of SQLite rows read by rlm made up 56 of 398 KiB
            # of the Qdrant sweep's peak at 100k points), and a collection also frees unreachable
            # cycles. Neither is held by a live object of rlm's. Only candidate peaks are
            # recounted: a collection costs ~10 ms with a 10k-point page alive.
            gc.collect()
            ours = self._ours()
            held = sum(t[1] for t in ours)
        if held > self.peak:
            self.peak = held
            sites: Counter[str] = Counter()
            for t in ours:
                sites[f"{t[2][0][0][len(self._prefix) :]}:{t[2][0][1]}"] += t[1]
            self.top = sites.most_common(3)
        self.samples += 1
        self.seconds += time.perf_counter() - start

    def _ours(self) -> list[Any]:
        # The raw traces (what take_snapshot wraps): Snapshot.filter_traces runs fnmatch per
        # trace in Python, ~10 us each, which made sampling the whole cost of a traced run.
        # Each trace is (domain, size, ((filename, lineno), ...), total frames).
        prefix = self._prefix
        return [t for t in tracemalloc._get_traces() if t[2][0][0].startswith(prefix)]  # type: ignore[attr-defined]

    def stop(self) -> dict[str, Any]:
        self.sample()
        tracemalloc.stop()
        top = ", ".join(f"{site} {size / 1024:.0f} KiB" for site, size in self.top)
        return {
            "own_peak_kb": self.peak / 1024.0,
            "own_samples": self.samples,
            "own_sample_seconds": self.seconds,
            "own_top": top,
        }
