"""bench/run: every benchmark, a markdown table on stdout, JSON rows with --json PATH."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    api_bench,
    dedup_bench,
    erase_bench,
    fanout_bench,
    qdrant_bench,
    redis_bench,
    s3_bench,
    snapshot_bench,
)
from bench.common import Row, close_fork_server, forked_cpu_seconds

HERE = Path(__file__).resolve().parent

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        # Issue 16: at most 2 minutes of wall on an idle machine (the summary line gives wall
        # and CPU); Redis, S3, erase, fan-out and API about 75 s of it (NOTES.md finding 8).
        # Timed at 5k and 20k (at 2k rlm's fixed cost, its lease, would weigh on the 0.8x goal);
        # rlm's own memory traced at 2k and 20k (10x apart; 2k spans two 1,000-key batches).
        "redis": [5_000, 20_000],
        "redis_memory": [2_000, 20_000],
        # The S3 goal is requests per 1,000 more objects between these sizes (8 listing pages
        # apart); rlm's own S3 memory is traced at the s3_memory sizes below.
        "s3": [2_000, 10_000],
        # Counts are exact: the 10k S3 size runs once (its seconds are one run).
        "s3_single_run_from": 10_000,
        # rlm's own S3 memory at 10k and 100k objects over an in-memory listing: 1x must fill
        # the 10,000-object reference window, and a 100k S3 sweep alone would take minutes.
        # The traced runs, the Redis ones and the API's set-up run two at a time (untimed).
        "s3_memory": [10_000, 100_000],
        # 1x spans two sweep batches: with one batch only, rlm's memory would look flat-er
        # at 1x than it is (the sweep holds a batch while the next one is read).
        "qdrant": [2_000, 20_000],
        "qdrant_filter": (2_000,),
        # Qdrant at 1x holds the 2,000-point payload sample (rlm's own memory at 1x and 10x
        # then holds the same sample page).
        "snapshot": [(2_000, 2_000, 1_000), (20_000, 20_000, 10_000)],
        "dedup_mb": 64,
        "dedup_runs": 5,  # 64 MB is a fraction of a second: more runs for a steadier median
        "erase": [1, 10],
        "erase_runs": 1,
        # The erased user's documents (one session per 10): the full profile's 1,000 take
        # ~2,000 HEADs per erase on moto (one per object, again in the verification pass).
        "erase_user_docs": 200,
        "fanout": [20_000],  # 2 s a sweep; the gain is a floor on 2 cores whatever the size
        "fanout_runs": 1,
        "runs": 2,
        "naive_cap": 0.5,  # seconds, then extrapolated (checked every 1,000 keys)
        "per_object_cap": 0.5,  # seconds, then extrapolated; once per S3 size
        "snapshot_runs": 3,
    },
    "full": {
        "redis": [100_000, 1_000_000],
        "redis_memory": None,
        "s3": [10_000, 100_000],
        "s3_single_run_from": None,
        "s3_memory": None,
        "qdrant": [10_000, 100_000],
        "qdrant_filter": (10_000,),
        "snapshot": [(100_000, 10_000, 10_000), (1_000_000, 100_000, 100_000)],
        "dedup_mb": 512,
        "dedup_runs": 3,
        "erase": [10, 100],
        "erase_runs": 3,
        "erase_user_docs": 1_000,
        "fanout": [1_000_000],
        "fanout_runs": 1,
        "runs": 3,
        "naive_cap": 5.0,
        "per_object_cap": 5.0,
        "snapshot_runs": 3,
    },
}
VECTOR_SIZE = 384


def main() -> int:
    """Run the benchmarks with every temporary file under one folder removed at the end."""
    scratch = tempfile.mkdtemp(prefix="rlm-bench-run-")
    # Workers are subprocesses: TMPDIR sends their temporary folders here too.
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    try:
        return _main()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    parser.add_argument(
        "--only",
        default="redis,s3,qdrant,snapshot,dedup,erase,fanout,api",
        help="comma-separated benches",
    )
    parser.add_argument(
        "--results",
        metavar="PATH",
        help="markdown file to write (default: bench/RESULTS.md for the full profile, "
        "bench/results/quick.md for --quick, so a quick run never replaces the full table)",
    )
    args = parser.parse_args()
    name = "quick" if args.quick else "full"
    p = PROFILES[name]
    only = set(args.only.split(","))
    runs = int(p["runs"])
    rows: list[Row] = []
    start, cpu = time.perf_counter(), _cpu()
    load = _load()
    # Untimed jobs (Redis's traced runs, the API bench's snapshot_job set-up) join the S3
    # bench's untimed phase, two at a time.
    untimed: list[Callable[[], None]] = []
    prepared: list[api_bench.Prepared] = []
    if "api" in only and "s3" in only:
        untimed.append(lambda: prepared.append(_prepare_api()))
    if "redis" in only:
        got, redis_memory = redis_bench.run(
            p["redis"], runs, p["naive_cap"], p["redis_memory"], untimed
        )
        rows += got
    if "s3" in only:
        got, memory = s3_bench.run(
            p["s3"], runs, p["per_object_cap"], p["s3_single_run_from"], p["s3_memory"], untimed
        )
        untimed.clear()
    for job in untimed:
        job()
    if "redis" in only:
        rows += redis_memory.rows("redis_sweep", "raw pipelined sweep (a)")
    if "s3" in only:
        rows += [*got, *memory.rows("s3_sweep", "raw list + batch delete")]
    if "qdrant" in only:
        got, memory = qdrant_bench.run(p["qdrant"], runs, VECTOR_SIZE, p["qdrant_filter"])
        note = "local mode: the engine sorts every point id per scroll request (NOTES.md)"
        rows += [*got, *memory.rows("qdrant_expiry", "scroll + delete-by-id", note)]
    if "snapshot" in only:
        got, memory = snapshot_bench.run(p["snapshot"], int(p["snapshot_runs"]), VECTOR_SIZE)
        rows += [*got, *memory.rows("snapshot", "the raw scans")]
    if "dedup" in only:
        rows += dedup_bench.run(int(p["dedup_mb"]), int(p["dedup_runs"]))
    if "erase" in only:
        rows += erase_bench.run(p["erase"], int(p["erase_runs"]), int(p["erase_user_docs"]))
    if "fanout" in only:
        rows += fanout_bench.run(p["fanout"], int(p["fanout_runs"]))
    if "api" in only:
        rows += api_bench.run(name, prepared[0] if prepared else None)
    close_fork_server()
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    load = f"{load} -> {_load()}"
    command = "bench/run" + (" --quick" if args.quick else "")
    table = markdown(rows)
    missed = [r for r in rows if r.met is False]
    print(table)
    print(
        f"\n{len(rows)} rows in {elapsed:.0f}s, {cpu:.0f} CPU s ({name} profile); "
        f"load average {load}"
    )
    if missed:
        print(
            f"{len(missed)} goal row(s) missed: "
            + "; ".join(f"{r.bench} {r.metric}" for r in missed)
        )
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    default = HERE / ("results/quick.md" if args.quick else "RESULTS.md")
    results = Path(args.results) if args.results else default
    results.parent.mkdir(parents=True, exist_ok=True)
    _write_results(results, command, name, f"{elapsed:.0f} s, {cpu:.0f} CPU s", table, load)
    return 1 if missed else 0


def _prepare_api() -> api_bench.Prepared:
    """The API bench's set-up, finished: the snapshot_job run is its whole cost."""
    prepared = api_bench.prepare()
    prepared.wait()
    return prepared


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (workers, servers, the fork
    server) and of the forked workers: what the run costs whatever else the machine is doing."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    forked = forked_cpu_seconds()
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + forked


