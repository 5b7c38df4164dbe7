"""Settings.from_env: the seed's variables and defaults, profiles, validation, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlm_core.priority import Thresholds
from rlm_core.settings import ENV_VARIABLES, PROFILES, Settings, SettingsError, redact_url

SECRET = "hunter2"


def settings_error(env: dict[str, str]) -> SettingsError:
    """The SettingsError that loading `env` raises."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return info.value


def assert_reports(error: SettingsError, variable: str, shown: str, allowed: str) -> None:
    """One problem names `variable`, shows `shown` as the value and says what is `allowed`."""
    own = [p for p in error.problems if p.startswith(f"{variable}=")]
    assert own, f"no problem for {variable} in {error.problems}"
    assert any(shown in p and allowed in p for p in own), own
    assert variable in str(error)


# Each family of variables: (variable, value given, a fragment of what is allowed).
TTLS = [
    (variable, raw, "number > 0")
    for variable in ("REDIS_CACHE_TTL_HOURS", "RAG_SESSION_TTL_HOURS", "FILES_TTL_DAYS")
    for raw in ("0", "-1", "abc", "nan", "inf", "-inf", " ")
]
INTERVALS = [
    (variable, raw, "whole number > 0")
    for variable in (
        "REDIS_CLEANUP_INTERVAL_SECONDS",
        "QDRANT_CLEANUP_INTERVAL_SECONDS",
        "MINIO_CLEANUP_INTERVAL_SECONDS",
        "RESOURCE_MONITORING_INTERVAL_SECONDS",
    )
    for raw in ("1.5", "0", "-60", "hourly")
]
THRESHOLDS = [
    (variable, raw, "0 < value <= 1")
    for variable in (
        "CLEANUP_THRESHOLD_CRITICAL",
        "CLEANUP_THRESHOLD_HIGH",
        "CLEANUP_THRESHOLD_MEDIUM",
    )
    for raw in ("0", "1.5", "-0.2", "90%", "nan")
]
LIMITS = [
    ("MAX_REDIS_MEMORY_MB", "0", "number > 0"),
    ("MAX_REDIS_MEMORY_MB", "-256", "number > 0"),
    ("MAX_REDIS_MEMORY_MB", "256MB", "number > 0"),
    ("MAX_REDIS_MEMORY_MB", "inf", "number > 0"),
    ("MAX_QDRANT_POINTS", "0", "whole number > 0"),
    ("MAX_QDRANT_POINTS", "1.5", "whole number > 0"),
    ("MAX_QDRANT_POINTS", "100k", "whole number > 0"),
    ("MAX_MINIO_STORAGE_GB", "0", "number > 0"),
    ("MAX_MINIO_STORAGE_GB", "nan", "number > 0"),
    ("MAX_MONGODB_DOCUMENTS", "0", "whole number > 0"),
    ("MAX_MONGODB_DOCUMENTS", "-3", "whole number > 0"),
    ("MAX_MONGODB_DOCUMENTS", "ten", "whole number > 0"),
]
BOOLEANS = [
    ("MINIO_SECURE", "maybe", "true/false"),
    ("MINIO_SECURE", "2", "true/false"),
]
REDIS_SCHEMES = "scheme redis, rediss or unix"
MONGODB_SCHEMES = "scheme mongodb or mongodb+srv"
QDRANT_SCHEMES = "scheme http or https"
URLS = [
    ("REDIS_URL", "localhost:6379", REDIS_SCHEMES),
    ("REDIS_URL", "redis://", REDIS_SCHEMES),
    ("REDIS_URL", "http://localhost:6379", REDIS_SCHEMES),
    ("REDIS_URL", "redis://local host:6379", REDIS_SCHEMES),
    ("REDIS_URL", "redis://[::1:6379", REDIS_SCHEMES),
    ("REDIS_URL", "redis:///0", REDIS_SCHEMES),
    ("REDIS_URL", "unix://", REDIS_SCHEMES),
    ("MONGODB_URL", "mongodb:/localhost", MONGODB_SCHEMES),
    ("MONGODB_URL", "postgres://localhost/rag", MONGODB_SCHEMES),
    ("QDRANT_URL", "localhost:6333", QDRANT_SCHEMES),
    ("QDRANT_URL", "redis://localhost:6333", QDRANT_SCHEMES),
]
ENDPOINTS = [
    ("MINIO_ENDPOINT", "localhost:9000/documents", "host:port"),
    ("MINIO_ENDPOINT", "http://minio:9000/minio/", "host:port"),
    ("MINIO_ENDPOINT", " ", "host:port"),
]
NAMES = [
    (variable, raw, "without spaces")
    for variable in (
        "MONGODB_DATABASE",
        "RLM_DOCUMENTS_COLLECTION",
        "RLM_SESSIONS_COLLECTION",
        "RLM_MESSAGES_COLLECTION",
        "MINIO_BUCKET",
        "QDRANT_COLLECTION",
    )
    for raw in ("my docs", "a/b", " ")
]
PATTERNS = [
    ("REDIS_CACHE_KEY_PATTERNS", "*", "fixed prefix"),
    ("REDIS_CACHE_KEY_PATTERNS", " * ", "fixed prefix"),
    ("REDIS_CACHE_KEY_PATTERNS", "doc:text:*,*", "fixed prefix"),
    ("REDIS_CACHE_KEY_PATTERNS", "*:text:*", "fixed prefix"),
    ("REDIS_CACHE_KEY_PATTERNS", "?*", "fixed prefix"),
    ("REDIS_CACHE_KEY_PATTERNS", "[a-z]*", "fixed prefix"),
    ("REDIS_CACHE_KEY_PATTERNS", ",", "comma-separated"),
    ("REDIS_CACHE_KEY_PATTERNS", " , ", "comma-separated"),
]
TEMPLATES = [
    ("REDIS_DOCUMENT_KEY_TEMPLATES", "doc:text:{id}", "{doc_id}"),
    ("REDIS_DOCUMENT_KEY_TEMPLATES", "doc:text:", "{doc_id}"),
    ("REDIS_DOCUMENT_KEY_TEMPLATES", "doc:text:{doc_id},cache:all", "{doc_id}"),
    ("REDIS_DOCUMENT_KEY_TEMPLATES", "doc:{doc_id}:{page}", "{doc_id}"),
    ("REDIS_DOCUMENT_KEY_TEMPLATES", ",", "{doc_id}"),
]
PROFILE_NAMES = [
    ("RLM_RETENTION_PROFILE", "weekly", "high-rotation, long-term, development"),
    ("RLM_RETENTION_PROFILE", "High-Rotation", "high-rotation, long-term, development"),
    ("RLM_RETENTION_PROFILE", "dev", "high-rotation, long-term, development"),
]
# Upper bounds keep every date computation, count and timeout in range (SPEC 4.1 item 10).
BOUNDS = [
    ("FILES_TTL_DAYS", "36501", "<= 36500"),
    ("FILES_TTL_DAYS", "1000000", "<= 36500"),
    ("FILES_TTL_DAYS", "1e999", "<= 36500"),
    ("RAG_SESSION_TTL_HOURS", "1e9", "<= 876000"),
    ("RAG_SESSION_TTL_HOURS", "876000.5", "<= 876000"),
    ("REDIS_CACHE_TTL_HOURS", "876001", "<= 876000"),
    ("REDIS_CACHE_TTL_HOURS", "NaN", "finite number"),
    ("MAX_REDIS_MEMORY_MB", "1e10", "<= 1000000000"),
    ("MAX_MINIO_STORAGE_GB", "1e308", "<= 1000000000"),
    ("MAX_QDRANT_POINTS", "1" + "0" * 30, "<= 1000000000000000"),
    ("MAX_MONGODB_DOCUMENTS", str(2**63), "<= 1000000000000000"),
    ("RLM_MAX_DELETIONS_PER_RUN", str(2**64), "<= 1000000000000000"),
    ("REDIS_CLEANUP_INTERVAL_SECONDS", "604801", "<= 604800"),
    ("QDRANT_CLEANUP_INTERVAL_SECONDS", str(10**20), "<= 604800"),
    ("MINIO_CLEANUP_INTERVAL_SECONDS", "31536000", "<= 604800"),
    ("RESOURCE_MONITORING_INTERVAL_SECONDS", "9" * 5000, "<= 604800"),
    ("QDRANT_VECTOR_SIZE", "65537", "<= 65536"),
    ("RLM_STORE_TIMEOUT_SECONDS", "1e12", "<= 3600"),
    ("RLM_EMBEDDED_LOCK_WAIT_SECONDS", "inf", "<= 86400"),
]
BUCKET_RULES = "S3 bucket name"
BUCKETS = [
    ("MINIO_BUCKET", raw, BUCKET_RULES)
    for raw in (
        "My_Docs",
        "Documents",
        "docs_2024",
        "a",
        "ab",
        "..",
        "a" * 64,
        "-docs",
        "docs-",
        ".docs",
        "docs.",
        "a..b",
        "a.-b",
        "192.168.1.1",
        "xn--docs",
        "docs-s3alias",
        "docs--ol-s3",
        "$docs",
    )
]
MONGO_DATABASES = [
    ("MONGODB_DATABASE", raw, "MongoDB database name of 1-63 bytes")
    for raw in (
        "rag.x",
        "ra$g",
        'ra"g',
        "rag*",
        "r<a>g",
        "rag:1",
        "r|g",
        "rag?",
        "ra\\g",
        "ra\x00g",
        "d" * 64,
        "é" * 32,  # 32 characters but 64 bytes
    )
]
COLLECTIONS = [
    (variable, raw, allowed)
    for variable in (
        "RLM_DOCUMENTS_COLLECTION",
        "RLM_SESSIONS_COLLECTION",
        "RLM_MESSAGES_COLLECTION",
    )
    for raw, allowed in (
        ("system.users", "not starting with 'system.'"),
        ("docs$x", "MongoDB collection name"),
        ("c\x00", "MongoDB collection name"),
        ("c" * 252, "at most 255 bytes"),  # 'rag.' + 252 = 256 bytes
    )
]
PORTS = [
    ("REDIS_URL", "redis://h:notaport", "port from 1 to 65535"),
    ("REDIS_URL", "redis://h:0", "port from 1 to 65535"),
    ("REDIS_URL", "redis://h:65536/0", "port from 1 to 65535"),
    ("REDIS_URL", "rediss://[::1]:x", "port from 1 to 65535"),
    ("QDRANT_URL", "http://qdrant:abc", "port from 1 to 65535"),
    ("QDRANT_URL", "https://qdrant:70000", "port from 1 to 65535"),
    ("QDRANT_URL", "http://qdrant:0/", "port from 1 to 65535"),
    ("MINIO_ENDPOINT", "minio:abc", "port from 1 to 65535"),
    ("MINIO_ENDPOINT", "minio:0", "port from 1 to 65535"),
    ("MINIO_ENDPOINT", "minio:", "port from 1 to 65535"),
    ("MINIO_ENDPOINT", "minio:99999", "port from 1 to 65535"),
    ("MINIO_ENDPOINT", "http://minio:9000x", "port from 1 to 65535"),
    ("MINIO_ENDPOINT", "[::1:9000", "host:port"),
    ("MINIO_ENDPOINT", ":9000", "host:port"),
    ("MINIO_ENDPOINT", "ftp://minio:9000", "with http:// or https://"),
    ("MINIO_ENDPOINT", "minio:9000#x", "host:port"),
    ("MONGODB_URL", "mongodb://h1:27017,h2:abc", "ports from 1 to 65535"),
    ("MONGODB_URL", "mongodb://h:0", "ports from 1 to 65535"),
    ("MONGODB_URL", "mongodb://h:65536/rag", "ports from 1 to 65535"),
    ("MONGODB_URL", "mongodb://h1:27017,", "ports from 1 to 65535"),
    ("MONGODB_URL", "mongodb://", "scheme mongodb or mongodb+srv"),
    ("MONGODB_URL", "mongodb://:27017", "scheme mongodb or mongodb+srv"),
    (
        "MONGODB_URL",
        "mongodb+srv://cluster.example.net:27017",
        "mongodb+srv://[user:password@]host",
    ),
    ("MONGODB_URL", "mongodb+srv://a.example.net,b.example.net", "mongodb+srv://"),
    ("MONGODB_URL", "mongodb://h/ra$g", "[/database]"),
]
OTHERS = [
    ("QDRANT_VECTOR_SIZE", "0", "whole number > 0"),
    ("QDRANT_VECTOR_SIZE", "384.0", "whole number > 0"),
    ("RLM_BATCH_SIZE", "lots", "whole number > 0"),
    ("RLM_BATCH_SIZE", "100001", "whole number from 1 to 100000"),
    ("RLM_EMBEDDED_LOCK_WAIT_SECONDS", "-5", "number > 0"),
    ("RLM_MAX_DELETIONS_PER_RUN", "0", "whole number > 0"),
    ("RLM_STORE_TIMEOUT_SECONDS", "0", "number > 0"),
    ("RLM_DATA_DIR", "   ", "folder path"),
    ("RLM_AUDIT_DIR", "   ", "folder path"),
    ("RLM_AUDIT_SINK", "kafka", "file, s3 or mongodb"),
    ("RLM_AUDIT_PREFIX", "../up", "object key prefix"),
    ("RLM_AUDIT_RETENTION_DAYS", "0", "whole number > 0"),
    ("REDIS_CLUSTER", "maybe", "true/false"),
    ("REDIS_CA_BUNDLE", "/nonexistent/ca.pem", "readable PEM file"),
    ("MINIO_CA_BUNDLE", "/nonexistent/ca.pem", "readable PEM file"),
    ("MINIO_REGION", "us east", "S3 region name"),
    ("RLM_CLEANUP_MODE", "maybe", "enforce or observe"),
    ("RLM_LOG_FORMAT", "xml", "json or text"),
    ("RLM_DAGSTER_URL", "localhost", "scheme http or https"),
]


