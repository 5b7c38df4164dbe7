"""Concurrency: two cleanups of one store at once (the queue prevents it; the core must not need
it to), and uploads during a sweep."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId

from rlm_core import LifecycleManager, ResourceType, Settings
from rlm_core.clock import FakeClock, SystemClock
from rlm_core.ports import CacheSeed
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.services import RedisServer, S3Server


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


def test_two_redis_sweeps_at_once_end_like_one(
    tmp_path: Path, redis_srv: RedisServer, redis_client: Any
) -> None:
    settings = _settings(tmp_path, REDIS_URL=redis_srv.url)
    managers = [LifecycleManager.from_settings(settings, clock=SystemClock()) for _ in range(2)]
    seeds = [
        CacheSeed(f"doc:text:{i}".encode(), b"t", None, 7200 if i % 2 else 60) for i in range(2000)
    ]
    seeds += [CacheSeed(f"blacklist:{i}".encode(), b"x", None, 99_999) for i in range(200)]
    managers[0].stores.cache().seed(seeds)
    reports = _both_at_once(*(lambda m=m: m.cleanup(ResourceType.REDIS_CACHE) for m in managers))
    for m in managers:
        m.close()
    assert all(r.success for r in reports)
    # Each idle key is unlinked by exactly one of the two (the script re-checks atomically).
    assert sum(r.deleted_counts["redis"] for r in reports) == 1000
    left = set(redis_client.scan_iter(match="doc:text:*", count=1000))
    assert left == {f"doc:text:{i}".encode() for i in range(0, 2000, 2)}
    assert all(redis_client.ttl(k) > 0 for k in left)
    assert all(redis_client.ttl(f"blacklist:{i}") == -1 for i in range(200))


def test_two_object_sweeps_at_once_keep_every_referenced_object(
    tmp_path: Path, s3_srv: S3Server, bucket_name: str
) -> None:
    settings = _settings(
        tmp_path,
        MINIO_ENDPOINT=s3_srv.endpoint,
        MINIO_ACCESS_KEY=S3_ACCESS_KEY,
        MINIO_SECRET_KEY=S3_SECRET_KEY,
        MINIO_BUCKET=bucket_name,
    )
    clock = FakeClock(datetime.now(UTC))
    managers = [LifecycleManager.from_settings(settings, clock=clock) for _ in range(2)]
    objects, metadata = managers[0].stores.objects(), managers[0].stores.metadata()
    objects.ensure_bucket()
    metadata.ensure_indexes()
    keys = [f"{uuid.uuid4()}/f{i}.pdf" for i in range(300)]
    for key in keys:
        objects.put(key, io.BytesIO(b"pdf"), 3, "application/pdf")
    clock.advance(days=8)
    referenced = keys[::2]
    metadata.insert_raw("documents", [_record(k, clock.now()) for k in referenced])
    reports = _both_at_once(*(lambda m=m: m.cleanup(ResourceType.MINIO_FILES) for m in managers))
    left = {o.key for o in objects.iter_objects()}
    for m in managers:
        m.close()
    assert all(r.success for r in reports), [r.errors for r in reports]
    assert left == set(referenced)


def test_uploads_during_sweeps_are_never_lost(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sweeper = LifecycleManager.from_settings(settings, clock=SystemClock())
    uploader = LifecycleManager.from_settings(settings, clock=SystemClock())
    objects = uploader.stores.objects()
    objects.ensure_bucket()
    uploader.stores.metadata().ensure_indexes()
    uploader.ingest("seed-user", "seed.pdf", io.BytesIO(b"keeps the metadata store non-empty"))
    orphans = _old_orphans(settings, objects, 40)
    results: list[Any] = []
    done = threading.Event()

    def upload() -> None:
        for i in range(40):
            results.append(
                uploader.ingest(f"user-{i % 3}", f"f{i}.pdf", io.BytesIO(os.urandom(2048)))
            )
        done.set()

    def sweep() -> int:
        runs = 0
        while not done.is_set() or runs < 2:
            assert sweeper.cleanup(ResourceType.MINIO_FILES).success
            runs += 1
            time.sleep(0.01)
        return runs

    _both_at_once(upload, sweep)
    left = {o.key for o in objects.iter_objects()}
    docs = uploader.stores.metadata().get_documents([r.document_id for r in results])
    sweeper.close()
    uploader.close()
    assert len(docs) == 40
    assert {r.minio_key for r in results} <= left
    assert not (set(orphans) & left)


def _old_orphans(settings: Settings, objects: Any, count: int) -> list[str]:
    keys = [f"{uuid.uuid4()}/old{i}.pdf" for i in range(count)]
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
