"""The six mutants that survived the audit of issue 17, each applied by hand to a scratch copy of
the tree and judged by the test named for it in mutation/README.md. The real tree is never
written. Exit status 0 only if every named test fails on its mutant and passes on the copy
without it.

    .venv/bin/python mutation/six_survivors.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from run import ROOT, check_copy_is_imported, git, test_env

FAST = [
    "--noconftest",
    "-p",
    "no:hypothesispytest",
    "-p",
    "no:anyio",
    "-q",
    "-p",
    "no:cacheprovider",
]


@dataclass(frozen=True)
class Survivor:
    """A historical survivor: where it changes the source, how, and the test that catches it."""

    what: str
    path: str
    edits: tuple[tuple[str, str], ...]  # (before, after), each found exactly once
    test: str
    # The same mutant in an earlier form of the source (modules change under perf work).
    alternative: tuple[tuple[str, str], ...] = ()


SIX = [
    Survivor(
        "an active session no longer protects its own Qdrant points",
        "rlm_core/cleanup/vectors.py",
        (
            (
                "inactive = [p for p in points if p.session_id not in active]",
                "inactive = list(points)",
            ),
        ),
        "tests/unit/test_cleanup_vectors.py::test_an_active_session_protects_its_own_points",
        (
            (
                "p.session_id not in active and p.document_id not in referenced]",
                "p.document_id not in referenced]",
            ),
        ),
    ),
    Survivor(
        "the orphan sweep writes its audit after the delete instead of before",
        "rlm_core/cleanup/objects.py",
        (
            (
                "    sweep.audit.record([_entry(sweep, o) for o in orphans])\n    if sweep.dry_run:\n",
                "    if sweep.dry_run:\n        sweep.audit.record([_entry(sweep, o) for o in orphans])\n",
            ),
            (
                "    failed = set(sweep.stores.objects().remove([o.key for o in orphans]))\n",
                "    failed = set(sweep.stores.objects().remove([o.key for o in orphans]))\n"
                "    sweep.audit.record([_entry(sweep, o) for o in orphans])\n",
            ),
        ),
        "tests/unit/test_cleanup_objects.py::"
        "test_an_old_orphan_is_audited_then_deleted_and_counted_by_its_stored_size",
    ),
    Survivor(
        "real Qdrant deletions are not audited",
        "rlm_core/cleanup/vectors.py",
        (
            (
                "    sweep.audit.record([_entry(point, reason, point_bytes) for point, reason in doomed])\n",
                "    if sweep.dry_run:\n"
                "        sweep.audit.record([_entry(p, reason, point_bytes) for p, reason in doomed])\n",
            ),
        ),
        "tests/unit/test_cleanup_vectors.py::"
        "test_old_points_of_a_vanished_document_are_audited_then_deleted",
    ),
    Survivor(
        "the loser of the dedup unique-index race raises instead of resolving to the winner",
        "rlm_core/dedup.py",
        (("return None  # a concurrent upload of the same bytes won: resolve to it", "raise"),),
        "tests/unit/test_dedup.py::test_the_loser_of_the_unique_index_race_resolves_to_the_winner",
    ),
    Survivor(
        "a cache key idle exactly REDIS_CACHE_TTL_HOURS is not unlinked (>= becomes >)",
        "rlm_core/policy.py",
        (
            (
                "if key.idle_seconds >= cache_ttl_seconds:",
                "if key.idle_seconds > cache_ttl_seconds:",
            ),
        ),
        "tests/unit/test_cleanup_cache.py::"
        "test_a_key_idle_exactly_the_ttl_is_unlinked_and_one_second_less_is_bounded",
    ),
    Survivor(
        "a plain UNLINK replaces the atomic check-and-unlink",
        "rlm_core/cleanup/cache.py",
        (
            (
                "gone = cache.unlink_idle([k.key for k in keys], ttl_seconds)",
                "gone = cache.unlink([k.key for k in keys])",
            ),
        ),
        "tests/unit/test_cleanup_cache.py::test_a_key_read_between_the_scan_and_the_unlink_is_kept",
    ),
]


def copy_tree(into: Path) -> None:
    """The working tree (tracked and untracked, not ignored), as mutation/run.py copies it."""
    for rel in git("ls-files", "-co", "--exclude-standard", "-z").split("\0"):
        src = ROOT / rel
        if rel and src.is_file():
            dst = into / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    check_copy_is_imported(into)


def outcome(tree: Path, test: str) -> int:
    cmd = [sys.executable, "-m", "pytest", *FAST, test]
    return subprocess.run(cmd, cwd=tree, env=test_env(tree), capture_output=True).returncode


def main() -> int:
    bad = 0
    with tempfile.TemporaryDirectory(prefix="six-survivors-") as scratch:
        tree = Path(scratch)
        copy_tree(tree)
        for s in SIX:
            path = tree / s.path
            original = path.read_text(encoding="utf-8")
            forms = [f for f in (s.edits, s.alternative) if f]
            found = [f for f in forms if all(original.count(b) == 1 for b, _ in f)]
            if not found:
                print(f"CANNOT APPLY  {s.what}: the source no longer reads as expected")
                bad += 1
                continue
            mutated_source = original
            for before, after in found[0]:
                mutated_source = mutated_source.replace(before, after)
            clean = outcome(tree, s.test)
            path.write_text(mutated_source, encoding="utf-8")
            try:
                mutated = outcome(tree, s.test)
            finally:
                path.write_text(original, encoding="utf-8")
            caught = clean == 0 and mutated == 1
            bad += not caught
            verdict = "caught" if caught else f"NOT CAUGHT (clean {clean}, mutant {mutated})"
            print(f"{verdict:<12}  {s.what}\n              by {s.test}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
