"""SPEC 4.1.1 over the table of reference shapes (tests/lifecycle/shapes.py), on both stacks.

For each reference path, one world holds every row of the table twice: once held by an ACTIVE
session (updated an hour ago), once by an INACTIVE one (three days idle). Every target document
is OLD (30 days, past FILES_TTL_DAYS) and owns a record, an object, points (in its upload
session, in the naming session and in a stale session) and a `doc:text:` key.

- A row that names the document: the active holder protects it wholly, and the dry run's audit
  never mentions it; the inactive holder does not protect it, it expires wholly.
- A row that names nothing: cleanup does not crash and the document is judged as unreferenced
  (it expires), while a control document referenced in the standard form stays and an
  unreferenced control document goes.
A world per path, not per row, keeps the embedded stack affordable; the failure message lists
every row that broke, with what was left of its document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from rlm_core import LifecycleManager
from rlm_core.clock import FakeClock
from tests.lifecycle.shapes import (
    HOUR,
    OLD,
    PATHS,
    STALE,
    Doc,
    Inventory,
    Ref,
    Seeder,
    Shape,
    audit_of,
    disappeared,
    doc_state,
    gone_whole,
    inventory,
    kept_whole,
    nonzero,
    shapes_of,
)


@dataclass
class Held:
    """A target document, and its points in a stale session: the Qdrant rule alone takes
    those when nothing active references the document, even if the record is kept."""

    doc: Doc
    stale_points: list[str]


@dataclass
class Case:
    shape: Shape
    active: Held
    inactive: Held


@dataclass
class Catalogue:
    cases: list[Case]
    kept: Held
    loose: Held


def hold(seed: Seeder, shape: Shape, stale_session: str, *, active: bool) -> Held:
    """An old document referenced in the row's shape by one session (active or not)."""
    ref = Ref(doc=seed.hex(), session=seed.hex())
    placement = shape.place(ref)
    doc = seed.document(age=OLD, hex_id=ref.doc, fields=placement.document)
    own_session_points = seed.points(ref.doc, ref.session, age=OLD)
    stale_points = seed.points(ref.doc, stale_session, age=OLD)
    if active:
        doc.points += own_session_points
    else:
        stale_points += own_session_points
    seed.session(
        idle=HOUR if active else STALE,
        hex_id=ref.session,
        as_oid=shape.session_oid,
        fields=placement.session,
    )
    for message in placement.messages:
        seed.message(message)
    return Held(doc, stale_points)


def build(seed: Seeder, shapes: list[Shape]) -> Catalogue:
    stale = seed.session(idle=STALE)
    cases = [
        Case(shape, hold(seed, shape, stale, active=True), hold(seed, shape, stale, active=False))
        for shape in shapes
    ]
    kept = seed.document(age=OLD)
    seed.session(idle=HOUR, fields={"documents": [{"doc_id": kept.hex, "filename": "k.pdf"}]})
    kept_stale = seed.points(kept.hex, stale, age=OLD)
    loose = seed.document(age=OLD)
    return Catalogue(cases, Held(kept, kept_stale), Held(loose, []))


def verdicts(world: Catalogue, after: Inventory) -> list[str]:
    """Every way the world after cleanup breaks the rules, one line per document."""
    problems: list[str] = []

    def expect(label: str, held: Held, kept: bool | None) -> None:
        doc, stale = held.doc, held.stale_points
        whole_kept, whole_gone = kept_whole(after, doc), gone_whole(after, doc)
        stale_kept = all(p in after.points for p in stale)
        stale_gone = not any(p in after.points for p in stale)
        if kept is True and whole_kept and stale_kept:
            return
        if kept is False and whole_gone and stale_gone:
            return
        if kept is None and (whole_kept or whole_gone):
            return
        want = {True: "kept whole", False: "expired whole", None: "kept or expired whole"}[kept]
        found = doc_state(after, doc) | {"stale-session points": stale_kept}
        problems.append(f"{label}: expected {want}, found {found}")

    expect("control referenced as documents[].doc_id str", world.kept, True)
    expect("control unreferenced", world.loose, False)
    for case in world.cases:
        s = case.shape
        if s.names:
            expect(f"{s.id} [active session]", case.active, True)
        else:
            expect(f"{s.id} [active session]", case.active, None if s.doc_malformed else False)
        expect(f"{s.id} [inactive session]", case.inactive, None if s.doc_malformed else False)
    return problems


@pytest.mark.parametrize("path", PATHS)
def test_every_reference_shape_protects_exactly_what_it_names(
    manager: LifecycleManager, clock: FakeClock, path: str
) -> None:
    seed = Seeder(manager, clock).setup()
    world = build(seed, shapes_of(path))
    before = inventory(manager)

    dry = manager.cleanup(dry_run=True)
    assert inventory(manager).same(before), "a dry run changed the stores"
    dry_text = [json.dumps(line, default=str) for line in audit_of(manager, dry)]
    protected = [(c.shape.id, c.active.doc) for c in world.cases if c.shape.names]
    protected.append(("control referenced as documents[].doc_id str", world.kept.doc))
    problems = [
        f"{label} [active session]: the dry run would delete it"
        for label, doc in protected
        if any(doc.hex in text for text in dry_text)
    ]

    report = manager.cleanup()
    after = inventory(manager)
    problems += verdicts(world, after)
    assert problems == [], "\n".join(problems)

    gone = nonzero(disappeared(before, after))
    assert nonzero(report.deleted_counts) == gone, "deleted_counts must be what disappeared"
    assert nonzero(dry.deleted_counts) == gone, "the dry run must promise what the run deletes"
    assert gone["mongodb"] >= 1 + sum(1 for c in world.cases if not c.shape.doc_malformed)
