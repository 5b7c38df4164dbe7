"""A cleanup rig for the fast tier: the four in-memory fakes on one injected clock, and one
journal of every audit line and store write in the order they happened.

Seeding goes through `Seed` only, so the demo-only seeding writes can move off the ports by
changing this one class.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
from bson import ObjectId

from rlm_core import LifecycleManager, Settings
from rlm_core.clock import FakeClock
from rlm_core.domain import CleanupReport, ResourceType
from rlm_core.ports import CacheSeed, VectorPoint
from rlm_core.stores import Stores
from tests.fakes import (
    MemoryCache,
    MemoryMetadata,
    MemoryMongo,
    MemoryObjects,
    MemoryQdrant,
    MemoryRedis,
    MemoryS3,
    MemoryVectors,
)
from tests.fakes.objects import StoredObject
from tests.faults import MUTATIONS, Call, Phase, hooked

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
DIM = 4
Hook = Callable[[], object]


@dataclass
class Rig:
    """Settings, clock, the fakes' servers, a manager over journalled adapters, the journal."""

    settings: Settings
    clock: FakeClock
    redis: MemoryRedis
    qdrant: MemoryQdrant
    s3: MemoryS3
    mongo: MemoryMongo
    # Audit lines and store writes, in the order they happened: ("audit", (store, target)) or
    # ("cache.unlink_idle", keys) and the like (tests/faults.py names stores and writes).
    journal: list[tuple[str, Any]] = field(default_factory=list)
    # Per method, one action per call, in order (None: let that call pass), run just before or
    # just after the call reaches the store: the app acting at that exact moment.
    before: dict[str, list[Hook | None]] = field(default_factory=dict)
    after: dict[str, list[Hook | None]] = field(default_factory=dict)
    # Every store call, reads and iterator pages included, in order.
    calls: list[Call] = field(default_factory=list)
    _audit_read: dict[Path, int] = field(default_factory=dict)
    _audit_lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stores(self) -> Stores:
        return self.manager.stores

    @property
    def manager(self) -> LifecycleManager:
        return self._manager

    def build(self) -> Rig:
        s = self.settings
        cache = MemoryCache(self.redis, s.redis_cache_key_patterns)
        vectors = MemoryVectors(self.qdrant, s.qdrant_collection, s.qdrant_vector_size)
        objects = MemoryObjects(self.s3, s.minio_bucket)
        metadata = MemoryMetadata(
            self.mongo,
            documents=s.documents_collection,
            sessions=s.sessions_collection,
            messages=s.messages_collection,
        )
        plain = Stores(lambda: cache, lambda: vectors, lambda: objects, lambda: metadata)
        stores = hooked(plain, self._hook, self.calls)
        self._manager = LifecycleManager(s, stores, self.clock)
        self.seed = Seed(self, metadata, vectors, objects, cache)
        self.seed.setup()
        return self

    def cleanup(
        self,
        resource_type: ResourceType | None = None,
        *,
        dry_run: bool = False,
        cap: int | None = None,
    ) -> CleanupReport:
        """One cleanup; the journal then ends with every audit line it wrote."""
        report = self.manager.cleanup(resource_type, dry_run=dry_run, max_deletions=cap)
        self.flush_audit()
        return report

    def audit(self) -> list[dict[str, Any]]:
        """Every audit line written so far, in order."""
        self.flush_audit()
        return list(self._audit_lines)

    def flush_audit(self) -> None:
        """Journal the audit lines written since the last look (read from where it ended)."""
        for path in sorted(self.settings.audit_path.glob("*.jsonl")):
            with path.open("rb") as handle:
                handle.seek(self._audit_read.get(path, 0))
                text = handle.read()
            complete = text[: text.rfind(b"\n") + 1]
            self._audit_read[path] = self._audit_read.get(path, 0) + len(complete)
            for raw in complete.splitlines():
                line = json.loads(raw)
                self._audit_lines.append(line)
                self.journal.append(("audit", (line["store"], line["target"])))

    def writes(self, prefix: str = "") -> list[tuple[str, Any]]:
        """The journal's store writes (no audit lines), optionally of one store or call."""
        return [e for e in self.journal if e[0] != "audit" and e[0].startswith(prefix)]

    def called(self, name: str) -> list[Any]:
        """The summarized first list argument of each call of `store.method`, in order."""
        return [_summary(c.args) for c in self.calls if c.name == name]

    def _hook(self, store: str, method: str, phase: Phase) -> None:
        if phase == "before":
            self.flush_audit()
            if method in MUTATIONS:
                self.journal.append((f"{store}.{method}", _summary(self.calls[-1].args)))
        actions = (self.before if phase == "before" else self.after).get(method)
        if actions:
            action = actions.pop(0)
            if action is not None:
                action()

    def audited(self, store: str | None = None) -> list[str]:
        """Targets of the audit lines, in order, optionally of one store."""
        return [t for kind, (s, t) in self._audit_entries() if store in (None, s)]

    def _audit_entries(self) -> Iterator[tuple[str, tuple[str, str]]]:
        return ((k, v) for k, v in self.journal if k == "audit")

    # What is left in each store, read from the servers.

    def documents(self) -> set[str]:
        return {str(i) for i in self.mongo.collections[self.settings.documents_collection]}

    def points(self) -> set[str]:
        found = self.qdrant.collections.get(self.settings.qdrant_collection)
        return set(found.points) if found else set()

    def objects(self) -> set[str]:
        return set(self.s3.buckets.get(self.settings.minio_bucket, {}))

    def keys(self) -> set[bytes]:
        return set(self.redis.scan_iter())


