"""The audit file is created readable by all and writable by its owner only (rw-r--r--), under
the usual umask: an auditor can read it, no other user can rewrite the trail."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rlm_core.audit import AuditEntry, AuditLog

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_audit_file_is_owner_writable_and_world_readable(
    tmp_path: Path, usual_umask: None
) -> None:
    log = AuditLog(tmp_path, "run-1", False, NOW)
    log.record([AuditEntry("redis", "unlink", "cache:a", 10, "idle")])
    log.close()
    assert log.path is not None
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o644
