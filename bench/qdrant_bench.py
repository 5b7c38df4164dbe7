"""Qdrant session expiry in qdrant-client local mode: delete-by-filter vs scroll + delete-by-id."""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import Row, log, median, ratio, run_worker, vm_kb

COLLECTION = "rag_documents"
CHUNKS = 10  # points per document; 3 documents per session


def _setup(n: int, vector_size: int) -> tuple[Any, Any, datetime, dict[str, int]]:
    """In-process :memory: collection of n points, and SQLite metadata with sessions/documents."""
    import numpy as np
    from qdrant_client import QdrantClient, models

    from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

    now = datetime.now(UTC)
    client = QdrantClient(":memory:")
    client.create_collection(
        COLLECTION,
        vectors_config=models.VectorParams(size=vector_size, distance=models.Distance.COSINE),
    )
    rng = np.random.default_rng(0)
    created = (now - timedelta(hours=48)).timestamp()
    for start in range(0, n, 1000):
        stop = min(n, start + 1000)
        vectors = rng.random((stop - start, vector_size), dtype=np.float32).tolist()
        points = [
            models.PointStruct(
                id=i,
                vector=vectors[i - start],
                payload={
                    "session_id": f"session-{i // CHUNKS // 3}",
                    "document_id": f"doc-{i // CHUNKS}",
                    "chunk_id": i % CHUNKS,
                    "text": f"Fragmento {i % CHUNKS} del documento. " * 6,
                    "created_at": created,
                },
            )
            for i in range(start, stop)
        ]
        client.upsert(COLLECTION, points=points, wait=True)
    docs = n // CHUNKS
    sessions = (docs + 2) // 3
    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-q-"))
    meta = SqliteMetadataStore(tmp / "meta.sqlite3")
    naive_now = now.replace(tzinfo=None)
    # 1 in 20 documents is gone; 1 in 20 sessions is inactive: about 10% of pairs are doomed.
    meta.insert_raw(
        "documents",
        (
            {
                "_id": _oid(d),
                "user_id": "u",
                "status": "ready",
                "minio_key": f"k{d}",
                "created_at": naive_now,
                "updated_at": naive_now,
                "metadata": {},
            }
            for d in range(docs)
            if d % 20
        ),
    )
    meta.insert_raw(
        "chat_sessions",
        (
            {
                "_id": f"session-{s}",
                "user_id": "u",
                "updated_at": naive_now - timedelta(hours=100 if s % 20 == 1 else 1),
                "documents": [],
                "attached_file_ids": [],
            }
            for s in range(sessions)
        ),
    )
    return client, meta, now, {"docs": docs, "sessions": sessions}


def _oid(d: int) -> Any:
    # Documents are looked up by the string id the points carry.
    return f"doc-{d}"


def rlm_vectors(params: dict[str, Any]) -> dict[str, Any]:
    """LifecycleManager.cleanup(QDRANT_VECTORS): a full sweep, timed end to end."""
    from bench.counting import CountingProxy
    from rlm_core.adapters.qdrant_vectors import QdrantVectorStore
    from rlm_core.clock import FakeClock
    from rlm_core.domain import ResourceType
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    client, meta, now, _ = _setup(params["n"], params["vector_size"])
    base_rss = vm_kb("VmRSS") / 1024.0
    proxy = CountingProxy(client)
    metadata = CountingProxy(meta)
    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    settings = Settings(data_dir=tmp, audit_dir=tmp, qdrant_vector_size=params["vector_size"])
    stores = Stores(
        cache=_unused,
        vectors=lambda: QdrantVectorStore(proxy, COLLECTION, params["vector_size"]),  # type: ignore[arg-type]
        objects=_unused,
        metadata=lambda: metadata,  # type: ignore[arg-type,return-value]
    )
    manager = LifecycleManager(settings, stores, FakeClock(now))
    start = time.perf_counter()
    report = manager.cleanup(ResourceType.QDRANT_VECTORS)
    seconds = time.perf_counter() - start
    doomed_pairs = sum(1 for _ in _audit_lines(report.audit_path, report.run_id))
    return {
        "seconds": seconds,
        "doomed_pairs": doomed_pairs,
        "deleted_points_full": report.deleted_counts["qdrant"],
        "requests": dict(proxy.calls),
        "metadata_calls": dict(metadata.calls),
        "base_rss_mb": base_rss,
    }


def _audit_lines(path: str, run_id: str) -> list[str]:
    with open(path) as handle:
        return [line for line in handle if run_id in line]


def _unused() -> Any:
    raise AssertionError("this benchmark touches vectors and metadata only")


def _doomed(meta: Any, groups: dict[tuple[str, str], Any], since: datetime) -> list[Any]:
    docs = sorted({d for _, d in groups})
    existing: set[str] = set()
    for i in range(0, len(docs), 1000):
        existing |= set(meta.get_documents(docs[i : i + 1000]))
    sessions = sorted({s for s, _ in groups})
    active: set[str] = set()
    for i in range(0, len(sessions), 1000):
        active |= meta.active_sessions(sessions[i : i + 1000], since)
    live = sorted(existing)
    referenced: set[str] = set()
    for i in range(0, len(live), 1000):
        referenced |= meta.active_references(live[i : i + 1000], since)
    return [
        pair
        for pair in groups
        if pair[1] not in existing or (pair[0] not in active and pair[1] not in referenced)
    ]


