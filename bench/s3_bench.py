"""Object sweep on moto's S3 server: HTTP requests per 1,000 objects, rlm vs raw baselines."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    PYTHON,
    ROOT,
    Memory,
    Row,
    free_port,
    growth,
    loaded_rss,
    log,
    median,
    ratio,
    redis_server,
    run_worker,
    wait_for_port,
)
from bench.s3server import object_key

if TYPE_CHECKING:
    from rlm_core.ports import ObjectInfo

BUCKET = "documents"
ORPHAN_EVERY = 5  # keys i % 5 == 0 have no document: 20% orphans, spread over every page
AHEAD = timedelta(days=30)  # the sweep's clock runs 30 days ahead: every object is old
EXPIRED_OBJECTS = 500  # the expiry measurement: 4 in 5 of these have an expired document


class MotoS3:
    """The s3server subprocess and its control line."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.s3server", str(self.port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        wait_for_port(self.port, self.proc)

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.command("quit")
        self.proc.wait(timeout=30)


def build_metadata(
    path: Path, n: int, now: datetime, first: int = 0, expired: bool = False
) -> None:
    """Documents naming 4 in 5 of the objects first..first+n, all touched recently (document
    expiry finds nothing), or with `expired` every one of them untouched for 60 days."""
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

    store = SqliteMetadataStore(path, default_bucket=BUCKET)
    touched = (now + AHEAD - timedelta(days=60 if expired else 0, hours=1)).replace(tzinfo=None)
    docs = (
        {
            "user_id": f"user-{i % 97}",
            "filename": "file.pdf",
            "content_type": "application/pdf",
            "size_bytes": 66,
            "minio_bucket": BUCKET,
            "minio_key": object_key(i),
            "status": "ready",
            "created_at": touched,
            "updated_at": touched,
            "metadata": {"file_hash": f"{i:064x}"},
        }
        for i in range(first, first + n)
        if i % ORPHAN_EVERY
    )
    store.insert_raw("documents", docs)
    store.close()


def build_sparse_metadata(path: Path, n: int, now: datetime) -> None:
    """Documents naming 1 in 100 of the objects 0..n (99% orphans), all touched recently."""
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

    store = SqliteMetadataStore(path, default_bucket=BUCKET)
    touched = (now + AHEAD - timedelta(hours=1)).replace(tzinfo=None)
    store.insert_raw(
        "documents",
        (
            {"user_id": "user-1", "filename": "file.pdf", "content_type": "application/pdf",
             "size_bytes": 66, "minio_bucket": BUCKET, "minio_key": object_key(i),
             "status": "ready", "created_at": touched, "updated_at": touched, "metadata": {}}
            for i in range(0, n, 100)
        ),
    )  # fmt: skip
    store.close()


class MemoryListing:
    """The object port over an in-memory, sorted listing: the quick profile's stand-in for S3
    when only rlm's own memory is traced. The first listing's entries are built here, before
    tracing starts: they are the client's, not rlm's, and built under tracing they were ~10,000
    live foreign traces (the reference window holds them) that every sample walked. The listing
    lets go of each entry as it hands it out, so rlm alone keeps it alive, as with a client."""

    bucket = BUCKET

    def __init__(self, n: int) -> None:
        from rlm_core.ports import ObjectInfo

        self._at = datetime.now(UTC)
        self._keys = sorted(object_key(i) for i in range(n))
        self._first: list[ObjectInfo | None] = [ObjectInfo(k, 66, self._at) for k in self._keys]
        self._gone: set[str] = set()

    def ensure_bucket(self) -> None:
        """Nothing to create."""

    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Every object left, in key order."""
        from rlm_core.ports import ObjectInfo

        first, self._first = self._first, []
        for i, key in enumerate(self._keys):
            if key in self._gone:
                continue
            obj = first[i] if i < len(first) else None
            if obj is None:
                obj = ObjectInfo(key, 66, self._at)
            else:
                first[i] = None
            yield obj

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Forget the keys."""
        self._gone.update(keys)
        return []

    def exists(self, key: str) -> bool:
        """Whether the key is left."""
        return key not in self._gone

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        """66 bytes each."""
        return {k: 66 for k in keys if k not in self._gone}

    def close(self) -> None:
        """Nothing to release."""


# ------------------------------------------------------------------ workers


def _client(port: int) -> Any:
    from minio import Minio

    from bench.counting import CountingPoolManager

    http = CountingPoolManager(maxsize=10)
    return Minio(f"127.0.0.1:{port}", "bench", "bench-secret", secure=False, http_client=http), http


def _metadata(path: str) -> tuple[Any, Any]:
    """The embedded metadata store, counting every SQL statement it sends."""
    from bench.counting import count_statements
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

    store = SqliteMetadataStore(Path(path), default_bucket=BUCKET)
    return store, count_statements(store)


def rlm_objects(params: dict[str, Any]) -> dict[str, Any]:
    """LifecycleManager.cleanup(MINIO_FILES): document expiry, then the orphan object sweep.

    With params["trace"], rlm's own allocations are traced (a separate run: tracing is slow)."""
    from bench.counting import CountingProxy, OwnMemory
    from rlm_core.adapters.s3_objects import S3ObjectStore
    from rlm_core.clock import FakeClock
    from rlm_core.domain import ResourceType
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    settings = Settings(data_dir=tmp, audit_dir=tmp, minio_bucket=BUCKET)
    own = OwnMemory()
    store, statements = _metadata(params["sqlite"])
    metadata = CountingProxy(store, own.sample)
    adapter: Any
    if params.get("listing"):
        adapter, http = MemoryListing(params["n"]), None
    else:
        client, http = _client(params["port"])
        adapter = S3ObjectStore(client, BUCKET)
    objects = CountingProxy(adapter, own.sample, paged=False)
    stores = Stores(
        cache=_unused,
        vectors=_unused,
        objects=lambda: objects,
        metadata=lambda: metadata,
    )
    clock = FakeClock(datetime.now(UTC) + AHEAD)
    manager = LifecycleManager(settings, stores, clock)
    base_rss = loaded_rss()
    if params.get("trace"):
        own.start()
    start = time.perf_counter()
    report = manager.cleanup(ResourceType.MINIO_FILES)
    seconds = time.perf_counter() - start
    traced = own.stop() if params.get("trace") else {}
    manager.close()
    return {
        "seconds": seconds,
        "deleted": report.deleted_counts["minio"],
        "errors": report.errors,
        "requests": dict(http.counts) if http is not None else {},
        "statements": dict(statements),
        "metadata_calls": dict(metadata.calls),
        "processed": params["n"],
        "base_rss_mb": base_rss,
        **traced,
    }


def _unused() -> Any:
    raise AssertionError("this benchmark touches objects and metadata only")


def rlm_expiry(params: dict[str, Any]) -> dict[str, Any]:
    """cleanup(MONGODB_METADATA) of documents that all expired: each one's cascade (points,
    cache keys, object, record), every store request counted."""
    from qdrant_client import QdrantClient

    from bench.counting import CountingProxy, counting_redis
    from rlm_core.adapters.qdrant_vectors import QdrantVectorStore
    from rlm_core.adapters.redis_cache import RedisCacheStore
    from rlm_core.adapters.s3_objects import S3ObjectStore
    from rlm_core.clock import FakeClock
    from rlm_core.domain import ResourceType
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    settings = Settings(data_dir=tmp, audit_dir=tmp, minio_bucket=BUCKET, qdrant_vector_size=8)
    client, http = _client(params["port"])
    metadata, statements = _metadata(params["sqlite"])
    qdrant = CountingProxy(QdrantClient(":memory:"))
    vectors = QdrantVectorStore(qdrant, "rag_documents", 8)  # type: ignore[arg-type]
    vectors.ensure_collection()
    qdrant.calls.clear()
    cache_client = counting_redis(params["redis_port"])
    stores = Stores(
        cache=lambda: RedisCacheStore(cache_client, settings.redis_cache_key_patterns),
        vectors=lambda: vectors,
        objects=lambda: S3ObjectStore(client, BUCKET),
        metadata=lambda: metadata,
    )
    manager = LifecycleManager(settings, stores, FakeClock(datetime.now(UTC) + AHEAD))
    report = manager.cleanup(ResourceType.MONGODB_METADATA)
    return {
        "expired": report.deleted_counts["mongodb"],
        "objects": report.deleted_counts["minio"],
        "errors": report.errors,
        "requests": dict(http.counts),
        "statements": dict(statements),
        "qdrant": dict(qdrant.calls),
        "redis_round_trips": type(cache_client).round_trips,
    }


def raw_batch(params: dict[str, Any]) -> dict[str, Any]:
    """Raw minio doing the same job: read the documents page by page (what document expiry
    reads; none is old here), then list (1000 per page), one reference query per page and one
    batch delete of the page's orphans."""
    from minio.deleteobjects import DeleteObject

    client, http = _client(params["port"])
    metadata, statements = _metadata(params["sqlite"])
    deleted = 0
    base_rss = loaded_rss()
    start = time.perf_counter()
    documents = sum(len(page) for page in metadata.iter_documents(1000))
    page: list[str] = []

    def flush(keys: list[str]) -> int:
        referenced = metadata.referenced_object_keys(BUCKET, keys)
        orphans = [DeleteObject(k) for k in keys if k not in referenced]
        errors = list(client.remove_objects(BUCKET, orphans)) if orphans else []
        return len(orphans) - len(errors)

    for obj in client.list_objects(BUCKET, recursive=True):
        page.append(obj.object_name)
        if len(page) == 1000:
            deleted += flush(page)
            page = []
    if page:
        deleted += flush(page)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "deleted": deleted,
        "documents": documents,
        "requests": dict(http.counts),
        "statements": dict(statements),
        "processed": params["n"],
        "base_rss_mb": base_rss,
    }


