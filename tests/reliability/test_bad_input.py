"""A catalogue of bad input. Each case gets a clear error, or a conservative skip that is counted
in the report, and never a crash in the middle of a delete."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from rlm_core import LifecycleManager, ResourceType, Settings
from rlm_core.adapters.disk_objects import DiskObjectStore
from rlm_core.adapters.s3_objects import S3ObjectStore
from rlm_core.audit import read_audit
from rlm_core.ports import CacheSeed, VectorPoint
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from rlm_core.settings import ENV_VARIABLES, SettingsError
from tests.services import free_port

DAY = timedelta(days=1)


def raw_redis(manager: LifecycleManager) -> Any:
    return manager.stores.cache()._client  # type: ignore[attr-defined]


def point_count(manager: LifecycleManager, doc_ids: list[str]) -> int:
    """How many points name one of these documents."""
    found = manager.stores.vectors().points_for_documents(doc_ids)
    return sum(len(ids) for ids in found.values())


def naive_ago(manager: LifecycleManager, age: timedelta) -> Any:
    return (manager.clock.now() - age).replace(tzinfo=None)


def good_document(manager: LifecycleManager, age: timedelta, **fields: Any) -> tuple[str, str]:
    """A well-formed document with its object, chunks and text key; returns (id, object key)."""
    doc_id = str(ObjectId())
    key = f"{uuid.uuid4()}/ok.pdf"
    manager.stores.objects().put(key, io.BytesIO(b"ok" * 10), 20, "application/pdf")
    record = {
        "_id": ObjectId(doc_id),
        "user_id": "user-1",
        "filename": "ok.pdf",
        "size_bytes": 20,
        "minio_bucket": manager.stores.objects().bucket,
        "minio_key": key,
        "status": "ready",
        "created_at": naive_ago(manager, age),
        "updated_at": naive_ago(manager, age),
        "metadata": {"file_hash": uuid.uuid4().hex},
    }
    record.update(fields)
    metadata_seeder(manager.stores.metadata()).insert_raw("documents", [record])
    chunk_points(manager, str(record["_id"]), age)
    cache_seeder(manager.stores.cache()).seed(
        [CacheSeed(f"doc:text:{record['_id']}".encode(), b"t", 3600)]
    )
    return str(record["_id"]), key


def chunk_points(manager: LifecycleManager, doc_id: str, age: timedelta) -> None:
    created = (manager.clock.now() - age).timestamp()
    vector_seeder(manager.stores.vectors()).upsert(
        [
            VectorPoint(
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}_{i}")),
                [0.2] * 384,
                {"session_id": f"upload_{doc_id}", "document_id": doc_id, "created_at": created},
            )
            for i in range(2)
        ]
    )


# ---------------------------------------------------------------- documents


MALFORMED: dict[str, dict[str, Any]] = {
    "status int": {"status": 3},
    "status missing": {"status": None},
    "created_at str": {"created_at": "2024-01-01T00:00:00Z", "updated_at": None},
    "created_at missing": {"created_at": None, "updated_at": None},
    "updated_at str": {"updated_at": "yesterday"},
    "updated_at int": {"updated_at": 1_700_000_000},
    "user_id None": {"user_id": None},
    "user_id int": {"user_id": 42},
    "minio_key int": {"minio_key": 12345},
    "minio_key list": {"minio_key": ["a", "b"]},
    "size_bytes str": {"size_bytes": "12"},
    "size_bytes bool": {"size_bytes": True},
    "conversation_id int": {"conversation_id": 7},
    "file_hash int": {"metadata": {"file_hash": 99}},
}


def test_malformed_documents_are_skipped_counted_and_kept(manager: LifecycleManager) -> None:
    old = 90 * DAY
    bad = {name: good_document(manager, old, **fields) for name, fields in MALFORMED.items()}
    fine, fine_key = good_document(manager, old)
    string_id, string_key = good_document(manager, old, _id=f"plain-string-{uuid.uuid4().hex}")
    other_bucket, _ = good_document(manager, old, minio_bucket="someone-elses-bucket")
    odd_metadata, _ = good_document(manager, old, metadata="not an object")
    manager.clock.advance(hours=1)
    report = manager.cleanup()
    left = manager.stores.metadata().get_documents(
        [*(d for d, _ in bad.values()), fine, string_id, other_bucket, odd_metadata]
    )
    assert set(left) == {d for d, _ in bad.values()} | {other_bucket}
    assert report.skipped["mongodb"] == len(bad)
    assert report.skipped["minio"] == 1  # the document whose file lives in another bucket
    keys = {o.key for o in manager.stores.objects().iter_objects()}
    assert fine_key not in keys and string_key not in keys
    assert all(k in keys for _, k in bad.values() if isinstance(k, str))
    # A skipped record keeps its points and cache: nothing of it is deleted blindly.
    skipped_ids = [d for d, _ in bad.values()]
    assert point_count(manager, skipped_ids) == 2 * len(skipped_ids)
    assert point_count(manager, [fine, string_id, odd_metadata]) == 0
    # The plain-string _id went through the whole cascade.
    assert not raw_redis(manager).exists(f"doc:text:{string_id}".encode())
    assert report.deleted_counts["mongodb"] == 3


def test_an_object_key_with_dot_dot_never_escapes_and_its_record_stays(
    manager: LifecycleManager, settings: Settings
) -> None:
    bucket_dir = settings.data_dir / "objects"
    victim = bucket_dir / "victim.txt"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_bytes(b"not ours")
    escaping, _ = good_document(manager, 90 * DAY, minio_key="../victim.txt")
    absolute, _ = good_document(manager, 90 * DAY, minio_key="/etc/hostname")
    report = manager.cleanup(ResourceType.MINIO_FILES)
    assert victim.read_bytes() == b"not ours"
    assert Path("/etc/hostname").exists() or not Path("/etc").exists()
    left = manager.stores.metadata().get_documents([escaping, absolute])
    # Such keys are never deleted by name on either store: the records stay, and the run
    # names them so an operator can look.
    assert set(left) == {escaping, absolute}
    assert sum("could not be deleted safely" in e for e in report.errors) == 2, report.errors
    assert report.skipped["minio"] == 2


# ---------------------------------------------------------------- sessions and messages


def test_messy_references_never_crash_and_still_protect(manager: LifecycleManager) -> None:
    old = 90 * DAY
    now = naive_ago(manager, timedelta(0))
    docs = [good_document(manager, old)[0] for _ in range(5)]
    messy_sessions = [
        {"_id": "lone-dict", "updated_at": now, "documents": {"doc_id": docs[0]}},
        {"_id": "lone-string", "updated_at": now, "attached_file_ids": docs[1]},
        {"_id": "junk-items", "updated_at": now, "documents": [None, 3, "x", {"doc_id": 5}]},
        {"_id": "no-updated-at", "documents": [{"doc_id": docs[4]}]},
        {"_id": "str-updated-at", "updated_at": "now", "attached_file_ids": [docs[4]]},
    ]
    metadata_seeder(manager.stores.metadata()).insert_raw("chat_sessions", messy_sessions)
    metadata_seeder(manager.stores.metadata()).insert_raw(
        "messages",
        [
            {"chat_id": "junk-items", "file_ids": docs[2]},  # a lone string
            {"chat_id": 17, "file_ids": [docs[3]]},  # a chat id of the wrong type
            {"chat_id": "junk-items", "file_ids": None},
            {"file_ids": [docs[3]]},
        ],
    )
    report = manager.cleanup()
    left = set(manager.stores.metadata().get_documents(docs))
    # Mongo's own matching treats a lone value like a one-item list: the first three are
    # protected; sessions whose updated_at cannot be read count as active, so docs[4] is too.
    assert left == {docs[0], docs[1], docs[2], docs[4]}
    assert report.deleted_counts["mongodb"] == 1


# ---------------------------------------------------------------- points


BAD_PAYLOADS: dict[str, dict[str, Any]] = {
    "empty": {},
    "no session": {"document_id": "d", "created_at": 1.0},
    "no document": {"session_id": "s", "created_at": 1.0},
    "no created_at": {"session_id": "s", "document_id": "d"},
    "created_at str": {"session_id": "s", "document_id": "d", "created_at": "ayer"},
    "created_at bool": {"session_id": "s", "document_id": "d", "created_at": True},
    "created_at huge": {"session_id": "s", "document_id": "d", "created_at": 1e300},
    "created_at -huge": {"session_id": "s", "document_id": "d", "created_at": -1e300},
    "session int": {"session_id": 4, "document_id": "d", "created_at": 1.0},
    "document None": {"session_id": "s", "document_id": None, "created_at": 1.0},
    "document list": {"session_id": "s", "document_id": ["d"], "created_at": 1.0},
    "session empty": {"session_id": "", "document_id": "d", "created_at": 1.0},
}


def test_points_with_bad_payloads_are_kept_and_counted_unknown(manager: LifecycleManager) -> None:
    vector_seeder(manager.stores.vectors()).upsert(
        [VectorPoint(str(uuid.uuid4()), [0.3] * 384, p) for p in BAD_PAYLOADS.values()]
    )
    good_document(manager, 90 * DAY)  # so the orphan rule is armed
    gone = str(ObjectId())
    chunk_points(manager, gone, 90 * DAY)  # a well-formed orphan: this one must go
    report = manager.cleanup(ResourceType.QDRANT_VECTORS)
    # The "document gone" rule needs only a well-formed document_id and an old numeric
    # created_at: these three go although their session_id is unusable (SPEC 4.1 (3)).
    judged = {"no session", "session int", "session empty"}
    assert report.unknown["qdrant"] == len(BAD_PAYLOADS) - len(judged)
    assert report.deleted_counts["qdrant"] == 2 + len(judged)
    assert point_count(manager, [gone]) == 0
    assert manager.stores.vectors().count() == len(BAD_PAYLOADS) - len(judged) + 2


def test_non_finite_created_at_is_unknown_not_a_crash(manager: LifecycleManager) -> None:
    # JSON cannot carry NaN to a server, but local mode and other writers may store it.
    from rlm_core.policy import parse_point
    from rlm_core.ports import PointInfo

    for value in (math.nan, math.inf, -math.inf):
        assert parse_point(PointInfo("p", "s", "d", value)) is None


# ---------------------------------------------------------------- redis


def test_non_utf8_keys_and_values_and_odd_types(manager: LifecycleManager) -> None:
    redis = raw_redis(manager)
    idle = 7200
    cache_seeder(manager.stores.cache()).seed(
        [
            CacheSeed(b"doc:text:\xff\xfe", b"\xff\x00 binary", None, idle_seconds=idle),
            CacheSeed(b"cache:\x80\x81 recent", b"\xc3\x28", None, idle_seconds=10),
            CacheSeed(b"cache:*literal[glob]?", b"v", None, idle_seconds=idle),
            CacheSeed(b"blacklist:\xff\xfe", b"\xfe", None, idle_seconds=10**6),
            CacheSeed(b"rate_limit:\x00nul", b"1", None, idle_seconds=10**6),
        ]
    )
    redis.hset(b"cache:hash", mapping={b"a": b"\xff"})
    redis.rpush(b"cache:list", b"\xff", b"\xfe")
    redis.sadd(b"blacklist:set", b"\xff")
    report = manager.cleanup(ResourceType.REDIS_CACHE)
    assert report.success, report.errors
    assert report.deleted_counts["redis"] == 2
    assert not redis.exists(b"doc:text:\xff\xfe") and not redis.exists(b"cache:*literal[glob]?")
    assert 0 < redis.ttl(b"cache:\x80\x81 recent") <= 3600
    assert redis.ttl(b"cache:hash") > 0 and redis.ttl(b"cache:list") > 0
    for foreign in (b"blacklist:\xff\xfe", b"rate_limit:\x00nul", b"blacklist:set"):
        assert redis.exists(foreign) and redis.ttl(foreign) == -1
    targets = {
        r["target"] for r in read_audit(Path(report.audit_path or "")) if r["store"] == "redis"
    }
    assert "doc:text:\\xff\\xfe" in targets


# ---------------------------------------------------------------- object names


NAMES = [
    "ñandú/informe final (1).pdf",
    "漢字/ファイル.txt",
    "spaces in   the middle .pdf",
    "emoji 📄/x.pdf",
    "a/b/c/deep.bin",
    "percent%20and+plus.pdf",
]


def test_unicode_and_space_object_names_round_trip_and_sweep(manager: LifecycleManager) -> None:
    objects = manager.stores.objects()
    for name in NAMES:
        objects.put(name, io.BytesIO(b"x"), 1, None)
    assert {o.key for o in objects.iter_objects()} >= set(NAMES)
    good_document(manager, timedelta(0), minio_key=NAMES[0])
    # Objects are stamped by the real clock; jump past FILES_TTL so the rest are old orphans.
    manager.clock.advance(days=8)
    metadata_seeder(manager.stores.metadata()).insert_raw(
        "chat_sessions",
        [{"_id": "s", "updated_at": naive_ago(manager, timedelta(0)), "documents": []}],
    )
    report = manager.cleanup(ResourceType.MINIO_FILES)
    left = {o.key for o in objects.iter_objects()}
    assert NAMES[1] not in left and NAMES[5] not in left
    assert report.deleted_counts["minio"] >= len(NAMES) - 1


@pytest.mark.parametrize(
    "key",
    ["../escape", "a/../../escape", "./x", "/abs", "a//b", "a/", "a\\b", "nul\x00", ".", ".."],
)
def test_disk_store_rejects_keys_that_could_leave_the_bucket(tmp_path: Path, key: str) -> None:
    store = DiskObjectStore(tmp_path / "objects", "documents")
    store.ensure_bucket()
    with pytest.raises(ValueError, match="not allowed on disk"):
        store.put(key, io.BytesIO(b"x"), 1, None)
    with pytest.raises(ValueError, match="not allowed on disk"):
        store.exists(key)
    assert store.remove([key]) == [key]
    assert not (tmp_path / "escape").exists()
    assert list((tmp_path / "objects").rglob("*")) == [tmp_path / "objects" / "documents"]


def test_s3_dot_dot_keys_stay_inside_their_bucket(minio_client: Any, bucket_name: str) -> None:
    other = f"{bucket_name}-other"
    store = S3ObjectStore(minio_client, bucket_name)
    store.ensure_bucket()
    neighbour = S3ObjectStore(minio_client, other)
    neighbour.ensure_bucket()
    neighbour.put("x", io.BytesIO(b"keep"), 4, None)
    for key in (f"../{other}/x", "a/../../escape"):
        # The minio client refuses such a name outright; a batch delete names it literally
        # inside the bucket, where it can reach nothing else.
        with pytest.raises(ValueError, match="path segment"):
            store.put(key, io.BytesIO(b"evil"), 4, None)
        store.remove([key])
    assert [o.key for o in neighbour.iter_objects()] == ["x"]
    assert neighbour.exists("x")


# ---------------------------------------------------------------- ingest


@pytest.mark.parametrize("user_id", ["", "   ", None, 5])
def test_ingest_rejects_a_missing_user_and_leaves_nothing(
    manager: LifecycleManager, user_id: Any
) -> None:
    with pytest.raises(ValueError, match="user_id"):
        manager.ingest(user_id, "a.pdf", io.BytesIO(b"data"))
    assert list(manager.stores.objects().iter_objects()) == []


@pytest.mark.parametrize("filename", ["", ".", "..", "a/", "../..", "/", "\\", "  "])
def test_ingest_rejects_names_with_no_file_name_and_leaves_nothing(
    manager: LifecycleManager, filename: str
) -> None:
    with pytest.raises(ValueError, match="filename"):
        manager.ingest("user-1", filename, io.BytesIO(b"data"))
    assert list(manager.stores.objects().iter_objects()) == []


@pytest.mark.parametrize(
    ("filename", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("dir/sub/ok.pdf", "ok.pdf"),
        ("tab\tand\nnewline.pdf", "tab_and_newline.pdf"),
        ("nul\x00byte.pdf", "nul_byte.pdf"),
        ("x" * 1000 + ".pdf", "x" * 255),
        ("ñandú informe.pdf", "ñandú informe.pdf"),
    ],
)
def test_ingest_sanitizes_file_names(manager: LifecycleManager, filename: str, stored: str) -> None:
    result = manager.ingest("user-1", filename, io.BytesIO(filename.encode()))
    prefix, _, name = result.minio_key.partition("/")
    assert name == stored
    assert uuid.UUID(prefix)
    assert [o.key for o in manager.stores.objects().iter_objects()] == [result.minio_key]


def test_ingest_of_an_empty_file(manager: LifecycleManager) -> None:
    first = manager.ingest("user-1", "empty.txt", io.BytesIO(b""))
    again = manager.ingest("user-1", "empty-again.txt", io.BytesIO(b""))
    assert first.size_bytes == 0 and not first.duplicate
    assert again.duplicate and again.document_id == first.document_id
    assert manager.stores.objects().exists(first.minio_key)
    assert len(list(manager.stores.objects().iter_objects())) == 1


def test_cleanup_rejects_a_bad_cap(manager: LifecycleManager) -> None:
    for cap in (0, -1, True):
        with pytest.raises(ValueError, match="max_deletions"):
            manager.cleanup(max_deletions=cap)


@pytest.mark.parametrize("cap", ["3", 2.5, [3]])
def test_cleanup_rejects_a_cap_that_is_not_a_whole_number(
    manager: LifecycleManager, cap: Any
) -> None:
    with pytest.raises(ValueError) as info:
        manager.cleanup(max_deletions=cap)
    assert "max_deletions" in str(info.value) and repr(cap) in str(info.value)


# ---------------------------------------------------------------- environment


BAD_VALUES: dict[str, list[str]] = {
    "float": ["abc", "-1", "0", "nan", "inf", "1e999", "1e300"],
    "int": ["abc", "-3", "0", "1.5", "1_000x", "0x10", "9" * 30],
    "fraction": ["abc", "0", "1.5", "-0.2"],
    "bool": ["maybe", "2"],
    "url": ["localhost", "ftp://x", "redis://", "redis://a b", "http://[::1"],
    "endpoint": ["host/path", "user:pw@host:9000", "a b:1"],
    "name": ["a b", "a/b", "$x", " "],
    "bucket": ["My_Docs", "a", "..", "a b", "192.168.0.1", "xn--docs", "docs--ol-s3"],
    "database": ["rag.x", "a b", "$x", "a/b", "d" * 64],
    "collection": ["a b", "$x", "system.x", "c" * 300],
    "patterns": ["*", "?x", "[a-z]*", ","],
    "templates": ["doc:text", "doc:{user}", "doc:{doc_id}{", ","],
    "choice": ["maybe", "json,text"],
    "token": ["short", "has a space in it ok", "\x01" * 20],
    "prefix": ["../up"],
    "pem": ["/nonexistent/ca.pem"],
    "region": ["us east", "a/b"],
}
KIND = {
    "REDIS_CACHE_TTL_HOURS": "float",
    "RAG_SESSION_TTL_HOURS": "float",
    "FILES_TTL_DAYS": "float",
    "MAX_REDIS_MEMORY_MB": "float",
    "MAX_MINIO_STORAGE_GB": "float",
    "RLM_STORE_TIMEOUT_SECONDS": "float",
    "RLM_EMBEDDED_LOCK_WAIT_SECONDS": "float",
    "REDIS_CLEANUP_INTERVAL_SECONDS": "int",
    "QDRANT_CLEANUP_INTERVAL_SECONDS": "int",
    "MINIO_CLEANUP_INTERVAL_SECONDS": "int",
    "RESOURCE_MONITORING_INTERVAL_SECONDS": "int",
    "MAX_QDRANT_POINTS": "int",
    "MAX_MONGODB_DOCUMENTS": "int",
    "QDRANT_VECTOR_SIZE": "int",
    "RLM_MAX_DELETIONS_PER_RUN": "int",
    "RLM_BATCH_SIZE": "int",
    "CLEANUP_THRESHOLD_CRITICAL": "fraction",
    "CLEANUP_THRESHOLD_HIGH": "fraction",
    "CLEANUP_THRESHOLD_MEDIUM": "fraction",
    "MINIO_SECURE": "bool",
    "REDIS_URL": "url",
    "QDRANT_URL": "url",
    "MONGODB_URL": "url",
    "MINIO_ENDPOINT": "endpoint",
    "MONGODB_DATABASE": "database",
    "RLM_DOCUMENTS_COLLECTION": "collection",
    "RLM_SESSIONS_COLLECTION": "collection",
    "RLM_MESSAGES_COLLECTION": "collection",
    "MINIO_BUCKET": "bucket",
    "QDRANT_COLLECTION": "name",
    "REDIS_CACHE_KEY_PATTERNS": "patterns",
    "REDIS_DOCUMENT_KEY_TEMPLATES": "templates",
    "RLM_CLEANUP_MODE": "choice",
    "RLM_LOG_FORMAT": "choice",
    "RLM_AUDIT_SINK": "choice",
    "RLM_API_TOKEN": "token",
    "RLM_API_ADMIN_TOKEN": "token",
    "RLM_ALERT_WEBHOOK_URL": "url",
    "RLM_DAGSTER_URL": "url",
    "RLM_AUDIT_PREFIX": "prefix",
    "RLM_AUDIT_RETENTION_DAYS": "int",
    "REDIS_CLUSTER": "bool",
    "REDIS_CA_BUNDLE": "pem",
    "MINIO_CA_BUNDLE": "pem",
    "MINIO_REGION": "region",
}
# Free text where any non-empty value is acceptable.
FREE = {
    "QDRANT_API_KEY",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "MINIO_SESSION_TOKEN",
    "RLM_DATA_DIR",
    "RLM_AUDIT_DIR",
}


def test_a_batch_size_too_large_for_the_stores_fails_at_start_not_mid_cleanup(
    tmp_path: Path,
) -> None:
    """SPEC section 8: invalid values fail at start. 2**64 passes validation today, then the
    first cleanup dies with OverflowError inside the metadata store (SQLite INTEGER)."""
    env = {"RLM_DATA_DIR": str(tmp_path / "data"), "RLM_BATCH_SIZE": str(2**64)}
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        assert "RLM_BATCH_SIZE" in str(exc)
        return
    with LifecycleManager.from_settings(settings) as manager:
        metadata_seeder(manager.stores.metadata()).insert_raw(
            "documents", [{"user_id": "u", "status": "ready"}]
        )
        report = manager.cleanup()
    assert report.success, report.errors


def test_every_variable_is_classified() -> None:
    assert set(ENV_VARIABLES) == set(KIND) | FREE | {"RLM_RETENTION_PROFILE"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        *((v, bad) for v, kind in KIND.items() for bad in BAD_VALUES[kind]),
        ("RLM_RETENTION_PROFILE", "fast"),
        ("QDRANT_API_KEY", "   "),
        ("RLM_DATA_DIR", "  "),
        ("FILES_TTL_DAYS", "1000000"),
        ("RAG_SESSION_TTL_HOURS", "1e9"),
        ("REDIS_CACHE_TTL_HOURS", "876001"),
        ("REDIS_URL", "redis://h:notaport"),
        ("REDIS_URL", "redis://h:0/0"),
        ("QDRANT_URL", "http://h:notaport"),
        ("MONGODB_URL", "mongodb://h1:27017,h2:x"),
        ("MONGODB_URL", "mongodb+srv://h:27017"),
        ("MINIO_ENDPOINT", "minio:abc"),
        ("MINIO_ENDPOINT", "minio:70000"),
    ],
)
def test_a_malformed_variable_fails_naming_it(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: value})
    message = str(info.value)
    assert variable in message
    assert "allowed" in message


def test_the_longest_allowed_ttls_keep_every_date_computation_in_range(
    manager: LifecycleManager,
) -> None:
    """FILES_TTL_DAYS=36500 and hours at 36500 days: `now - TTL` and `2 x TTL` stay in range."""
    longest = Settings.from_env(
        {
            "FILES_TTL_DAYS": "36500",
            "RAG_SESSION_TTL_HOURS": str(36500 * 24),
            "REDIS_CACHE_TTL_HOURS": str(36500 * 24),
        }
    )
    settings = replace(
        manager.settings,
        files_ttl_days=longest.files_ttl_days,
        rag_session_ttl_hours=longest.rag_session_ttl_hours,
        redis_cache_ttl_hours=longest.redis_cache_ttl_hours,
    )
    patient = LifecycleManager(settings, manager.stores, manager.clock)
    kept, _ = good_document(patient, 90 * DAY)
    cache_seeder(manager.stores.cache()).seed(
        [CacheSeed(b"cache:idle", b"v", None, idle_seconds=7200)]
    )
    assert all(m.usage_percentage >= 0 for m in patient.metrics().values())
    report = patient.cleanup()
    assert report.success, report.errors
    assert sum(report.deleted_counts.values()) == 0
    assert set(patient.stores.metadata().get_documents([kept])) == {kept}
    assert raw_redis(patient).ttl(b"cache:idle") > 0


# ---------------------------------------------------------------- the rlm command


RLM = Path(sys.executable).parent / "rlm"


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"),
    [
        (["metrics"], {"FILES_TTL_DAYS": "1000000"}, 2, "FILES_TTL_DAYS='1000000' is invalid"),
        (["metrics"], {"MINIO_BUCKET": "My_Docs"}, 2, "MINIO_BUCKET='My_Docs' is invalid"),
        (["ingest", "--user", "", "{file}"], {}, 2, "argument --user: '' is not valid"),
        (["ingest", "--user", "   ", "{file}"], {}, 2, "argument --user: '   ' is not valid"),
        (["ingest", "--user", "u1", "{missing}"], {}, 2, "FILE='{missing}' is not valid"),
        (["cleanup", "--max-deletions", "²"], {}, 2, "'²' is not valid"),
        (
            ["ingest", "--user", "u1", "{file}"],
            {"MONGODB_URL": "mongodb://127.0.0.1:{port}", "RLM_STORE_TIMEOUT_SECONDS": "1"},
            1,
            "rlm: a store failed: MongoDB",
        ),
    ],
)
def test_the_rlm_command_fails_with_one_message_and_no_traceback(
    tmp_path: Path, argv: list[str], env: dict[str, str], code: int, message: str
) -> None:
    upload = tmp_path / "a.pdf"
    upload.write_bytes(b"%PDF-1.4")
    names = {"file": str(upload), "missing": str(tmp_path / "gone.pdf"), "port": str(free_port())}
    clean = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}
    clean.update({k: v.format(**names) for k, v in env.items()})
    clean.update(RLM_DATA_DIR=str(tmp_path / "data"), DAGSTER_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [str(RLM), *(a.format(**names) for a in argv)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert message.format(**names) in done.stderr, done.stderr
    assert code == 1 or "allowed: " in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""
