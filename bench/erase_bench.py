"""Per-user erasure: one user with 1,000 documents and 100 sessions among 100 users (the quick
profile: 200 documents and 20 sessions).

The other 99 users' data is planted at two sizes (1x and 10x); the erase's time and its
requests per store are measured at each. The goal is that no request count grows with the other
users' data: Mongo by `user_id`, Qdrant by a filter on the user's ids, S3 by HEAD and batch
delete, Redis by computed key names (no SCAN).

Stores: a private redis-server, moto's S3 server over HTTP (bench/s3server.py), the embedded
SQLite metadata store (statements counted: the stand-in for Mongo round trips) and Qdrant's local
engine in memory. Qdrant runs twice: in local mode's own way (one scroll over the collection,
no payload index there), timed; and on the filter path a Qdrant server gets, counted (the
local engine evaluates those filters point by point in Python, so that run's time is not
reported).

One worker plants and erases once per run, for every size: each run gets freshly planted stores
(a new SQLite file, a new Qdrant collection, Redis flushed and planted again) and its own bucket,
which bench/run filled before the worker started, so the imports (Qdrant's client alone takes
~2 s) are paid once. The untimed filter-path run at the smallest size goes first (it warms the
process: first calls' lazy imports and caches), then the timed local-mode runs alternate between
the sizes, then the filter-path run at the other sizes.
"""

from __future__ import annotations

import tempfile
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import Row, log, median, ratio, redis_server, run_worker
from bench.s3_bench import MotoS3
from bench.s3server import object_key

BUCKET = "documents"
COLLECTION = "rag_documents"
VECTOR_SIZE = 384
USERS = 100
TARGET = "user-000"
TARGET_DOCS = 1000  # the full profile's; the target has one session per 10 documents
CHUNKS = 2  # points per document (its upload session), and per chat session


def _oid(i: int) -> str:
    return f"{i + 1:024x}"


def _session_id(user: int, j: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"session-{user}-{j}"))


def plan_users(other_docs: int, target_docs: int = TARGET_DOCS) -> list[tuple[int, int]]:
    """Document indexes (interleaved across users, as uploads arrive) with their user."""
    quota = [target_docs] + [other_docs] * (USERS - 1)
    owners: list[tuple[int, int]] = []
    while any(quota):
        for user in range(USERS):
            if quota[user]:
                quota[user] -= 1
                owners.append((len(owners), user))
    return owners


def _sessions(other_docs: int, target_docs: int) -> dict[int, int]:
    return {u: max(1, (target_docs if u == 0 else other_docs) // 10) for u in range(USERS)}


def total_docs(other_docs: int, target_docs: int = TARGET_DOCS) -> int:
    return target_docs + (USERS - 1) * other_docs


# ------------------------------------------------------------------ data (in the worker)


def _metadata(path: Path, other_docs: int, target_docs: int, bucket: str) -> Any:
    from datetime import UTC, datetime

    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

    store = SqliteMetadataStore(path, default_bucket=bucket)
    at = datetime.now(UTC).replace(tzinfo=None)
    docs_of: dict[int, list[str]] = {}
    docs = []
    for i, user in plan_users(other_docs, target_docs):
        docs_of.setdefault(user, []).append(_oid(i))
        docs.append(_document(i, user, at, bucket))
    store.insert_raw("documents", docs)
    sessions, messages = [], []
    for user, count in _sessions(other_docs, target_docs).items():
        for j in range(count):
            sid, doc = _session_id(user, j), docs_of[user][j % len(docs_of[user])]
            sessions.append({"_id": sid, "user_id": f"user-{user:03d}", "updated_at": at,
                             "documents": [{"doc_id": doc}], "attached_file_ids": [doc]})  # fmt: skip
            messages += [{"chat_id": sid, "file_ids": [doc], "created_at": at}] * 2
    store.insert_raw("chat_sessions", sessions)
    store.insert_raw("messages", messages)
    return store, docs_of


def _document(i: int, user: int, at: Any, bucket: str) -> dict[str, Any]:
    from bson import ObjectId

    return {
        "_id": ObjectId(_oid(i)),
        "user_id": f"user-{user:03d}",
        "filename": "file.pdf",
        "content_type": "application/pdf",
        "size_bytes": 66,
        "minio_bucket": bucket,
        "minio_key": object_key(i),
        "status": "ready",
        "created_at": at,
        "updated_at": at,
        "metadata": {"file_hash": f"{i:064x}"},
    }


def _qdrant(docs_of: dict[int, list[str]], sessions: dict[int, int]) -> Any:
    import numpy as np
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    client.create_collection(
        COLLECTION,
        vectors_config=models.VectorParams(size=VECTOR_SIZE, distance=models.Distance.COSINE),
    )
    payloads = [
        {"session_id": f"upload_{doc}", "document_id": doc, "chunk_id": c, "created_at": 1.0}
        for docs in docs_of.values()
        for doc in docs
        for c in range(CHUNKS)
    ]
    for user, count in sessions.items():
        for j in range(count):
            doc = docs_of[user][j % len(docs_of[user])]
            payloads += [{"session_id": _session_id(user, j), "document_id": doc,
                          "chunk_id": CHUNKS + c, "created_at": 1.0} for c in range(CHUNKS)]  # fmt: skip
    rng = np.random.default_rng(0)
    for start in range(0, len(payloads), 1000):
        chunk = payloads[start : start + 1000]
        vectors = rng.random((len(chunk), VECTOR_SIZE), dtype=np.float32).tolist()
        points = [
            models.PointStruct(
                id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"{p['document_id']}_{p['session_id']}_{p['chunk_id']}")),
                vector=vector,
                payload=p,
            )
            for p, vector in zip(chunk, vectors, strict=True)
        ]  # fmt: skip
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Local mode is not recommended")
            client.upsert(COLLECTION, points=points, wait=True)
    return client