def per_object(params: dict[str, Any]) -> dict[str, Any]:
    """Naive: list, then per object a stat, a reference query and a single delete (time-capped)."""
    client, http = _client(params["port"])
    metadata, statements = _metadata(params["sqlite"])
    cap = float(params["cap_seconds"])
    deleted = processed = 0
    capped = False
    start = time.perf_counter()
    for obj in client.list_objects(BUCKET, recursive=True):
        client.stat_object(BUCKET, obj.object_name)
        if not metadata.referenced_object_keys(BUCKET, [obj.object_name]):
            client.remove_object(BUCKET, obj.object_name)
            deleted += 1
        processed += 1
        if processed % 100 == 0 and time.perf_counter() - start > cap:
            capped = True
            break
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds * params["n"] / processed,
        "measured_seconds": seconds,
        "capped": capped,
        "deleted": deleted,
        "requests": dict(http.counts),
        "statements": dict(statements),
        "processed": processed,
    }


# ------------------------------------------------------------------ orchestration


def per_thousand(result: dict[str, Any], field: str) -> float:
    return sum(result[field].values()) * 1000.0 / result["processed"]


def total_per_thousand(result: dict[str, Any]) -> float:
    """Every store request of the run: S3 HTTP requests and metadata statements."""
    return per_thousand(result, "requests") + per_thousand(result, "statements")


