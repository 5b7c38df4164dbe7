"""Crashes and races.

- A cleanup that dies before or after ANY of its mutating store calls, then runs again, ends
  exactly in the state SPEC section 4 prescribes for the planted data (computed here from the
  data and the rules, not from another rlm run), on both stacks, for every store's sweep.
- Every delete is audited before it happens: a process that dies right after a delete call
  has already written the audit entry naming each item that went.
- N concurrent uploads of one file by one user, forced to all reach the insert together,
  leave one document and one object; the unique index decides and every loser resolves to the
  winner.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest
from bson import ObjectId
from qdrant_client import QdrantClient

from rlm_core import LifecycleManager, ResourceType, Settings
from rlm_core.audit import read_audit
from rlm_core.cleanup.context import LEASE_TTL
from rlm_core.clock import FakeClock
from rlm_core.ports import CacheSeed, DuplicateDocumentError, VectorPoint
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.faults import Call, Crash, FaultPlan, Phase, faulty, hooked
from tests.lifecycle.conftest import raw_redis
from tests.lifecycle.world import DIM, State, World, naive, snapshot
from tests.services import RedisServer, S3Server
from tests.stack import STACKS

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
CACHE_TTL = 3600  # REDIS_CACHE_TTL_HOURS = 1 (default), in seconds

# ---------------------------------------------------------------- a model of the planted data


@dataclass(frozen=True)
class Doc:
    touched_age: timedelta
    status: str
    key: str
    refs: frozenset[str] = frozenset()  # sessions that reference it, along any of the 4 paths


@dataclass(frozen=True)
class Point:
    session: str | None
    doc: str | None
    age: timedelta | None  # None: created_at is not a number


@dataclass(frozen=True)
class Key:
    ours: bool
    ttl: bool
    idle: int
    doc: str | None = None  # the document whose `doc:text:{id}` key this is


@dataclass
class Model:
    """What build() planted, as ages relative to the cleanup instant."""

    session_ttl: timedelta
    files_ttl: timedelta
    docs: dict[str, Doc] = field(default_factory=dict)
    sessions: dict[str, timedelta] = field(default_factory=dict)  # id -> idle
    points: dict[str, Point] = field(default_factory=dict)
    objects: set[str] = field(default_factory=set)
    keys: dict[bytes, Key] = field(default_factory=dict)

    # SPEC section 4, written out for this data.

    def active(self, session: str) -> bool:
        return self.sessions.get(session, timedelta.max) <= self.session_ttl

    def live(self, doc_id: str) -> bool:
        doc = self.docs[doc_id]
        return (
            doc.status in {"uploading", "processing"}
            or doc.touched_age <= self.files_ttl
            or any(self.active(s) for s in doc.refs)
        )

    def expected(self) -> State:
        docs = {d for d in self.docs if self.live(d)}
        points = {p for p, point in self.points.items() if self._point_stays(point, docs)}
        named = {self.docs[d].key for d in docs}
        # Every object is old (the clock is past FILES_TTL_DAYS since the server stamped it),
        # so only a surviving document naming it keeps it.
        objects = self.objects & named
        keys = {k: key for k, key in self.keys.items() if self._key_stays(key, docs)}
        ttls = {(k, key.ttl or (key.ours and key.idle < CACHE_TTL)) for k, key in keys.items()}
        return State(
            frozenset(docs),
            frozenset(objects),
            frozenset(points),
            frozenset(keys),
            frozenset(ttls),
        )

    def _point_stays(self, point: Point, docs: set[str]) -> bool:
        if point.doc in self.docs and point.doc not in docs:
            return False  # the cascade takes every point naming an expired document
        if point.doc is None or point.age is None or point.age <= self.session_ttl:
            return True  # no positive evidence: malformed (counted unknown), or young
        if point.doc not in docs:
            return False  # its document no longer exists (needs only document_id)
        if point.session is None:
            return True  # the session rule needs a session_id
        if point.session == f"upload_{point.doc}" or self.active(point.session):
            return True
        return any(self.active(s) for s in self.docs[point.doc].refs)

    def _key_stays(self, key: Key, docs: set[str]) -> bool:
        if not key.ours:
            return True
        if key.doc is not None and key.doc in self.docs and key.doc not in docs:
            return False
        return key.ttl or key.idle < CACHE_TTL


@dataclass
class Planter:
    """Writes data through the ports and notes each item in the model."""

    world: World
    model: Model

    def doc(
        self,
        age: timedelta,
        *,
        status: str = "ready",
        key: str | None = None,
        updated_age: timedelta | None = None,
        conversation: str | None = None,
        cache: bool = True,
    ) -> str:
        world, stores = self.world, self.world.stores
        doc_id = world._oid()
        if key is None:
            key = f"{world._uuid()}/informe {doc_id[-4:]}.pdf"
            body = f"contenido {doc_id}".encode() * 20
            stores.objects().put(key, io.BytesIO(body), len(body), "application/pdf")
            self.model.objects.add(key)
        touched = updated_age if updated_age is not None else age
        metadata_seeder(stores.metadata()).insert_raw(
            "documents",
            [
                {
                    "_id": ObjectId(doc_id),
                    "user_id": "user-1",
                    "filename": key.split("/", 1)[1],
                    "content_type": "application/pdf",
                    "size_bytes": 100,
                    "minio_bucket": stores.objects().bucket,
                    "minio_key": key,
                    "status": status,
                    "conversation_id": conversation,
                    "created_at": naive(world.now - age),
                    "updated_at": naive(world.now - touched),
                    "metadata": {"file_hash": uuid.uuid4().hex * 2},
                }
            ],
        )
        self.model.docs[doc_id] = Doc(touched, status, key)
        self.points(f"upload_{doc_id}", doc_id, age, 2)
        if cache:
            self.cache(f"doc:text:{doc_id}", ttl=True, doc=doc_id)
        return doc_id

    def refer(self, session: str, *doc_ids: str) -> None:
        for d in doc_ids:
            self.model.docs[d] = replace(
                self.model.docs[d], refs=self.model.docs[d].refs | {session}
            )

    def session(
        self, idle: timedelta, documents: tuple[str, ...] = (), attached: tuple[str, ...] = ()
    ) -> str:
        session = self.world.session(idle=idle, documents=documents, attached=attached)
        self.model.sessions[session] = idle
        self.refer(session, *documents, *attached)
        return session

    def points(self, session: str | None, doc: str | None, age: timedelta, count: int) -> None:
        for _ in range(count):
            self.point(session, doc, age)

    def point(
        self, session: str | None, doc: str | None, age: timedelta, *, bad_time: bool = False
    ) -> str:
        point_id = self.world._uuid()
        payload: dict[str, Any] = {"chunk_id": 0, "text": "fragmento", "page": 1, "metadata": {}}
        if session is not None:
            payload["session_id"] = session
        if doc is not None:
            payload["document_id"] = doc
        payload["created_at"] = "ayer" if bad_time else (self.world.now - age).timestamp()
        vector_seeder(self.world.stores.vectors()).upsert(
            [VectorPoint(point_id, [0.02] * DIM, payload)]
        )
        self.model.points[point_id] = Point(session, doc, None if bad_time else age)
        return point_id

    def cache(self, name: str, *, ttl: bool, idle: int = 0, doc: str | None = None) -> None:
        key = name.encode()
        ours = name.startswith(("doc:text:", "cache:"))
        cache_seeder(self.world.stores.cache()).seed(
            [CacheSeed(key, b"v", 3600 if ttl else None, idle)]
        )
        self.model.keys[key] = Key(ours, ttl, idle, doc)


def plant_orphans(world: World, model: Model, count: int) -> None:
    for _ in range(count):
        model.objects.add(world.orphan_object())


def build(world: World, model: Model) -> None:
    """Every rule of SPEC section 4 on a few items each (ages are at the cleanup instant)."""
    p = Planter(world, model)
    recent = p.doc(HOUR)
    two_days = p.doc(2 * DAY, cache=False)
    p.cache(f"doc:text:{two_days}", ttl=False, idle=7200, doc=two_days)  # idle leak: unlinked
    p.doc(30 * DAY, updated_age=HOUR)  # re-uploaded lately: updated_at counts
    expired = [p.doc(age) for age in (9 * DAY, 20 * DAY, 40 * DAY)]
    p.point(f"upload_{expired[0]}", expired[0], DAY, bad_time=True)  # cascade takes it anyway
    p.doc(30 * DAY, status="processing")  # in flight: never expired
    p.doc(30 * DAY, key=model.docs[recent].key)  # expires; the object stays (recent names it)
    listed, attached, by_message, stale_ref = (p.doc(30 * DAY) for _ in range(4))
    active = p.session(HOUR, documents=(listed,), attached=(attached,))
    stale = p.session(3 * DAY, documents=(stale_ref,))
    world.message(active, [by_message])
    p.refer(active, by_message)
    by_conversation = p.doc(30 * DAY, conversation=active)
    p.refer(active, by_conversation)
    # Qdrant: an inactive session's points go unless an active session references the doc.
    p.points(stale, two_days, 2 * DAY, 3)
    p.points(stale, by_conversation, 3 * DAY, 2)
    p.points(stale, stale_ref, 3 * DAY, 2)
    p.points(active, two_days, 2 * DAY, 2)
    vanished, young_vanished = str(ObjectId()), str(ObjectId())
    p.points(stale, vanished, 3 * DAY, 3)
    p.points(stale, young_vanished, HOUR, 1)
    # Malformed points are kept, even beside doomed points of the same pair.
    p.point(stale, two_days, 3 * DAY, bad_time=True)
    p.point(stale, None, 3 * DAY)
    p.point(None, two_days, 3 * DAY)  # the session rule needs a session_id: kept
    p.point(None, vanished, 3 * DAY)  # "document gone" needs only a document_id: goes
    # Redis: idle leaks go, young leaks get a TTL, keys with a TTL and foreign keys stay.
    for i in range(5):
        p.cache(f"cache:idle:{i}", ttl=False, idle=7200)
    for i in range(3):
        p.cache(f"cache:fresh:{i}", ttl=False, idle=0)
        p.cache(f"cache:ttl:{i}", ttl=True)
        p.cache(f"blacklist:{i}", ttl=False, idle=90_000)
    p.cache("rate_limit:user-1", ttl=False, idle=7200)


# ---------------------------------------------------------------- fresh stores per crash point


@pytest.fixture(params=STACKS)
def fresh(
    request: pytest.FixtureRequest, tmp_path: Path, redis_srv: RedisServer, redis_client: Any
) -> Callable[[str], Any]:
    """A fresh planted world per call, on real servers (mongomock, Qdrant in memory, S3 over
    HTTP) or on the embedded stores; Redis is the session's redis-server on both, flushed."""

    @contextmanager
    def make(name: str) -> Iterator[tuple[LifecycleManager, Model]]:
        redis_client.flushdb()
        clock = FakeClock(datetime.now(UTC))
        base = Settings.from_env({"RLM_DATA_DIR": str(tmp_path / name), "REDIS_URL": redis_srv.url})
        settings = replace(base, minio_bucket=f"rlm-{uuid.uuid4().hex[:12]}", batch_size=4)
        qdrant = None
        if request.param == "servers":
            qdrant = QdrantClient(location=":memory:")
            manager = LifecycleManager.from_clients(
                settings,
                redis=redis_client,
                qdrant=qdrant,
                minio=request.getfixturevalue("minio_client"),
                mongo_db=mongomock.MongoClient(tz_aware=False)["rag"],
                clock=clock,
            )
        else:
            manager = LifecycleManager.from_settings(settings, clock=clock)
        try:
            world = World(manager.stores, clock)
            world.setup()
            model = Model(
                timedelta(hours=settings.rag_session_ttl_hours),
                timedelta(days=settings.files_ttl_days),
            )
            plant_orphans(world, model, 2)
            # Past FILES_TTL_DAYS since the object server stamped the orphans (real time).
            clock.advance(days=settings.files_ttl_days + 1)
            build(world, model)
            yield manager, model
        finally:
            manager.close()
            if qdrant is not None:
                qdrant.close()

    return make


