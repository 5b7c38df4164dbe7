"""Qdrant session expiry in qdrant-client local mode: rlm's sweep vs scroll + delete-by-id.

rlm's adapter sends server-side delete-by-filter to a Qdrant server; on the local engine (the
only one here) it selects the same points with one scroll and deletes them by id, because the
local engine evaluates every filter in Python over every point (see NOTES.md). The filter path
is timed too, once, as `delete-by-filter` (the same adapter with scan_deletes=False).
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    Memory,
    Row,
    growth,
    loaded_rss,
    log,
    median,
    ratio,
    run_worker,
    vm_kb,
)

COLLECTION = "rag_documents"
CHUNKS = 10  # points per document; 3 documents per session
SCROLL_PAGE = 10_000  # the page rlm's adapter reads in local mode; the baseline uses the same


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
        points = [_point(i, vectors[i - start], created) for i in range(start, stop)]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Local mode is not recommended")
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
                "_id": _session(s),
                "user_id": "u",
                "updated_at": naive_now - timedelta(hours=100 if s % 20 == 1 else 1),
                "documents": [],
                "attached_file_ids": [],
            }
            for s in range(sessions)
        ),
    )
    return client, meta, now, {"docs": docs, "sessions": sessions}


def _oid(d: int) -> str:
    # The string form of a documents._id ObjectId, as the points carry it.
    return f"{d:024x}"


def _session(s: int) -> str:
    return str(uuid.UUID(int=s + 1))


def rlm_vectors(loaded: Loaded, params: dict[str, Any]) -> dict[str, Any]:
    """LifecycleManager.cleanup(QDRANT_VECTORS): a full sweep, timed end to end.

    With params["trace"], rlm's own allocations are traced (a separate run: tracing is slow)."""
    from bench.counting import CountingProxy, OwnMemory
    from rlm_core.adapters.qdrant_vectors import QdrantVectorStore
    from rlm_core.clock import FakeClock
    from rlm_core.domain import ResourceType
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    client, meta, now = loaded
    own = OwnMemory()
    proxy = CountingProxy(client)
    # Sampled at each page and store call of the adapter and at each audit write, not after
    # metadata calls: a sample reads every live trace (local mode's engine allocates ~10 per
    # point it returns: ~130 ms a sample at 20k points). Sampling at the audit writes alone was
    # tried and under-read the 1x peak (262 against 306 KiB at 10k points): part of the peak is
    # live only right after a page arrives (NOTES.md).
    metadata = CountingProxy(meta)
    vectors = CountingProxy(
        QdrantVectorStore(
            proxy,  # type: ignore[arg-type]
            COLLECTION,
            params["vector_size"],
            scan_deletes=params.get("scan_deletes", True),
        ),
        own.sample,
    )
    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    settings = Settings(data_dir=tmp, audit_dir=tmp, qdrant_vector_size=params["vector_size"])
    stores = Stores(
        cache=_unused,
        vectors=lambda: vectors,
        objects=_unused,
        metadata=lambda: metadata,
    )
    manager = LifecycleManager(settings, stores, FakeClock(now))
    base_rss = loaded_rss()
    if params.get("trace"):
        own.start()
    start, cpu = time.perf_counter(), time.process_time()
    report = manager.cleanup(ResourceType.QDRANT_VECTORS)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    traced = own.stop() if params.get("trace") else {}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "deleted_points": report.deleted_counts["qdrant"],
        "unknown": report.unknown.get("qdrant", 0),
        "errors": report.errors,
        "requests": dict(proxy.calls),
        "metadata_calls": dict(metadata.calls),
        "base_rss_mb": base_rss,
        "peak_rss_mb": vm_kb("VmHWM") / 1024.0,
        **traced,
    }


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


