"""Measure the windows no store can close: from the last re-check of a delete's condition to
the delete request itself, per delete path, on the embedded stack.

Run: `.venv/bin/python -m bench.windows [--documents N] [--points N]` (a few seconds). It prints
one row per delete call: the store call that re-checked last, the delete, and the gap in
microseconds (median and max over the calls). Timings belong here, never in a unit test.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId

from rlm_core import LifecycleManager, Settings
from rlm_core.clock import FakeClock
from rlm_core.ports import CacheSeed, VectorPoint
from rlm_core.stores import Stores

DELETES = {"delete_for_documents", "delete_points", "unlink", "remove", "delete_documents"}
CHECKS = {
    "active_references",
    "active_sessions",
    "claimed",
    "find_documents",
    "referenced_object_keys",
}


class _Timed:
    """Proxy that stamps the start and end of every call of one adapter."""

    def __init__(self, inner: Any, log: list[tuple[str, float, float]]) -> None:
        self._inner, self._log = inner, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._log.append((name, start, time.perf_counter()))

        return timed


def _seed(manager: LifecycleManager, documents: int, points: int, now: datetime) -> None:
    stores, old = manager.stores, now - timedelta(days=30)
    stores.metadata().ensure_indexes()
    stores.vectors().ensure_collection()
    stores.objects().ensure_bucket()
    docs = []
    for _ in range(documents):
        oid = ObjectId()
        key = f"{uuid.uuid4()}/f.pdf"
        stores.objects().put(key, io.BytesIO(b"x" * 100), 100, None)
        naive = old.replace(tzinfo=None)
        docs.append(
            {
                "_id": oid,
                "user_id": "u",
                "status": "ready",
                "minio_bucket": stores.objects().bucket,
                "minio_key": key,
                "created_at": naive,
                "updated_at": naive,
            }
        )
    stores.metadata().insert_raw("documents", docs)
    stores.vectors().upsert(
        [
            VectorPoint(
                str(uuid.uuid4()),
                [0.1] * 384,
                {"session_id": "s", "document_id": str(d["_id"]), "created_at": old.timestamp()},
            )
            for d in docs
        ]
    )
    stores.metadata().insert_raw("chat_sessions", [{"_id": "s", "updated_at": naive}])
    stores.cache().seed([CacheSeed(f"doc:text:{d['_id']}".encode(), b"t", 3600) for d in docs])
    stores.vectors().upsert(
        [
            VectorPoint(
                str(uuid.uuid4()),
                [0.1] * 384,
                {"session_id": "s", "document_id": str(ObjectId()), "created_at": old.timestamp()},
            )
            for _ in range(points)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--points", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env({"RLM_DATA_DIR": str(Path(folder)), "RLM_BATCH_SIZE": "50"})
        clock = FakeClock(datetime.now(UTC))
        seeding = LifecycleManager.from_settings(settings, clock=clock)
        _seed(seeding, args.documents, args.points, clock.now())
        seeding.close()
        log: list[tuple[str, float, float]] = []
        inner = Stores.from_settings(settings)
        timed = Stores(
            lambda: _Timed(inner.cache(), log),  # type: ignore[arg-type,return-value]
            lambda: _Timed(inner.vectors(), log),  # type: ignore[arg-type,return-value]
            lambda: _Timed(inner.objects(), log),  # type: ignore[arg-type,return-value]
            lambda: _Timed(inner.metadata(), log),  # type: ignore[arg-type,return-value]
        )
        report = LifecycleManager(settings, timed, clock).cleanup()
        inner.close()
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    last_check: tuple[str, float] | None = None
    for name, start, end in log:
        if name in CHECKS:
            last_check = (name, end)
        elif name in DELETES and last_check is not None:
            gaps[(last_check[0], name)].append((start - last_check[1]) * 1e6)
    print(
        f"cleanup of {args.documents} documents and {args.points} orphan points: "
        f"{report.deleted_counts}"
    )
    print("| last re-check | delete | calls | median gap (us) | max gap (us) |")
    print("|---|---|---:|---:|---:|")
    for (check, delete), values in sorted(gaps.items()):
        print(
            f"| {check} | {delete} | {len(values)} | {statistics.median(values):.0f} "
            f"| {max(values):.0f} |"
        )


if __name__ == "__main__":
    main()