def state(manager: LifecycleManager) -> State:
    return snapshot(manager.stores, raw_redis(manager))


def differences(got: State, want: State) -> str:
    parts = []
    for name in State.__dataclass_fields__:
        g, w = getattr(got, name), getattr(want, name)
        if g != w:
            parts.append(f"{name}: extra {sorted(g - w)[:6]} missing {sorted(w - g)[:6]}")
    return "; ".join(parts)


def test_one_cleanup_ends_where_the_rules_say(fresh: Callable[[str], Any]) -> None:
    with fresh("once") as (manager, model):
        want = model.expected()
        # The expectation is not trivial: every store loses something and keeps something.
        assert want.documents < set(model.docs) and want.points < set(model.points)
        assert want.objects < model.objects and want.cache_keys < set(model.keys)
        report = manager.cleanup()
        assert report.success, report.errors
        assert state(manager) == want, differences(state(manager), want)


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_at_any_mutating_call_then_a_rerun_ends_where_the_rules_say(
    fresh: Callable[[str], Any], when: Phase
) -> None:
    with fresh("count") as (manager, _):
        plan = FaultPlan()
        LifecycleManager(manager.settings, faulty(manager.stores, plan), manager.clock).cleanup()
        mutations = [c.name for c in plan.calls if c.mutating]
    # Every store's sweep makes mutating calls, so every sweep is crashed somewhere.
    stores = {n.split(".")[0] for n in mutations}
    assert stores == {"cache", "vectors", "objects", "metadata"}, mutations
    failures = []
    for k, name in enumerate(mutations):
        with fresh(f"crash-{when}-{k}") as (manager, model):
            failure = crash_then_rerun(
                manager, model, FaultPlan(crash_after=k, when=when, dead=True)
            )
            if failure:
                failures.append(f"{when} #{k} {name}: {failure}")
    assert not failures, "\n".join(failures)