@pytest.mark.parametrize(
    ("variable", "raw", "allowed"),
    TTLS
    + INTERVALS
    + THRESHOLDS
    + LIMITS
    + BOOLEANS
    + URLS
    + ENDPOINTS
    + NAMES
    + PATTERNS
    + TEMPLATES
    + PROFILE_NAMES
    + OTHERS
    + BOUNDS
    + BUCKETS
    + MONGO_DATABASES
    + COLLECTIONS
    + PORTS,
)
def test_invalid_value_names_variable_value_and_what_is_allowed(
    variable: str, raw: str, allowed: str
) -> None:
    error = settings_error({variable: raw})
    assert_reports(error, variable, repr(raw), "allowed: ")
    assert_reports(error, variable, repr(raw), allowed)


def test_every_validated_variable_has_an_error_case() -> None:
    families = (
        TTLS + INTERVALS + THRESHOLDS + LIMITS + BOOLEANS + URLS + ENDPOINTS + NAMES + PATTERNS
    )
    covered = {v for v, _, _ in families + TEMPLATES + PROFILE_NAMES + OTHERS}
    # Secrets are never echoed, so their cases live in tests/test_settings_operate.py.
    secrets = {
        "QDRANT_API_KEY",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
        "MINIO_SESSION_TOKEN",
        "RLM_API_TOKEN",
        "RLM_API_ADMIN_TOKEN",
        "RLM_ALERT_WEBHOOK_URL",
    }
    can_fail = set(ENV_VARIABLES) - secrets
    assert can_fail <= covered, sorted(can_fail - covered)


