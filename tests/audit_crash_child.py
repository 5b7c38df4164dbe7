"""Run by tests/test_audit_sinks.py in its own process: seed one old orphan object, then run the
object cleanup and die with os._exit right after the audit `record` that precedes its delete.

Settings come from the environment; RLM_TEST_AUDIT_MONGO_URL, when set, is where the mongodb
sink writes (the metadata store itself stays the embedded one). RLM_TEST_NO_CRASH=1 runs the
cleanup to its end instead and prints its report.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from datetime import UTC, datetime, timedelta

from rlm_core.audit import AuditEntry, AuditLog
from rlm_core.clock import FakeClock
from rlm_core.domain import ResourceType
from rlm_core.lifecycle import LifecycleManager
from rlm_core.seeding import metadata_seeder
from rlm_core.settings import Settings
from rlm_core.stores import Stores

CRASH_CODE = 17
RUN_ID = os.environ.get("RLM_TEST_RUN_ID", "crash-run")
ORPHAN = "orphans/old-upload.pdf"
LIVE = "live/kept.pdf"


def main() -> None:
    base = Settings.from_env()
    mongo = os.environ.get("RLM_TEST_AUDIT_MONGO_URL")
    settings = dataclasses.replace(base, mongodb_url=mongo, audit_sink="mongodb") if mongo else base
    # A month from now every object just written is older than FILES_TTL_DAYS; a rerun goes
    # further ahead, past the lease the crashed run left behind.
    ahead = float(os.environ.get("RLM_TEST_DAYS_AHEAD", "30"))
    clock = FakeClock(datetime.now(UTC) + timedelta(days=ahead))
    manager = LifecycleManager(settings, Stores.from_settings(base), clock)
    _seed(manager, clock.now())
    if os.environ.get("RLM_TEST_NO_CRASH") != "1":
        _crash_after_audit()
    report = manager.cleanup(ResourceType.MINIO_FILES, run_id=RUN_ID)
    manager.close()
    print(json.dumps(report.as_seed_json(), default=str))


def _seed(manager: LifecycleManager, now: datetime) -> None:
    objects, metadata = manager.stores.objects(), manager.stores.metadata()
    objects.ensure_bucket()
    metadata.ensure_indexes()
    for key in (ORPHAN, LIVE):
        objects.put(key, io.BytesIO(b"%PDF-1.4 test"), 13, "application/pdf")
    # One live document: the orphan sweep refuses to run on an empty metadata store.
    metadata_seeder(metadata).insert_raw(
        "documents",
        [
            {
                "user_id": "u1",
                "filename": "kept.pdf",
                "minio_bucket": manager.settings.minio_bucket,
                "minio_key": LIVE,
                "status": "ready",
                "created_at": now.replace(tzinfo=None),
                "updated_at": now.replace(tzinfo=None),
            }
        ],
    )


def _crash_after_audit() -> None:
    record = AuditLog.record

    def record_then_die(self: AuditLog, entries: list[AuditEntry]) -> None:
        record(self, entries)
        if any(entry.action == "delete_orphan_object" for entry in entries):
            os._exit(CRASH_CODE)  # no flush, no finally, no atexit: a killed worker

    AuditLog.record = record_then_die  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
