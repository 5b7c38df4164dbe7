"""Redis sweep: rlm vs (a) raw pipelined SCAN+TTL+UNLINK, (b) naive KEYS/TTL/DEL, (c) redis-cli."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    REDIS_CLI,
    Memory,
    Row,
    growth,
    loaded_rss,
    log,
    median,
    ratio,
    redis_server,
    run_worker,
)

CACHE_TTL_HOURS = 1.0
PATTERNS = ("doc:text:*", "cache:*")
IDLE_OLD = 7200  # past REDIS_CACHE_TTL_HOURS=1 -> UNLINK
VALUE = b"Texto extraido del documento, fragmento de cache. " * 2


# ------------------------------------------------------------------ data


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def build_dataset(port: int, n: int, folder: Path) -> Path:
    """A RESP file of RESTORE commands: n cache keys + n/10 keys that are not ours.

    Cache keys: 1/2 with a TTL, 1/4 without TTL idle 2 h (UNLINK), 1/4 without TTL idle 0
    (EXPIRE to the time left). Foreign keys (blacklist:*) have no TTL and are idle 1 day.
    """
    import redis

    client = redis.Redis(port=port)
    client.set(b"__bench_tmp", VALUE)
    payload = client.dump(b"__bench_tmp")
    client.delete(b"__bench_tmp")
    client.close()
    assert isinstance(payload, bytes)
    path = folder / f"redis-{n}.resp"
    with path.open("wb") as out:
        buf: list[bytes] = []
        for i in range(n):
            key = (b"doc:text:%d" if i % 2 else b"cache:query:u%d") % i
            kind = i % 4
            if kind in (0, 2):
                cmd = _resp(b"RESTORE", key, b"3600000", payload, b"REPLACE")
            elif kind == 1:
                cmd = _resp(b"RESTORE", key, b"0", payload, b"REPLACE", b"IDLETIME", b"7200")
            else:
                cmd = _resp(b"RESTORE", key, b"0", payload, b"REPLACE")
            buf.append(cmd)
            if len(buf) >= 10000:
                out.write(b"".join(buf))
                buf = []
        for i in range(n // 10):
            key = b"blacklist:%d" % i
            buf.append(_resp(b"RESTORE", key, b"0", payload, b"REPLACE", b"IDLETIME", b"86400"))
        out.write(b"".join(buf))
    return path


def reset(port: int, dataset: Path) -> None:
    subprocess.run(
        [REDIS_CLI, "-p", str(port), "FLUSHALL", "SYNC"], check=True, capture_output=True
    )
    with dataset.open("rb") as handle:
        subprocess.run(
            [REDIS_CLI, "-p", str(port), "--pipe"], stdin=handle, check=True, capture_output=True
        )


def dbsize(port: int) -> int:
    out = subprocess.run(
        [REDIS_CLI, "-p", str(port), "DBSIZE"], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip())


# ------------------------------------------------------------------ workers (subprocesses)


def rlm_sweep(params: dict[str, Any]) -> dict[str, Any]:
    """LifecycleManager.cleanup(REDIS_CACHE) over a RedisCacheStore on the private server.

    With params["trace"], rlm's own allocations are traced (a separate run: tracing is slow)."""
    import redis

    from bench.counting import CountingProxy, OwnMemory
    from rlm_core.adapters.redis_cache import RedisCacheStore
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore
    from rlm_core.clock import SystemClock
    from rlm_core.domain import ResourceType
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    settings = Settings(redis_cache_ttl_hours=CACHE_TTL_HOURS, data_dir=tmp, audit_dir=tmp)
    client = redis.Redis(port=params["port"])
    own = OwnMemory()
    cache = CountingProxy(RedisCacheStore(client, settings.redis_cache_key_patterns), own.sample)
    # A real run takes its lease on the store in the metadata store (one row here).
    metadata = SqliteMetadataStore(tmp / "meta.sqlite3")
    stores = Stores(
        cache=lambda: cache,
        vectors=_unused,
        objects=_unused,
        metadata=lambda: metadata,
    )
    manager = LifecycleManager(settings, stores, SystemClock())
    base_rss = loaded_rss()
    if params.get("trace"):
        own.start()
    seconds, report = timed_call(lambda: manager.cleanup(ResourceType.REDIS_CACHE))
    traced = own.stop() if params.get("trace") else {}
    manager.close()
    return {
        "seconds": seconds,
        "deleted": report.deleted_counts["redis"],
        "repaired": report.repaired,
        "errors": report.errors,
        "base_rss_mb": base_rss,
        **traced,
    }