@pytest.mark.parametrize(
    ("medium", "high", "critical"),
    [
        ("0.8", "0.75", "0.9"),  # medium above high
        ("0.5", "0.95", "0.9"),  # high above critical
        ("0.75", "0.75", "0.9"),  # equal is not strictly increasing
        ("0.5", "0.9", "0.9"),
        ("0.9", "0.75", "0.5"),  # reversed
    ],
)
def test_thresholds_must_increase_medium_high_critical(
    medium: str, high: str, critical: str
) -> None:
    error = settings_error(
        {
            "CLEANUP_THRESHOLD_MEDIUM": medium,
            "CLEANUP_THRESHOLD_HIGH": high,
            "CLEANUP_THRESHOLD_CRITICAL": critical,
        }
    )
    assert len(error.problems) == 1
    problem = error.problems[0]
    for variable, value in (
        ("CLEANUP_THRESHOLD_MEDIUM", medium),
        ("CLEANUP_THRESHOLD_HIGH", high),
        ("CLEANUP_THRESHOLD_CRITICAL", critical),
    ):
        assert f"{variable}={float(value)}" in problem
    assert "allowed: 0 < MEDIUM < HIGH < CRITICAL <= 1" in problem


def test_one_explicit_threshold_is_checked_against_the_defaults() -> None:
    error = settings_error({"CLEANUP_THRESHOLD_HIGH": "0.95"})
    assert "CLEANUP_THRESHOLD_HIGH=0.95" in str(error)
    assert "CLEANUP_THRESHOLD_CRITICAL=0.9" in str(error)


