"""Per-user erasure (SPEC section 12) on both stacks and both metadata adapters.

Two users' data is interleaved in every store. The state each erase must end in is computed
here from the planted data and the rules (every item of the user goes, an object another user's
document names stays, everything else is byte-identical), never from another rlm run.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import mongomock
import pytest
from bson import ObjectId
from qdrant_client import QdrantClient

from rlm_core import ErasureReceipt, LifecycleManager, Settings
from rlm_core.adapters.mongo_metadata import MongoMetadataStore
from rlm_core.adapters.records import id_text
from rlm_core.adapters.s3_objects import S3ObjectStore
from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore, decode
from rlm_core.audit import read_audit
from rlm_core.cleanup.context import LEASE_TTL
from rlm_core.clock import FakeClock
from rlm_core.erasure import (
    MAX_PASSES,
    OTHER_DOCUMENT,
    SHARED_ID,
    SHARED_OBJECT,
    UnknownUserError,
)
from rlm_core.ports import CacheSeed
from rlm_core.seeding import cache_seeder, metadata_seeder
from rlm_core.stores import Stores
from tests.faults import Crash, FaultPlan, OnCall, Phase, faulty, hooked, recorded
from tests.lifecycle.conftest import raw_redis
from tests.lifecycle.world import World, naive
from tests.services import RedisServer
from tests.stack import STACKS, build_manager

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
ALICE, BOB = "alice", "bob"
# Every store call of an erase that changes a store: a crash is injected before and after each.
ERASE_MUTATIONS = frozenset(
    {
        "metadata.acquire_lease",
        "metadata.claim_documents",
        "vectors.delete_pinned",
        "cache.unlink",
        "objects.remove",
        "metadata.delete_messages",
        "metadata.delete_sessions",
        "metadata.delete_documents",
    }
)
# What an erase may call: lookups by index, filter or name; never a listing of a whole store.
LOOKUPS = frozenset(
    {
        "documents_of_user",
        "sessions_of_user",
        "find_sessions",
        "find_documents",
        "messages_of_sessions",
        "referenced_object_keys",
        "points_of",
        "point_bytes",
        "memory_usage",
        "sizes",
        "acquire_lease",
        "release_lease",
        "claim_documents",
        "delete_pinned",
        "unlink",
        "remove",
        "delete_messages",
        "delete_sessions",
        "delete_documents",
    }
)


@pytest.fixture(params=STACKS)
def manager(
    request: pytest.FixtureRequest, settings: Settings, clock: FakeClock
) -> Iterator[LifecycleManager]:
    """Real servers or the embedded stack: the in-memory fakes (tests/fakes/) do not implement
    the erasure port methods yet."""
    mgr = build_manager(request, settings, clock)
    yield mgr
    mgr.close()


# ---------------------------------------------------------------- planting two users


@dataclass(frozen=True)
class Planted:
    """The ids planted, for the cases that need them."""

    alice_docs: tuple[str, ...]
    alice_sessions: tuple[str, ...]
    shared_key: str


def raw_doc(world: World, user: str, key: str, doc_id: Any = None) -> Any:
    """A document record naming an existing object key (no object, points or cache of its own)."""
    _id = ObjectId() if doc_id is None else doc_id
    at = naive(world.now - HOUR)
    metadata_seeder(world.stores.metadata()).insert_raw(
        "documents",
        [
            {
                "_id": _id,
                "user_id": user,
                "filename": key.rsplit("/", 1)[-1],
                "minio_bucket": world.stores.objects().bucket,
                "minio_key": key,
                "status": "ready",
                "created_at": at,
                "updated_at": at,
                **hashed(),
            }
        ],
    )
    return _id


def hashed() -> dict[str, Any]:
    """A document's dedup entry: its file hash."""
    return {"metadata": {"file_hash": uuid.uuid4().hex * 2}}


def key_of(world: World, doc_id: str) -> str:
    [record] = world.stores.metadata().find_documents([doc_id])
    assert record.minio_key is not None
    return record.minio_key


