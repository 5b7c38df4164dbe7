"""pytest plugin of the mutation driver (loaded with `-p mutation_probe`).

In the baseline run it records, per test, its outcome, its duration and which lines of the target
module it executed (traced only inside that file, in the main thread and in threads the test
starts), so that the driver can give each mutant only the tests that reach it. In a mutant's run
it keeps exactly the tests the driver selected, in the driver's order (fastest first).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

_TARGETS = frozenset(p for p in os.environ.get("MUTATION_PROBE_TARGETS", "").split(os.pathsep) if p)
_OUT = os.environ.get("MUTATION_PROBE_OUT", "")
_SELECT = os.environ.get("MUTATION_SELECT", "")
_tests: dict[str, dict[str, Any]] = {}
_lines: set[tuple[str, int]] | None = None


def _trace_lines(frame: FrameType, event: str, arg: object) -> Any:
    if event == "line" and _lines is not None:
        _lines.add((frame.f_code.co_filename, frame.f_lineno))
    return _trace_lines


def _trace_calls(frame: FrameType, event: str, arg: object) -> Any:
    if frame.f_code.co_filename not in _TARGETS:
        return None
    if _lines is not None:
        _lines.add((frame.f_code.co_filename, frame.f_lineno))
    return _trace_lines


def _entry(nodeid: str) -> dict[str, Any]:
    return _tests.setdefault(nodeid, {"outcome": "passed", "seconds": 0.0, "lines": {}})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    global _lines
    _lines = set()
    if _TARGETS:
        threading.settrace(_trace_calls)
        sys.settrace(_trace_calls)
    try:
        yield
    finally:
        sys.settrace(None)
        threading.settrace(None)
        hits: dict[str, list[int]] = {}
        for filename, line in _lines:
            hits.setdefault(filename, []).append(line)
        _entry(item.nodeid)["lines"] = {f: sorted(set(ls)) for f, ls in hits.items()}
        _lines = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _entry(report.nodeid)
    entry["seconds"] += report.duration
    if report.failed:
        entry["outcome"] = "failed"
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """With MUTATION_SELECT (a JSON list of node ids), run exactly those tests, in that order."""
    if not _SELECT:
        return
    wanted: list[str] = json.loads(Path(_SELECT).read_text(encoding="utf-8"))
    by_id = {item.nodeid: item for item in items}
    missing = [t for t in wanted if t not in by_id]
    if missing:
        # The mutant changed which tests exist (e.g. a parametrization): count it as caught.
        pytest.exit(f"selected tests not collected: {missing[:3]}", returncode=3)
    kept = [by_id[t] for t in wanted]
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in set(wanted)])
    items[:] = kept


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _OUT:
        Path(_OUT).write_text(json.dumps(_tests), encoding="utf-8")