def test_valid_thresholds_including_critical_of_one() -> None:
    settings = Settings.from_env(
        {
            "CLEANUP_THRESHOLD_MEDIUM": "0.3",
            "CLEANUP_THRESHOLD_HIGH": "0.6",
            "CLEANUP_THRESHOLD_CRITICAL": "1",
        }
    )
    assert settings.thresholds == Thresholds(medium=0.3, high=0.6, critical=1.0)


def test_minio_endpoint_needs_both_keys() -> None:
    error = settings_error({"MINIO_ENDPOINT": "minio:9000", "MINIO_ACCESS_KEY": "rlm"})
    assert "MINIO_ACCESS_KEY" in str(error)
    assert "MINIO_SECRET_KEY" in str(error)
    assert "MINIO_ENDPOINT" in str(error)


def test_several_errors_are_reported_together_in_one_error() -> None:
    env = {
        "REDIS_CACHE_TTL_HOURS": "abc",
        "FILES_TTL_DAYS": "0",
        "QDRANT_CLEANUP_INTERVAL_SECONDS": "1.5",
        "CLEANUP_THRESHOLD_CRITICAL": "1.5",
        "CLEANUP_THRESHOLD_MEDIUM": "0.8",
        "MAX_QDRANT_POINTS": "0",
        "MINIO_SECURE": "maybe",
        "REDIS_URL": "localhost:6379",
        "MINIO_ENDPOINT": "localhost:9000/path",
        "MINIO_BUCKET": "my bucket",
        "REDIS_CACHE_KEY_PATTERNS": "*",
        "REDIS_DOCUMENT_KEY_TEMPLATES": "doc:text:{id}",
        "RLM_RETENTION_PROFILE": "weekly",
    }
    error = settings_error(env)
    text = str(error)
    for variable in env:
        assert variable in text, variable
    # One line per problem; the ordering rule (MEDIUM 0.8 > HIGH 0.75) is among them.
    assert len(error.problems) == len(env)
    assert text.count("\n  - ") == len(error.problems)


def test_defaults_equal_the_seed() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_cache_ttl_hours == 1
    assert settings.rag_session_ttl_hours == 24
    assert settings.files_ttl_days == 7
    assert settings.files_ttl_hours == 7 * 24
    assert settings.redis_cleanup_interval_seconds == 3600
    assert settings.qdrant_cleanup_interval_seconds == 21600
    assert settings.minio_cleanup_interval_seconds == 86400
    assert settings.resource_monitoring_interval_seconds == 1800
    assert settings.cleanup_threshold_critical == 0.9
    assert settings.cleanup_threshold_high == 0.75
    assert settings.cleanup_threshold_medium == 0.5
    assert settings.thresholds == Thresholds(medium=0.5, high=0.75, critical=0.9)
    assert settings.max_redis_memory_mb == 256
    assert settings.max_qdrant_points == 100_000
    assert settings.max_minio_storage_gb == 50
    assert settings.max_mongodb_documents == 10_000
    assert settings.retention_profile is None


