"""SPEC 4.1 safety invariants (1..9, and 10's "a missing bucket is that store's error") and
SPEC 5's failed-document rule, each built to the rule on both stacks.

Every test counts items before and after and compares exactly. Tests that need several fresh
worlds seed them one after the other into the same stores: each round's data has new ids, and
the round ends with a full cleanup that settles it (checked: a dry run then finds nothing), so
the next round starts from a stable state. Where a test loops, it collects every broken case and
reports them together.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from rlm_core import LifecycleManager, ResourceType
from rlm_core.clock import FakeClock
from rlm_core.domain import CleanupReport, IngestResult
from rlm_core.ports import DocumentRecord, StoreError
from tests.lifecycle.shapes import (
    DAY,
    HOUR,
    MISSING,
    OLD,
    SHAPES,
    STALE,
    Doc,
    Once,
    Ref,
    Seeder,
    audit_of,
    disappeared,
    doc_state,
    gone_bytes,
    gone_whole,
    hooked,
    inventory,
    is_deletion,
    kept_whole,
    nonzero,
    with_serialized_qdrant,
    with_vectors,
)

RECENT = 2 * DAY  # inside FILES_TTL_DAYS, past RAG_SESSION_TTL_HOURS
ALL_PLANS: tuple[ResourceType | None, ...] = (None, *ResourceType)


def plan_name(plan: ResourceType | None) -> str:
    return "all stores" if plan is None else plan.value


def settle(manager: LifecycleManager) -> list[str]:
    """Finish whatever a round left, and check that nothing more would go."""
    manager.cleanup()
    check = manager.cleanup(dry_run=True)
    return [] if check.total_deleted == 0 else [f"not settled: {check.deleted_counts}"]


def age_objects(clock: FakeClock) -> None:
    """Objects carry the real time; moving the clock 8 days on makes every object, written
    before or after, older than FILES_TTL_DAYS."""
    clock.advance(days=8)


def records_of(manager: LifecycleManager, doc_hex: str) -> list[DocumentRecord]:
    return [
        d
        for batch in manager.stores.metadata().iter_documents(500)
        for d in batch
        if d.id == doc_hex
    ]


# ------------------------------------------------------------------------------ 1. any form


@pytest.mark.parametrize("deletes", ["scan", "filter"])
def test_inv1_qdrant_sweep_honours_every_reference_form(
    manager: LifecycleManager, clock: FakeClock, deletes: str
) -> None:
    """Points of an existing document in a stale session stay while an active session names
    the document in any form of the shapes table, and go when only an inactive one does."""
    seed = Seeder(manager, clock).setup()
    stale = seed.session(idle=STALE)
    rows: list[tuple[str, bool | None, list[str]]] = []
    for shape in SHAPES:
        for active in (True, False):
            ref = Ref(seed.hex(), seed.hex())
            placement = shape.place(ref)
            seed.document(
                age=OLD,
                hex_id=ref.doc,
                fields=placement.document,
                upload_points=1,
                cache=False,
                put_object=False,
            )
            points = seed.points(ref.doc, stale, age=OLD, count=2)
            seed.session(
                idle=HOUR if active else STALE,
                hex_id=ref.session,
                as_oid=shape.session_oid,
                fields=placement.session,
            )
            for message in placement.messages:
                seed.message(message)
            want: bool | None = active and shape.names
            if not want and shape.doc_malformed:
                want = None  # a kept-and-counted malformed record may keep its points
            rows.append((f"{shape.id} [{'active' if active else 'inactive'}]", want, points))
    control = seed.document(age=RECENT, upload_points=1, cache=False)
    control_points = seed.points(control.hex, stale, age=OLD, count=2)
    before = inventory(manager)

    report = with_vectors(manager, deletes).cleanup(ResourceType.QDRANT_VECTORS)
    after = inventory(manager)

    problems = []
    for label, want, points in [*rows, ("control unreferenced", False, control_points)]:
        present = [p in after.points for p in points]
        if want is True and not all(present):
            problems.append(f"{label}: its points must stay")
        if want is False and any(present):
            problems.append(f"{label}: its points must go")
    assert problems == [], "\n".join(problems)
    assert after.records == before.records and after.objects == before.objects
    gone = disappeared(before, after)
    assert report.deleted_counts.get("qdrant", 0) == gone["qdrant"] >= 2


# ------------------------------------------------------------------------------ 2. sources


def _reference_world(seed: Seeder) -> None:
    """Something for every sweep that needs references to delete."""
    active = seed.session(idle=HOUR)
    stale = seed.session(idle=STALE)
    seed.document(age=OLD)  # expires
    referenced = seed.document(age=OLD)
    seed.message({"chat_id": active, "file_ids": [referenced.hex]})
    recent = seed.document(age=RECENT)
    seed.points(recent.hex, stale, age=RECENT, count=2)  # stale session, unreferenced
    seed.points(seed.hex(), stale, age=RECENT, count=2)  # document gone
    seed.orphan()
    seed.cache(b"cache:idle-unrelated", ttl=None, idle=7200)


@pytest.mark.parametrize("manager", ["servers"], indirect=True)
@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("RLM_SESSIONS_COLLECTION", "sessions_collection"),
        ("RLM_MESSAGES_COLLECTION", "messages_collection"),
    ],
)
def test_inv2_a_misnamed_reference_collection_stops_the_sweep(
    manager: LifecycleManager,
    clock: FakeClock,
    request: pytest.FixtureRequest,
    variable: str,
    setting: str,
) -> None:
    # Servers stack only: the embedded SQLite store has fixed tables, so a collection name
    # there cannot point at a collection that does not exist.
    age_objects(clock)
    seed = Seeder(manager, clock).setup()
    _reference_world(seed)
    assert manager.cleanup(dry_run=True).total_deleted > 0  # the right names would delete
    wrong = LifecycleManager.from_clients(
        replace(manager.settings, sessions_collection="no_such_collection")
        if setting == "sessions_collection"
        else replace(manager.settings, messages_collection="no_such_collection"),
        redis=request.getfixturevalue("redis_client"),
        qdrant=request.getfixturevalue("qdrant_client"),
        minio=request.getfixturevalue("minio_client"),
        mongo_db=request.getfixturevalue("mongo_db"),
        clock=clock,
    )
    before = inventory(manager)
    problems = []
    for plan in (
        None,
        ResourceType.QDRANT_VECTORS,
        ResourceType.MINIO_FILES,
        ResourceType.MONGODB_METADATA,
    ):
        report = wrong.cleanup(plan)
        now = inventory(manager)
        if not now.same(before):
            problems.append(f"{plan_name(plan)}: deleted {disappeared(before, now)}")
            before = now
        if report.success:
            problems.append(f"{plan_name(plan)}: reported success")
        if not any(variable in e for e in report.errors):
            problems.append(f"{plan_name(plan)}: no error names {variable}: {report.errors}")
        if report.retryable:
            problems.append(f"{plan_name(plan)}: a wrong setting reported as retryable")
    assert problems == [], "\n".join(problems)


def test_inv2_an_unreadable_metadata_store_deletes_nothing_that_needs_references(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    age_objects(clock)
    seed = Seeder(manager, clock).setup()
    _reference_world(seed)
    before = inventory(manager)

    def outage(s: str, method: str, phase: str, _: Any) -> None:
        if s == "metadata" and phase == "call":
            raise StoreError(f"injected outage of the metadata store during {method}")

    report = hooked(manager, outage).cleanup()
    after = inventory(manager)
    assert not report.success and report.errors
    assert report.retryable and not report.refusals  # an outage may pass: a retry is right
    assert after.records == before.records
    assert after.objects == before.objects
    assert after.points == before.points


# ------------------------------------------------------------------------------ 3. points


@pytest.mark.parametrize("deletes", ["scan", "filter"])
def test_inv3_a_point_is_deleted_only_on_positive_evidence(
    manager: LifecycleManager, clock: FakeClock, deletes: str
) -> None:
    seed = Seeder(manager, clock).setup()
    stale = seed.session(idle=STALE)
    doc = seed.document(age=RECENT, upload_points=2, cache=False)  # exists, not expiring
    gone_doc = seed.hex()  # no record
    old = (clock.now() - RECENT).timestamp()

    doomed = seed.points(doc.hex, stale, age=RECENT, count=3)  # session inactive, unreferenced
    doomed += seed.points(doc.hex, stale, created_at=int(old))  # whole seconds are a number
    doomed += seed.points(gone_doc, stale, age=RECENT, count=2)  # document gone
    doomed += seed.points(gone_doc, MISSING, age=RECENT)  # "document gone" needs document_id only
    doomed += seed.points(gone_doc, 42, age=RECENT)

    unknown: list[str] = []
    # Same (session, document) pair as doomed points, created_at not a number.
    for created in (MISSING, (clock.now() - RECENT).isoformat(), str(old), True, float("nan")):
        unknown += seed.points(doc.hex, stale, created_at=created)
    for document_id in ([doc.hex], 42, ""):
        unknown += seed.points(document_id, stale, age=RECENT)
    for session_id in (MISSING, [stale], 42):  # the session rule needs a session_id
        unknown += seed.points(doc.hex, session_id, age=RECENT)
    unknown += seed.points(gone_doc, stale, created_at=MISSING)
    unknown += seed.points([gone_doc], stale, age=RECENT)

    young = seed.points(doc.hex, stale, age=timedelta(0))  # written just now, doomed pair
    young += seed.points(gone_doc, stale, age=timedelta(minutes=5))
    before = inventory(manager)
    sweeper = with_vectors(manager, deletes)

    dry = sweeper.cleanup(ResourceType.QDRANT_VECTORS, dry_run=True)
    assert inventory(manager).same(before)
    report = sweeper.cleanup(ResourceType.QDRANT_VECTORS)
    after = inventory(manager)

    assert sorted(after.points) == sorted(before.points - set(doomed)), {
        "doomed left": sorted(set(doomed) & after.points),
        "malformed deleted": sorted(set(unknown) - after.points),
        "young deleted": sorted(set(young) - after.points),
        "upload points deleted": sorted(set(doc.points) - after.points),
    }
    assert report.deleted_counts.get("qdrant", 0) == len(before.points - after.points) == 8
    assert report.unknown.get("qdrant", 0) == len(unknown)
    assert dry.deleted_counts.get("qdrant", 0) == 8
    assert dry.unknown.get("qdrant", 0) == len(unknown)


@pytest.mark.parametrize("deletes", ["scan", "filter"])
def test_inv3_the_expiry_cascade_deletes_every_point_naming_the_document(
    manager: LifecycleManager, clock: FakeClock, deletes: str
) -> None:
    seed = Seeder(manager, clock).setup()
    active = seed.session(idle=HOUR)
    stale = seed.session(idle=STALE)
    expired = seed.document(age=OLD, upload_points=2)
    expired.points += seed.points(expired.hex, active, age=timedelta(0))
    expired.points += seed.points(expired.hex, stale, created_at=MISSING)
    expired.points += seed.points(expired.hex, MISSING, age=OLD)
    expired.points += seed.points(expired.hex, stale, created_at="ayer")
    kept = seed.document(age=RECENT, upload_points=2)
    kept.points += seed.points(kept.hex, active, created_at=MISSING)
    before = inventory(manager)

    report = with_vectors(manager, deletes).cleanup(ResourceType.MONGODB_METADATA)
    after = inventory(manager)

    assert gone_whole(after, expired), doc_state(after, expired)
    assert kept_whole(after, kept), doc_state(after, kept)
    gone = disappeared(before, after)
    assert gone == {"redis": 1, "qdrant": 6, "minio": 1, "mongodb": 1}
    assert nonzero(report.deleted_counts) == gone


# ------------------------------------------------------------------------------ 4. re-check


def test_inv4_a_dedup_hit_during_the_cascade_keeps_what_it_returned(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    """ingest of an expiring document's bytes, just before each store's first delete of the
    cascade: whatever ingest answers, the document it names has its record and object after
    the cleanup, and "duplicate" means the same document."""
    seed = Seeder(manager, clock).setup()
    problems = []
    for store in ("vectors", "cache", "objects", "metadata"):
        body = f"informe para {store} ".encode() * 300
        doc = seed.document(age=OLD, body=body, user="user-dedup")
        once, answers = Once(), list[IngestResult]()

        def reupload(
            s: str,
            method: str,
            phase: str,
            _: Any,
            store: str = store,
            body: bytes = body,
            once: Once = once,
            answers: list[IngestResult] = answers,
        ) -> None:
            if s == store and phase == "call" and is_deletion(method) and once.first(method):
                answers.append(manager.ingest("user-dedup", "otra vez.pdf", io.BytesIO(body)))

        hooked(manager, reupload).cleanup()
        after = inventory(manager)
        if not answers:
            problems.append(f"{store}: the cleanup never deleted from it (hook did not fire)")
            continue
        answer = answers[0]
        keys = [k for i, k in after.records if i == answer.document_id]
        if answer.duplicate and answer.document_id != doc.hex:
            problems.append(f"{store}: duplicate of another document {answer.document_id}")
        if not keys:
            problems.append(f"{store}: ingest answered {answer} but the record is gone")
        elif not any(k in after.objects for k in keys):
            problems.append(f"{store}: ingest answered {answer} but its object is gone")
    assert problems == [], "\n".join(problems)


def test_inv4_a_session_that_names_the_document_after_the_decision_keeps_it(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    """An active session names the document right as the cascade's first delete (Qdrant)
    starts: every later irreversible delete re-checks, so the object and record stay."""
    seed = Seeder(manager, clock).setup()
    doc = seed.document(age=OLD)
    once = Once()

    def bump(s: str, method: str, phase: str, _: Any) -> None:
        if s == "vectors" and phase == "call" and is_deletion(method) and once.first(method):
            seed.session(idle=timedelta(0), fields={"attached_file_ids": [doc.hex]})

    hooked(manager, bump).cleanup(ResourceType.MONGODB_METADATA)
    after = inventory(manager)
    assert once.fired, "the cascade never deleted points"
    assert after.has_record(doc.hex, doc.key), doc_state(after, doc)
    assert doc.key in after.objects, doc_state(after, doc)


def _holds(value: Any, wanted: set[Any]) -> bool:
    """Whether a listed item (or batch) is one of the wanted keys or point ids."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        for attr in ("key", "point_id"):
            if getattr(item, attr, None) in wanted:
                return True
    return False