def crash_then_rerun(manager: LifecycleManager, model: Model, plan: FaultPlan) -> str | None:
    """Kill a cleanup at the plan's point, leaving its leases and claims behind; run again at
    once (refused: the dead run still holds the lease) and once the lease has run out."""
    clock = manager.clock
    assert isinstance(clock, FakeClock)
    broken = LifecycleManager(manager.settings, faulty(manager.stores, plan), clock)
    try:
        broken.cleanup()
        return "the run did not reach its crash point"
    except Crash:
        pass
    left = state(manager)
    at_once = manager.cleanup()
    if at_once.success or state(manager) != left:
        return f"a rerun while the dead run's lease holds went ahead: {at_once}"
    clock.advance(LEASE_TTL + timedelta(minutes=1))  # far from every age the rules compare
    report = manager.cleanup()
    got, want = state(manager), model.expected()
    if got != want:
        return f"{plan.injected}: {differences(got, want)}"
    if not report.success:
        return f"{plan.injected}: the rerun failed: {report.errors}"
    return None


# ---------------------------------------------------------------- audit before every delete


@dataclass(frozen=True)
class DeletePath:
    resource: ResourceType
    call: str  # store.method
    expired: bool  # plant expired documents (the orphan sweep's path needs none)


DELETE_PATHS = {
    "redis-sweep-unlink_idle": DeletePath(ResourceType.REDIS_CACHE, "cache.unlink_idle", True),
    "cascade-unlink": DeletePath(ResourceType.MONGODB_METADATA, "cache.unlink", True),
    "cascade-delete_for_documents": DeletePath(
        ResourceType.MONGODB_METADATA, "vectors.delete_for_documents", True
    ),
    "qdrant-sweep-delete_points": DeletePath(
        ResourceType.QDRANT_VECTORS, "vectors.delete_points", True
    ),
    "cascade-remove": DeletePath(ResourceType.MONGODB_METADATA, "objects.remove", True),
    "orphan-sweep-remove": DeletePath(ResourceType.MINIO_FILES, "objects.remove", False),
    "cascade-delete_documents": DeletePath(
        ResourceType.MONGODB_METADATA, "metadata.delete_documents", True
    ),
}


