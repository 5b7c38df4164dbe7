"""Settings from the environment: the seed's variables, retention profiles, connections, names."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote_plus, urlsplit

from rlm_core.priority import Thresholds

PROFILES: dict[str, dict[str, str]] = {
    "high-rotation": {
        "REDIS_CACHE_TTL_HOURS": "1",
        "RAG_SESSION_TTL_HOURS": "24",
        "FILES_TTL_DAYS": "7",
    },
    "long-term": {
        "REDIS_CACHE_TTL_HOURS": "24",
        "RAG_SESSION_TTL_HOURS": "168",
        "FILES_TTL_DAYS": "365",
    },
    "development": {
        "REDIS_CACHE_TTL_HOURS": "0.5",
        "RAG_SESSION_TTL_HOURS": "2",
        "FILES_TTL_DAYS": "1",
        "REDIS_CLEANUP_INTERVAL_SECONDS": "1800",
    },
}

MAX_BATCH_SIZE = 100_000
# A century: `now - TTL` and `2 x TTL` stay inside datetime's range (years 1-9999).
MAX_TTL_DAYS = 36_500
MAX_TTL_HOURS = MAX_TTL_DAYS * 24
# Counts stay exact as floats (usage percentages) and fit Mongo's and Dagster's 64-bit ints.
MAX_COUNT = 10**15
# A petabyte of Redis memory (MB) or an exabyte of objects (GB): far above any real limit.
MAX_SIZE = 10**9
# A week: the longest interval a schedule's cron can express.
MAX_INTERVAL_SECONDS = 604_800
MAX_TIMEOUT_SECONDS = 3_600
MAX_LOCK_WAIT_SECONDS = 86_400
# Qdrant's own limit on a vector's dimension.
MAX_VECTOR_SIZE = 65_536
# MongoDB's limits on database names and on `database.collection` namespaces, in bytes.
MONGO_DATABASE_MAX_BYTES = 63
MONGO_NAMESPACE_MAX_BYTES = 255
MONGO_DATABASE_FORBIDDEN = frozenset('/\\. "$*<>:|?\x00')
SECRET_VARIABLES = frozenset(
    {
        "MINIO_SECRET_KEY",
        "QDRANT_API_KEY",
        "MINIO_ACCESS_KEY",
        "RLM_API_TOKEN",
        "RLM_API_ADMIN_TOKEN",
        "RLM_ALERT_WEBHOOK_URL",
        "MINIO_SESSION_TOKEN",
    }
)
# A bearer token shorter than this is guessable; 32 random bytes in hex are 64 characters.
MIN_TOKEN_LENGTH = 16
CLEANUP_MODES = ("enforce", "observe")
LOG_FORMATS = ("json", "text")
AUDIT_SINKS = ("file", "s3", "mongodb")


class SettingsError(ValueError):
    """One or more invalid settings; the message lists every problem at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid rlm configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything rlm is configured by; build it with `Settings.from_env`."""

    redis_cache_ttl_hours: float = 1.0
    rag_session_ttl_hours: float = 24.0
    files_ttl_days: float = 7.0
    redis_cleanup_interval_seconds: int = 3600
    qdrant_cleanup_interval_seconds: int = 21600
    minio_cleanup_interval_seconds: int = 86400
    resource_monitoring_interval_seconds: int = 1800
    cleanup_threshold_critical: float = 0.9
    cleanup_threshold_high: float = 0.75
    cleanup_threshold_medium: float = 0.5
    max_redis_memory_mb: float = 256.0
    max_qdrant_points: int = 100_000
    max_minio_storage_gb: float = 50.0
    max_mongodb_documents: int = 10_000
    retention_profile: str | None = None
    redis_url: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    mongodb_url: str | None = None
    minio_endpoint: str | None = None
    minio_access_key: str | None = None
    minio_secret_key: str | None = None
    minio_secure: bool = False
    data_dir: Path = Path(".rlm-data")
    audit_dir: Path | None = None
    mongodb_database: str = "rag"
    documents_collection: str = "documents"
    sessions_collection: str = "chat_sessions"
    messages_collection: str = "messages"
    minio_bucket: str = "documents"
    redis_cache_key_patterns: tuple[str, ...] = ("doc:text:*", "cache:*")
    redis_document_key_templates: tuple[str, ...] = ("doc:text:{doc_id}",)
    qdrant_collection: str = "rag_documents"
    qdrant_vector_size: int = 384
    max_deletions_per_run: int | None = None
    store_timeout_seconds: float = 10.0
    embedded_lock_wait_seconds: float = 300.0
    batch_size: int = 1000
    # None: enforce on the embedded default, observe once a store URL is set (SPEC 8.1).
    cleanup_mode: str | None = None
    api_token: str | None = None
    api_admin_token: str | None = None
    alert_webhook_url: str | None = None
    log_format: str = "json"
    dagster_url: str = "http://127.0.0.1:3000"
    audit_sink: str = "file"
    # Our bucket's audit folder: the orphan sweep never lists anything under it as an orphan.
    audit_prefix: str = ".rlm-audit/"
    audit_retention_days: int = 90
    redis_cluster: bool = False
    redis_ca_bundle: Path | None = None
    minio_ca_bundle: Path | None = None
    minio_region: str | None = None
    minio_session_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Load and validate settings; raises `SettingsError` listing every problem."""
        source = dict(os.environ if env is None else env)
        problems: list[str] = []
        profile = _profile(source, problems)
        merged = {**PROFILES.get(profile or "", {}), **_non_empty(source)}
        values: dict[str, Any] = {"retention_profile": profile}
        failed: set[str] = set()
        for spec in _SPECS:
            raw = merged.get(spec.env)
            if raw is None:
                continue
            try:
                values[spec.attr] = spec.parse(raw)
            except ValueError as exc:
                failed.add(spec.env)
                problems.append(_problem(spec.env, raw, str(exc)))
        problems.extend(_cross_checks(cls(**values), given=merged, failed=failed))
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    @property
    def thresholds(self) -> Thresholds:
        """Priority thresholds as a value object."""
        return Thresholds(
            medium=self.cleanup_threshold_medium,
            high=self.cleanup_threshold_high,
            critical=self.cleanup_threshold_critical,
        )

    @property
    def files_ttl_hours(self) -> float:
        """FILES_TTL_DAYS in hours."""
        return self.files_ttl_days * 24.0

    @property
    def audit_path(self) -> Path:
        """Folder the audit JSON-lines files go to."""
        return self.audit_dir if self.audit_dir is not None else self.data_dir / "audit"

    def __repr__(self) -> str:
        return f"Settings({self.public_view()!r})"

    def public_view(self) -> dict[str, Any]:
        """Settings as a dict with every secret redacted, safe for logs and the UI."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                value = "***" if value else None
            elif f.name in {"redis_url", "mongodb_url", "qdrant_url"} and value:
                value = redact_url(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


_SECRET_FIELDS = frozenset(
    {
        "qdrant_api_key",
        "minio_access_key",
        "minio_secret_key",
        "api_token",
        "api_admin_token",
        "alert_webhook_url",
        "minio_session_token",
    }
)


def redact_url(url: str) -> str:
    """Replace the password of `scheme://user:password@host`, and any query string, with ***."""
    url = _redact_query(url)
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://***@{host}"


@dataclass(frozen=True)
class _Spec:
    env: str
    attr: str
    parse: Callable[[str], Any]


def _number(maximum: int) -> Callable[[str], float]:
    allowed = f"allowed: a finite number > 0 and <= {maximum} (fractions such as 0.5 are fine)"

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(allowed) from None
        if not 0 < value <= maximum:  # also false for nan
            raise ValueError(allowed)
        return value

    return parse


def _whole(maximum: int) -> Callable[[str], int]:
    allowed = f"allowed: a whole number > 0 and <= {maximum}"

    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(allowed) from None
        if not 0 < value <= maximum:
            raise ValueError(allowed)
        return value

    return parse


def _batch_size(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError("allowed: a whole number > 0") from None
    if not 0 < value <= MAX_BATCH_SIZE:
        raise ValueError(f"allowed: a whole number from 1 to {MAX_BATCH_SIZE}")
    return value


def _fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("allowed: a number with 0 < value <= 1") from None
    if not 0 < value <= 1:
        raise ValueError("allowed: a number with 0 < value <= 1")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("allowed: true/false, 1/0, yes/no, on/off")


def _name(raw: str) -> str:
    value = raw.strip()
    if not value or any(c in value for c in " /\\$\x00"):
        raise ValueError("allowed: a non-empty name without spaces, slashes, '$' or NUL")
    return value


def _bucket(raw: str) -> str:
    from minio.helpers import check_bucket_name

    value = raw.strip()
    try:
        check_bucket_name(value, strict=True, s3_check=True)
    except ValueError:
        raise ValueError(
            "allowed: an S3 bucket name, without spaces: 3-63 lowercase letters, digits, dots "
            "and hyphens, beginning and ending with a letter or digit, no '..', '.-' or '-.', "
            "not an IPv4 address, not starting with 'xn--', not ending with '-s3alias' or "
            "'--ol-s3'"
        ) from None
    return value


def _mongo_database(raw: str) -> str:
    value = raw.strip()
    if not _is_mongo_database(value):
        raise ValueError(
            f"allowed: a MongoDB database name of 1-{MONGO_DATABASE_MAX_BYTES} bytes, "
            'without spaces or any of / \\ . " $ * < > : | ? or NUL'
        )
    return value


def _is_mongo_database(name: str) -> bool:
    size = len(name.encode())
    return 0 < size <= MONGO_DATABASE_MAX_BYTES and not MONGO_DATABASE_FORBIDDEN & set(name)


def _mongo_collection(raw: str) -> str:
    allowed = (
        "allowed: a MongoDB collection name, non-empty, without spaces, slashes, '$' or NUL, "
        "not starting with 'system.'"
    )
    try:
        value = _name(raw)
    except ValueError:
        raise ValueError(allowed) from None
    if value.startswith("system."):
        raise ValueError(allowed)
    return value


def _patterns(raw: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not items:
        raise ValueError("allowed: a comma-separated list of Redis glob patterns")
    # A pattern opening with a wildcard ('*', '?*', '*:x', '[a-z]*') matches keys that are not ours.
    if any(p[0] in "*?[\\" for p in items):
        raise ValueError(
            "allowed: patterns with a fixed prefix; a bare '*' would match keys not ours"
        )
    return items


def _templates(raw: str) -> tuple[str, ...]:
    items = tuple(p.strip() for p in raw.split(",") if p.strip())
    if not items or not all(_is_doc_template(p) for p in items):
        raise ValueError(
            "allowed: comma-separated key templates, each containing {doc_id} and no other {field}"
        )
    return items


def _is_doc_template(template: str) -> bool:
    # Cleanup calls template.format(doc_id=...): any other field would fail mid-sweep.
    if "{doc_id}" not in template:
        return False
    try:
        template.format(doc_id="")
    except (KeyError, IndexError, ValueError):
        return False
    return True


def _url(*schemes: str, check: Callable[[str], object] | None = None) -> Callable[[str], str]:
    allowed = (
        f"allowed: a URL scheme://host[:port][/path] with scheme {_either(schemes)} "
        "and a port from 1 to 65535"
    )

    def parse(raw: str) -> str:
        value = raw.strip()
        scheme = value.partition("://")[0].lower()
        try:  # urlsplit raises on an unclosed IPv6 bracket, .port on a bad or out-of-range port
            parts = urlsplit(value)
            port = parts.port
            if check is not None and scheme in schemes:
                check(value)
        except ValueError:
            raise ValueError(allowed) from None
        located = parts.path.strip("/") if scheme == "unix" else parts.hostname
        if "://" not in value or scheme not in schemes or not located or port == 0:
            raise ValueError(allowed)
        if any(c.isspace() for c in value):
            raise ValueError(allowed)
        return value

    return parse


def _check_redis_url(url: str) -> None:
    # redis-py's own parser: a port, db or query option it cannot read fails at start, not later.
    from redis.connection import parse_url

    parse_url(url)  # type: ignore[no-untyped-call]


_MONGODB_ALLOWED = (
    "allowed: a URL with scheme mongodb or mongodb+srv: "
    "mongodb://[user:password@]host[:port][,host[:port]...][/database][?options] "
    "(ports from 1 to 65535) or mongodb+srv://[user:password@]host[/database][?options]"
)


def _mongodb_url(raw: str) -> str:
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in {"mongodb", "mongodb+srv"} or any(c.isspace() for c in value):
        raise ValueError(_MONGODB_ALLOWED)
    located, _, _ = rest.partition("?")
    hosts, _, database = located.partition("/")
    userinfo, at, hosts = hosts.rpartition("@")
    if not _mongo_hosts_ok(hosts, srv=scheme == "mongodb+srv", userinfo=userinfo if at else None):
        raise ValueError(_MONGODB_ALLOWED)
    if database and not _is_mongo_database(unquote_plus(database).partition(".")[0]):
        raise ValueError(_MONGODB_ALLOWED)
    return value


def _mongo_hosts_ok(hosts: str, srv: bool, userinfo: str | None) -> bool:
    # pymongo's own parsers, without the DNS lookups that parse_uri makes for mongodb+srv.
    from pymongo.errors import PyMongoError
    from pymongo.uri_parser import parse_userinfo, split_hosts

    try:
        nodes = split_hosts(hosts, default_port=None)
        if userinfo is not None:
            parse_userinfo(userinfo)
    except (ValueError, PyMongoError):
        return False
    if srv:
        return len(nodes) == 1 and nodes[0][1] is None
    return all(host for host, _ in nodes)


def _either(options: tuple[str, ...]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"


_ENDPOINT_ALLOWED = (
    "allowed: host:port or host (port from 1 to 65535; no path, no credentials), "
    "optionally with http:// or https://"
)


def _endpoint(raw: str) -> str:
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    hostport = (rest if sep else value).rstrip("/")
    if sep and scheme.lower() not in {"http", "https"}:
        raise ValueError(_ENDPOINT_ALLOWED)
    if not hostport or any(c in hostport for c in "/@?#") or any(c.isspace() for c in value):
        raise ValueError(_ENDPOINT_ALLOWED)
    if not _host_port_ok(hostport):
        raise ValueError(_ENDPOINT_ALLOWED)
    return value


def _host_port_ok(hostport: str) -> bool:
    try:
        parts: SplitResult = urlsplit(f"//{hostport}")
        port = parts.port
    except ValueError:
        return False
    return bool(parts.hostname) and port != 0 and not hostport.endswith(":")


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("allowed: a non-empty string")
    return raw


def _choice(*options: str) -> Callable[[str], str]:
    allowed = f"allowed: {_either(options)}"

    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(allowed)
        return value

    return parse


def _token(raw: str) -> str:
    # Printable ASCII without spaces: what an HTTP Authorization header carries unchanged.
    if len(raw) < MIN_TOKEN_LENGTH or not all("!" <= c <= "~" for c in raw):
        raise ValueError(
            f"allowed: at least {MIN_TOKEN_LENGTH} printable ASCII characters without spaces "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    return raw


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("allowed: a folder path")
    return Path(raw).expanduser()


def _audit_prefix(raw: str) -> str:
    # A folder of our bucket: always ends with '/', so '.rlm-audit' cannot also shield
    # '.rlm-audit-old.pdf' from the orphan sweep.
    value = raw.strip().strip("/")
    parts = value.split("/")
    if not value or any(p in {"", ".", ".."} for p in parts) or not _is_key_text(value):
        raise ValueError(
            "allowed: an object key prefix such as .rlm-audit/ (letters, digits, '.', '-', '_' "
            "and '/' between non-empty parts)"
        )
    return value + "/"


def _is_key_text(value: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "._-/") for c in value)


def _pem_file(raw: str) -> Path:
    allowed = "allowed: the path of a readable PEM file holding the CA certificate(s)"
    path = Path(raw.strip()).expanduser()
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        raise ValueError(allowed) from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(allowed)
    return path


def _region(raw: str) -> str:
    value = raw.strip()
    if not 0 < len(value) <= 64 or not all(
        c.isascii() and (c.isalnum() or c in "-_") for c in value
    ):
        raise ValueError("allowed: an S3 region name such as us-east-1 (letters, digits, '-', '_')")
    return value


_interval = _whole(MAX_INTERVAL_SECONDS)
_count = _whole(MAX_COUNT)

_SPECS: tuple[_Spec, ...] = (
    _Spec("REDIS_CACHE_TTL_HOURS", "redis_cache_ttl_hours", _number(MAX_TTL_HOURS)),
    _Spec("RAG_SESSION_TTL_HOURS", "rag_session_ttl_hours", _number(MAX_TTL_HOURS)),
    _Spec("FILES_TTL_DAYS", "files_ttl_days", _number(MAX_TTL_DAYS)),
    _Spec("REDIS_CLEANUP_INTERVAL_SECONDS", "redis_cleanup_interval_seconds", _interval),
    _Spec("QDRANT_CLEANUP_INTERVAL_SECONDS", "qdrant_cleanup_interval_seconds", _interval),
    _Spec("MINIO_CLEANUP_INTERVAL_SECONDS", "minio_cleanup_interval_seconds", _interval),
    _Spec(
        "RESOURCE_MONITORING_INTERVAL_SECONDS", "resource_monitoring_interval_seconds", _interval
    ),
    _Spec("CLEANUP_THRESHOLD_CRITICAL", "cleanup_threshold_critical", _fraction),
    _Spec("CLEANUP_THRESHOLD_HIGH", "cleanup_threshold_high", _fraction),
    _Spec("CLEANUP_THRESHOLD_MEDIUM", "cleanup_threshold_medium", _fraction),
    _Spec("MAX_REDIS_MEMORY_MB", "max_redis_memory_mb", _number(MAX_SIZE)),
    _Spec("MAX_QDRANT_POINTS", "max_qdrant_points", _count),
    _Spec("MAX_MINIO_STORAGE_GB", "max_minio_storage_gb", _number(MAX_SIZE)),
    _Spec("MAX_MONGODB_DOCUMENTS", "max_mongodb_documents", _count),
    _Spec("REDIS_URL", "redis_url", _url("redis", "rediss", "unix", check=_check_redis_url)),
    _Spec("QDRANT_URL", "qdrant_url", _url("http", "https")),
    _Spec("QDRANT_API_KEY", "qdrant_api_key", _text),
    _Spec("MONGODB_URL", "mongodb_url", _mongodb_url),
    _Spec("MINIO_ENDPOINT", "minio_endpoint", _endpoint),
    _Spec("MINIO_ACCESS_KEY", "minio_access_key", _text),
    _Spec("MINIO_SECRET_KEY", "minio_secret_key", _text),
    _Spec("MINIO_SECURE", "minio_secure", _bool),
    _Spec("RLM_DATA_DIR", "data_dir", _path),
    _Spec("RLM_AUDIT_DIR", "audit_dir", _path),
    _Spec("MONGODB_DATABASE", "mongodb_database", _mongo_database),
    _Spec("RLM_DOCUMENTS_COLLECTION", "documents_collection", _mongo_collection),
    _Spec("RLM_SESSIONS_COLLECTION", "sessions_collection", _mongo_collection),
    _Spec("RLM_MESSAGES_COLLECTION", "messages_collection", _mongo_collection),
    _Spec("MINIO_BUCKET", "minio_bucket", _bucket),
    _Spec("REDIS_CACHE_KEY_PATTERNS", "redis_cache_key_patterns", _patterns),
    _Spec("REDIS_DOCUMENT_KEY_TEMPLATES", "redis_document_key_templates", _templates),
    _Spec("QDRANT_COLLECTION", "qdrant_collection", _name),
    _Spec("QDRANT_VECTOR_SIZE", "qdrant_vector_size", _whole(MAX_VECTOR_SIZE)),
    _Spec("RLM_MAX_DELETIONS_PER_RUN", "max_deletions_per_run", _count),
    _Spec("RLM_STORE_TIMEOUT_SECONDS", "store_timeout_seconds", _number(MAX_TIMEOUT_SECONDS)),
    _Spec("RLM_BATCH_SIZE", "batch_size", _batch_size),
    _Spec(
        "RLM_EMBEDDED_LOCK_WAIT_SECONDS",
        "embedded_lock_wait_seconds",
        _number(MAX_LOCK_WAIT_SECONDS),
    ),
    _Spec("RLM_CLEANUP_MODE", "cleanup_mode", _choice(*CLEANUP_MODES)),
    _Spec("RLM_API_TOKEN", "api_token", _token),
    _Spec("RLM_API_ADMIN_TOKEN", "api_admin_token", _token),
    _Spec("RLM_ALERT_WEBHOOK_URL", "alert_webhook_url", _url("http", "https")),
    _Spec("RLM_LOG_FORMAT", "log_format", _choice(*LOG_FORMATS)),
    _Spec("RLM_DAGSTER_URL", "dagster_url", _url("http", "https")),
    _Spec("RLM_AUDIT_SINK", "audit_sink", _choice(*AUDIT_SINKS)),
    _Spec("RLM_AUDIT_PREFIX", "audit_prefix", _audit_prefix),
    _Spec("RLM_AUDIT_RETENTION_DAYS", "audit_retention_days", _whole(MAX_TTL_DAYS)),
    _Spec("REDIS_CLUSTER", "redis_cluster", _bool),
    _Spec("REDIS_CA_BUNDLE", "redis_ca_bundle", _pem_file),
    _Spec("MINIO_CA_BUNDLE", "minio_ca_bundle", _pem_file),
    _Spec("MINIO_REGION", "minio_region", _region),
    _Spec("MINIO_SESSION_TOKEN", "minio_session_token", _text),
)

ENV_VARIABLES: tuple[str, ...] = ("RLM_RETENTION_PROFILE", *(s.env for s in _SPECS))


def _non_empty(source: Mapping[str, str]) -> dict[str, str]:
    # An exported-but-empty variable means "unset": shells and compose files produce them.
    return {k: v for k, v in source.items() if v != ""}


def _profile(source: Mapping[str, str], problems: list[str]) -> str | None:
    raw = source.get("RLM_RETENTION_PROFILE", "")
    if raw == "":
        return None
    if raw.strip() not in PROFILES:
        allowed = ", ".join(PROFILES)
        problems.append(_problem("RLM_RETENTION_PROFILE", raw, f"allowed: {allowed}"))
        return None
    return raw.strip()


def _problem(env: str, raw: str, allowed: str) -> str:
    if env in SECRET_VARIABLES:
        shown = "***"
    elif env in CONNECTION_VARIABLES:
        shown = repr(_redact_credentials(raw))
    else:
        shown = repr(raw)
    return f"{env}={shown} is invalid; {allowed}"


# The store table rows' connection settings (rlm_core.store_table; a test keeps them equal).
CONNECTION_VARIABLES = frozenset({"REDIS_URL", "QDRANT_URL", "MONGODB_URL", "MINIO_ENDPOINT"})


def _redact_query(url: str) -> str:
    # Query strings can carry secrets too (redis-py honours ?password=, Mongo takes tokens).
    base, sep, _ = url.partition("?")
    return f"{base}?***" if sep else url


def _redact_credentials(raw: str) -> str:
    # An invalid URL may still hold a password before its '@': hide everything up to the last '@'.
    raw = _redact_query(raw)
    if "@" not in raw:
        return raw
    scheme, sep, rest = raw.partition("://")
    host = (rest if sep else raw).rpartition("@")[2]
    return f"{scheme}://***@{host}" if sep else f"***@{host}"


def _cross_checks(s: Settings, given: Mapping[str, str], failed: set[str]) -> list[str]:
    problems = [
        *_key_checks(s, given, failed),
        *_namespace_checks(s, failed),
        *_deployment_checks(s, given),
    ]
    if not s.cleanup_threshold_medium < s.cleanup_threshold_high < s.cleanup_threshold_critical:
        problems.append(
            f"CLEANUP_THRESHOLD_MEDIUM={s.cleanup_threshold_medium}, "
            f"CLEANUP_THRESHOLD_HIGH={s.cleanup_threshold_high}, "
            f"CLEANUP_THRESHOLD_CRITICAL={s.cleanup_threshold_critical} are invalid together; "
            "allowed: 0 < MEDIUM < HIGH < CRITICAL <= 1"
        )
    if s.minio_endpoint and not (s.minio_access_key and s.minio_secret_key):
        problems.append(
            "MINIO_ACCESS_KEY/MINIO_SECRET_KEY are missing; allowed: both set when MINIO_ENDPOINT is set"
        )
    return problems


def _key_checks(s: Settings, given: Mapping[str, str], failed: set[str]) -> list[str]:
    # A list that failed on its own is already reported; comparing the other list with the
    # default in its place would blame a variable that is fine.
    if failed & {"REDIS_CACHE_KEY_PATTERNS", "REDIS_DOCUMENT_KEY_TEMPLATES"}:
        return []
    patterns = s.redis_cache_key_patterns
    unmatched = [
        t
        for t in s.redis_document_key_templates
        if not any(
            fnmatch.fnmatchcase(t.format(doc_id="0123456789abcdef01234567"), p) for p in patterns
        )
    ]
    if not unmatched:
        return []
    if "REDIS_DOCUMENT_KEY_TEMPLATES" in given:
        allowed = (
            f"allowed: templates whose keys match one of REDIS_CACHE_KEY_PATTERNS {list(patterns)} "
            "(cleanup touches no other key)"
        )
        return [_problem("REDIS_DOCUMENT_KEY_TEMPLATES", t, allowed) for t in unmatched]
    # Only the patterns were set: they no longer cover the default document keys.
    allowed = (
        "allowed: patterns that also match the document keys of REDIS_DOCUMENT_KEY_TEMPLATES "
        f"{list(unmatched)} (set both together)"
    )
    return [_problem("REDIS_CACHE_KEY_PATTERNS", given["REDIS_CACHE_KEY_PATTERNS"], allowed)]


_COLLECTION_VARIABLES = {
    "RLM_DOCUMENTS_COLLECTION": "documents_collection",
    "RLM_SESSIONS_COLLECTION": "sessions_collection",
    "RLM_MESSAGES_COLLECTION": "messages_collection",
}


def _namespace_checks(s: Settings, failed: set[str]) -> list[str]:
    if "MONGODB_DATABASE" in failed:
        return []
    problems: list[str] = []
    for env, attr in _COLLECTION_VARIABLES.items():
        name = getattr(s, attr)
        size = len(f"{s.mongodb_database}.{name}".encode())
        if size > MONGO_NAMESPACE_MAX_BYTES:
            allowed = (
                f"allowed: a name short enough that MONGODB_DATABASE.name is at most "
                f"{MONGO_NAMESPACE_MAX_BYTES} bytes (it is {size})"
            )
            problems.append(_problem(env, name, allowed))
    return problems


def _deployment_checks(s: Settings, given: Mapping[str, str]) -> list[str]:
    """Settings that only make sense together with a server connection."""
    secure_s3 = s.minio_secure or (s.minio_endpoint or "").lower().startswith("https://")
    needs = (
        (
            "RLM_AUDIT_SINK",
            s.audit_sink == "s3" and not s.minio_endpoint,
            "file, or s3 with MINIO_ENDPOINT set (the audit goes to MINIO_BUCKET)",
        ),
        (
            "RLM_AUDIT_SINK",
            s.audit_sink == "mongodb" and not s.mongodb_url,
            "file, or mongodb with MONGODB_URL set",
        ),
        (
            "REDIS_CLUSTER",
            s.redis_cluster
            and not (s.redis_url or "").lower().startswith(("redis://", "rediss://")),
            "true only with a redis:// or rediss:// REDIS_URL (the embedded Redis is no cluster)",
        ),
        (
            "REDIS_URL",
            s.redis_cluster and _redis_database(s.redis_url) != 0,
            "database 0 with REDIS_CLUSTER=true (a Redis Cluster has no other database)",
        ),
        (
            "REDIS_CA_BUNDLE",
            s.redis_ca_bundle is not None
            and not (s.redis_url or "").lower().startswith("rediss://"),
            "a CA file together with a rediss:// REDIS_URL",
        ),
        (
            "MINIO_CA_BUNDLE",
            s.minio_ca_bundle is not None and not (s.minio_endpoint and secure_s3),
            "a CA file together with MINIO_SECURE=true or an https:// MINIO_ENDPOINT",
        ),
        (
            "MINIO_REGION",
            s.minio_region is not None and not s.minio_endpoint,
            "a region together with MINIO_ENDPOINT",
        ),
        (
            "MINIO_SESSION_TOKEN",
            s.minio_session_token is not None and not s.minio_endpoint,
            "a token together with MINIO_ENDPOINT",
        ),
    )
    return [_problem(env, given[env], f"allowed: {allowed}") for env, bad, allowed in needs if bad]


def _redis_database(url: str | None) -> int:
    # redis-py's own reading: the URL path, else ?db=, else 0.
    from redis.connection import parse_url

    if not url:
        return 0
    return int(parse_url(url).get("db", 0))  # type: ignore[no-untyped-call]