def test_inv4_items_claimed_after_they_were_listed_survive_the_sweep(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    """Right after each sweep lists an item, the app claims it (a document names an orphan
    object, a cache key is read or given a TTL, an active session names a document whose
    points sit in a stale session): the re-check keeps it. Controls go."""
    age_objects(clock)
    seed = Seeder(manager, clock).setup()
    redis = manager.stores.cache()._client  # type: ignore[attr-defined]
    stale = seed.session(idle=STALE)
    claimed_object, lost_object = seed.orphan(), seed.orphan()
    read_key, ttl_key, lost_key = b"cache:read-later", b"cache:ttl-later", b"cache:lost"
    for key in (read_key, ttl_key, lost_key):
        seed.cache(key, ttl=None, idle=7200)
    claimed_doc, lost_doc = seed.document(age=RECENT), seed.document(age=RECENT)
    claimed_points = seed.points(claimed_doc.hex, stale, age=RECENT, count=2)
    lost_points = seed.points(lost_doc.hex, stale, age=RECENT, count=2)
    fired: set[str] = set()

    def claim(s: str, method: str, phase: str, value: Any) -> None:
        if phase != "item":
            return
        if s == "objects" and "object" not in fired and _holds(value, {claimed_object}):
            fired.add("object")
            seed.document(age=HOUR, key=claimed_object, put_object=False, upload_points=0)
        if s == "cache" and "cache" not in fired and _holds(value, {read_key, ttl_key}):
            fired.add("cache")
            redis.get(read_key)
            redis.expire(ttl_key, 600)
        if s == "vectors" and "points" not in fired and _holds(value, set(claimed_points)):
            fired.add("points")
            seed.session(idle=timedelta(0), fields={"documents": [{"doc_id": claimed_doc.hex}]})

    before = inventory(manager)
    hooked(manager, claim).cleanup()
    after = inventory(manager)
    assert fired == {"object", "cache", "points"}
    assert claimed_object in after.objects and lost_object not in after.objects
    assert {read_key, ttl_key} <= after.keys and lost_key not in after.keys
    assert set(claimed_points) <= after.points and not set(lost_points) & after.points
    assert not before.records - after.records, "no record was to go"


# ------------------------------------------------------------------------------ 5. buckets

BUCKETLESS: dict[str, Any] = {"empty": "", "number": 42, "missing": MISSING, "null": None}


def test_inv5_a_bucketless_document_names_its_object_for_both_sweeps(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    age_objects(clock)  # every object is old; the records below are recent
    seed = Seeder(manager, clock).setup()
    named = {
        form: seed.document(age=HOUR, fields={"minio_bucket": value})
        for form, value in BUCKETLESS.items()
    }
    expiring = seed.document(age=OLD)
    seed.document(
        age=HOUR, key=expiring.key, put_object=False, fields={"minio_bucket": ""}, cache=False
    )
    loose = seed.orphan()
    before = inventory(manager)

    report = manager.cleanup(ResourceType.MINIO_FILES)
    after = inventory(manager)

    lost = [form for form, doc in named.items() if doc.key not in after.objects]
    assert lost == [], f"objects of recent documents with minio_bucket {lost} were swept"
    assert expiring.key in after.objects, "the cascade took an object a bucketless doc names"
    assert not after.has_record(expiring.hex) and loose not in after.objects
    gone = disappeared(before, after)
    assert gone == {"redis": 1, "qdrant": 2, "minio": 1, "mongodb": 1}
    assert nonzero(report.deleted_counts) == gone


def test_inv5_an_old_bucketless_document_is_not_expired_blindly(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    seed = Seeder(manager, clock).setup()
    bucketless = {
        form: seed.document(age=OLD, fields={"minio_bucket": value})
        for form, value in BUCKETLESS.items()
    }
    normal = seed.document(age=OLD)
    report = manager.cleanup()
    after = inventory(manager)
    expired = [form for form, doc in bucketless.items() if not kept_whole(after, doc)]
    assert expired == [], f"old documents with minio_bucket {expired} were (partly) expired"
    assert gone_whole(after, normal), doc_state(after, normal)
    assert sum(report.skipped.values()) >= len(bucketless), report.skipped


# ------------------------------------------------------------------------------ 6. exact ids


def test_inv6_an_objectid_and_a_string_with_the_same_hex_are_two_records(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    seed = Seeder(manager, clock).setup()
    pairs: list[tuple[Doc, Doc]] = []
    for old_is_oid in (True, False):
        same = seed.hex()
        old = seed.document(age=OLD, hex_id=same, id_as_str=not old_is_oid, upload_points=0)
        new = seed.document(age=HOUR, hex_id=same, id_as_str=old_is_oid, upload_points=0)
        pairs.append((old, new))
    before = inventory(manager)
    assert sum(before.records.values()) == 4

    report = manager.cleanup(ResourceType.MONGODB_METADATA)
    after = inventory(manager)

    for old, new in pairs:
        kind = "ObjectId" if not isinstance(old.id_value, str) else "str"
        assert after.records[(old.hex, old.key)] == 0, f"the old {kind} record stayed"
        assert after.records[(new.hex, new.key)] == 1, f"the recent twin of the {kind} went"
        assert old.key not in after.objects and new.key in after.objects
    assert report.deleted_counts.get("mongodb") == 2
    assert report.deleted_counts.get("minio") == 2


# ------------------------------------------------------------------------------ 7. dry run


def _mixed(seed: Seeder, active: str, stale: str) -> None:
    """One round of rich data: every sweep has something, and the sweeps overlap."""
    seed.document(age=OLD, cache_ttl=None, cache_idle=7200)  # its idle key: cascade and sweep
    expiring = seed.document(age=OLD)
    seed.points(expiring.hex, stale, age=OLD, count=2)  # its stale points: cascade and sweep
    recent = seed.document(age=HOUR)
    seed.document(age=OLD, key=recent.key, put_object=False)  # shares a live object
    referenced = seed.document(age=OLD)
    seed.session(idle=HOUR, fields={"attached_file_ids": [referenced.hex]})
    seed.points(referenced.hex, stale, age=OLD, count=2)
    unreferenced = seed.document(age=RECENT)
    seed.points(unreferenced.hex, stale, age=RECENT, count=2)
    seed.points(unreferenced.hex, stale, created_at="ayer")
    seed.points(seed.hex(), stale, age=RECENT, count=2)  # document gone
    seed.points(seed.hex(), active, age=RECENT)  # document gone, active session
    seed.document(age=OLD, status="uploading")
    seed.orphan()
    n = seed.hex()[-6:]
    seed.cache(f"cache:idle-{n}".encode(), ttl=None, idle=7200)
    seed.cache(f"cache:fresh-{n}".encode(), ttl=None, idle=60)
    seed.cache(f"blacklist:{n}".encode(), ttl=None, idle=99 * 3600)


def test_inv7_a_dry_run_promises_exactly_what_the_run_deletes_for_every_plan(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    age_objects(clock)
    seed = Seeder(manager, clock).setup()
    active = seed.session(idle=HOUR)
    stale = seed.session(idle=STALE)
    problems = []
    for plan in ALL_PLANS:
        name = plan_name(plan)
        _mixed(seed, active, stale)
        before = inventory(manager)
        dry = manager.cleanup(plan, dry_run=True)
        if not inventory(manager).same(before):
            problems.append(f"{name}: the dry run changed the stores")
        real = manager.cleanup(plan)
        gone = nonzero(disappeared(before, inventory(manager)))
        if not gone:
            problems.append(f"{name}: the real run deleted nothing (no test)")
        if nonzero(dry.deleted_counts) != gone:
            problems.append(f"{name}: dry run said {nonzero(dry.deleted_counts)}, went {gone}")
        if nonzero(real.deleted_counts) != gone:
            problems.append(f"{name}: real run said {nonzero(real.deleted_counts)}, went {gone}")
        dry_lines, real_lines = audit_of(manager, dry), audit_of(manager, real)
        if len(dry_lines) != len(real_lines):
            problems.append(f"{name}: {len(dry_lines)} dry audit lines, {len(real_lines)} real")
        if not all(line["dry_run"] is True for line in dry_lines) or any(
            line["dry_run"] for line in real_lines
        ):
            problems.append(f"{name}: audit lines not marked by dry_run")
        problems += [f"{name}: {p}" for p in settle(manager)]
    assert problems == [], "\n".join(problems)


# ------------------------------------------------------------------------------ 8. the cap

# One round of _deletable: 2 expired documents (record, object, 2 points, 1 key each), 2 points
# of a vanished document, 1 orphan object, 2 idle persistent cache keys.
DELETABLE = {"redis": 4, "qdrant": 6, "minio": 3, "mongodb": 2}
TOTAL = sum(DELETABLE.values())
# What each resource type's plan alone deletes from one round.
PER_PLAN = {
    ResourceType.REDIS_CACHE: 2,
    ResourceType.QDRANT_VECTORS: 2,
    ResourceType.MINIO_FILES: 11,
    ResourceType.MONGODB_METADATA: 10,
}


def _deletable(seed: Seeder, stale: str) -> None:
    seed.document(age=OLD)
    seed.document(age=OLD)
    seed.points(seed.hex(), stale, age=RECENT, count=2)
    seed.orphan()
    n = seed.hex()[-6:]
    seed.cache(f"cache:a-{n}".encode(), ttl=None, idle=7200)
    seed.cache(f"cache:b-{n}".encode(), ttl=None, idle=7200)


def _stable_world(manager: LifecycleManager, clock: FakeClock) -> tuple[Seeder, str]:
    age_objects(clock)
    seed = Seeder(manager, clock).setup()
    seed.document(age=OLD, status="uploading")  # never deleted: the store is never empty
    return seed, seed.session(idle=STALE)


def test_inv8_max_deletions_caps_the_items_deleted_across_all_stores(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    seed, stale = _stable_world(manager, clock)
    problems = []
    for cap in range(1, TOTAL + 2):
        _deletable(seed, stale)
        before = inventory(manager)
        report = manager.cleanup(max_deletions=cap)
        middle = inventory(manager)
        took = sum(disappeared(before, middle).values())
        if took > cap:
            problems.append(f"cap {cap}: {took} items went {disappeared(before, middle)}")
        if took < TOTAL and not report.capped:
            problems.append(f"cap {cap}: {took} of {TOTAL} went, report not capped")
        if cap > TOTAL and report.capped:
            problems.append(f"cap {cap}: nothing was cut, report capped")
        if report.total_deleted != took:
            problems.append(f"cap {cap}: report says {report.total_deleted}, {took} went")
        manager.cleanup()
        total = disappeared(before, inventory(manager))
        if total != DELETABLE:
            problems.append(f"cap {cap}: after the finishing run {total} went, not {DELETABLE}")
        problems += [f"cap {cap}: {p}" for p in settle(manager)]
    assert problems == [], "\n".join(problems)


def test_inv8_max_deletions_caps_every_resource_type(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    seed, stale = _stable_world(manager, clock)
    problems = []
    for plan, deletable in PER_PLAN.items():
        for cap in (1, 2, 3):
            _deletable(seed, stale)
            before = inventory(manager)
            report = manager.cleanup(plan, max_deletions=cap)
            took = sum(disappeared(before, inventory(manager)).values())
            label = f"{plan.value} cap {cap}"
            if took > cap:
                problems.append(f"{label}: {took} items went")
            if took < deletable and not report.capped:
                problems.append(f"{label}: {took} of {deletable} went, report not capped")
            if cap > deletable and (report.capped or took != deletable):
                problems.append(f"{label}: {took} of {deletable} went, capped={report.capped}")
            problems += [f"{label}: {p}" for p in settle(manager)]
    assert problems == [], "\n".join(problems)


# ------------------------------------------------------------------------------ 9. reports


def test_inv9_bytes_freed_are_the_stores_own_sizes(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    age_objects(clock)
    seed = Seeder(manager, clock).setup()
    seed.document(age=OLD, body=b"x" * 1234, fields={"size_bytes": 2**62})
    seed.document(age=OLD, body=b"y" * 999, fields={"size_bytes": MISSING})
    seed.orphan(60)
    seed.orphan(777)
    seed.cache(b"cache:idle-1", ttl=None, idle=7200)
    seed.cache(b"cache:idle-2", ttl=None, idle=7200)
    before = inventory(manager)

    dry = manager.cleanup(dry_run=True)
    report = manager.cleanup()
    after = inventory(manager)

    freed = gone_bytes(before, after)
    assert freed == 1234 + 999 + 60 + 777
    assert report.bytes_freed.get("minio") == freed
    assert dry.bytes_freed.get("minio") == freed
    assert report.bytes_freed.get("redis", 0) > 0
    assert nonzero(report.deleted_counts) == nonzero(disappeared(before, after))


def _overlapping(
    manager: LifecycleManager, plan: ResourceType | None
) -> tuple[list[CleanupReport], list[BaseException]]:
    """Two cleanups in two threads; each waits at its first delete until the other reaches
    one too (or 3 s pass), so both have decided before either deletes."""
    barrier = threading.Barrier(2)
    shared = with_serialized_qdrant(manager)
    reports: list[CleanupReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        once = Once()

        def meet(s: str, method: str, phase: str, _: Any) -> None:
            if phase == "call" and is_deletion(method) and once.first(method):
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=3)

        try:
            reports.append(hooked(shared, meet).cleanup(plan))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return reports, errors


def _round(kind: str, seed: Seeder, stale: str) -> None:
    """Data whose every deletion is of one kind, so the runs' first deletes are the same."""
    n = seed.hex()[-6:]
    if kind == "expired documents":
        seed.document(age=OLD)
        seed.document(age=OLD)
    elif kind == "orphan objects":
        seed.orphan(60)
        seed.orphan(777)
    elif kind == "points of a vanished document":
        seed.points(seed.hex(), stale, age=RECENT, count=3)
    elif kind == "idle cache keys":
        seed.cache(f"cache:a-{n}".encode(), ttl=None, idle=7200)
        seed.cache(f"cache:b-{n}".encode(), ttl=None, idle=7200)
    else:
        _deletable(seed, stale)


OVERLAPS: tuple[tuple[str, ResourceType | None], ...] = (
    ("expired documents", ResourceType.MONGODB_METADATA),
    ("expired documents", None),
    ("orphan objects", ResourceType.MINIO_FILES),
    ("orphan objects", None),
    ("points of a vanished document", ResourceType.QDRANT_VECTORS),
    ("points of a vanished document", None),
    ("idle cache keys", ResourceType.REDIS_CACHE),
    ("idle cache keys", None),
    ("everything", None),
)


def test_inv9_two_overlapping_runs_never_count_the_same_item(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    seed, stale = _stable_world(manager, clock)
    problems = []
    for kind, plan in OVERLAPS:
        name = f"{kind}, {plan_name(plan)}"
        _round(kind, seed, stale)
        before = inventory(manager)
        reports, errors = _overlapping(manager, plan)
        after = inventory(manager)
        if errors or len(reports) != 2:
            problems.append(f"{name}: runs failed: {errors!r}")
            continue
        counted = {
            s: sum(r.deleted_counts.get(s, 0) for r in reports)
            for s in ("redis", "qdrant", "minio", "mongodb")
        }
        gone = disappeared(before, after)
        if nonzero(counted) != nonzero(gone):
            problems.append(f"{name}: the two reports count {counted}, went {gone}")
        freed = sum(r.bytes_freed.get("minio", 0) for r in reports)
        if freed != gone_bytes(before, after):
            problems.append(f"{name}: minio bytes {freed}, went {gone_bytes(before, after)}")
        problems += [f"{name}: {p}" for p in settle(manager)]
    assert problems == [], "\n".join(problems)


# ------------------------------------------------------------------------------ 10. bad state


@pytest.mark.parametrize("manager", ["servers"], indirect=True)
def test_inv10_a_missing_bucket_is_that_stores_error(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    # Servers stack only: the embedded object store creates its bucket folder on first write,
    # so a bucket folder that does not exist yet is a fresh install there, not bad state.
    seed = Seeder(manager, clock)
    manager.stores.metadata().ensure_indexes()
    manager.stores.vectors().ensure_collection()  # the bucket is never created
    old = seed.document(age=OLD, put_object=False)
    seed.document(age=HOUR, put_object=False)
    seed.cache(b"cache:idle", ttl=None, idle=7200)

    for rt, total in (
        (ResourceType.MONGODB_METADATA, 2),
        (ResourceType.QDRANT_VECTORS, 4),
        (ResourceType.REDIS_CACHE, 3),
    ):
        assert manager.metrics([rt])[rt].total_items == total
    with contextlib.suppress(StoreError):
        everything = manager.metrics()
        assert everything[ResourceType.MONGODB_METADATA].total_items == 2
    with contextlib.suppress(StoreError):
        manager.metrics([ResourceType.MINIO_FILES])

    report = manager.cleanup()
    bucket = manager.settings.minio_bucket
    assert not report.success
    assert any("minio" in e or bucket in e for e in report.errors), report.errors
    assert any(bucket in e for e in report.refusals), report.refusals  # a setting: no retry
    redis = manager.stores.cache()._client  # type: ignore[attr-defined]
    assert not redis.exists(b"cache:idle"), "one store's error stopped the redis sweep"
    assert records_of(manager, old.hex), "a record went although its object could not be checked"


# ------------------------------------------------------------------------------ SPEC 5


def test_spec5_reuploading_a_failed_document_resets_it_for_reprocessing(
    manager: LifecycleManager, clock: FakeClock
) -> None:
    seed = Seeder(manager, clock).setup()
    problems = []
    for object_present in (True, False):
        label = "object present" if object_present else "object missing"
        body = f"documento fallido, {label} ".encode() * 100
        failed = seed.document(
            age=RECENT,
            status="failed",
            body=body,
            user="user-5",
            put_object=object_present,
            upload_points=0,
            cache=False,
        )
        clock.advance(hours=1)
        count_before = sum(inventory(manager).records.values())
        answer = manager.ingest("user-5", "de nuevo.pdf", io.BytesIO(body))
        if answer.duplicate or answer.document_id != failed.hex:
            problems.append(f"{label}: answered {answer}, want duplicate=False, same id")
        if answer.file_hash != hashlib.sha256(body).hexdigest():
            problems.append(f"{label}: hash {answer.file_hash}")
        (record,) = records_of(manager, failed.hex)
        if record.status != "uploading":
            problems.append(f"{label}: status {record.status!r}, want 'uploading'")
        touched = record.updated_at
        if touched is None or abs((touched - clock.now()).total_seconds()) > 1:
            problems.append(f"{label}: updated_at {touched}, want {clock.now()}")
        if not (record.minio_key and manager.stores.objects().exists(record.minio_key)):
            problems.append(f"{label}: record names {record.minio_key!r}, which does not exist")
        if sum(inventory(manager).records.values()) != count_before:
            problems.append(f"{label}: ingest added a record")
    assert problems == [], "\n".join(problems)
