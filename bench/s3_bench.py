"""Object sweep on moto's S3 server: HTTP requests per 1,000 objects, rlm vs raw baselines."""

from __future__ import annotations

import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, Row, free_port, log, median, ratio, run_worker, wait_for_port
from bench.s3server import object_key

BUCKET = "documents"
ORPHAN_EVERY = 5  # keys i % 5 == 0 have no document: 20% orphans, spread over every page
AHEAD = timedelta(days=30)  # the sweep's clock runs 30 days ahead: every object is old


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


def build_metadata(path: Path, n: int, now: datetime) -> None:
    """Documents naming 4 in 5 objects, all touched recently (document expiry finds nothing)."""
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

    store = SqliteMetadataStore(path, default_bucket=BUCKET)
    touched = (now + AHEAD - timedelta(hours=1)).replace(tzinfo=None)
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
        for i in range(n)
        if i % ORPHAN_EVERY
    )
    store.insert_raw("documents", docs)
    store.close()


# ------------------------------------------------------------------ workers


def _client(port: int) -> Any:
    from minio import Minio

    from bench.counting import CountingPoolManager

    http = CountingPoolManager(maxsize=10)
    return Minio(f"127.0.0.1:{port}", "bench", "bench-secret", secure=False, http_client=http), http


def rlm_objects(params: dict[str, Any]) -> dict[str, Any]:
    """LifecycleManager.cleanup(MINIO_FILES): document expiry, then the orphan object sweep."""
    from bench.counting import CountingProxy
    from rlm_core.adapters.s3_objects import S3ObjectStore
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore
    from rlm_core.clock import FakeClock
    from rlm_core.domain import ResourceType
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    settings = Settings(data_dir=tmp, audit_dir=tmp, minio_bucket=BUCKET)
    client, http = _client(params["port"])
    metadata = CountingProxy(SqliteMetadataStore(Path(params["sqlite"]), default_bucket=BUCKET))
    stores = Stores(
        cache=_unused,
        vectors=_unused,
        objects=lambda: S3ObjectStore(client, BUCKET),
        metadata=lambda: metadata,  # type: ignore[arg-type,return-value]
    )
    clock = FakeClock(datetime.now(UTC) + AHEAD)
    manager = LifecycleManager(settings, stores, clock)
    start = time.perf_counter()
    report = manager.cleanup(ResourceType.MINIO_FILES)
    seconds = time.perf_counter() - start
    manager.close()
    return {
        "seconds": seconds,
        "deleted": report.deleted_counts["minio"],
        "errors": report.errors,
        "requests": dict(http.counts),
        "metadata_calls": dict(metadata.calls),
        "processed": params["n"],
    }


def _unused() -> Any:
    raise AssertionError("this benchmark touches objects and metadata only")


def raw_batch(params: dict[str, Any]) -> dict[str, Any]:
    """Raw minio: list (1000 per page), one reference query per page, one batch delete."""
    from minio.deleteobjects import DeleteObject

    from bench.counting import CountingProxy
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

    client, http = _client(params["port"])
    metadata = CountingProxy(SqliteMetadataStore(Path(params["sqlite"]), default_bucket=BUCKET))
    deleted = 0
    start = time.perf_counter()
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
        "requests": dict(http.counts),
        "metadata_calls": dict(metadata.calls),
        "processed": params["n"],
    }


def per_object(params: dict[str, Any]) -> dict[str, Any]:
    """Naive: list, then per object a stat, a reference query and a single delete (time-capped)."""
    from bench.counting import CountingProxy
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

    client, http = _client(params["port"])
    metadata = CountingProxy(SqliteMetadataStore(Path(params["sqlite"]), default_bucket=BUCKET))
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
        "metadata_calls": dict(metadata.calls),
        "processed": processed,
    }


# ------------------------------------------------------------------ orchestration


def per_thousand(result: dict[str, Any], field: str) -> float:
    counts = result[field]
    if field == "metadata_calls":
        # Reference reads only: cleanup(MINIO_FILES) first runs document expiry, whose paged
        # read of every document belongs to that rule, not to the object sweep measured here.
        counts = {k: v for k, v in counts.items() if k == "referenced_object_keys"}
    return sum(counts.values()) * 1000.0 / result["processed"]


