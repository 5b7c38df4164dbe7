"""Security: dedup is scoped per user, and planted secrets appear nowhere rlm writes."""

from __future__ import annotations

import io
import json
import logging
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from rlm_core import LifecycleManager, Settings
from rlm_core.adapters.redis_cache import connect_redis
from rlm_core.audit import read_audit
from rlm_core.clock import FakeClock
from rlm_core.ports import CacheSeed, StoreError
from rlm_core.seeding import cache_seeder
from rlm_core.settings import SettingsError
from tests.conftest import S3_ACCESS_KEY
from tests.services import RedisServer, S3Server, free_port, redis_server

MINIO_SECRET = "minioSECRETplanted7d1f"
QDRANT_KEY = "qdrantAPIKEYplanted42c9"
REDIS_PASSWORD = "redisPASSWORDplanted0b3e"
MONGO_PASSWORD = "mongoPASSWORDplanted5a6c"
SECRETS = (MINIO_SECRET, QDRANT_KEY, REDIS_PASSWORD, MONGO_PASSWORD)


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret[:12]}... leaked into {where}: {text[:400]!r}"


# ---------------------------------------------------------------- dedup scope


def test_a_second_user_uploading_the_same_bytes_learns_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(datetime.now(UTC))
    settings = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "data")})
    with LifecycleManager.from_settings(settings, clock=clock) as manager:
        payload = b"%PDF-1.7 medical record" * 500
        first = manager.ingest("alice", "record.pdf", io.BytesIO(payload))
        before = manager.stores.metadata().get_documents([first.document_id])[first.document_id]
        clock.advance(hours=5)
        caplog.set_level(logging.INFO)
        caplog.clear()
        second = manager.ingest("bob", "record.pdf", io.BytesIO(payload))
        assert not second.duplicate
        assert second.document_id != first.document_id
        assert second.minio_key != first.minio_key
        assert "Duplicate file detected" not in caplog.text
        # Alice's document is not touched by Bob's upload (no cross-user liveness side effect).
        after = manager.stores.metadata().get_documents([first.document_id])[first.document_id]
        assert after.updated_at == before.updated_at
        # Each user's re-upload resolves to their own copy only.
        again = manager.ingest("bob", "other-name.pdf", io.BytesIO(payload))
        assert again.duplicate and again.document_id == second.document_id
        assert manager.stores.metadata().find_by_hash("bob", first.file_hash).id == (  # type: ignore[union-attr]
            second.document_id
        )
        keys = {o.key for o in manager.stores.objects().iter_objects()}
        assert keys == {first.minio_key, second.minio_key}


# ---------------------------------------------------------------- secrets in settings


def secret_env(tmp_path: Path, redis_port: int, s3: str, mongo_port: int) -> dict[str, str]:
    return {
        "RLM_DATA_DIR": str(tmp_path / "data"),
        "REDIS_URL": f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0",
        "MONGODB_URL": f"mongodb://rag:{MONGO_PASSWORD}@127.0.0.1:{mongo_port}/rag",
        "QDRANT_URL": f"http://127.0.0.1:{free_port()}",
        "QDRANT_API_KEY": QDRANT_KEY,
        "MINIO_ENDPOINT": s3,
        "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
        "MINIO_SECRET_KEY": MINIO_SECRET,
        "MINIO_BUCKET": f"sec-{uuid.uuid4().hex[:10]}",
        "RLM_STORE_TIMEOUT_SECONDS": "1",
    }


def test_settings_never_show_secrets(tmp_path: Path) -> None:
    settings = Settings.from_env(secret_env(tmp_path, 1, "127.0.0.1:9", 2))
    assert settings.minio_secret_key == MINIO_SECRET  # planted for real
    assert_clean(repr(settings), "repr(settings)")
    assert_clean(str(settings), "str(settings)")
    assert_clean(json.dumps(settings.public_view()), "public_view()")
    assert settings.public_view()["redis_url"].startswith("redis://default:***@")