def _redis(port: int, docs_of: dict[int, list[str]]) -> Any:
    client = _counting_redis(port=port)
    client.flushdb()
    pipe = client.pipeline(transaction=False)
    for docs in docs_of.values():
        for doc in docs:
            pipe.set(f"doc:text:{doc}".encode(), b"texto extraido " * 12, ex=3600)
    for i in range(1000):
        pipe.set(f"cache:query:{i}".encode(), b"x", ex=3600)
        pipe.set(f"blacklist:{i}".encode(), b"1")
    pipe.execute()
    client.counts.clear()
    return client


def _counting_redis(**kwargs: Any) -> Any:
    """A redis.Redis counting the commands it sends (scripts are EVALSHA; pipelines aside)."""
    import redis

    class Counting(redis.Redis):
        counts: Counter[str]

        def execute_command(self, *args: Any, **options: Any) -> Any:
            self.counts[str(args[0]).lower()] += 1
            return super().execute_command(*args, **options)

    client = Counting(**kwargs)
    client.counts = Counter()
    return client


# ------------------------------------------------------------------ the worker


def _vectors(kind: str, client: Any) -> Any:
    """Qdrant local mode's own store ("scan"), or one that reads by filter as a server is asked
    ("filter") and deletes by id after reading the points back: a server's count + delete by
    filter is the same 2 requests per 1,000 points, but the local engine would evaluate such a
    filter against every point for each of its id groups."""
    from rlm_core.adapters.qdrant_vectors import QdrantVectorStore

    class ServerReads(QdrantVectorStore):
        def delete_pinned(self, points: Any) -> int:
            self.scan_deletes = True
            try:
                return super().delete_pinned(points)
            finally:
                self.scan_deletes = False

    if kind == "scan":
        return QdrantVectorStore(client, COLLECTION, VECTOR_SIZE)
    return ServerReads(client, COLLECTION, VECTOR_SIZE, scan_deletes=False)


def erase_worker(params: dict[str, Any]) -> dict[str, Any]:
    """One erase of the target user per entry of params["plan"]: (other users' documents each,
    "scan" or "filter", bucket), each over freshly planted stores and its own bucket (filled by
    bench/run)."""
    runs = [_erase_once(params, size, mode, bucket) for size, mode, bucket in params["plan"]]
    return {"runs": runs}