def _load() -> str:
    """The 1-minute load average: the machine is shared, so each result says how busy it was."""
    return f"{os.getloadavg()[0]:.1f}"


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def markdown(rows: list[Row]) -> str:
    lines = [
        "| bench | metric | rlm | baseline | ratio | goal | met | note |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**NO**")
        lines.append(
            f"| {r.bench} | {r.metric} | {_fmt(r.rlm)} | {_fmt(r.baseline)} | "
            f"{_fmt(r.ratio)} | {r.goal} | {met} | {r.note} |"
        )
    return "\n".join(lines)


def _machine() -> str:
    mem_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def _write_results(
    path: Path, command: str, profile: str, elapsed: str, table: str, load: str
) -> None:
    notes = (HERE / "NOTES.md").read_text() if (HERE / "NOTES.md").exists() else ""
    text = (
        "# rlm benchmarks: latest results\n\n"
        f"Command: `{command}` ({profile} profile, {elapsed}), "
        f"run {time.strftime('%Y-%m-%d %H:%M')}\n\n"
        f"Machine: {_machine()}; 1-minute load average at start -> end: {load}\n\n"
        "Each figure is the median of the runs; ratio > 1 means rlm is better (time: "
        "baseline/rlm; requests: baseline/rlm; MB/s: rlm/baseline), except rows whose goal "
        "reads `<=`. `bench/run` exits 1 when a goal row is missed.\n\n"
        f"{table}\n\n{notes}"
    )
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