@pytest.mark.parametrize(
    "broken",
    [
        {"FILES_TTL_DAYS": "soon"},
        {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@"},
        {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@ho st:1"},
        {"MONGODB_URL": f"mongo://rag:{MONGO_PASSWORD}@h/db"},
        {"MONGODB_URL": f"mongodb://rag:{MONGO_PASSWORD}@[::1"},
        {"QDRANT_URL": f"ftp://k:{QDRANT_KEY}@h"},
        {"MINIO_ENDPOINT": f"http://ak:{MINIO_SECRET}@h:9000"},
        {"MINIO_SECRET_KEY": "   "},
        {"QDRANT_API_KEY": " ", "MINIO_SECURE": "perhaps"},
    ],
)
def test_settings_errors_never_show_secrets(tmp_path: Path, broken: dict[str, str]) -> None:
    env = secret_env(tmp_path, 1, "127.0.0.1:9", 2) | broken
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert_clean(str(info.value), "SettingsError")
    assert_clean(repr(info.value), "repr(SettingsError)")
    assert_clean(" ".join(info.value.problems), "SettingsError.problems")


# ---------------------------------------------------------------- secrets in logs, reports, audit


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    """A private redis-server that requires the planted password."""
    with redis_server() as server:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        client.config_set("requirepass", REDIS_PASSWORD)
        client.close()
        yield server


def all_audit_text(settings: Settings) -> str:
    return "\n".join(
        json.dumps(read_audit(p)) for p in sorted(Path(settings.audit_path).glob("*.jsonl"))
    )


def test_no_secret_in_logs_reports_or_audit_of_cleanup_and_ingest(
    tmp_path: Path,
    locked_redis: RedisServer,
    s3_srv: S3Server,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every library's debug output too (urllib3, httpx, ...)
    env = secret_env(tmp_path, locked_redis.port, s3_srv.endpoint, free_port())
    # Metadata and Qdrant embedded so ingest and the cascade work; the dead Mongo (with a
    # password) and the dead Qdrant server (with an API key) get their own run below.
    settings = Settings.from_env(
        {k: v for k, v in env.items() if k not in {"MONGODB_URL", "QDRANT_URL"}}
    )
    clock = FakeClock(datetime.now(UTC))
    texts: list[tuple[str, str]] = []
    with LifecycleManager.from_settings(settings, clock=clock) as manager:
        manager.stores.objects().ensure_bucket()
        first = manager.ingest("user-1", "a.pdf", io.BytesIO(b"one" * 100))
        dup = manager.ingest("user-1", "a.pdf", io.BytesIO(b"one" * 100))
        assert dup.duplicate
        texts.append(("ingest results", repr((first, dup))))
        cache_seeder(manager.stores.cache()).seed(
            [
                CacheSeed(f"doc:text:{first.document_id}".encode(), b"t", None, 7200),
                CacheSeed(b"cache:x", b"t", None, 7200),
            ]
        )
        manager.stores.objects().put("orphan/old.pdf", io.BytesIO(b"o"), 1, None)
        with manager.stores.metadata()._locked() as conn:  # type: ignore[attr-defined]
            conn.execute("UPDATE documents SET body = json_set(body, '$.status', 'ready')")
        clock.advance(days=30)
        manager.stores.vectors().ensure_collection()
        report = manager.cleanup()
        assert report.deleted_counts["mongodb"] == 1 and report.deleted_counts["minio"] >= 1
        texts.append(("cleanup report", json.dumps(report.as_seed_json())))
        texts.append(("report message", report.message()))
        texts.append(("audit records", all_audit_text(settings)))
        assert "orphan/old.pdf" in texts[-1][1]  # the audit really has content to leak into

    with LifecycleManager.from_settings(Settings.from_env(env), clock=clock) as manager:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = manager.cleanup()
        # With the metadata store down the run cannot take its leases: it deletes nothing and
        # says why (the error text is what must stay free of secrets).
        assert report.total_deleted == 0
        assert any(e.startswith("mongodb:") and "MongoDB" in e for e in report.errors), (
            report.errors
        )
        texts.append(("cleanup report (mongo down)", json.dumps(report.as_seed_json())))
        with pytest.raises(StoreError) as info:
            manager.ingest("user-1", "b.pdf", io.BytesIO(b"two"))
        texts.append(("ingest error", f"{info.value!r} {info.value}"))

    texts.append(("log records", caplog.text))
    texts.append(("log record args", " ".join(repr(r.__dict__) for r in caplog.records)))
    out, err = capfd.readouterr()
    texts.append(("stdout/stderr", out + err))
    assert "Duplicate file detected" in caplog.text
    for where, text in texts:
        assert_clean(text, where)


def test_store_errors_never_show_the_redis_password(tmp_path: Path) -> None:
    url = f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"
    client = connect_redis(url, tmp_path, 1.0)
    from rlm_core.adapters.redis_cache import RedisCacheStore

    store = RedisCacheStore(client, ("cache:*",))
    with pytest.raises(StoreError) as info:
        list(store.scan(10))
    assert_clean(f"{info.value!r} {info.value} {info.value.__cause__}", "StoreError")


def test_wrong_redis_password_error_is_clear_and_clean(
    tmp_path: Path, locked_redis: RedisServer
) -> None:
    url = f"redis://default:wrong-{REDIS_PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    settings = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "d"), "REDIS_URL": url})
    clock = FakeClock(datetime.now(UTC))
    with LifecycleManager.from_settings(settings, clock=clock) as manager:
        report = manager.cleanup()
        redis_errors = [e for e in report.errors if e.startswith("redis:")]
        assert redis_errors and "127.0.0.1" in redis_errors[0], report.errors
        assert_clean(json.dumps(report.as_seed_json()), "wrong-password report")
