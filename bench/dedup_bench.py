"""Dedup ingest of one large file: SHA-256 while streaming vs `sha256sum`, and peak RSS."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import MIB, Row, log, median, ratio, run_worker


def make_file(size_mb: int) -> Path:
    path = Path(tempfile.mkdtemp(prefix="rlm-bench-dedup-")) / f"upload-{size_mb}MB.bin"
    block = os.urandom(MIB)
    with path.open("wb") as out:
        for i in range(size_mb):
            out.write(block[i % 251 :] + block[: i % 251])  # distinct blocks, cheap to make
    return path


def _open_manager() -> tuple[Any, Path]:
    """A LifecycleManager on the embedded disk object store + SQLite metadata, stores opened."""
    from rlm_core.clock import SystemClock
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.settings import Settings
    from rlm_core.stores import Stores

    data = Path(tempfile.mkdtemp(prefix="rlm-bench-data-"))
    settings = Settings(data_dir=data)
    manager = LifecycleManager(settings, Stores.from_settings(settings), SystemClock())
    manager.stores.objects().ensure_bucket()
    manager.stores.metadata()
    return manager, data


def rlm_ingest(params: dict[str, Any]) -> dict[str, Any]:
    """LifecycleManager.ingest on the embedded disk object store + SQLite metadata."""
    manager, data = _open_manager()
    start = time.perf_counter()
    with open(params["path"], "rb") as stream:
        result = manager.ingest("user-1", "upload.bin", stream)
    seconds = time.perf_counter() - start
    manager.close()
    shutil.rmtree(data, ignore_errors=True)
    return {"seconds": seconds, "size": result.size_bytes, "duplicate": result.duplicate}


def baseline_process(params: dict[str, Any]) -> dict[str, Any]:
    """A python process that imports rlm and opens the same stores, ingesting nothing."""
    manager, data = _open_manager()
    manager.close()
    shutil.rmtree(data, ignore_errors=True)
    return {"seconds": 0.0}


def run(size_mb: int, runs: int) -> list[Row]:
    path = make_file(size_mb)
    try:
        rlm: list[dict[str, Any]] = []
        sums: list[float] = []
        base: list[float] = []
        for r in range(runs):
            start = time.perf_counter()
            subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
            sums.append(time.perf_counter() - start)
            res = run_worker("bench.dedup_bench:rlm_ingest", {"path": str(path)})
            rlm.append(res)
            base.append(run_worker("bench.dedup_bench:baseline_process", {})["peak_rss_mb"])
            log(
                f"dedup {size_mb}MB run {r + 1}: rlm {res['seconds']:.2f}s "
                f"sha256sum {sums[-1]:.2f}s rss {res['peak_rss_mb']:.0f}MB base {base[-1]:.0f}MB"
            )
    finally:
        path.unlink()
        path.parent.rmdir()
    t_rlm = median([r["seconds"] for r in rlm])
    t_sum = median(sums)
    mbps_rlm, mbps_sum = size_mb / t_rlm, size_mb / t_sum
    above = median([r["peak_rss_mb"] for r in rlm]) - median(base)
    bench = f"dedup_ingest_{size_mb}MB"
    speed = ratio(mbps_rlm, mbps_sum)
    return [
        Row(bench, "MB/s vs sha256sum", mbps_rlm, mbps_sum, speed, ">= 0.9x",
            speed is not None and speed >= 0.9,
            "rlm = SHA-256 + copy to disk object store + fsync + SQLite insert; "
            "sha256sum only reads (page cache warm)"),
        Row(bench, "peak RSS MB above baseline process", above, median(base), None, "<= 64 MB",
            above <= 64, "baseline = python importing rlm and opening the same stores"),
    ]  # fmt: skip