def test_defaults_of_the_data_model_names() -> None:
    settings = Settings.from_env({})
    assert settings.mongodb_database == "rag"
    assert settings.documents_collection == "documents"
    assert settings.sessions_collection == "chat_sessions"
    assert settings.messages_collection == "messages"
    assert settings.minio_bucket == "documents"
    assert settings.redis_cache_key_patterns == ("doc:text:*", "cache:*")
    assert settings.redis_document_key_templates == ("doc:text:{doc_id}",)
    assert settings.qdrant_collection == "rag_documents"
    assert settings.qdrant_vector_size == 384


def test_unset_connections_mean_the_embedded_default() -> None:
    settings = Settings.from_env({})
    for name in ("redis_url", "qdrant_url", "qdrant_api_key", "mongodb_url", "minio_endpoint"):
        assert getattr(settings, name) is None, name
    assert settings.minio_secure is False
    assert settings.data_dir == Path(".rlm-data")
    assert settings.audit_path == Path(".rlm-data") / "audit"


def test_valid_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "REDIS_CACHE_TTL_HOURS": "0.5",
            "FILES_TTL_DAYS": "0.25",
            "REDIS_CLEANUP_INTERVAL_SECONDS": " 900 ",
            "MAX_REDIS_MEMORY_MB": "64.5",
            "MAX_MONGODB_DOCUMENTS": "500",
            "MINIO_SECURE": "TRUE",
            "REDIS_URL": "redis://:pw@cache:6380/2",
            "MONGODB_URL": "mongodb+srv://u:pw@cluster.example.net/rag",
            "QDRANT_URL": "https://qdrant.example.net:6333",
            "MINIO_ENDPOINT": "minio:9000",
            "MINIO_ACCESS_KEY": "access",
            "MINIO_SECRET_KEY": "secret",
            "MINIO_BUCKET": "rag-files",
            "REDIS_CACHE_KEY_PATTERNS": "doc:text:*, cache:* ,",
            "REDIS_DOCUMENT_KEY_TEMPLATES": "doc:text:{doc_id},cache:meta:{doc_id}",
            "RLM_DATA_DIR": "/var/lib/rlm",
            "RLM_MAX_DELETIONS_PER_RUN": "100",
        }
    )
    assert settings.redis_cache_ttl_hours == 0.5
    assert settings.files_ttl_days == 0.25
    assert settings.files_ttl_hours == 6.0
    assert settings.redis_cleanup_interval_seconds == 900
    assert settings.max_redis_memory_mb == 64.5
    assert settings.max_mongodb_documents == 500
    assert settings.minio_secure is True
    assert settings.redis_url == "redis://:pw@cache:6380/2"
    assert settings.mongodb_url == "mongodb+srv://u:pw@cluster.example.net/rag"
    assert settings.qdrant_url == "https://qdrant.example.net:6333"
    assert settings.minio_endpoint == "minio:9000"
    assert settings.minio_bucket == "rag-files"
    assert settings.redis_cache_key_patterns == ("doc:text:*", "cache:*")
    assert settings.redis_document_key_templates == ("doc:text:{doc_id}", "cache:meta:{doc_id}")
    assert settings.data_dir == Path("/var/lib/rlm")
    assert settings.audit_path == Path("/var/lib/rlm/audit")
    assert settings.max_deletions_per_run == 100


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("NO", False),
        ("off", False),
    ],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_env({"MINIO_SECURE": raw}).minio_secure is expected


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://:pw@cache.example.net:6380/1",
        "unix:///run/redis/redis.sock",
        "redis://[::1]:6379",
    ],
)
def test_redis_url_forms_accepted(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    "url",
    ["mongodb://localhost:27017", "mongodb://u:pw@h1:27017,h2:27017/rag?replicaSet=rs0"],
)
def test_mongodb_url_forms_accepted(url: str) -> None:
    assert Settings.from_env({"MONGODB_URL": url}).mongodb_url == url