def scroll_by_id(loaded: Loaded, params: dict[str, Any]) -> dict[str, Any]:
    """Baseline: scroll payloads, keep ids per (session, document), same rules, delete by ids.

    With params["job"] it does what SPEC section 4 asks of any cleanup, as rlm must: before
    each delete request, the ids are read back and only points still as judged are kept (SPEC
    4.1 (4)), and one audit line per point is appended and fsynced (SPEC 4: audit before
    delete). Without it, the bare sweep (no audit, no re-check)."""
    from qdrant_client import models

    from bench.counting import CountingProxy

    client, meta, now = loaded
    proxy = CountingProxy(client)
    metadata = CountingProxy(meta)
    audit = Path(tempfile.mkdtemp(prefix="rlm-bench-audit-")) / "audit.jsonl"
    base_rss = loaded_rss()
    start, cpu = time.perf_counter(), time.process_time()
    since = now - timedelta(hours=24)
    groups: dict[tuple[str, str], list[Any]] = {}
    offset = None
    while True:
        records, offset = proxy.scroll(
            COLLECTION,
            limit=SCROLL_PAGE,
            offset=offset,
            with_payload=["session_id", "document_id", "created_at"],
            with_vectors=False,
        )
        for rec in records:
            p = rec.payload or {}
            groups.setdefault((p.get("session_id"), p.get("document_id")), []).append(rec.id)
        if offset is None:
            break
    doomed = _doomed(metadata, groups, since)
    pairs = [(i, pair) for pair in doomed for i in groups[pair]]
    deleted = 0
    for i in range(0, len(pairs), 1000):
        chunk = pairs[i : i + 1000]
        ids = [point for point, _ in chunk]
        if params.get("job"):
            ids = _still_doomed(proxy, dict(chunk), since.timestamp())
            kept = set(ids)
            _audit(audit, [(point, pair) for point, pair in chunk if point in kept])
        if ids:
            proxy.delete(COLLECTION, points_selector=models.PointIdsList(points=ids), wait=True)
        deleted += len(ids)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "doomed_pairs": len(doomed),
        "deleted_points": deleted,
        "requests": dict(proxy.calls),
        "metadata_calls": dict(metadata.calls),
        "base_rss_mb": base_rss,
        "peak_rss_mb": vm_kb("VmHWM") / 1024.0,
    }


def _still_doomed(client: Any, judged: dict[Any, tuple[str, str]], before: float) -> list[Any]:
    """The ids whose payload still names the judged pair and an old created_at."""
    records = client.retrieve(
        COLLECTION, ids=list(judged), with_payload=["session_id", "document_id", "created_at"]
    )
    return [
        r.id
        for r in records
        if (r.payload or {}).get("created_at", before) < before
        and ((r.payload or {}).get("session_id"), (r.payload or {}).get("document_id"))
        == judged[r.id]
    ]


def _audit(path: Path, points: list[tuple[Any, tuple[str, str]]]) -> None:
    """One JSON line per point, appended in one write and fsynced, as rlm's file sink does."""
    at = datetime.now(UTC).isoformat()
    lines = "".join(
        json.dumps({"run_id": "raw", "at": at, "store": "qdrant", "action": "delete_points",
                    "target": point, "session_id": s, "document_id": d}) + "\n"
        for point, (s, d) in points
    )  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, lines.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_pages(loaded: Loaded, params: dict[str, Any]) -> dict[str, Any]:
    """A raw sweep in bounded memory, like rlm's: per scroll page, the same rules over that
    page's (session, document) pairs, then delete by id; nothing kept between pages."""
    from qdrant_client import models

    from bench.counting import CountingProxy

    client, meta, now = loaded
    proxy = CountingProxy(client)
    metadata = CountingProxy(meta)
    base_rss = loaded_rss()
    start, cpu = time.perf_counter(), time.process_time()
    offset, deleted = None, 0
    while True:
        records, offset = proxy.scroll(
            COLLECTION,
            limit=SCROLL_PAGE,
            offset=offset,
            with_payload=["session_id", "document_id", "created_at"],
            with_vectors=False,
        )
        groups: dict[tuple[str, str], list[Any]] = {}
        for rec in records:
            p = rec.payload or {}
            groups.setdefault((p["session_id"], p["document_id"]), []).append(rec.id)
        ids = [
            i for pair in _doomed(metadata, groups, now - timedelta(hours=24)) for i in groups[pair]
        ]
        for i in range(0, len(ids), 1000):
            selector = models.PointIdsList(points=ids[i : i + 1000])
            proxy.delete(COLLECTION, points_selector=selector, wait=True)
        deleted += len(ids)
        if offset is None:
            break
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "deleted_points": deleted,
        "requests": dict(proxy.calls),
        "metadata_calls": dict(metadata.calls),
        "base_rss_mb": base_rss,
        "peak_rss_mb": vm_kb("VmHWM") / 1024.0,
    }