def _unused() -> Any:
    raise AssertionError("this benchmark touches the cache and its lease only")


def timed_call(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def raw_sweep(params: dict[str, Any]) -> dict[str, Any]:
    """(a) The fastest raw redis-py sweep: SCAN, pipelined TTL+IDLETIME, UNLINK, EXPIRE NX."""
    import redis

    client = redis.Redis(port=params["port"])
    client.ping()
    ttl = round(CACHE_TTL_HOURS * 3600)
    deleted = repaired = 0
    base_rss = loaded_rss()
    start = time.perf_counter()
    for pattern in PATTERNS:
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor=cursor, match=pattern, count=1000)
            if keys:
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.ttl(key)
                    pipe.object("idletime", key)
                replies = pipe.execute()
                unlink = []
                for i, key in enumerate(keys):
                    if replies[2 * i] != -1:
                        continue
                    idle = replies[2 * i + 1]
                    if idle >= ttl:
                        unlink.append(key)
                    else:
                        pipe.expire(key, max(1, ttl - idle), nx=True)
                if unlink:
                    pipe.unlink(*unlink)
                done = pipe.execute()
                if unlink:
                    deleted += int(done[-1])
                    done = done[:-1]
                repaired += sum(1 for d in done if d)
            if cursor == 0:
                break
    seconds = time.perf_counter() - start
    client.close()
    return {"seconds": seconds, "deleted": deleted, "repaired": repaired, "base_rss_mb": base_rss}


def naive_sweep(params: dict[str, Any]) -> dict[str, Any]:
    """(b) KEYS, then one TTL and one OBJECT IDLETIME per key, DEL/EXPIRE one key at a time."""
    import redis

    client = redis.Redis(port=params["port"])
    cap = float(params["cap_seconds"])
    ttl = round(CACHE_TTL_HOURS * 3600)
    start = time.perf_counter()
    keys = [k for pattern in PATTERNS for k in client.keys(pattern)]
    keys_seconds = time.perf_counter() - start
    done = 0
    capped = False
    for key in keys:
        if client.ttl(key) == -1:
            idle = client.object("idletime", key)
            if idle >= ttl:
                client.delete(key)
            else:
                client.expire(key, ttl - idle)
        done += 1
        if done % 1000 == 0 and time.perf_counter() - start > cap:
            capped = True
            break
    seconds = time.perf_counter() - start
    client.close()
    total = len(keys)
    return {
        # Only the per-key loop is extrapolated; KEYS ran in full.
        "seconds": keys_seconds + (seconds - keys_seconds) * total / done if done else seconds,
        "measured_seconds": seconds,
        "processed": done,
        "total": total,
        "capped": capped,
    }


# ------------------------------------------------------------------ orchestration