def plant(world: World) -> Planted:
    """Alice's and Bob's data, interleaved item by item in every store."""
    a1 = world.document(age=HOUR, user=ALICE, extra=hashed())
    b1 = world.document(age=HOUR, user=BOB, extra=hashed())
    a2 = world.document(age=30 * DAY, user=ALICE, chunks=2, status="failed", extra=hashed())
    b2 = world.document(age=30 * DAY, user=BOB, chunks=2, extra=hashed())
    a3 = world.document(age=2 * DAY, user=ALICE, cache=False, extra=hashed())
    sa1 = world.session(idle=HOUR, documents=(a1,), attached=(a2,), user=ALICE)
    sb1 = world.session(idle=HOUR, documents=(b1,), attached=(b2,), user=BOB)
    sa2 = world.session(idle=10 * DAY, user=ALICE)
    world.points(a1, sa1, age=HOUR, count=2)
    world.points(b1, sb1, age=HOUR, count=2)
    world.points(a3, sa2, age=10 * DAY, count=1)
    world.message(sa1, [a1])
    world.message(sb1, [b1, a1])  # Bob's message naming Alice's document stays: it is Bob's
    world.message(sa1, [a2])
    world.message(sa2, [])
    sa3 = _objectid_session(world, ALICE)
    metadata_seeder(world.stores.metadata()).insert_raw(
        "messages",
        [
            {
                "_id": ObjectId(),
                "chat_id": ObjectId(sa3),
                "file_ids": [a3],
                "created_at": naive(world.now),
            }
        ],
    )
    shared = key_of(world, a1)
    raw_doc(world, BOB, shared)  # Bob's document names Alice's object: it stays
    cache_seeder(world.stores.cache()).seed(
        [
            CacheSeed(b"blacklist:token-1", b"x", 600),
            CacheSeed(b"cache:answer:42", b"y", None),
            CacheSeed(f"rate_limit:{ALICE}".encode(), b"3", 60),
        ]
    )
    return Planted((a1, a2, a3), (sa1, sa2, sa3), shared)


def _objectid_session(world: World, user: str) -> str:
    session_id = ObjectId()
    at = naive(world.now - HOUR)
    metadata_seeder(world.stores.metadata()).insert_raw(
        "chat_sessions",
        [{"_id": session_id, "user_id": user, "created_at": at, "updated_at": at, "documents": []}],
    )
    return str(session_id)


# ---------------------------------------------------------------- exact state of every store


Dump = dict[str, tuple[bytes, Any]]  # item name -> (its exact bytes, the fields rules read)


def dump(manager: LifecycleManager) -> Dump:
    """Every item of the four stores, byte for byte (small test data only)."""
    stores = manager.stores
    out: Dump = {}
    out.update(_records(stores))
    out.update(_points(stores))
    out.update(_objects(stores))
    redis = raw_redis(manager)
    for key in redis.scan_iter(count=1000):
        out[f"redis/{key.decode()}"] = (redis.dump(key) + bytes([redis.ttl(key) >= 0]), key)
    return out


def _records(stores: Stores) -> Dump:
    metadata = stores.metadata()
    out: Dump = {}
    if isinstance(metadata, MongoMetadataStore):
        for name, coll in (
            ("documents", metadata._documents),
            ("chat_sessions", metadata._sessions),
            ("messages", metadata._messages),
        ):
            for raw in coll.find({}):
                out[f"{name}/{raw['_id']!r}"] = (bson.encode(raw), raw)
        return out
    assert isinstance(metadata, SqliteMetadataStore)
    for name in ("documents", "chat_sessions", "messages"):
        for row_id, body in metadata._query(f"SELECT id, body FROM {name}", ()):  # noqa: S608
            out[f"{name}/{row_id}"] = (body.encode(), decode(body))
    return out


def _points(stores: Stores) -> Dump:
    client = stores.vectors()._client  # type: ignore[attr-defined]
    records, _ = client.scroll("rag_documents", limit=10_000, with_payload=True, with_vectors=True)
    return {
        f"points/{r.id}": (json.dumps([r.payload, r.vector], sort_keys=True).encode(), r.payload)
        for r in records
    }


