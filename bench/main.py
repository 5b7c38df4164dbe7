"""bench/run: every benchmark, a markdown table on stdout, JSON rows with --json PATH."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import dedup_bench, qdrant_bench, redis_bench, s3_bench, snapshot_bench
from bench.common import Row, ratio

HERE = Path(__file__).resolve().parent

PROFILES = {
    "quick": {
        "redis": [10_000, 100_000],
        "s3": [2_000, 20_000],
        "qdrant": [1_000, 10_000],
        "qdrant_filter": (1_000,),
        "snapshot": (50_000, 5_000, 5_000),
        "dedup_mb": 64,
        "runs": 3,
        "naive_cap": 0.5,
        "per_object_cap": 0.5,
        "snapshot_runs": 3,
    },
    "full": {
        "redis": [100_000, 1_000_000],
        "s3": [10_000, 100_000],
        "qdrant": [10_000, 100_000],
        "qdrant_filter": (10_000,),
        "snapshot": (1_000_000, 100_000, 100_000),
        "dedup_mb": 512,
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
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    parser.add_argument(
        "--only", default="redis,s3,qdrant,snapshot,dedup", help="comma-separated benches"
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
    runs = int(p["runs"])  # type: ignore[call-overload]
    rows: list[Row] = []
    start = time.perf_counter()
    if "redis" in only:
        got, rss = redis_bench.run(p["redis"], runs, p["naive_cap"])  # type: ignore[arg-type]
        rows += [*got, _flat("redis_sweep", rss)]
    if "s3" in only:
        got, rss = s3_bench.run(p["s3"], runs, p["per_object_cap"])  # type: ignore[arg-type]
        rows += [*got, _flat("s3_sweep", rss)]
    if "qdrant" in only:
        sizes = p["qdrant"]
        got, rss, base = qdrant_bench.run(sizes, runs, VECTOR_SIZE, p["qdrant_filter"])  # type: ignore[arg-type]
        rows += got
        if len(rss) > 1:
            small, big = min(base), max(base)
            note = (
                f"the scroll+delete-by-id baseline grows alike: {base[big]:.1f} vs "
                f"{base[small]:.1f} MB ({base[big] / base[small]:.2f}x); see NOTES.md finding 1"
            )
            rows.append(_flat("qdrant_expiry (growth above loaded collection)", rss, note))
    if "snapshot" in only:
        keys, points, objects = p["snapshot"]  # type: ignore[misc]
        rows += snapshot_bench.run(keys, points, objects, int(p["snapshot_runs"]), VECTOR_SIZE)  # type: ignore[call-overload]
    if "dedup" in only:
        rows += dedup_bench.run(int(p["dedup_mb"]), runs)  # type: ignore[call-overload]
    elapsed = time.perf_counter() - start
    command = "bench/run" + (" --quick" if args.quick else "")
    table = markdown(rows)
    print(table)
    print(f"\n{len(rows)} rows in {elapsed:.0f}s ({name} profile)")
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    default = HERE / ("results/quick.md" if args.quick else "RESULTS.md")
    results = Path(args.results) if args.results else default
    results.parent.mkdir(parents=True, exist_ok=True)
    _write_results(results, command, name, elapsed, table)
    return 0


def _flat(bench: str, rss: dict[int, float], note: str = "") -> Row:
    small, big = min(rss), max(rss)
    growth = ratio(rss[big], rss[small])
    return Row(
        bench,
        f"peak RSS MB at {big // small}x size ({big}) vs 1x ({small})",
        rss[big],
        rss[small],
        growth,
        "<= 1.2x",
        growth is not None and growth <= 1.2,
        note,
    )


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


def _write_results(path: Path, command: str, profile: str, elapsed: float, table: str) -> None:
    notes = (HERE / "NOTES.md").read_text() if (HERE / "NOTES.md").exists() else ""
    text = (
        "# rlm benchmarks: latest results\n\n"
        f"Command: `{command}` ({profile} profile, {elapsed:.0f} s), "
        f"run {time.strftime('%Y-%m-%d %H:%M')}\n\n"
        f"Machine: {_machine()}\n\n"
        "Each figure is the median of the runs; ratio > 1 means rlm is better (time: "
        "baseline/rlm; requests: baseline/rlm; MB/s: rlm/baseline), except rows whose goal "
        "reads `<=`.\n\n"
        f"{table}\n\n{notes}"
    )
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