@dataclass(frozen=True)
class Items:
    """Every item of the four stores, with what an audit entry may name it by."""

    keys: frozenset[str]
    points: dict[str, tuple[Any, Any]]  # point id -> (session_id, document_id)
    objects: frozenset[str]
    docs: frozenset[str]


def items(manager: LifecycleManager) -> Items:
    stores = manager.stores
    keys = frozenset(k.decode() for k in raw_redis(manager).scan_iter(count=1000))
    points = {
        p.point_id: (p.session_id, p.document_id)
        for batch in stores.vectors().iter_points(500)
        for p in batch
    }
    objects = frozenset(o.key for o in stores.objects().iter_objects())
    docs = frozenset(d.id for batch in stores.metadata().iter_documents(500) for d in batch)
    return Items(keys, points, objects, docs)


def _strings(value: Any) -> set[str]:
    """Every string an audit entry holds, and the words of `a=b c=d` targets."""
    if isinstance(value, str):
        return {value, *re.split(r"[\s=,;]+", value)}
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(_strings(v) for v in value))
    return set()


def audited(entries: list[dict[str, Any]], *alternatives: tuple[str, ...]) -> bool:
    """Whether one entry names all the values of at least one alternative."""
    named = [_strings(e) for e in entries if e.get("dry_run") is False]
    return any(set(alt) <= words for alt in alternatives for words in named)