def _objects(stores: Stores) -> Dump:
    objects = stores.objects()
    out: Dump = {}
    for info in objects.iter_objects():
        if isinstance(objects, S3ObjectStore):
            body = objects._client.get_object(objects.bucket, info.key).read()
        else:
            body = objects._path(info.key).read_bytes()  # type: ignore[attr-defined]
        out[f"objects/{info.key}"] = (body + info.last_modified.isoformat().encode(), info.key)
    return out


def expected_after_erase(before: Dump, user: str) -> Dump:
    """The rules, applied to the planted data: every item of `user` goes; an object another
    user's document names stays; everything else is exactly as it was."""
    records = {
        n: v for n, (_, v) in before.items() if n.startswith(("documents/", "chat_sessions/"))
    }
    docs = {
        id_text(v["_id"])
        for n, v in records.items()
        if n.startswith("documents/") and v.get("user_id") == user
    }
    sessions = {
        id_text(v["_id"])
        for n, v in records.items()
        if n.startswith("chat_sessions/") and v.get("user_id") == user
    }
    theirs = {
        v.get("minio_key")
        for n, v in records.items()
        if n.startswith("documents/") and v.get("user_id") != user
    }
    keys = {
        v.get("minio_key")
        for n, v in records.items()
        if n.startswith("documents/") and v.get("user_id") == user
    }

    def goes(name: str, facts: Any) -> bool:
        kind = name.split("/", 1)[0]
        if kind in ("documents", "chat_sessions"):
            return bool(facts.get("user_id") == user)
        if kind == "messages":
            return id_text(facts.get("chat_id")) in sessions
        if kind == "points":
            return facts.get("document_id") in docs or facts.get("session_id") in sessions
        if kind == "objects":
            return facts in keys and facts not in theirs
        return kind == "redis" and facts.decode() in {f"doc:text:{d}" for d in docs}

    return {n: v for n, v in before.items() if not goes(n, v[1])}


def differences(got: Dump, want: Dump) -> str:
    extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
    changed = sorted(n for n in set(got) & set(want) if got[n][0] != want[n][0])
    return f"extra {extra[:8]} missing {missing[:8]} changed {changed[:8]}"


def same(got: Dump, want: Dump) -> bool:
    return {n: v[0] for n, v in got.items()} == {n: v[0] for n, v in want.items()}


def audit_of(manager: LifecycleManager, receipt: ErasureReceipt) -> list[dict[str, Any]]:
    assert receipt.audit_path is not None
    return [e for e in read_audit(Path(receipt.audit_path)) if e["run_id"] == receipt.run_id]


def counts(receipt: ErasureReceipt) -> dict[str, tuple[int, int, dict[str, int]]]:
    return {n: (s.found, s.deleted, s.kept) for n, s in receipt.stores.items()}


# ---------------------------------------------------------------- the erase itself


def test_erase_takes_every_item_of_the_user_and_nothing_else(
    manager: LifecycleManager, world: World
) -> None:
    planted = plant(world)
    before = dump(manager)
    want = expected_after_erase(before, ALICE)
    # The expectation is not trivial: every store loses something and keeps something.
    for kind in ("documents", "chat_sessions", "messages", "points", "objects", "redis"):
        names = {n for n in before if n.startswith(kind + "/")}
        assert names - set(want) and names & set(want), kind
    assert f"objects/{planted.shared_key}" in want
    receipt = manager.erase(ALICE)
    after = dump(manager)
    assert same(after, want), differences(after, want)
    assert receipt.success and receipt.verified, receipt.as_json()
    assert {n: s.deleted for n, s in receipt.stores.items()} == {
        "qdrant": 3 + 2 + 3 + 2 + 1,  # chunks of a1, a2, a3, then a1's and a3's session chunks
        "redis": 2,  # doc:text of a1 and a2 (a3 has none)
        "minio": 2,  # a2's and a3's objects; a1's is also Bob's
        "mongodb": 3 + 3 + 4,  # documents, sessions, messages
    }
    assert receipt.stores["minio"].kept == {SHARED_OBJECT: 1}
    assert receipt.stores["mongodb"].detail == {
        "documents": 3,
        "dedup_entries": 3,
        "sessions": 3,
        "messages": 4,
    }
    assert all(s.left == 0 and s.verified for s in receipt.stores.values())