def run(
    sizes: list[int],
    runs: int,
    cap: float,
    single_run_from: int | None = None,
    memory_sizes: list[int] | None = None,
    untimed: list[Callable[[], None]] | None = None,
) -> tuple[list[Row], Memory]:
    """Each size `runs` times (once from `single_run_from` objects up: counts are exact, the
    seconds then come from one run), plus one traced rlm run per size; with memory_sizes, the
    traced runs are at those sizes instead, over an in-memory listing (MemoryListing). The
    `untimed` jobs (other benches' traced runs) share the two lanes of the untimed phase."""
    rows: list[Row] = []
    memory = Memory()
    totals: dict[int, dict[str, float]] = {}
    folder = Path(tempfile.mkdtemp(prefix="rlm-bench-s3-"))
    moto = MotoS3()
    try:
        for n in sizes:
            moto.command(f"bucket {BUCKET}")
            start = time.perf_counter()
            moto.command(f"put {BUCKET} 0 {n} 1")
            sqlite = folder / f"meta-{n}.sqlite3"
            build_metadata(sqlite, n, datetime.now(UTC))
            log(f"s3 n={n}: populated in {time.perf_counter() - start:.1f}s")
            params = {"port": moto.port, "sqlite": str(sqlite), "n": n, "cap_seconds": cap}
            times = 1 if single_run_from is not None and n >= single_run_from else runs
            results = _runs(moto, params, times)
            rows += _rows(n, results, times)
            totals[n] = {k: median([_requests(r) for r in results[k]]) for k in ("rlm", "raw")}
            memory.growth[n] = median([growth(r) for r in results["rlm"]])
            memory.raw_growth[n] = median([growth(r) for r in results["raw"]])
            moto.command(f"put {BUCKET} 0 {n} {ORPHAN_EVERY}")
            if memory_sizes is None:
                memory.own_kb[n] = _traced(params)
                moto.command(f"put {BUCKET} 0 {n} {ORPHAN_EVERY}")
        rows += _marginal(totals)
        # Nothing timed from here: the traced runs (memory) and the expiry run (request counts)
        # go two at a time, the biggest traced run first.
        with ThreadPoolExecutor(2) as pool:
            traced = {
                n: pool.submit(_traced_listing, folder, n)
                for n in sorted(memory_sizes or [], reverse=True)
            }
            expiry = pool.submit(_expiry, moto, folder)
            others = [pool.submit(job) for job in untimed or []]
            memory.own_kb.update({n: future.result() for n, future in traced.items()})
            rows.append(expiry.result())
            for future in others:
                future.result()
    finally:
        moto.close()
    return rows, memory