@pytest.mark.parametrize("endpoint", ["minio:9000", "http://minio:9000", "https://s3.example.net/"])
def test_minio_endpoint_forms_accepted(endpoint: str) -> None:
    env = {"MINIO_ENDPOINT": endpoint, "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "s"}
    assert Settings.from_env(env).minio_endpoint == endpoint


def test_fractional_hours() -> None:
    settings = Settings.from_env({"REDIS_CACHE_TTL_HOURS": "0.5", "RAG_SESSION_TTL_HOURS": "1.25"})
    assert settings.redis_cache_ttl_hours == 0.5
    assert settings.rag_session_ttl_hours == 1.25


@pytest.mark.parametrize(
    ("profile", "cache_hours", "session_hours", "files_days"),
    [
        ("high-rotation", 1, 24, 7),
        ("long-term", 24, 168, 365),
        ("development", 0.5, 2, 1),
    ],
)
def test_profile_fills_the_seed_table(
    profile: str, cache_hours: float, session_hours: float, files_days: float
) -> None:
    settings = Settings.from_env({"RLM_RETENTION_PROFILE": profile})
    assert settings.retention_profile == profile
    assert settings.redis_cache_ttl_hours == cache_hours
    assert settings.rag_session_ttl_hours == session_hours
    assert settings.files_ttl_days == files_days
    # Profiles only carry retention: limits and thresholds keep the seed's defaults.
    assert settings.max_redis_memory_mb == 256
    assert settings.thresholds == Thresholds()


def test_development_profile_uses_the_seed_cleanup_interval() -> None:
    settings = Settings.from_env({"RLM_RETENTION_PROFILE": "development"})
    assert settings.redis_cleanup_interval_seconds == 1800


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize(
    ("variable", "attr", "raw", "expected"),
    [
        ("REDIS_CACHE_TTL_HOURS", "redis_cache_ttl_hours", "3", 3.0),
        ("RAG_SESSION_TTL_HOURS", "rag_session_ttl_hours", "12.5", 12.5),
        ("FILES_TTL_DAYS", "files_ttl_days", "30", 30.0),
        ("REDIS_CLEANUP_INTERVAL_SECONDS", "redis_cleanup_interval_seconds", "60", 60),
    ],
)
def test_explicit_variable_beats_the_profile(
    profile: str, variable: str, attr: str, raw: str, expected: float
) -> None:
    settings = Settings.from_env({"RLM_RETENTION_PROFILE": profile, variable: raw})
    assert getattr(settings, attr) == expected
    # The variables not given still come from the profile.
    for other, value in PROFILES[profile].items():
        if other != variable:
            assert getattr(settings, other.lower()) == float(value), other


def test_explicit_invalid_value_beats_the_profile_and_is_reported() -> None:
    error = settings_error({"RLM_RETENTION_PROFILE": "long-term", "FILES_TTL_DAYS": "-1"})
    assert_reports(error, "FILES_TTL_DAYS", "'-1'", "number > 0")


def test_empty_explicit_variable_leaves_the_profile_value() -> None:
    settings = Settings.from_env({"RLM_RETENTION_PROFILE": "long-term", "FILES_TTL_DAYS": ""})
    assert settings.files_ttl_days == 365


def test_empty_string_means_unset_for_every_variable() -> None:
    assert Settings.from_env(dict.fromkeys(ENV_VARIABLES, "")) == Settings()


def test_from_env_without_argument_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("FILES_TTL_DAYS", "3")
    monkeypatch.setenv("RLM_RETENTION_PROFILE", "development")
    settings = Settings.from_env()
    assert settings.files_ttl_days == 3
    assert settings.redis_cache_ttl_hours == 0.5
    monkeypatch.setenv("MINIO_SECURE", "maybe")
    with pytest.raises(SettingsError, match="MINIO_SECURE"):
        Settings.from_env()


# --- secrets -------------------------------------------------------------------------------

SECRETS = {
    "MINIO_ENDPOINT": "minio:9000",
    "MINIO_ACCESS_KEY": "rlm-access",
    "MINIO_SECRET_KEY": SECRET,
    "QDRANT_API_KEY": SECRET,
    "QDRANT_URL": f"https://rlm:{SECRET}@qdrant.example.net:6333",
    "REDIS_URL": f"redis://:{SECRET}@host:6379/0",
    "MONGODB_URL": f"mongodb://u:{SECRET}@h/",
}


def test_secrets_are_not_in_repr_str_or_public_view() -> None:
    settings = Settings.from_env(SECRETS)
    assert settings.minio_secret_key == SECRET
    assert settings.qdrant_api_key == SECRET
    view = settings.public_view()
    for text in (repr(settings), str(settings), json.dumps(view), f"{settings}"):
        assert SECRET not in text
        assert "rlm-access" not in text
    assert view["minio_secret_key"] == "***"
    assert view["minio_access_key"] == "***"
    assert view["qdrant_api_key"] == "***"
    assert view["redis_url"] == "redis://:***@host:6379/0"
    assert view["mongodb_url"] == "mongodb://u:***@h/"
    assert view["qdrant_url"] == "https://rlm:***@qdrant.example.net:6333"
    assert view["minio_endpoint"] == "minio:9000"


def test_public_view_is_json_safe_and_complete() -> None:
    view = Settings.from_env({}).public_view()
    json.dumps(view)
    assert view["data_dir"] == ".rlm-data"
    assert view["redis_cache_key_patterns"] == ["doc:text:*", "cache:*"]
    assert view["minio_secret_key"] is None


def test_secrets_are_not_in_the_error_when_another_variable_is_invalid() -> None:
    error = settings_error({**SECRETS, "FILES_TTL_DAYS": "abc", "MINIO_SECURE": "maybe"})
    for text in (str(error), repr(error), "\n".join(error.problems)):
        assert SECRET not in text
        assert "rlm-access" not in text


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("REDIS_URL", f"redis:/:{SECRET}@host:6379/0"),
        ("REDIS_URL", f":{SECRET}@host:6379"),
        ("REDIS_URL", f"http://:{SECRET}@host:6379/0"),
        ("MONGODB_URL", f"mongodb:u:{SECRET}@h/"),
        ("MONGODB_URL", f"mysql://u:{SECRET}@h/"),
        ("QDRANT_URL", f"qdrant://k:{SECRET}@h:6333"),
        ("MINIO_ENDPOINT", f"http://u:{SECRET}@minio:9000/bucket"),
        ("MINIO_ENDPOINT", f"u:{SECRET}@minio:9000"),
    ],
)
def test_secret_in_an_invalid_connection_variable_is_not_shown(variable: str, raw: str) -> None:
    error = settings_error({variable: raw})
    for text in (str(error), repr(error), "\n".join(error.problems)):
        assert SECRET not in text
    assert variable in str(error)
    assert "allowed: " in str(error)