def test_every_item_is_audited_and_the_receipt_is_the_last_entry(
    manager: LifecycleManager, world: World
) -> None:
    plant(world)
    before = dump(manager)
    receipt = manager.erase(ALICE)
    gone = set(before) - set(dump(manager))
    entries = audit_of(manager, receipt)
    named: set[str] = set()
    for entry in entries[:-1]:
        assert entry["user_id"] == ALICE and entry["dry_run"] is False
        named |= {entry["target"], *entry.get("point_ids", []), *entry.get("message_ids", [])}
    for name in gone:
        item = name.split("/", 1)[1]
        item = item.removeprefix("ObjectId('").removesuffix("')").removeprefix("s:")
        assert item in named or item.strip("'") in named, name
    assert entries[-1]["action"] == "erasure_receipt"
    assert entries[-1]["receipt"] == json.loads(json.dumps(receipt.as_json()))


def test_dry_run_changes_nothing_and_counts_what_the_real_run_deletes(
    manager: LifecycleManager, world: World
) -> None:
    plant(world)
    before = dump(manager)
    dry = manager.erase(ALICE, dry_run=True)
    assert same(dump(manager), before), differences(dump(manager), before)
    assert dry.dry_run and dry.verified is None
    assert all(s.left is None and s.verified is None for s in dry.stores.values())
    real = manager.erase(ALICE)
    assert counts(dry) == counts(real)
    assert real.total_deleted == dry.total_deleted > 0
    dry_entries, real_entries = audit_of(manager, dry), audit_of(manager, real)
    assert all(e["dry_run"] for e in dry_entries)
    assert len(dry_entries) == len(real_entries)
    assert set(dry.as_json()) == set(real.as_json())


def test_a_rerun_after_a_complete_erase_changes_nothing(
    manager: LifecycleManager, world: World
) -> None:
    plant(world)
    assert manager.erase(ALICE).verified
    after = dump(manager)
    with pytest.raises(UnknownUserError, match="matches no document and no chat session"):
        manager.erase(ALICE)
    again = manager.erase(ALICE, allow_empty=True)
    assert same(dump(manager), after)
    assert again.verified and again.total_deleted == 0
    assert again.stores["minio"].kept == {}  # nothing of Alice's names the shared object now


@pytest.mark.parametrize("user_id", ["", " ", "\t\n", None, 7])
def test_a_blank_user_id_is_refused_before_any_store_is_read(
    manager: LifecycleManager, user_id: Any
) -> None:
    log: list[Any] = []
    watched = LifecycleManager(manager.settings, recorded(manager.stores, log), manager.clock)
    with pytest.raises(ValueError, match=r"user_id: .* is not valid; allowed"):
        watched.erase(user_id)
    assert log == []


def test_a_user_id_that_matches_nothing_is_refused_unless_allowed(
    manager: LifecycleManager, world: World
) -> None:
    plant(world)
    before = dump(manager)
    with pytest.raises(UnknownUserError, match="'alicia' matches no document"):
        manager.erase("alicia")
    receipt = manager.erase("alicia", allow_empty=True)
    assert receipt.verified and receipt.total_deleted == 0
    assert all(s.found == 0 for s in receipt.stores.values())
    assert same(dump(manager), before)


def test_erase_reads_by_index_filter_and_name_never_a_whole_store(
    manager: LifecycleManager, world: World
) -> None:
    plant(world)
    log: list[Any] = []
    watched = LifecycleManager(manager.settings, recorded(manager.stores, log), manager.clock)
    assert watched.erase(ALICE).verified
    assert {c.method for c in log} <= LOOKUPS, sorted({c.method for c in log} - LOOKUPS)