Loaded = tuple[Any, Any, datetime]
VARIANTS = {"rlm": rlm_vectors, "job": scroll_by_id, "bare": scroll_by_id, "pages": raw_pages,
            "filter": rlm_vectors, "trace": rlm_vectors}  # fmt: skip


def size_worker(params: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every variant of one size in one process, over one loaded collection: loading it is most
    of a worker's cost. The points a variant deleted are put back (same ids and payloads)
    before the next one; a variant's memory is its growth above the RSS it starts from."""
    client, meta, now, _ = _setup(params["n"], params["vector_size"])
    doomed = _doomed_points(params["n"], params["vector_size"], now)
    out: dict[str, list[dict[str, Any]]] = {}
    _freeze()
    for name in params["plan"]:
        options = {**params, "scan_deletes": name != "filter", "trace": name == "trace",
                   "job": name == "job"}  # fmt: skip
        out.setdefault(name, []).append(VARIANTS[name]((client, meta, now), options))
        _restore(client, doomed)
        _freeze()
    return out


def _freeze() -> None:
    """Move the loaded collection out of the cyclic GC's sight (gc.freeze), for every variant.

    Local mode keeps ~12 GC-tracked objects per point in this process; a full collection walks
    them all (0.13-0.2 s at 10k points, more than the sweep itself), and lands on whichever
    variant happens to cross the threshold. The store is not part of any sweep: a Qdrant
    server holds it in another process. Each variant's own objects are still collected."""
    gc.collect()
    gc.freeze()


def _point(i: int, vector: list[float], created: float) -> Any:
    """Point i: chunk i % CHUNKS of document i // CHUNKS, in session i // CHUNKS // 3."""
    from qdrant_client import models

    return models.PointStruct(
        # SPEC section 3: point id = UUID derived from {document_id}_{chunk_id}.
        id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"{_oid(i // CHUNKS)}_{i % CHUNKS}")),
        vector=vector,
        payload={
            "session_id": _session(i // CHUNKS // 3),
            "document_id": _oid(i // CHUNKS),
            "chunk_id": i % CHUNKS,
            "text": f"Fragmento {i % CHUNKS} del documento. " * 6,
            "page": 1 + i % CHUNKS // 3,
            "created_at": created,
            "metadata": {"filename": "informe.pdf"},
        },
    )


def _doomed_points(n: int, vector_size: int, now: datetime) -> list[Any]:
    """The points of the missing documents and inactive sessions, as _setup wrote them."""
    created = (now - timedelta(hours=48)).timestamp()
    vector = [1.0] * vector_size  # the sweep never reads vectors
    return [
        _point(i, vector, created)
        for i in range(n)
        if i // CHUNKS % 20 == 0 or i // CHUNKS // 3 % 20 == 1
    ]


def _restore(client: Any, points: list[Any]) -> None:
    for start in range(0, len(points), 1000):
        client.upsert(COLLECTION, points=points[start : start + 1000], wait=True)


def run(
    sizes: list[int], runs: int, vector_size: int, filter_sizes: tuple[int, ...] = ()
) -> tuple[list[Row], Memory]:
    """Each size in one worker: rlm and the baselines interleaved `runs` times, the bare and
    the page-by-page baselines once, the filter path once at the sizes in filter_sizes, then
    one traced rlm run (tracing last: it wraps the audit log for good)."""
    rows: list[Row] = []
    memory = Memory()
    for n in sizes:
        plan = [name for _ in range(runs) for name in ("rlm", "job")] + ["bare", "pages"]
        plan += ["filter"] * (n in filter_sizes) + ["trace"]
        params = {"n": n, "vector_size": vector_size, "plan": plan}
        got_all = run_worker("bench.qdrant_bench:size_worker", params, timeout=2400)
        results = {name: got_all[name] for name in VARIANTS if name in got_all}
        for name, got in results.items():
            for r in got:
                log(f"qdrant n={n} {name}: {r['seconds']:.2f}s (CPU {r['cpu_seconds']:.2f}s) "
                    f"{r['requests']}")  # fmt: skip
        rows += _rows(n, results)
        memory.growth[n] = median([growth(r) for r in results["rlm"]])
        memory.raw_growth[n] = median([growth(r) for r in results["job"]])
        memory.own_kb[n] = results["trace"][0]["own_peak_kb"]
        log(f"qdrant n={n} traced: own peak {memory.own_kb[n]:.0f} KiB "
            f"({results['trace'][0]['own_top']})")  # fmt: skip
    return rows, memory


def _rows(n: int, results: dict[str, list[dict[str, Any]]]) -> list[Row]:
    bench = f"qdrant_expiry_{n // 1000}k"
    t = {k: median([r["seconds"] for r in v]) for k, v in results.items() if v}
    cpu = {k: median([r["cpu_seconds"] for r in v]) for k, v in results.items() if v}
    rlm, job = results["rlm"][0], results["job"][0]
    same = all(
        r["deleted_points"] == rlm["deleted_points"]
        for k in ("job", "bare", "pages")
        for r in results[k]
    )
    note = (
        f"local mode; {rlm['deleted_points']} of {n} points deleted by rlm, "
        f"{job['deleted_points']} by the baseline; CPU seconds rlm/baseline "
        f"{cpu['rlm']:.2f}/{cpu['job']:.2f}"
    )
    speed = ratio(t["job"], t["rlm"])
    grow = {k: median([growth(r) for r in results[k]]) for k in ("rlm", "job")}
    rows = [
        Row(bench, "client requests vs scroll+delete-by-id", sum(rlm["requests"].values()),
            sum(job["requests"].values()),
            ratio(sum(job["requests"].values()), sum(rlm["requests"].values())),
            note=f"rlm {rlm['requests']}; baseline {job['requests']}"),
        Row(bench, "seconds vs scroll+delete-by-id doing the SPEC job (audit, re-read)",
            t["rlm"], t["job"], speed, ">= 1.0x", speed is not None and speed >= 1.0 and same,
            note),
        Row(bench, "seconds vs bare scroll+delete-by-id (no audit, no re-read)", t["rlm"],
            t["bare"], ratio(t["bare"], t["rlm"]),
            note=f"1 run; CPU seconds {cpu['bare']:.2f}: what SPEC 4 requires of any cleanup "
            "left out (NOTES.md)"),
        Row(bench, "seconds vs raw page-by-page sweep (bounded memory, like rlm)", t["rlm"],
            t["pages"], ratio(t["pages"], t["rlm"]),
            note=f"1 run, bare like the row above; {results['pages'][0]['metadata_calls']}"),
        Row(bench, "RSS growth MB above the loaded collection vs baseline", grow["rlm"],
            grow["job"], ratio(grow["job"], grow["rlm"]),
            note="the baseline keeps every point id of the collection; rlm one page"),
    ]  # fmt: skip
    if results.get("filter"):
        flt = results["filter"][0]
        rows.append(Row(
            bench, "seconds: delete-by-filter path (scan_deletes=False) vs scroll+ids",
            t["filter"], t["job"], ratio(t["job"], t["filter"]),
            note=f"1 run; what a server is sent, evaluated in Python by local mode; {flt['requests']}",
        ))  # fmt: skip
    return rows
