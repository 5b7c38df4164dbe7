"""Pure lifecycle rules (SPEC section 4): values in, verdicts out; no I/O."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rlm_core.ports import CacheKey, DocumentRecord, ObjectInfo, PointInfo

IN_FLIGHT_STATUSES = frozenset({"uploading", "processing"})
UPLOAD_SESSION_PREFIX = "upload_"


@dataclass(frozen=True)
class Retention:
    """The cut-off instants of one sweep, fixed from the injected clock at its start."""

    now: datetime
    session_ttl: timedelta
    files_ttl: timedelta
    cache_ttl: timedelta

    @property
    def active_since(self) -> datetime:
        """Sessions updated at or after this instant are active."""
        return self.now - self.session_ttl

    @property
    def files_cutoff(self) -> datetime:
        """Documents and objects last touched before this instant are old."""
        return self.now - self.files_ttl

    @property
    def files_ttl_days(self) -> float:
        """FILES_TTL_DAYS, as the audit's reasons name it."""
        return self.files_ttl / timedelta(days=1)

    @property
    def cache_ttl_seconds(self) -> int:
        """REDIS_CACHE_TTL_HOURS in whole seconds, at least 1 (what Redis's IDLETIME counts)."""
        return max(1, round(self.cache_ttl.total_seconds()))


class DocumentVerdict(enum.Enum):
    """What the age rules say of a document before references are read."""

    MALFORMED = "malformed"
    IN_FLIGHT = "in_flight"
    RECENT = "recent"
    CANDIDATE = "candidate"


def last_touched(doc: DocumentRecord) -> datetime | None:
    """updated_at, else created_at."""
    return doc.updated_at or doc.created_at


def document_verdict(doc: DocumentRecord, retention: Retention) -> DocumentVerdict:
    """Classify a document by shape, status and age; CANDIDATE still needs a reference check."""
    touched = last_touched(doc)
    if doc.problem is not None or touched is None or not isinstance(doc.status, str):
        return DocumentVerdict.MALFORMED
    if doc.status in IN_FLIGHT_STATUSES:
        return DocumentVerdict.IN_FLIGHT
    if touched >= retention.files_cutoff:
        return DocumentVerdict.RECENT
    return DocumentVerdict.CANDIDATE


class CacheAction(enum.Enum):
    """What to do with one cache key."""

    KEEP = "keep"
    UNLINK = "unlink"
    EXPIRE = "expire"


def cache_action(key: CacheKey, cache_ttl_seconds: int) -> tuple[CacheAction, int]:
    """Keys without TTL: UNLINK when idle past the TTL, else EXPIRE to the time left."""
    if key.ttl_seconds != -1:
        return CacheAction.KEEP, 0
    if key.idle_seconds is None:
        # The server cannot report idleness (LFU policy): never guess it idle; bound it instead.
        return CacheAction.EXPIRE, cache_ttl_seconds
    if key.idle_seconds >= cache_ttl_seconds:
        return CacheAction.UNLINK, 0
    return CacheAction.EXPIRE, max(1, cache_ttl_seconds - key.idle_seconds)


@dataclass(frozen=True)
class ParsedPoint:
    """A point whose payload can be trusted."""

    session_id: str
    document_id: str
    created_at: datetime


def parse_point(point: PointInfo) -> ParsedPoint | None:
    """The point's lifecycle fields, or None when any is missing or malformed."""
    session, document, created = point.session_id, point.document_id, point.created_at
    if not (isinstance(session, str) and session and isinstance(document, str) and document):
        return None
    if isinstance(created, bool) or not isinstance(created, int | float):
        return None
    try:
        when = datetime.fromtimestamp(float(created), UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return ParsedPoint(session, document, when)


class PointVerdict(enum.Enum):
    """What the age and shape rules say of a point before its document and session are read."""

    UNKNOWN = "unknown"
    YOUNG = "young"
    OLD = "old"


@dataclass(frozen=True)
class PointEvidence:
    """An old point's payload as far as it can be trusted: session_id is None when it is
    missing or malformed (then only the "document gone" rule may delete the point)."""

    point_id: str
    document_id: str
    session_id: str | None


def point_evidence(
    point: PointInfo, active_since: datetime
) -> tuple[PointVerdict, PointEvidence | None]:
    """SPEC 4.1 (3): a point may be judged only when its created_at is a number older than the
    session TTL and its document_id is a non-empty string; anything else is UNKNOWN."""
    created, document = point.created_at, point.document_id
    if isinstance(created, bool) or not isinstance(created, int | float):
        return PointVerdict.UNKNOWN, None
    if not _is_finite(created) or not (isinstance(document, str) and document):
        return PointVerdict.UNKNOWN, None
    if not _is_date(created):
        return PointVerdict.UNKNOWN, None  # a number, but no instant (e.g. -1e300)
    if created >= active_since.timestamp():
        return PointVerdict.YOUNG, None
    session = point.session_id if isinstance(point.session_id, str) and point.session_id else None
    return PointVerdict.OLD, PointEvidence(point.point_id, document, session)


def _is_finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:
        return False  # an int too large for a float (10**400)


def _is_date(timestamp: float) -> bool:
    try:
        datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return False
    return True


def object_key_problem(key: str) -> str | None:
    """Why an object key cannot be deleted safely by name, or None (SPEC 10: never touch what
    is not ours; a `..` segment or a leading slash may name something outside the bucket)."""
    if not key:
        return "an empty key"
    if key.startswith("/") or any(part in {".", ".."} for part in key.split("/")):
        return f"{key!r} has a '.', '..' or leading '/' segment"
    if any(ord(c) < 32 or c == "\x7f" for c in key):
        return f"{key!r} has a control character"
    return None


def is_upload_session(session_id: str, document_id: str) -> bool:
    """`upload_{doc_id}` sessions follow their document rather than a chat session."""
    return session_id == f"{UPLOAD_SESSION_PREFIX}{document_id}"


def object_is_old(obj: ObjectInfo, retention: Retention) -> bool:
    """An object last modified before FILES_TTL ago."""
    return obj.last_modified < retention.files_cutoff