# ---------------------------------------------------------------- attribution


def test_items_that_cannot_be_attributed_to_the_user_are_kept_and_counted(
    manager: LifecycleManager, world: World
) -> None:
    bob_doc = world.document(age=HOUR, user=BOB, chunks=1)
    alice_session = world.session(idle=HOUR, user=ALICE)
    world.points(bob_doc, alice_session, age=HOUR, count=2)  # Alice's chat over Bob's document
    twin = f"{world.counter + 100:024x}"
    alice_twin = world.document(age=HOUR, user=ALICE, chunks=0)
    raw_doc(world, ALICE, "twin/a.pdf", ObjectId(twin))
    raw_doc(world, BOB, "twin/b.pdf", twin)  # the string twin of Alice's ObjectId record
    world.points(twin, f"upload_{twin}", age=HOUR, count=2)
    cache_seeder(world.stores.cache()).seed([CacheSeed(f"doc:text:{twin}".encode(), b"t", 60)])
    receipt = manager.erase(ALICE)
    assert receipt.verified, receipt.as_json()
    assert receipt.stores["qdrant"].kept == {OTHER_DOCUMENT: 2, SHARED_ID: 2}
    assert receipt.stores["redis"].kept == {SHARED_ID: 1}
    docs = {
        (d.id, d.user_id)
        for d in world.stores.metadata().find_documents([twin, bob_doc, alice_twin])
    }
    assert docs == {(twin, BOB), (bob_doc, BOB)}
    assert world.stores.cache().existing([f"doc:text:{twin}".encode()])
    assert len(world.stores.vectors().points_of([twin, bob_doc], [])) == 2 + 1 + 2


# ---------------------------------------------------------------- crashes and races


@pytest.fixture(params=STACKS)
def fresh(
    request: pytest.FixtureRequest, tmp_path: Path, redis_srv: RedisServer, redis_client: Any
) -> Callable[[str], Any]:
    """A fresh two-user world per call, on real servers or on the embedded stores."""

    @contextmanager
    def make(name: str) -> Iterator[LifecycleManager]:
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
            plant(world)
            yield manager
        finally:
            manager.close()
            if qdrant is not None:
                qdrant.close()

    return make


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_at_any_store_write_then_a_rerun_ends_as_one_clean_erase(
    fresh: Callable[[str], Any], when: Phase
) -> None:
    with fresh("count") as manager:
        plan = FaultPlan(on=ERASE_MUTATIONS)
        LifecycleManager(manager.settings, faulty(manager.stores, plan), manager.clock).erase(ALICE)
        writes = [c.name for c in plan.calls if c.name in ERASE_MUTATIONS]
    assert set(writes) == ERASE_MUTATIONS, writes
    failures = []
    for k, name in enumerate(writes):
        with fresh(f"crash-{when}-{k}") as manager:
            failure = crash_then_rerun(
                manager, FaultPlan(crash_after=k, when=when, on=ERASE_MUTATIONS, dead=True)
            )
            if failure:
                failures.append(f"{when} #{k} {name}: {failure}")
    assert not failures, "\n".join(failures)


def crash_then_rerun(manager: LifecycleManager, plan: FaultPlan) -> str | None:
    """Kill an erase at the plan's point (its lease and claims stay behind), re-run it at once
    (refused: the lease holds) and once the lease has run out."""
    clock = manager.clock
    assert isinstance(clock, FakeClock)
    want = expected_after_erase(dump(manager), ALICE)
    broken = LifecycleManager(manager.settings, faulty(manager.stores, plan), clock)
    try:
        broken.erase(ALICE)
        return "the run did not reach its crash point"
    except Crash:
        pass
    left = dump(manager)
    held = any(c.method == "acquire_lease" and c.done and not c.raised for c in plan.calls)
    at_once = manager.erase(ALICE, allow_empty=True)
    if held and (at_once.success or not same(dump(manager), left)):
        return f"a re-run while the dead run's lease holds went ahead: {at_once.as_json()}"
    clock.advance(LEASE_TTL + timedelta(minutes=1))
    receipt = manager.erase(ALICE, allow_empty=True)
    got = dump(manager)
    if not same(got, want):
        return f"{plan.injected}: {differences(got, want)}"
    if not receipt.verified:
        return f"{plan.injected}: the re-run was not verified: {receipt.as_json()}"
    return None