def _traced_listing(folder: Path, n: int) -> float:
    """rlm's own peak over an in-memory listing of n objects, 1 in 100 named by a document."""
    sqlite = folder / f"sparse-{n}.sqlite3"
    build_sparse_metadata(sqlite, n, datetime.now(UTC))
    return _traced({"sqlite": str(sqlite), "n": n, "listing": True})


def _traced(params: dict[str, Any]) -> float:
    traced = run_worker(
        "bench.s3_bench:rlm_objects", {**params, "trace": True}, timeout=2400, fork=True
    )
    where = "in-memory listing" if params.get("listing") else "S3"
    log(f"s3 n={params['n']} traced ({where}): own peak {traced['own_peak_kb']:.0f} KiB "
        f"({traced['own_top']})")  # fmt: skip
    return float(traced["own_peak_kb"])


def _requests(result: dict[str, Any]) -> float:
    return float(sum(result["requests"].values()) + sum(result["statements"].values()))


def _marginal(totals: dict[int, dict[str, float]]) -> list[Row]:
    """Requests per 1,000 more objects between the smallest and the biggest size, every request
    counted, and the fixed requests of a run (what the line through both sizes gives at 0)."""
    if len(totals) < 2:
        return []
    small, big = min(totals), max(totals)
    per = {k: (totals[big][k] - totals[small][k]) * 1000.0 / (big - small) for k in ("rlm", "raw")}
    fixed = {k: totals[small][k] - per[k] * small / 1000.0 for k in ("rlm", "raw")}
    bench = f"s3_sweep_{small // 1000}k_to_{big // 1000}k"
    return [
        Row(bench, "store requests per 1000 more objects (S3 + metadata, all counted) vs raw",
            per["rlm"], per["raw"], ratio(per["raw"], per["rlm"]), "<= 3 /1000",
            per["rlm"] <= 3, f"({totals[big]['rlm']:.0f} - {totals[small]['rlm']:.0f}) requests "
            f"over {(big - small) // 1000}k objects; NOTES.md finding 4"),
        Row(bench, "fixed store requests per run (leases, reference-source checks) vs raw",
            fixed["rlm"], fixed["raw"], ratio(fixed["raw"], fixed["rlm"]),
            note=f"per 1000 objects at {small // 1000}k that alone is {fixed['rlm'] * 1000 / small:.2f}"),
    ]  # fmt: skip


def _expiry(moto: MotoS3, folder: Path) -> Row:
    """One run of the expiry cascade of EXPIRED_DOCUMENTS documents (exact counts)."""
    first = 10_000_000  # objects of their own, beside the sweep's
    moto.command(f"put {BUCKET} {first} {first + EXPIRED_OBJECTS} 1")
    sqlite = folder / "expired.sqlite3"
    build_metadata(sqlite, EXPIRED_OBJECTS, datetime.now(UTC), first=first, expired=True)
    with redis_server() as port:
        res = run_worker(
            "bench.s3_bench:rlm_expiry",
            {"port": moto.port, "sqlite": str(sqlite), "redis_port": port},
            fork=True,
        )
    log(f"s3 expiry: {res}")
    docs = res["expired"]
    s3 = sum(res["requests"].values())
    sql = sum(res["statements"].values())
    qdrant = sum(res["qdrant"].values())
    total = s3 + sql + qdrant + res["redis_round_trips"]
    return Row(
        f"s3_expiry_{docs}_documents",
        "store requests per expired document (cascade: points, cache keys, object, record)",
        total / docs if docs else None,
        None,
        None,
        note=f"S3 {_detail(res['requests'])} (one HEAD per object: its size, SPEC 4.1 (9)); "
        f"SQL {_detail(res['statements'])}; Qdrant {_detail(res['qdrant'])}; "
        f"Redis round trips {res['redis_round_trips']}; objects deleted {res['objects']}; "
        f"errors {res['errors']}",
    )