def scroll_by_id(params: dict[str, Any]) -> dict[str, Any]:
    """Baseline: scroll payloads, keep ids per (session, document), same rules, delete by ids."""
    from qdrant_client import models

    from bench.counting import CountingProxy

    client, meta, now, _ = _setup(params["n"], params["vector_size"])
    base_rss = vm_kb("VmRSS") / 1024.0
    proxy = CountingProxy(client)
    metadata = CountingProxy(meta)
    start = time.perf_counter()
    groups: dict[tuple[str, str], list[Any]] = {}
    offset = None
    while True:
        records, offset = proxy.scroll(
            COLLECTION,
            limit=1000,
            offset=offset,
            with_payload=["session_id", "document_id", "created_at"],
            with_vectors=False,
        )
        for rec in records:
            p = rec.payload or {}
            groups.setdefault((p.get("session_id"), p.get("document_id")), []).append(rec.id)
        if offset is None:
            break
    doomed = _doomed(metadata, groups, now - timedelta(hours=24))
    ids = [i for pair in doomed for i in groups[pair]]
    for i in range(0, len(ids), 1000):
        proxy.delete(
            COLLECTION, points_selector=models.PointIdsList(points=ids[i : i + 1000]), wait=True
        )
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "doomed_pairs": len(doomed),
        "deleted_points_full": len(ids),
        "requests": dict(proxy.calls),
        "metadata_calls": dict(metadata.calls),
        "base_rss_mb": base_rss,
    }


def scroll_by_prefiltered(params: dict[str, Any]) -> dict[str, Any]:
    """The proposed rlm fix: same pairs filter, plus must=[document_id in the batch's ids]."""
    from qdrant_client import models

    from bench.counting import CountingProxy

    client, meta, now, _ = _setup(params["n"], params["vector_size"])
    proxy = CountingProxy(client)
    start = time.perf_counter()
    groups: dict[tuple[str, str], int] = {}
    offset = None
    while True:
        records, offset = proxy.scroll(
            COLLECTION, limit=1000, offset=offset, with_payload=True, with_vectors=False
        )
        for rec in records:
            p = rec.payload or {}
            key = (p.get("session_id"), p.get("document_id"))
            groups[key] = groups.get(key, 0) + 1
        if offset is None:
            break
    doomed = sorted(_doomed(meta, groups, now - timedelta(hours=24)))
    for i in range(0, len(doomed), 128):
        batch = doomed[i : i + 128]
        pairs = [
            models.Filter(
                must=[
                    models.FieldCondition(key="session_id", match=models.MatchValue(value=s)),
                    models.FieldCondition(key="document_id", match=models.MatchValue(value=d)),
                ]
            )
            for s, d in batch
        ]
        docs = sorted({d for _, d in batch})
        flt = models.Filter(
            must=[models.FieldCondition(key="document_id", match=models.MatchAny(any=docs))],
            should=pairs,
        )
        proxy.delete(COLLECTION, points_selector=models.FilterSelector(filter=flt), wait=True)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "requests": dict(proxy.calls), "doomed_pairs": len(doomed)}


def run(
    sizes: list[int], runs: int, vector_size: int, with_fix: bool = True
) -> tuple[list[Row], dict[int, float]]:
    rows: list[Row] = []
    rss_by_size: dict[int, float] = {}
    for n in sizes:
        results: dict[str, list[dict[str, Any]]] = {"rlm": [], "scroll": [], "fix": []}
        params = {"n": n, "vector_size": vector_size}
        for r in range(runs):
            for name, target in (
                ("rlm", "bench.qdrant_bench:rlm_vectors"),
                ("scroll", "bench.qdrant_bench:scroll_by_id"),
                ("fix", "bench.qdrant_bench:scroll_by_prefiltered"),
            ):
                if name == "fix" and (r > 0 or not with_fix):
                    continue
                res = run_worker(target, params)
                results[name].append(res)
                log(f"qdrant n={n} run {r + 1} {name}: {res['seconds']:.2f}s {res['requests']}")
        rows += _rows(n, results)
        rss_by_size[n] = median([r["peak_rss_mb"] - r["base_rss_mb"] for r in results["rlm"]])
    return rows, rss_by_size


def _rows(n: int, results: dict[str, list[dict[str, Any]]]) -> list[Row]:
    bench = f"qdrant_expiry_{n // 1000}k"
    t = {k: median([r["seconds"] for r in v]) for k, v in results.items() if v}
    rlm, scroll = results["rlm"][0], results["scroll"][0]
    req_rlm = sum(rlm["requests"].values())
    req_scroll = sum(scroll["requests"].values())
    grow = {
        k: median([r["peak_rss_mb"] - r["base_rss_mb"] for r in v])
        for k, v in results.items()
        if k != "fix"
    }
    note = (
        f"local mode; {rlm['doomed_pairs']} doomed pairs = {rlm['deleted_points_full']} points; "
        "full sweep measured"
    )
    rows = [
        Row(bench, "client requests vs scroll+delete-by-id", req_rlm, req_scroll,
            ratio(req_scroll, req_rlm), note=f"rlm {rlm['requests']}; baseline {scroll['requests']}"),
        Row(bench, "seconds vs scroll+delete-by-id", t["rlm"], t["scroll"],
            ratio(t["scroll"], t["rlm"]), note=note),
        Row(bench, "sweep RSS growth MB (peak - after load) vs baseline", grow["rlm"],
            grow["scroll"], ratio(grow["scroll"], grow["rlm"]),
            note="local mode holds the collection in the process: growth above it is shown"),
    ]  # fmt: skip
    if results["fix"]:
        fix = results["fix"][0]
        rows.append(Row(
            bench, "seconds: proposed fix (must document_id any + should pairs) vs scroll+ids",
            t["fix"], t["scroll"], ratio(t["scroll"], t["fix"]), note=f"1 run; {fix['requests']}",
        ))  # fmt: skip
    return rows
