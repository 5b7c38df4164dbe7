"""Concurrency: two cleanups of one store at once (per-store leases refuse the second; where
no lease can be taken, the Redis sweep's atomic check-and-unlink still counts each key once),
and uploads and session pick-ups during a sweep.

Each race is forced: barriers and hooks on the store calls make the parties meet at the
contested step, and each test asserts that the contested path really ran.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId

from rlm_core import LifecycleManager, ResourceType, Settings
from rlm_core.adapters.sqlite_metadata import encode
from rlm_core.clock import FakeClock
from rlm_core.ports import CacheSeed
from rlm_core.seeding import cache_seeder, metadata_seeder
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.faults import Call, FaultPlan, Hook, OnCall, Phase, chain, hooked
from tests.services import RedisServer, S3Server

WAIT = 60  # seconds a forced meeting may take before the test fails instead of hanging


def _both_at_once(*jobs: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {"RLM_DATA_DIR": str(tmp_path / "data"), "RLM_BATCH_SIZE": "50", **env}
    )


def _first(log: list[Call], name: str) -> Call:
    return next(c for c in log if c.name == name)


def _redis_world(tmp_path: Path, redis_srv: RedisServer) -> tuple[Settings, list[LifecycleManager]]:
    """Two managers over one Redis and one metadata store (where the leases live); 1000 idle
    keys without a TTL, 1000 young ones, and 200 keys that are not ours."""
    settings = _settings(tmp_path, REDIS_URL=redis_srv.url)
    clock = FakeClock(datetime.now(UTC))
    plain = [LifecycleManager.from_settings(settings, clock=clock) for _ in range(2)]
    seeds = [
        CacheSeed(f"doc:text:{i}".encode(), b"t", None, 7200 if i % 2 else 60) for i in range(2000)
    ]
    seeds += [CacheSeed(f"blacklist:{i}".encode(), b"x", None, 99_999) for i in range(200)]
    cache_seeder(plain[0].stores.cache()).seed(seeds)
    return settings, plain


def _assert_swept_once(redis_client: Any) -> None:
    left = set(redis_client.scan_iter(match="doc:text:*", count=1000))
    assert left == {f"doc:text:{i}".encode() for i in range(0, 2000, 2)}
    assert all(redis_client.ttl(k) > 0 for k in left)
    assert all(redis_client.ttl(f"blacklist:{i}") == -1 for i in range(200))


def _sweep_both(
    settings: Settings, plain: list[LifecycleManager], hooks: list[Hook], resource: ResourceType
) -> tuple[list[Any], list[list[Call]]]:
    logs: list[list[Call]] = [[], []]
    managers = [
        LifecycleManager(settings, hooked(m.stores, hook, log), m.clock)
        for m, hook, log in zip(plain, hooks, logs, strict=True)
    ]
    try:
        reports = _both_at_once(*(lambda m=m: m.cleanup(resource) for m in managers))
    finally:
        for m in plain:
            m.close()
    return reports, logs


def test_two_redis_sweeps_at_once_one_takes_the_lease_the_other_is_refused(
    tmp_path: Path, redis_srv: RedisServer, redis_client: Any
) -> None:
    settings, plain = _redis_world(tmp_path, redis_srv)
    # Both ask for the lease at the same moment: the metadata store lets exactly one have it.
    meet = threading.Barrier(2, timeout=WAIT)
    at_lease = [OnCall("metadata", "acquire_lease", 0, meet.wait) for _ in plain]
    reports, logs = _sweep_both(settings, plain, list(at_lease), ResourceType.REDIS_CACHE)
    assert [h.fired for h in at_lease] == [1, 1]
    got = [_first(log, "metadata.acquire_lease").result is None for log in logs]
    assert sorted(got) == [False, True], "both runs got the lease, or neither did"
    winner, loser = (0, 1) if got[0] else (1, 0)
    assert reports[winner].success and reports[winner].deleted_counts["redis"] == 1000
    refusal = " | ".join(reports[loser].errors)
    assert "redis" in refusal and "running" in refusal, refusal
    assert reports[loser].total_deleted == 0
    assert not [c for c in logs[loser] if c.store == "cache" and c.mutating]
    _assert_swept_once(redis_client)


def test_two_redis_sweeps_without_leases_unlink_each_key_once(
    tmp_path: Path, redis_srv: RedisServer, redis_client: Any
) -> None:
    """The metadata store, where leases live, is down. A Redis sweep needs nothing else, so
    both run; they scan the same first batch and meet right before their first UNLINK: the
    atomic check-and-unlink gives each idle key to exactly one of them."""
    settings, plain = _redis_world(tmp_path, redis_srv)
    meet = threading.Barrier(2, timeout=WAIT)
    outages = [FaultPlan(down="metadata") for _ in plain]
    at_unlink = [OnCall("cache", "unlink_idle", 0, meet.wait) for _ in plain]
    hooks = [chain(o, u) for o, u in zip(outages, at_unlink, strict=True)]
    reports, logs = _sweep_both(settings, plain, hooks, ResourceType.REDIS_CACHE)
    assert all(o.injected[0] == "outage:metadata.acquire_lease" for o in outages)
    assert all(r.success for r in reports), [r.errors for r in reports]
    assert [h.fired for h in at_unlink] == [1, 1]
    first = [_first(log, "cache.unlink_idle") for log in logs]
    asked = [set(c.args[0]) for c in first]
    took = [set(c.result) for c in first]
    assert asked[0] & asked[1], "the two sweeps never asked for the same key: no contest"
    assert not took[0] & took[1], "one key unlinked (and counted) by both sweeps"
    assert asked[0] | asked[1] == took[0] | took[1]
    assert sum(r.deleted_counts["redis"] for r in reports) == 1000
    _assert_swept_once(redis_client)


def test_an_object_sweep_started_during_another_is_refused_and_late_references_protect(
    tmp_path: Path, s3_srv: S3Server, bucket_name: str
) -> None:
    """The first sweep lists every object; before it reads references the app references a
    quarter of the old unreferenced ones; right before its first DeleteObjects, a second
    sweep of the same store starts. It must be refused, delete nothing and count nothing."""
    settings = _settings(
        tmp_path,
        MINIO_ENDPOINT=s3_srv.endpoint,
        MINIO_ACCESS_KEY=S3_ACCESS_KEY,
        MINIO_SECRET_KEY=S3_SECRET_KEY,
        MINIO_BUCKET=bucket_name,
    )
    clock = FakeClock(datetime.now(UTC))
    first, second = (LifecycleManager.from_settings(settings, clock=clock) for _ in range(2))
    objects, metadata = first.stores.objects(), first.stores.metadata()
    objects.ensure_bucket()
    metadata.ensure_indexes()
    keys = [f"{uuid.uuid4()}/f{i}.pdf" for i in range(300)]
    for key in keys:
        objects.put(key, io.BytesIO(b"pdf"), 3, "application/pdf")
    clock.advance(days=8)  # past FILES_TTL_DAYS since the S3 server stamped them
    referenced, late = keys[::2], keys[1::4]
    metadata_seeder(metadata).insert_raw("documents", [_record(k, clock.now()) for k in referenced])
    orphans = set(keys) - set(referenced) - set(late)
    seconds: list[Any] = []

    def reference_late() -> None:
        metadata_seeder(metadata).insert_raw("documents", [_record(k, clock.now()) for k in late])

    log: list[Call] = []
    listed = threading.Event()
    at_references = OnCall("metadata", "referenced_object_keys", 0, reference_late)
    at_delete = OnCall(
        "objects", "remove", 0, lambda: seconds.append(second.cleanup(ResourceType.MINIO_FILES))
    )

    def hook(store: str, method: str, phase: Phase) -> None:
        if (store, method) == ("objects", "iter_objects"):
            listed.set()
        if listed.is_set():
            at_references(store, method, phase)
            at_delete(store, method, phase)

    hooked_first = LifecycleManager(settings, hooked(first.stores, hook, log), clock)
    report = hooked_first.cleanup(ResourceType.MINIO_FILES)
    left = {o.key for o in objects.iter_objects()}
    first.close()
    second.close()
    # The contested paths ran: the late objects were listed as old orphans before the app
    # referenced them, and the second sweep started while the first was about to delete.
    assert at_references.fired == 1 and at_delete.fired == 1
    assert set(late) <= {
        c.result.key for c in log if c.name == "objects.iter_objects:page" and c.result
    }
    (refused,) = seconds
    refusal = " | ".join(refused.errors)
    assert "minio" in refusal and "running" in refusal, refusal
    assert refused.total_deleted == 0
    assert report.success, report.errors
    assert left == set(referenced) | set(late)
    # Reports are true (SPEC 4.1 (9)): the orphans were counted once, by the run that deleted them.
    assert report.deleted_counts["minio"] == len(orphans)


# ---------------------------------------------------------------- uploads during a sweep


@dataclass
class Old:
    doc_id: str
    key: str
    body: bytes


def _old_document(manager: LifecycleManager, now: datetime, i: int) -> Old:
    """A ready document last touched 30 days ago, with its object and its file hash."""
    body = f"old report {i} ".encode() * 300
    key = f"{uuid.uuid4()}/old{i}.pdf"
    manager.stores.objects().put(key, io.BytesIO(body), len(body), "application/pdf")
    when = (now - timedelta(days=30)).replace(tzinfo=None)
    doc_id = ObjectId()
    metadata_seeder(manager.stores.metadata()).insert_raw(
        "documents",
        [
            {
                "_id": doc_id,
                "user_id": "user-1",
                "filename": f"old{i}.pdf",
                "minio_bucket": manager.settings.minio_bucket,
                "minio_key": key,
                "size_bytes": len(body),
                "status": "ready",
                "created_at": when,
                "updated_at": when,
                "metadata": {"file_hash": hashlib.sha256(body).hexdigest()},
            }
        ],
    )
    return Old(str(doc_id), key, body)


def test_uploads_during_sweeps_are_never_lost(tmp_path: Path) -> None:
    """The sweep reads a page of old documents as expiry candidates; before it acts on the
    page, the app re-uploads some of them (dedup touches them), picks others up in new chat
    sessions, bumps an old session that references more of them, and uploads new files. Only
    the touch and the reference re-checks can save those documents; the untouched ones go."""
    settings = replace(_settings(tmp_path), batch_size=100)
    clock = FakeClock(datetime.now(UTC))
    sweeper_base = LifecycleManager.from_settings(settings, clock=clock)
    uploader = LifecycleManager.from_settings(settings, clock=clock)
    uploader.stores.objects().ensure_bucket()
    uploader.stores.metadata().ensure_indexes()
    now = clock.now()
    old = [_old_document(uploader, now, i) for i in range(16)]
    reuploaded, picked_up, bumped, untouched = old[0:4], old[4:8], old[8:12], old[12:16]
    stale = _session(uploader, now - timedelta(days=3), [o.doc_id for o in bumped])
    orphans = _old_orphans(settings, uploader.stores.objects(), 10)
    contested = {o.doc_id for o in old}
    listed, written = threading.Event(), threading.Event()
    pauses: list[set[str]] = []
    log: list[Call] = []

    def pause_on_the_candidate_page(store: str, method: str, phase: Phase) -> None:
        if (store, method, phase) != ("metadata", "iter_documents:page", "after") or pauses:
            return
        page = {d.id for d in log[-1].result or []}
        if contested <= page:
            pauses.append(page)
            listed.set()
            assert written.wait(WAIT), "the app writes never came"

    sweeper = LifecycleManager(
        settings, hooked(sweeper_base.stores, pause_on_the_candidate_page, log), clock
    )
    results: dict[str, Any] = {}

    def app() -> None:
        assert listed.wait(WAIT), "the sweep never read the candidates"
        for o in reuploaded:
            results[o.doc_id] = uploader.ingest("user-1", "again.pdf", io.BytesIO(o.body))
        for i in range(8):
            results[f"new-{i}"] = uploader.ingest(
                "user-1", f"n{i}.pdf", io.BytesIO(os.urandom(900))
            )
        _session(uploader, clock.now(), [o.doc_id for o in picked_up])
        _bump(uploader, stale, clock.now())
        written.set()

    def sweep() -> int:
        runs = 0
        while runs < 3:
            assert sweeper.cleanup(ResourceType.MINIO_FILES).success
            runs += 1
        return runs

    _both_at_once(app, sweep)
    objects = uploader.stores.objects()
    left = {o.key for o in objects.iter_objects()}
    docs = uploader.stores.metadata().get_documents(
        [*contested, *(r.document_id for r in results.values())]
    )
    sweeper_base.close()
    uploader.close()
    # The contested path ran: the sweep held every old document as a candidate, then the
    # app wrote.
    assert len(pauses) == 1 and contested <= pauses[0]
    for o in reuploaded:
        assert results[o.doc_id].duplicate and results[o.doc_id].document_id == o.doc_id
    for r in results.values():
        assert r.document_id in docs, f"{r} was answered, then its record was deleted"
        assert docs[r.document_id].minio_key in left, f"{r} was answered, then its object went"
    for o in picked_up + bumped:
        assert o.doc_id in docs and docs[o.doc_id].minio_key in left, f"{o.doc_id} was lost"
    # ... and the sweep did act on that page: what nobody touched went.
    assert not {o.doc_id for o in untouched} & set(docs)
    assert not {o.key for o in untouched} & left
    assert not set(orphans) & left


def _session(manager: LifecycleManager, updated: datetime, doc_ids: list[str]) -> str:
    session_id = str(uuid.uuid4())
    metadata_seeder(manager.stores.metadata()).insert_raw(
        "chat_sessions",
        [
            {
                "_id": session_id,
                "user_id": "user-1",
                "created_at": updated.replace(tzinfo=None),
                "updated_at": updated.replace(tzinfo=None),
                "documents": [{"doc_id": d, "filename": "x.pdf"} for d in doc_ids],
                "attached_file_ids": [],
            }
        ],
    )
    return session_id


def _bump(manager: LifecycleManager, session_id: str, when: datetime) -> None:
    """The app's own write: the session is used again (the embedded SQLite store, raw)."""
    store = manager.stores.metadata()
    with store._locked() as conn:  # type: ignore[attr-defined]
        conn.execute(
            "UPDATE chat_sessions SET body = json_set(body, '$.updated_at', json(?)) WHERE id = ?",
            (encode(when.replace(tzinfo=None)), session_id),
        )


def _old_orphans(settings: Settings, objects: Any, count: int) -> list[str]:
    keys = [f"{uuid.uuid4()}/orphan{i}.pdf" for i in range(count)]
    old = (datetime.now(UTC) - timedelta(days=30)).timestamp()
    for key in keys:
        objects.put(key, io.BytesIO(b"old"), 3, "application/pdf")
        path = settings.data_dir / "objects" / settings.minio_bucket / key
        os.utime(path, (old, old))
    return keys


def _record(key: str, now: datetime) -> dict[str, Any]:
    naive = now.replace(tzinfo=None)
    return {
        "_id": ObjectId(),
        "user_id": "user-1",
        "filename": key.rsplit("/", 1)[1],
        "minio_bucket": None,
        "minio_key": key,
        "size_bytes": 3,
        "status": "ready",
        "created_at": naive,
        "updated_at": naive,
        "metadata": {},
    }