def _runs(moto: MotoS3, params: dict[str, Any], runs: int) -> dict[str, list[dict[str, Any]]]:
    """rlm and the raw sweep `runs` times, interleaved; the per-object baseline (capped,
    extrapolated, no goal) in the first run only."""
    results: dict[str, list[dict[str, Any]]] = {"rlm": [], "raw": [], "per": []}
    for r in range(runs):
        for name, target in (
            ("rlm", "bench.s3_bench:rlm_objects"),
            ("raw", "bench.s3_bench:raw_batch"),
            ("per", "bench.s3_bench:per_object"),
        ):
            if name == "per" and r:
                continue
            moto.command(f"put {BUCKET} 0 {params['n']} {ORPHAN_EVERY}")  # reset the orphans
            res = run_worker(target, params, fork=True)
            results[name].append(res)
            log(
                f"s3 n={params['n']} run {r + 1} {name}: {res['seconds']:.2f}s "
                f"deleted={res['deleted']} req={res['requests']} sql={res['statements']} "
                f"rss={res['peak_rss_mb']:.0f}MB"
            )
    return results


def _detail(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _rows(n: int, results: dict[str, list[dict[str, Any]]], runs: int) -> list[Row]:
    bench = f"s3_sweep_{n // 1000}k"
    req = {k: median([per_thousand(r, "requests") for r in v]) for k, v in results.items()}
    sql = {k: median([per_thousand(r, "statements") for r in v]) for k, v in results.items()}
    total = {k: median([total_per_thousand(r) for r in v]) for k, v in results.items()}
    t = {k: median([r["seconds"] for r in v]) for k, v in results.items()}
    grown = {k: median([growth(r) for r in results[k]]) for k in ("rlm", "raw")}
    per, rlm, raw = results["per"][0], results["rlm"][0], results["raw"][0]
    per_note = (
        f"capped after {per['processed']}/{n} objects ({per['measured_seconds']:.0f}s); "
        "requests/1000 from the processed part, seconds extrapolated"
        if per["capped"]
        else "ran to completion"
    )
    runs_note = "" if runs > 1 else "; 1 run"
    return [
        Row(bench, "store requests per 1000 objects, all of the run (S3 + metadata) vs raw doing the same job",
            total["rlm"], total["raw"], ratio(total["raw"], total["rlm"]),
            note=f"goal on the marginal row (fixed requests per run included here); rlm S3: {_detail(rlm['requests'])}; metadata SQL: {_detail(rlm['statements'])} "
            f"(port calls {_detail(rlm['metadata_calls'])}); 20% orphans deleted: {rlm['deleted']}; "
            f"raw S3: {_detail(raw['requests'])}, SQL: {_detail(raw['statements'])}"),
        Row(bench, "store requests per 1000 objects (same count) vs per-object stat+delete",
            total["rlm"], total["per"], ratio(total["per"], total["rlm"]), note=per_note),
        Row(bench, "S3 requests per 1000 objects vs raw", req["rlm"], req["raw"],
            ratio(req["raw"], req["rlm"])),
        Row(bench, "metadata requests (SQL statements) per 1000 objects vs raw", sql["rlm"],
            sql["raw"], ratio(sql["raw"], sql["rlm"]),
            note="document expiry's page reads, leases, reference checks and reads all count"),
        Row(bench, "seconds vs raw doing the same job", t["rlm"], t["raw"], ratio(t["raw"], t["rlm"]),
            note="both dominated by the client parsing each 1000-key listing page" + runs_note),
        Row(bench, "seconds vs per-object stat+delete", t["rlm"], t["per"], ratio(t["per"], t["rlm"]),
            note=per_note),
        Row(bench, "RSS growth MB above the loaded baseline vs raw", grown["rlm"], grown["raw"],
            ratio(grown["raw"], grown["rlm"])),
    ]  # fmt: skip