@pytest.mark.parametrize("variable", ["MINIO_SECRET_KEY", "QDRANT_API_KEY", "MINIO_ACCESS_KEY"])
def test_invalid_secret_variable_is_reported_without_its_value(variable: str) -> None:
    error = settings_error({variable: "   ", "FILES_TTL_DAYS": SECRET})
    assert_reports(error, variable, "***", "allowed: ")
    assert_reports(error, "FILES_TTL_DAYS", repr(SECRET), "number > 0")


def test_secret_variables_are_shown_as_stars_in_problems() -> None:
    error = settings_error({"MINIO_ENDPOINT": "minio:9000", "MINIO_SECRET_KEY": SECRET})
    assert SECRET not in str(error)
    assert "MINIO_ACCESS_KEY" in str(error)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("mongodb://user:pw@h1:27017,h2:27017/rag", "mongodb://user:***@h1:27017,h2:27017/rag"),
        ("mongodb://user:p@ss@h/", "mongodb://user:***@h/"),
        ("redis://token@host:6379", "redis://***@host:6379"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("https://qdrant:6333", "https://qdrant:6333"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_document_key_templates_must_match_a_cache_pattern() -> None:
    with pytest.raises(SettingsError) as excinfo:
        Settings.from_env({"REDIS_DOCUMENT_KEY_TEMPLATES": "text:{doc_id}"})
    message = str(excinfo.value)
    assert "REDIS_DOCUMENT_KEY_TEMPLATES='text:{doc_id}' is invalid" in message
    assert "REDIS_CACHE_KEY_PATTERNS" in message
    Settings.from_env({"REDIS_DOCUMENT_KEY_TEMPLATES": "cache:doc:{doc_id}"})


@pytest.mark.parametrize(
    "url",
    ["redis://h:6379/0?password=hunter2", "mongodb://h/?authMechanismProperties=TOKEN:hunter2"],
)
def test_secrets_in_a_query_string_are_redacted(url: str) -> None:
    variable = "REDIS_URL" if url.startswith("redis") else "MONGODB_URL"
    settings = Settings.from_env({variable: url})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.public_view())


# --- bounds, names and connections (SPEC 4.1 item 10) ----------------------------------------


def test_the_largest_allowed_values_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "FILES_TTL_DAYS": "36500",
            "RAG_SESSION_TTL_HOURS": "876000",
            "REDIS_CACHE_TTL_HOURS": "876000",
            "MAX_QDRANT_POINTS": "1000000000000000",
            "MAX_MINIO_STORAGE_GB": "1e9",
            "REDIS_CLEANUP_INTERVAL_SECONDS": "604800",
            "QDRANT_VECTOR_SIZE": "65536",
        }
    )
    assert settings.files_ttl_days == 36500
    assert settings.rag_session_ttl_hours == 876000
    assert settings.max_qdrant_points == 10**15
    assert settings.redis_cleanup_interval_seconds == 604800


@pytest.mark.parametrize(
    "bucket", ["abc", "a" * 63, "rag.files-2024", "0documents9", "1.2.3", "my-docs.example"]
)
def test_s3_bucket_names_accepted(bucket: str) -> None:
    assert Settings.from_env({"MINIO_BUCKET": bucket}).minio_bucket == bucket


@pytest.mark.parametrize("database", ["rag", "d" * 63, "rag_2024", "RAG-prod", "é" * 31])
def test_mongo_database_names_accepted(database: str) -> None:
    assert Settings.from_env({"MONGODB_DATABASE": database}).mongodb_database == database


def test_a_collection_namespace_of_exactly_255_bytes_is_accepted() -> None:
    name = "c" * (255 - len("rag."))
    assert Settings.from_env({"RLM_SESSIONS_COLLECTION": name}).sessions_collection == name


def test_a_long_database_name_is_blamed_on_the_collection_that_overflows() -> None:
    error = settings_error({"MONGODB_DATABASE": "d" * 63, "RLM_MESSAGES_COLLECTION": "m" * 192})
    assert len(error.problems) == 1
    assert_reports(error, "RLM_MESSAGES_COLLECTION", repr("m" * 192), "(it is 256)")