def unaudited(entries: list[dict[str, Any]], before: Items, after: Items) -> list[str]:
    """The items that went without an audit entry naming them."""
    missing = []
    for key in sorted(before.keys - after.keys):
        doc = key.rsplit(":", 1)[-1]
        if not audited(entries, (key,), (doc, "redis")):
            missing.append(f"cache key {key}")
    for point_id in sorted(set(before.points) - set(after.points)):
        session, doc = (str(v) for v in before.points[point_id])
        if not audited(entries, (point_id,), (session, doc), (doc, "qdrant")):
            missing.append(f"point {point_id} ({session}, {doc})")
    missing += [
        f"object {k}" for k in sorted(before.objects - after.objects) if not audited(entries, (k,))
    ]
    missing += [
        f"document {d}" for d in sorted(before.docs - after.docs) if not audited(entries, (d,))
    ]
    return missing


def plant_for_deletes(world: World, clock: FakeClock, expired: bool) -> None:
    world.orphan_object()
    world.orphan_object()
    clock.advance(days=8)  # past FILES_TTL_DAYS (7) since the object server stamped them
    live = world.document(age=HOUR)
    stale = world.session(idle=3 * DAY)
    world.points(live, stale, age=2 * DAY, count=3)  # the Qdrant sweep's doomed pair
    if expired:
        for age in (9 * DAY, 20 * DAY):
            world.document(age=age)
    cache_seeder(world.stores.cache()).seed(
        [CacheSeed(f"cache:idle:{i}".encode(), b"x", None, idle_seconds=7200) for i in range(3)]
    )


@pytest.mark.parametrize("path", list(DELETE_PATHS), ids=list(DELETE_PATHS))
def test_every_delete_is_audited_before_it_runs(
    manager: LifecycleManager, world: World, clock: FakeClock, path: str
) -> None:
    how = DELETE_PATHS[path]
    plant_for_deletes(world, clock, how.expired)
    before = items(manager)
    plan = FaultPlan(crash_after=0, when="after", on={how.call})
    broken = LifecycleManager(manager.settings, faulty(manager.stores, plan), clock)
    with pytest.raises(Crash):
        broken.cleanup(how.resource)
    assert plan.injected == [f"crash-after:{how.call}"]
    after = items(manager)
    store = how.call.split(".")[0]
    gone = {
        "cache": before.keys - after.keys,
        "vectors": set(before.points) - set(after.points),
        "objects": before.objects - after.objects,
        "metadata": before.docs - after.docs,
    }[store]
    assert gone, f"{how.call} ran but deleted nothing: the path was not exercised"
    entries = read_audit(manager.settings.audit_path / f"audit-{clock.now():%Y%m%d}.jsonl")
    assert not unaudited(entries, before, after), (unaudited(entries, before, after), entries)