def floor_scan(port: int) -> float:
    """(c) redis-cli --scan per pattern (its default COUNT), output discarded."""
    start = time.perf_counter()
    for pattern in PATTERNS:
        subprocess.run(
            [REDIS_CLI, "-p", str(port), "--scan", "--pattern", pattern],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return time.perf_counter() - start


def run(
    sizes: list[int],
    runs: int,
    naive_cap: float,
    memory_sizes: list[int] | None = None,
    defer: list[Callable[[], None]] | None = None,
) -> tuple[list[Row], Memory]:
    """Each size `runs` times (rlm, raw and naive interleaved), plus one traced rlm run per size
    for rlm's own memory, or per size of `memory_sizes` when given (10x apart): those on a
    redis-server of their own, run now or, given `defer`, appended to it for the caller to run
    with other untimed work (the returned Memory has their peaks once it has)."""
    rows: list[Row] = []
    memory = Memory()
    folder = Path(tempfile.mkdtemp(prefix="rlm-bench-data-"))
    with redis_server() as port:
        for n in sizes:
            dataset = build_dataset(port, n, folder)
            results: dict[str, list[dict[str, Any]]] = {"rlm": [], "raw": [], "naive": []}
            floors: list[float] = []
            sizes_after: dict[str, int] = {}
            for r in range(runs):
                for name, target in (
                    ("rlm", "bench.redis_bench:rlm_sweep"),
                    ("raw", "bench.redis_bench:raw_sweep"),
                    ("naive", "bench.redis_bench:naive_sweep"),
                ):
                    reset_start = time.perf_counter()
                    reset(port, dataset)
                    reset_s = time.perf_counter() - reset_start
                    if name == "rlm":
                        # SCAN only reads (and does not touch idle times): the floor shares
                        # rlm's reset; it adds seconds to the idle times, far below the 1 h cut.
                        floors.append(floor_scan(port))
                    res = run_worker(target, {"port": port, "cap_seconds": naive_cap}, fork=True)
                    results[name].append(res)
                    sizes_after[name] = dbsize(port)
                    log(
                        f"redis n={n} run {r + 1} {name}: {res['seconds']:.2f}s "
                        f"rss={res['peak_rss_mb']:.0f}MB (reset {reset_s:.1f}s)"
                    )
            rows += _rows(n, results, floors, sizes_after)
            memory.growth[n] = median([growth(r) for r in results["rlm"]])
            memory.raw_growth[n] = median([growth(r) for r in results["raw"]])
            if memory_sizes is None:
                memory.own_kb[n] = _traced(port, dataset, n)
            dataset.unlink()
    if memory_sizes is not None:
        job = partial(traced_memory, memory_sizes, memory)
        if defer is None:
            job()
        else:
            defer.append(job)
    return rows, memory


def traced_memory(sizes: list[int], memory: Memory) -> None:
    """rlm's own peak at each size, on a redis-server of its own (biggest size first)."""
    folder = Path(tempfile.mkdtemp(prefix="rlm-bench-data-"))
    with redis_server() as port:
        for n in sorted(sizes, reverse=True):
            dataset = build_dataset(port, n, folder)
            memory.own_kb[n] = _traced(port, dataset, n)
            dataset.unlink()


def _traced(port: int, dataset: Path, n: int) -> float:
    """rlm's own peak (KiB) in one traced sweep of the dataset."""
    reset(port, dataset)
    traced = run_worker(
        "bench.redis_bench:rlm_sweep", {"port": port, "trace": True}, timeout=2400, fork=True
    )
    log(f"redis n={n} traced: own peak {traced['own_peak_kb']:.0f} KiB")
    return float(traced["own_peak_kb"])


def _rows(
    n: int,
    results: dict[str, list[dict[str, Any]]],
    floors: list[float],
    sizes_after: dict[str, int],
) -> list[Row]:
    bench = f"redis_sweep_{_label(n)}"
    t = {name: median([r["seconds"] for r in rs]) for name, rs in results.items()}
    grown = {name: median([growth(r) for r in results[name]]) for name in ("rlm", "raw")}
    floor = median(floors)
    naive = results["naive"][0]
    naive_note = (
        f"capped at {naive['measured_seconds']:.1f}s after {naive['processed']}/"
        f"{naive['total']} keys; extrapolated linearly"
        if naive["capped"]
        else "ran to completion"
    )
    same = sizes_after["rlm"] == sizes_after["raw"]
    keys_note = f"{n} cache keys + {n // 10} foreign; DBSIZE after rlm/raw {sizes_after['rlm']}/{sizes_after['raw']}"
    speed_a = ratio(t["raw"], t["rlm"])
    speed_b = ratio(t["naive"], t["rlm"])
    return [
        Row(bench, "seconds vs (a) raw pipelined", t["rlm"], t["raw"], speed_a, ">= 0.8x",
            speed_a is not None and speed_a >= 0.8 and same, keys_note),
        Row(bench, "seconds vs (b) naive KEYS/TTL/DEL", t["rlm"], t["naive"], speed_b, ">= 10x",
            speed_b is not None and speed_b >= 10, naive_note),
        Row(bench, "seconds vs (c) redis-cli --scan floor", t["rlm"], floor, ratio(floor, t["rlm"])),
        Row(bench, "RSS growth MB above the loaded baseline vs (a)", grown["rlm"], grown["raw"],
            ratio(grown["raw"], grown["rlm"])),
    ]  # fmt: skip


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"