def test_an_invalid_database_is_not_also_blamed_on_the_collections() -> None:
    error = settings_error({"MONGODB_DATABASE": "rag.x", "RLM_DOCUMENTS_COLLECTION": "c" * 250})
    assert [p.partition("=")[0] for p in error.problems] == ["MONGODB_DATABASE"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:65535",
        "redis://h:1/15",
        "redis://h:6379/0?socket_timeout=5",
        "http://qdrant:6333/prefix",
        "http://[::1]:6333",
    ],
)
def test_urls_with_valid_ports_accepted(url: str) -> None:
    variable = "REDIS_URL" if url.startswith("redis") else "QDRANT_URL"
    assert Settings.from_env({variable: url}).public_view()[variable.lower()]


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://h1,h2,h3",
        "mongodb://h1:27017,h2:27018,h3:65535/rag?replicaSet=rs0",
        "mongodb://[::1]:27017,[fe80::1]/rag",
        "mongodb://u:p%40ss@h:27017/?authSource=admin",
        "mongodb://%2Ftmp%2Fmongodb-27017.sock",
        "mongodb+srv://u:pw@cluster0.example.net/rag?retryWrites=true",
        "mongodb://h",
    ],
)
def test_mongodb_urls_with_several_hosts_accepted(url: str) -> None:
    assert Settings.from_env({"MONGODB_URL": url}).mongodb_url == url


@pytest.mark.parametrize(
    "endpoint", ["minio", "minio:1", "[::1]:9000", "https://s3.example.net:443"]
)
def test_more_minio_endpoint_forms_accepted(endpoint: str) -> None:
    env = {"MINIO_ENDPOINT": endpoint, "MINIO_ACCESS_KEY": "a", "MINIO_SECRET_KEY": "s"}
    assert Settings.from_env(env).minio_endpoint == endpoint


@pytest.mark.parametrize(
    ("variable", "raw", "shown"),
    [
        ("REDIS_URL", "redis://h:6379/0?socket_timeout=soon", "'redis://h:6379/0?***'"),
        ("REDIS_URL", f"redis://:{SECRET}@h:notaport/0", "'redis://***@h:notaport/0'"),
        (
            "MONGODB_URL",
            f"mongodb://u:{SECRET}@h1:27017,h2:x/rag",
            "'mongodb://***@h1:27017,h2:x/rag'",
        ),
        ("MONGODB_URL", f"mongodb://u:p@{SECRET}@h/", "'mongodb://***@h/'"),
        ("MINIO_ENDPOINT", "minio:9000?region=x", "'minio:9000?***'"),
    ],
)
def test_a_connection_that_does_not_parse_is_reported_without_its_secrets(
    variable: str, raw: str, shown: str
) -> None:
    error = settings_error({variable: raw})
    assert_reports(error, variable, shown, "allowed: ")
    assert SECRET not in str(error)


def test_cache_patterns_that_miss_the_default_templates_are_reported_under_the_patterns() -> None:
    error = settings_error({"REDIS_CACHE_KEY_PATTERNS": "cache:*"})
    assert len(error.problems) == 1
    assert_reports(error, "REDIS_CACHE_KEY_PATTERNS", "'cache:*'", "REDIS_DOCUMENT_KEY_TEMPLATES")
    assert "doc:text:{doc_id}" in error.problems[0]


@pytest.mark.parametrize(
    ("env", "wrong"),
    [
        (
            {"REDIS_CACHE_KEY_PATTERNS": "x:*,*", "REDIS_DOCUMENT_KEY_TEMPLATES": "x:{doc_id}"},
            "REDIS_CACHE_KEY_PATTERNS",
        ),
        ({"REDIS_CACHE_KEY_PATTERNS": "[a-z]*"}, "REDIS_CACHE_KEY_PATTERNS"),
        (
            {"REDIS_CACHE_KEY_PATTERNS": "cache:*", "REDIS_DOCUMENT_KEY_TEMPLATES": "cache:{id}"},
            "REDIS_DOCUMENT_KEY_TEMPLATES",
        ),
        (
            {"REDIS_CACHE_KEY_PATTERNS": "cache:*", "REDIS_DOCUMENT_KEY_TEMPLATES": "x:{doc_id}"},
            "REDIS_DOCUMENT_KEY_TEMPLATES",
        ),
    ],
)
def test_each_key_problem_is_reported_once_under_the_variable_that_is_wrong(
    env: dict[str, str], wrong: str
) -> None:
    error = settings_error(env)
    assert [p.partition("=")[0] for p in error.problems] == [wrong]


def test_patterns_and_templates_changed_together_are_accepted() -> None:
    settings = Settings.from_env(
        {"REDIS_CACHE_KEY_PATTERNS": "rag:*", "REDIS_DOCUMENT_KEY_TEMPLATES": "rag:text:{doc_id}"}
    )
    assert settings.redis_cache_key_patterns == ("rag:*",)
