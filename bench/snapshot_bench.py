"""Snapshot of all four stores: LifecycleManager.metrics() time and peak RSS."""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import qdrant_bench, redis_bench, s3_bench
from bench.common import Row, log, median, redis_server, run_worker, vm_kb


def rlm_metrics(params: dict[str, Any]) -> dict[str, Any]:
    import redis
    from minio import Minio

    from rlm_core.adapters.qdrant_vectors import QdrantVectorStore
    from rlm_core.adapters.redis_cache import RedisCacheStore
    from rlm_core.adapters.s3_objects import S3ObjectStore
    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore
    from rlm_core.clock import SystemClock
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    qdrant, _, _, _ = qdrant_bench._setup(params["points"], params["vector_size"])
    base_rss = vm_kb("VmRSS") / 1024.0
    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    settings = Settings(
        data_dir=tmp, minio_bucket=s3_bench.BUCKET, qdrant_vector_size=params["vector_size"]
    )
    client = redis.Redis(port=params["redis_port"])
    minio = Minio(f"127.0.0.1:{params['s3_port']}", "bench", "bench-secret", secure=False)
    stores = Stores(
        cache=lambda: RedisCacheStore(client, settings.redis_cache_key_patterns),
        vectors=lambda: QdrantVectorStore(qdrant, qdrant_bench.COLLECTION, params["vector_size"]),
        objects=lambda: S3ObjectStore(minio, s3_bench.BUCKET),
        metadata=lambda: SqliteMetadataStore(Path(params["sqlite"]), s3_bench.BUCKET),
    )
    manager = LifecycleManager(settings, stores, SystemClock())
    per_store: dict[str, float] = {}
    start = time.perf_counter()
    for rt in ("REDIS_CACHE", "QDRANT_VECTORS", "MINIO_FILES", "MONGODB_METADATA"):
        from rlm_core.domain import ResourceType

        t0 = time.perf_counter()
        manager.metrics([ResourceType[rt]])
        per_store[rt] = time.perf_counter() - t0
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "per_store": per_store, "base_rss_mb": base_rss}


def run(redis_keys: int, points: int, objects: int, runs: int, vector_size: int) -> list[Row]:
    folder = Path(tempfile.mkdtemp(prefix="rlm-bench-snap-"))
    moto = s3_bench.MotoS3()
    try:
        with redis_server() as port:
            dataset = redis_bench.build_dataset(port, redis_keys, folder)
            redis_bench.reset(port, dataset)
            moto.command(f"bucket {s3_bench.BUCKET}")
            moto.command(f"put {s3_bench.BUCKET} 0 {objects} 1")
            sqlite = folder / "meta.sqlite3"
            s3_bench.build_metadata(sqlite, objects, datetime.now(UTC))
            params = {
                "redis_port": port,
                "s3_port": moto.port,
                "sqlite": str(sqlite),
                "points": points,
                "vector_size": vector_size,
            }
            results = []
            for r in range(runs):
                res = run_worker("bench.snapshot_bench:rlm_metrics", params)
                results.append(res)
                log(
                    f"snapshot run {r + 1}: {res['seconds']:.2f}s {res['per_store']} "
                    f"rss {res['peak_rss_mb']:.0f}MB (after qdrant load {res['base_rss_mb']:.0f})"
                )
    finally:
        moto.close()
    bench = f"snapshot_{redis_bench._label(redis_keys)}_{points // 1000}k_{objects // 1000}k"
    per = {k: median([r["per_store"][k] for r in results]) for k in results[0]["per_store"]}
    per_note = ", ".join(f"{k.split('_')[0].lower()} {v:.1f}s" for k, v in per.items())
    growth = median([r["peak_rss_mb"] - r["base_rss_mb"] for r in results])
    return [
        Row(bench, "seconds (all four stores)", median([r["seconds"] for r in results]), None,
            None, note=per_note),
        Row(bench, "peak RSS MB (process)", median([r["peak_rss_mb"] for r in results]), None,
            None, note=f"includes the local-mode Qdrant collection; growth during metrics() "
            f"{growth:.0f} MB"),
    ]  # fmt: skip