def upload(manager: LifecycleManager, body: bytes) -> Callable[[], object]:
    """An upload by Alice through the undisturbed stores, as the app would make it."""
    return lambda: manager.ingest(ALICE, "nuevo.pdf", io.BytesIO(body))


@pytest.mark.parametrize(
    "call",
    ["objects.remove", "metadata.delete_sessions", "metadata.claim_documents"],
)
def test_an_upload_landing_during_the_erase_is_erased_by_it(
    manager: LifecycleManager, world: World, call: str
) -> None:
    plant(world)
    want = expected_after_erase(dump(manager), ALICE)
    store, method = call.split(".")
    hook = OnCall(store, method, 0, upload(manager, b"%PDF uploaded mid-erase"), phase="after")
    racing = LifecycleManager(manager.settings, hooked(manager.stores, hook), manager.clock)
    receipt = racing.erase(ALICE)
    assert hook.fired == 1
    assert receipt.verified, receipt.as_json()
    assert receipt.stores["mongodb"].detail["documents"] == 4
    assert same(dump(manager), want), differences(dump(manager), want)


def test_a_reupload_of_a_claimed_document_is_relinked_then_erased(
    manager: LifecycleManager, world: World
) -> None:
    manager.ingest(ALICE, "informe.pdf", io.BytesIO(b"%PDF same bytes"))
    plant(world)
    want = expected_after_erase(dump(manager), ALICE)
    results: list[Any] = []
    hook = OnCall(
        "metadata",
        "claim_documents",
        0,
        lambda: results.append(
            manager.ingest(ALICE, "informe.pdf", io.BytesIO(b"%PDF same bytes"))
        ),
        phase="after",
    )
    racing = LifecycleManager(manager.settings, hooked(manager.stores, hook), manager.clock)
    receipt = racing.erase(ALICE)
    # The claimed record is never answered "duplicate": it is taken back, then erased.
    assert [r.duplicate for r in results] == [False]
    assert receipt.verified, receipt.as_json()
    assert same(dump(manager), want), differences(dump(manager), want)


def test_uploads_that_keep_landing_are_reported_and_a_rerun_takes_them(
    manager: LifecycleManager, world: World
) -> None:
    plant(world)
    want = expected_after_erase(dump(manager), ALICE)
    bodies = iter(f"%PDF upload {i}".encode() for i in range(100))

    def every_pass(store: str, method: str, phase: Phase) -> None:
        if (store, method, phase) == ("objects", "sizes", "after"):
            manager.ingest(ALICE, "otra.pdf", io.BytesIO(next(bodies)))

    racing = LifecycleManager(manager.settings, hooked(manager.stores, every_pass), manager.clock)
    receipt = racing.erase(ALICE)
    assert not receipt.success and not receipt.verified
    assert f"after {MAX_PASSES} passes" in receipt.errors[0]
    assert receipt.stores["mongodb"].left == 1
    rerun = manager.erase(ALICE)
    assert rerun.verified, rerun.as_json()
    assert same(dump(manager), want), differences(dump(manager), want)


def test_a_running_cleanup_holds_the_erase_off(manager: LifecycleManager, world: World) -> None:
    plant(world)
    before = dump(manager)
    metadata = manager.stores.metadata()
    assert metadata.acquire_lease("qdrant", "cleanup-run", manager.clock.now(), LEASE_TTL) is None
    receipt = manager.erase(ALICE)
    assert not receipt.success and receipt.verified is False
    assert "another cleanup of qdrant is running (cleanup-run" in receipt.errors[0]
    assert same(dump(manager), before)
    metadata.release_lease("qdrant", "cleanup-run")
    assert manager.erase(ALICE).verified