# ---------------------------------------------------------------- the dedup race, forced


@dataclass
class Race:
    results: list[Any]
    inserts: list[Call]
    errors: list[BaseException]


def _race(manager: LifecycleManager, users: list[str], payload: bytes) -> Race:
    """Every upload blocks right before insert_document until all have got there, so each one
    has found no document for the hash and all of them try to insert: the unique index decides."""
    manager.stores.metadata().ensure_indexes()
    manager.stores.objects().ensure_bucket()
    at_insert = threading.Barrier(len(users), timeout=60)
    waited = threading.local()
    log: list[Call] = []

    def hook(store: str, method: str, phase: Phase) -> None:
        first = not getattr(waited, "done", False)
        if (store, method, phase) == ("metadata", "insert_document", "before") and first:
            waited.done = True
            at_insert.wait()

    racing = LifecycleManager(manager.settings, hooked(manager.stores, hook, log), manager.clock)
    results: list[Any] = [None] * len(users)
    errors: list[BaseException] = []

    def upload(i: int) -> None:
        try:
            results[i] = racing.ingest(users[i], "same.pdf", io.BytesIO(payload))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    inserts = [c for c in log if c.name == "metadata.insert_document"]
    return Race(results, inserts, errors)


@pytest.fixture
def race_manager(tmp_path: Path, s3_srv: S3Server, bucket_name: str) -> Iterator[LifecycleManager]:
    """S3 over HTTP and the SQLite metadata store, whose unique index is atomic.

    mongomock checks a unique index after inserting, so concurrent inserts can both lose; it
    cannot model this race (a real MongoDB's unique index can), so the race runs here.
    """
    settings = Settings.from_env(
        {
            "RLM_DATA_DIR": str(tmp_path / "race"),
            "MINIO_ENDPOINT": s3_srv.endpoint,
            "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
            "MINIO_SECRET_KEY": S3_SECRET_KEY,
            "MINIO_BUCKET": bucket_name,
        }
    )
    manager = LifecycleManager.from_settings(settings, clock=FakeClock(datetime.now(UTC)))
    yield manager
    manager.close()


def test_sixteen_concurrent_uploads_leave_one_document_and_one_object(
    race_manager: LifecycleManager,
) -> None:
    manager = race_manager
    race = _race(manager, ["user-1"] * 16, b"%PDF-1.7 identical" * 4096)
    assert not race.errors, race.errors
    # The contested path ran: all 16 inserted, the unique index refused 15.
    assert len(race.inserts) == 16
    conflicts = [c for c in race.inserts if isinstance(c.raised, DuplicateDocumentError)]
    winners = [c for c in race.inserts if c.done and c.raised is None]
    assert len(conflicts) == 15 and len(winners) == 1, [c.raised for c in race.inserts]
    # ... and every loser resolved to the winner.
    assert {r.document_id for r in race.results} == {winners[0].result}
    assert sum(not r.duplicate for r in race.results) == 1
    docs = [d for batch in manager.stores.metadata().iter_documents(100) for d in batch]
    assert [d.id for d in docs] == [winners[0].result]
    assert [o.key for o in manager.stores.objects().iter_objects()] == [docs[0].minio_key]


def test_the_same_file_for_two_users_makes_two_documents(race_manager: LifecycleManager) -> None:
    manager = race_manager
    users = ["user-1", "user-2"] * 4
    race = _race(manager, users, b"shared contract" * 1000)
    assert not race.errors, race.errors
    assert len(race.inserts) == 8
    conflicts = [c for c in race.inserts if isinstance(c.raised, DuplicateDocumentError)]
    winners = {c.result for c in race.inserts if c.done and c.raised is None}
    assert len(conflicts) == 6 and len(winners) == 2  # one winner per user: scope is per user
    by_user = {
        u: {r.document_id for r, v in zip(race.results, users, strict=True) if v == u}
        for u in set(users)
    }
    assert all(len(ids) == 1 for ids in by_user.values()), by_user
    assert set().union(*by_user.values()) == winners
    assert len({o.key for o in manager.stores.objects().iter_objects()}) == 2