def make_rig(tmp_path: Path, **overrides: Any) -> Rig:
    """A fresh rig at NOW; settings overrides by field name."""
    base = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / "data")})
    settings = replace(base, qdrant_vector_size=DIM, **overrides)
    clock = FakeClock(NOW)
    rig = Rig(settings, clock, MemoryRedis(clock), MemoryQdrant(), MemoryS3(clock), MemoryMongo())
    return rig.build()


class Seed:
    """The app's writes, planted at given ages: documents, sessions, points, objects and cache
    keys. The one place tests seed stores through."""

    def __init__(
        self,
        rig: Rig,
        metadata: MemoryMetadata,
        vectors: MemoryVectors,
        objects: MemoryObjects,
        cache: MemoryCache,
    ) -> None:
        self._rig = rig
        self._metadata = metadata
        self._vectors = vectors
        self._objects = objects
        self._cache = cache
        self._counter = 0

    def setup(self) -> None:
        self._vectors.ensure_collection()
        self._objects.ensure_bucket()

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    @property
    def now(self) -> datetime:
        return self._rig.clock.now()

    def oid(self) -> str:
        """A fresh ObjectId hex, in increasing order."""
        return f"{self._next():024x}"

    def document(
        self,
        *,
        age: timedelta,
        doc_id: str | None = None,
        oid: bool = True,
        key: str | None = None,
        size: int = 100,
        with_object: bool = True,
        object_age: timedelta | None = None,
        **fields: Any,
    ) -> str:
        """A document record touched `age` ago and (unless told not to) its object."""
        doc_id = doc_id or self.oid()
        key = key if key is not None else f"{uuid.UUID(int=self._next())}/file-{doc_id[-4:]}.pdf"
        when = _naive(self.now - age)
        record: dict[str, Any] = {
            "_id": ObjectId(doc_id) if oid else doc_id,
            "user_id": "user-1",
            "filename": "file.pdf",
            "content_type": "application/pdf",
            "size_bytes": size,
            "minio_bucket": self._rig.settings.minio_bucket,
            "minio_key": key,
            "status": "ready",
            "created_at": when,
            "updated_at": when,
            "metadata": {},
        }
        record.update(fields)
        self._metadata.insert_raw("documents", [from_the_wire(record)])
        if with_object and isinstance(key, str):
            self.object(key, b"x" * size, age=object_age if object_age is not None else age)
        return doc_id

    def session(
        self,
        *,
        idle: timedelta,
        session_id: str | None = None,
        documents: list[Any] | None = None,
        attached: list[Any] | None = None,
    ) -> str:
        session_id = session_id or str(uuid.UUID(int=self._next()))
        self._metadata.insert_raw(
            "chat_sessions",
            [
                {
                    "_id": session_id,
                    "user_id": "user-1",
                    "updated_at": _naive(self.now - idle),
                    "documents": documents or [],
                    "attached_file_ids": attached or [],
                }
            ],
        )
        return session_id

    def points(
        self, doc_id: Any, session: Any, *, age: timedelta, count: int = 1, **payload: Any
    ) -> list[str]:
        """`count` points of (session, document) created `age` ago; payload fields override."""
        ids = [str(uuid.UUID(int=self._next())) for _ in range(count)]
        body = {"session_id": session, "document_id": doc_id}
        body["created_at"] = (self.now - age).timestamp()
        body.update(payload)
        body = {k: v for k, v in body.items() if v is not _ABSENT}
        self._vectors.upsert([VectorPoint(pid, [0.5] * DIM, dict(body)) for pid in ids])
        return ids

    def cache_key(self, key: bytes, *, idle: int, ttl: int | None = None, size: int = 10) -> None:
        self._cache.seed([CacheSeed(key, b"v" * size, ttl, idle)])

    def object(self, key: str, data: bytes, *, age: timedelta) -> None:
        """An object whose server stamp is `age` ago."""
        bucket = self._rig.s3.buckets.setdefault(self._rig.settings.minio_bucket, {})
        bucket[key] = StoredObject(data, self.now - age)


_ABSENT = object()
ABSENT: Any = _ABSENT  # a payload field value meaning "leave the field out"


def from_the_wire(record: dict[str, Any]) -> dict[str, Any]:
    """The record as a server hands it back: fresh objects, never the caller's own strings."""
    return bson.decode(bson.encode(record))


def _naive(when: datetime) -> datetime:
    return when.replace(tzinfo=None)


def _summary(args: tuple[Any, ...]) -> Any:
    """The first list argument (else the first argument), reduced to what a test compares:
    ids, keys or (key, seconds)."""
    lists = [a for a in args if isinstance(a, list | tuple)]
    if lists:
        return tuple(_item(x) for x in lists[0])
    return _item(args[0]) if args else None


def _item(x: Any) -> Any:
    for name in ("point_id", "id"):
        if hasattr(x, name) and not isinstance(x, str | bytes):
            return getattr(x, name)
    if hasattr(x, "user_id") and hasattr(x, "file_hash"):
        return x.file_hash
    return x