def run(sizes: list[int], runs: int, cap: float) -> tuple[list[Row], dict[int, float]]:
    rows: list[Row] = []
    rss_by_size: dict[int, float] = {}
    folder = Path(tempfile.mkdtemp(prefix="rlm-bench-s3-"))
    moto = MotoS3()
    try:
        for n in sizes:
            bucket = f"{BUCKET}"
            moto.command(f"bucket {bucket}")
            start = time.perf_counter()
            moto.command(f"put {bucket} 0 {n} 1")
            sqlite = folder / f"meta-{n}.sqlite3"
            build_metadata(sqlite, n, datetime.now(UTC))
            log(f"s3 n={n}: populated in {time.perf_counter() - start:.1f}s")
            results: dict[str, list[dict[str, Any]]] = {"rlm": [], "raw": [], "per": []}
            for r in range(runs):
                for name, target in (
                    ("rlm", "bench.s3_bench:rlm_objects"),
                    ("raw", "bench.s3_bench:raw_batch"),
                    ("per", "bench.s3_bench:per_object"),
                ):
                    moto.command(f"put {bucket} 0 {n} {ORPHAN_EVERY}")  # reset the orphans
                    params = {"port": moto.port, "sqlite": str(sqlite), "n": n, "cap_seconds": cap}
                    res = run_worker(target, params)
                    results[name].append(res)
                    log(
                        f"s3 n={n} run {r + 1} {name}: {res['seconds']:.2f}s "
                        f"deleted={res['deleted']} req={res['requests']} "
                        f"meta={res['metadata_calls']} rss={res['peak_rss_mb']:.0f}MB"
                    )
            rows += _rows(n, results)
            rss_by_size[n] = median([r["peak_rss_mb"] for r in results["rlm"]])
            moto.command(f"put {bucket} 0 {n} {ORPHAN_EVERY}")
    finally:
        moto.close()
    return rows, rss_by_size


def _rows(n: int, results: dict[str, list[dict[str, Any]]]) -> list[Row]:
    bench = f"s3_sweep_{n // 1000}k"
    req = {k: median([per_thousand(r, "requests") for r in v]) for k, v in results.items()}
    meta = {k: median([per_thousand(r, "metadata_calls") for r in v]) for k, v in results.items()}
    total = {
        k: median([per_thousand(r, "requests") + per_thousand(r, "metadata_calls") for r in v])
        for k, v in results.items()
    }
    t = {k: median([r["seconds"] for r in v]) for k, v in results.items()}
    per = results["per"][0]
    rlm = results["rlm"][0]
    detail = ", ".join(f"{k}={v}" for k, v in sorted(rlm["requests"].items()))
    meta_detail = ", ".join(
        f"{k}={v}"
        for k, v in sorted(rlm["metadata_calls"].items())
        if k == "referenced_object_keys"
    )
    per_note = (
        f"capped after {per['processed']}/{n} objects ({per['measured_seconds']:.0f}s); "
        "requests/1000 from the processed part, seconds extrapolated"
        if per["capped"]
        else "ran to completion"
    )
    rss = {k: median([r["peak_rss_mb"] for r in v]) for k, v in results.items()}
    return [
        Row(bench, "requests per 1000 objects (S3 list + S3 deletes + reference reads) vs raw list+batch delete",
            total["rlm"], total["raw"], ratio(total["raw"], total["rlm"]), "<= 3 /1000",
            total["rlm"] <= 3, f"rlm S3: {detail}; metadata: {meta_detail}; 20% orphans deleted: {rlm['deleted']}"),
        Row(bench, "requests per 1000 objects (same count) vs per-object stat+delete", total["rlm"],
            total["per"], ratio(total["per"], total["rlm"]), "<= 3 /1000", total["rlm"] <= 3, per_note),
        Row(bench, "S3 requests per 1000 objects vs raw list+batch delete", req["rlm"], req["raw"],
            ratio(req["raw"], req["rlm"])),
        Row(bench, "reference reads per 1000 objects vs raw (one per page)", meta["rlm"], meta["raw"],
            ratio(meta["raw"], meta["rlm"]), note="referenced_object_keys queries"),
        Row(bench, "seconds vs raw list+batch delete", t["rlm"], t["raw"], ratio(t["raw"], t["rlm"]),
            note="both dominated by moto rendering each 1000-key listing page"),
        Row(bench, "seconds vs per-object stat+delete", t["rlm"], t["per"], ratio(t["per"], t["rlm"]),
            note=per_note),
        Row(bench, "peak RSS MB vs raw list+batch delete", rss["rlm"], rss["raw"],
            ratio(rss["raw"], rss["rlm"])),
    ]  # fmt: skip