def _erase_once(params: dict[str, Any], other: int, mode: str, bucket: str) -> dict[str, Any]:
    """Plant the stores, then time one LifecycleManager.erase of the target user."""
    from minio import Minio

    from bench.counting import CountingPoolManager, CountingProxy, count_statements
    from rlm_core.adapters.redis_cache import RedisCacheStore
    from rlm_core.adapters.s3_objects import S3ObjectStore
    from rlm_core.clock import SystemClock
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    target = params["target_docs"]
    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-erase-"))
    metadata, docs_of = _metadata(tmp / "metadata.sqlite3", other, target, bucket)
    qdrant = CountingProxy(_qdrant(docs_of, _sessions(other, target)))
    redis_client = _redis(params["redis_port"], docs_of)
    http = CountingPoolManager(maxsize=10)
    minio = Minio(f"127.0.0.1:{params['s3_port']}", "bench", "bench-secret", secure=False,
                  http_client=http)  # fmt: skip
    statements = count_statements(metadata)
    settings = Settings(data_dir=tmp, audit_dir=tmp, minio_bucket=bucket)
    port = CountingProxy(metadata)
    cache = RedisCacheStore(redis_client, settings.redis_cache_key_patterns)
    cache.unlink([b"doc:text:warm-up"])  # load the scripts: a server runs them from its cache
    cache.memory_usage([b"doc:text:warm-up"])
    redis_client.counts.clear()
    stores = Stores(
        cache=lambda: cache,
        vectors=lambda: _vectors(mode, qdrant),
        objects=lambda: S3ObjectStore(minio, bucket),
        metadata=lambda: port,  # type: ignore[arg-type,return-value]
    )
    manager = LifecycleManager(settings, stores, SystemClock())
    http.counts.clear()
    qdrant.calls.clear()
    start = time.perf_counter()
    receipt = manager.erase(TARGET)
    seconds = time.perf_counter() - start
    manager.close()
    qdrant._target.close()
    redis_client.close()
    return {
        "mode": mode,
        "other_docs": other,
        "seconds": seconds,
        "verified": receipt.verified,
        "deleted": {n: s.deleted for n, s in receipt.stores.items()},
        "requests": {
            "redis": dict(redis_client.counts),
            "minio": dict(http.counts),
            "qdrant": dict(qdrant.calls),
            "metadata_statements": dict(statements),
            "metadata_calls": dict(port.calls),
        },
    }


# ------------------------------------------------------------------ rows


def run(sizes: list[int], runs: int, target_docs: int = TARGET_DOCS) -> list[Row]:
    """Erase the target (`target_docs` documents) at each size of the other users' data
    (documents per other user): `runs` timed erases on local mode's path, one on the filter path,
    all in one worker (see the module's docstring for the order)."""
    order = [(sizes[0], "filter")]
    order += [(size, "scan") for _ in range(runs) for size in sizes]
    order += [(size, "filter") for size in sizes[1:]]
    moto = MotoS3()
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        plan = []
        for k, (size, mode) in enumerate(order):
            bucket = f"{BUCKET}-{k}"
            moto.command(f"bucket {bucket}")
            moto.command(f"put {bucket} 0 {total_docs(size, target_docs)} 1")
            plan.append((size, mode, bucket))
        with redis_server() as port:
            params = {"target_docs": target_docs, "redis_port": port, "s3_port": moto.port,
                      "plan": plan}  # fmt: skip
            for got in run_worker("bench.erase_bench:erase_worker", params, timeout=3600)["runs"]:
                log(f"erase {got['mode']} other_docs={got['other_docs']}: {got['seconds']:.2f}s "
                    f"verified={got['verified']} {got['requests']}")  # fmt: skip
                results.setdefault((got["mode"], got["other_docs"]), []).append(got)
    finally:
        moto.close()
    return _rows(sizes, results, target_docs)


def _total(counts: dict[str, int], skip: tuple[str, ...] = ()) -> int:
    return sum(v for k, v in counts.items() if k not in skip)


def _rows(
    sizes: list[int], results: dict[tuple[str, int], list[dict[str, Any]]], target_docs: int
) -> list[Row]:
    small, big = min(sizes), max(sizes)
    scale = f"others at {big:,} vs {small:,} docs each"
    seconds = {s: median([r["seconds"] for r in results[("scan", s)]]) for s in sizes}
    rows = [
        Row("erase_user", f"seconds, 1 user of {target_docs:,} docs + "
            f"{max(1, target_docs // 10):,} sessions, {scale}",
            seconds[big], seconds[small], ratio(seconds[small], seconds[big]),
            note=f"{total_docs(big, target_docs):,} documents in all; local-mode Qdrant; verified="
            f"{results[('scan', big)][0]['verified']}"),
    ]  # fmt: skip
    stores = {
        "redis commands": ("scan", "redis", ()),
        "S3 requests": ("scan", "minio", ()),
        "metadata statements (SQLite)": ("scan", "metadata_statements", ()),
        "Qdrant requests, filter path (a server's)": ("filter", "qdrant", ()),
        "Qdrant requests, local mode": ("scan", "qdrant", ()),
    }
    for label, (mode, key, skip) in stores.items():
        count = {s: _total(results[(mode, s)][0]["requests"][key], skip) for s in sizes}
        flat = count[big] == count[small]
        note = _detail(results[(mode, big)][0]["requests"][key])
        if label.endswith("local mode"):
            note = "local mode scrolls the whole collection (no payload index); " + note
        rows.append(Row("erase_user", f"{label}, {scale}", count[big], count[small],
                        ratio(count[big], count[small]), "= (no growth with others)",
                        flat if not label.endswith("local mode") else None, note))  # fmt: skip
    return rows


def _detail(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
