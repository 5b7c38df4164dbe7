"""VectorStore over qdrant-client: a Qdrant server, or the local on-disk engine in RLM_DATA_DIR."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from rlm_core.batching import chunked
from rlm_core.ports import CreatedAt, PointInfo, PointPin, PointRef, StoreError, VectorPoint

LIFECYCLE_FIELDS = ("session_id", "document_id", "created_at")
INDEXED_FIELDS = ("session_id", "document_id")
_DOCUMENT_BATCH = 256
_DELETE_BATCH = 1000
_UPSERT_BATCH = 256
# Local mode sorts every point id for each scroll page (qdrant_client/local/local_collection.py,
# `_scroll_by_id`), so a pass costs O(N^2 / page): it reads big pages and yields slices.
_LOCAL_PAGE = 10_000


class QdrantVectorStore:
    """Points of one Qdrant collection, read and deleted by their lifecycle payload.

    Against a server, deletes are server-side delete-by-filter (answered from the keyword
    indexes). qdrant-client's local engine has no indexes: it evaluates a filter in Python for
    every point of the collection on every call, and `MatchAny` compares against each listed
    value in turn (qdrant_client/local/payload_filters.py, `calculate_payload_mask` and
    `check_match`), so filter deletes cost O(points x listed values) per call. In local mode
    (`scan_deletes`, detected from the client) the same points are therefore selected by one
    scroll with set lookups and deleted by id. That is exact there: local mode holds an
    exclusive lock on its folder, so no other writer can add or change points in between.
    """

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        vector_size: int,
        scan_deletes: bool | None = None,
    ) -> None:
        self._client = client
        self.collection = collection
        self.vector_size = vector_size
        self.scan_deletes = is_local(client) if scan_deletes is None else scan_deletes
        self._point_bytes: int | None = None

    def ensure_collection(self) -> None:
        """Create the collection (cosine, vector_size) and keyword payload indexes if missing."""
        with self._errors("create collection"):
            if not self._client.collection_exists(self.collection):
                self._client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(
                        size=self.vector_size, distance=models.Distance.COSINE
                    ),
                )
            self._ensure_indexes()

    def count(self) -> int:
        """Exact number of points; 0 when the collection does not exist yet."""
        if not self._exists():
            return 0
        with self._errors("count"):
            return self._client.count(self.collection, exact=True).count

    def iter_points(
        self, batch_size: int, with_payload_size: bool = False
    ) -> Iterator[list[PointInfo]]:
        """Stream points (no vectors) in batches; nothing when the collection does not exist."""
        payload: list[str] | bool = True if with_payload_size else list(LIFECYCLE_FIELDS)
        if not self._exists():
            return
        # Payload weighing reads whole payloads: big pages would only copy more text.
        big = self.scan_deletes and not with_payload_size
        page = max(batch_size, _LOCAL_PAGE) if big else batch_size
        for records in self._scroll(page, payload):
            if len(records) > batch_size:
                # A page split into batches: id order scatters a document's points over the
                # page, grouped each batch names far fewer documents for the sweep to read.
                records.sort(key=_document_order)
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                yield [_point_info(r, with_payload_size) for r in chunk]

    def iter_created(self, batch_size: int, weigh_first: int = 0) -> Iterator[list[CreatedAt]]:
        """Stream (id, created_at) of every point, reading created_at alone; the first scroll
        request reads weigh_first whole payloads and weighs them (one pass, not a second
        scan). Nothing when the collection does not exist."""
        if not self._exists():
            return
        offset: models.ExtendedPointId | None = None
        if weigh_first > 0:
            with self._errors("scroll"):
                records, offset = self._client.scroll(
                    self.collection, limit=weigh_first, with_payload=True, with_vectors=False
                )
            for start in range(0, len(records), batch_size):
                yield [_weighed(r) for r in records[start : start + batch_size]]
            if offset is None:
                return
        page = max(batch_size, _LOCAL_PAGE) if self.scan_deletes else batch_size
        for records in self._scroll(page, ["created_at"], start=offset):
            for start in range(0, len(records), batch_size):
                yield [
                    CreatedAt(_raw_id(r), (r.payload or {}).get("created_at"))
                    for r in records[start : start + batch_size]
                ]

    def points_by_id(self, point_ids: Sequence[str | int]) -> list[PointInfo]:
        """The lifecycle payload of those of these points that exist."""
        if not point_ids or not self._exists():
            return []
        found: list[PointInfo] = []
        for chunk in chunked(point_ids, _DELETE_BATCH):
            with self._errors("retrieve"):
                records = self._client.retrieve(
                    self.collection, ids=list(chunk), with_payload=list(LIFECYCLE_FIELDS)
                )
            found += [_point_info(r, False) for r in records]
        return found

    def points_for_documents(self, document_ids: Sequence[str]) -> dict[str, list[str]]:
        """Ids of the points whose document_id is exactly one of these strings, per document."""
        wanted = set(document_ids)
        found: dict[str, list[str]] = {}
        if not wanted or not self._exists():
            return found
        pages: Iterator[list[models.Record]]
        if self.scan_deletes:
            pages = self._scroll(_LOCAL_PAGE, ["document_id"])
        else:
            pages = self._scroll(1000, ["document_id"], _documents_filter(sorted(wanted)))
        for records in pages:
            for record in records:
                doc = _text(record.payload or {}, "document_id")
                if doc in wanted:
                    found.setdefault(doc, []).append(str(record.id))
        return found

    def delete_for_documents(self, points: Sequence[PointRef]) -> int:
        """Delete these points if their document_id is still the one read; return how many."""
        return self._delete_refs(points, None)

    def delete_points(self, points: Sequence[PointRef], created_before: float) -> int:
        """Delete these points if their session_id/document_id are still the ones read and their
        created_at is still a number < created_before; return how many went."""
        return self._delete_refs(points, created_before)

    def points_of(self, document_ids: Sequence[str], session_ids: Sequence[str]) -> list[PointInfo]:
        """Points whose document_id is one of document_ids or whose session_id is one of
        session_ids (exact strings): a filter per batch of ids, or one scan in local mode."""
        wanted = {"document_id": set(document_ids), "session_id": set(session_ids)}
        if not any(wanted.values()) or not self._exists():
            return []
        found: dict[str, PointInfo] = {}
        for records in self._pages_of(wanted):
            for record in records:
                payload = record.payload or {}
                if any(_text(payload, f) in ids for f, ids in wanted.items()):
                    found[str(record.id)] = _point_info(record, False)
        return list(found.values())

    def delete_pinned(self, points: Sequence[PointPin]) -> int:
        """Delete these points while every value each one pins is still the one read."""
        refs = [p for p in points if p.session_id is not None or p.document_id is not None]
        if not refs or not self._exists():
            return 0
        deleted = 0
        for chunk in chunked(refs, _DELETE_BATCH):
            if self.scan_deletes:
                deleted += self._delete_pins_checked(chunk)
            else:
                deleted += self._delete_pins_filtered(chunk)
        return deleted

    def point_bytes(self) -> int:
        """Bytes of one point's vectors (float32), from the collection's own configuration."""
        if self._point_bytes is None:
            with self._errors("read collection"):
                vectors = self._client.get_collection(self.collection).config.params.vectors
            params = vectors.values() if isinstance(vectors, dict) else [vectors]
            self._point_bytes = sum(p.size * 4 for p in params if p is not None)
        return self._point_bytes

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Write points, waiting until they are applied."""
        with self._errors("upsert"):
            for chunk in chunked(points, _UPSERT_BATCH):
                structs = [
                    models.PointStruct(id=p.point_id, vector=list(p.vector), payload=p.payload)
                    for p in chunk
                ]
                self._client.upsert(self.collection, points=structs, wait=True)

    def close(self) -> None:
        """Release the client (and local mode's folder lock)."""
        self._client.close()

    def _exists(self) -> bool:
        with self._errors("look up collection"):
            return self._client.collection_exists(self.collection)

    def _ensure_indexes(self) -> None:
        existing = self._client.get_collection(self.collection).payload_schema
        with warnings.catch_warnings():
            # Local mode accepts and ignores payload indexes, warning once; servers use them.
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            for field in INDEXED_FIELDS:
                if field not in existing:
                    self._client.create_payload_index(
                        self.collection, field, field_schema=models.PayloadSchemaType.KEYWORD
                    )

    def _scroll(
        self,
        page: int,
        payload: list[str] | bool,
        scroll_filter: models.Filter | None = None,
        start: models.ExtendedPointId | None = None,
    ) -> Iterator[list[models.Record]]:
        with self._errors("scroll"):
            offset = start
            while True:
                records, offset = self._client.scroll(
                    self.collection,
                    scroll_filter=scroll_filter,
                    limit=page,
                    offset=offset,
                    with_payload=payload,
                    with_vectors=False,
                )
                if records:
                    yield records
                if offset is None:
                    return

    def _pages_of(self, wanted: dict[str, set[str]]) -> Iterator[list[models.Record]]:
        if self.scan_deletes:
            yield from self._scroll(_LOCAL_PAGE, list(LIFECYCLE_FIELDS))
            return
        for field, ids in wanted.items():
            for batch in chunked(sorted(ids), _DOCUMENT_BATCH):
                match = models.FieldCondition(key=field, match=models.MatchAny(any=list(batch)))
                yield from self._scroll(1000, list(LIFECYCLE_FIELDS), models.Filter(must=[match]))

    def _delete_pins_checked(self, pins: Sequence[PointPin]) -> int:
        # Local mode: read the points back by id and delete those whose pinned values hold.
        by_id = {p.point_id: p for p in pins}
        with self._errors("retrieve"):
            records = self._client.retrieve(
                self.collection, ids=list(by_id), with_payload=list(LIFECYCLE_FIELDS)
            )
        ids = [r.id for r in records if _pins_hold(r.payload or {}, by_id[str(r.id)])]
        if ids:
            with self._errors("delete"):
                self._client.delete(
                    self.collection, points_selector=models.PointIdsList(points=ids), wait=True
                )
        return len(ids)

    def _delete_pins_filtered(self, pins: Sequence[PointPin]) -> int:
        # A server re-checks the pins itself: only these ids, only while their values hold.
        groups: dict[tuple[str | None, str | None], list[str]] = {}
        for p in pins:
            groups.setdefault((p.session_id, p.document_id), []).append(p.point_id)
        points_filter = models.Filter(
            should=[_pin_filter(s, d, ids) for (s, d), ids in groups.items()]
        )
        with self._errors("count"):
            count = self._client.count(self.collection, count_filter=points_filter, exact=True)
        self._delete(points_filter)
        return count.count

    def _delete_refs(self, points: Sequence[PointRef], created_before: float | None) -> int:
        if not points or not self._exists():
            return 0
        deleted = 0
        for chunk in chunked(points, _DELETE_BATCH):
            if self.scan_deletes:
                deleted += self._delete_checked(chunk, created_before)
            else:
                deleted += self._delete_filtered(chunk, created_before)
        return deleted

    def _delete_checked(self, points: Sequence[PointRef], created_before: float | None) -> int:
        # Local mode: read the points back by id, keep those still as judged, delete by id (a
        # filter would be evaluated in Python over the whole collection).
        by_id = {p.point_id: p for p in points}
        with self._errors("retrieve"):
            records = self._client.retrieve(
                self.collection, ids=list(by_id), with_payload=list(LIFECYCLE_FIELDS)
            )
        ids = [
            r.id
            for r in records
            if _still_as_judged(r.payload or {}, by_id[str(r.id)], created_before)
        ]
        if ids:
            with self._errors("delete"):
                self._client.delete(
                    self.collection, points_selector=models.PointIdsList(points=ids), wait=True
                )
        return len(ids)

    def _delete_filtered(self, points: Sequence[PointRef], created_before: float | None) -> int:
        # A server re-checks the judgement itself: only these ids, and only while their payload
        # still says what it said when they were judged.
        groups: dict[tuple[str | None, str], list[str]] = {}
        for p in points:
            groups.setdefault((p.session_id, p.document_id), []).append(p.point_id)
        must: list[models.Condition] = []
        if created_before is not None:
            must.append(
                models.FieldCondition(key="created_at", range=models.Range(lt=created_before))
            )
        points_filter = models.Filter(
            must=must, should=[_group_filter(s, d, ids) for (s, d), ids in groups.items()]
        )
        with self._errors("count"):
            count = self._client.count(self.collection, count_filter=points_filter, exact=True)
        self._delete(points_filter)
        return count.count

    def _delete(self, points_filter: models.Filter) -> None:
        with self._errors("delete"):
            self._client.delete(
                self.collection,
                points_selector=models.FilterSelector(filter=points_filter),
                wait=True,
            )

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except UnexpectedResponse as exc:
            if exc.status_code is not None and exc.status_code < 500:
                raise
            raise StoreError(f"Qdrant {action} on {self.collection!r} failed: {exc}") from exc
        except (ResponseHandlingException, httpx.HTTPError) as exc:
            raise StoreError(f"Qdrant {action} on {self.collection!r} failed: {exc}") from exc


def is_local(client: QdrantClient) -> bool:
    """Whether the client runs qdrant-client's in-process engine (`:memory:` or a folder)."""
    options = client.init_options
    return options.get("location") == ":memory:" or options.get("path") is not None


def connect_qdrant(
    url: str | None,
    api_key: str | None,
    data_dir: Path,
    timeout: float,
    lock_wait: float = 0.0,
) -> QdrantClient:
    """A client on QDRANT_URL, or the local engine in data_dir/qdrant.

    Local mode holds an exclusive lock on its folder for the client's lifetime, so callers open
    late and close early. A folder held by another process is retried for up to `lock_wait`
    seconds (Dagster runs of different stores may overlap), then raises StoreError.
    """
    if url:
        return QdrantClient(url=url, api_key=api_key, timeout=max(1, round(timeout)))
    folder = data_dir / "qdrant"
    deadline = time.monotonic() + lock_wait
    while True:
        try:
            return QdrantClient(path=str(folder))
        except RuntimeError as exc:
            if time.monotonic() >= deadline:
                raise StoreError(f"embedded Qdrant folder {folder} is unavailable: {exc}") from exc
        time.sleep(0.5)


def _point_info(record: models.Record, with_payload_size: bool) -> PointInfo:
    payload = record.payload or {}
    size = len(json.dumps(payload).encode()) if with_payload_size else None
    # Positional: PointInfo(point_id, session_id, document_id, created_at, payload_bytes), a
    # third cheaper than keywords, once per point of every scan.
    return PointInfo(
        str(record.id),
        payload.get("session_id"),
        payload.get("document_id"),
        payload.get("created_at"),
        size,
    )


def _weighed(record: models.Record) -> CreatedAt:
    payload = record.payload or {}
    return CreatedAt(_raw_id(record), payload.get("created_at"), len(json.dumps(payload).encode()))


def _raw_id(record: models.Record) -> str | int:
    # An int id stays an int: retrieve() finds no point by the string of an int id.
    return record.id if isinstance(record.id, int) else str(record.id)


def _document_order(record: models.Record) -> str:
    # Any payload sorts (a document_id that is not a string sorts as ""); the key is the
    # payload's own string, so sorting a page allocates no key objects.
    return _text(record.payload or {}, "document_id") or ""


def _text(payload: dict[str, Any], field: str) -> str | None:
    # A string field compared as a MatchValue on a string compares it: other values never match.
    value = payload.get(field)
    return value if isinstance(value, str) else None


def _documents_filter(document_ids: Sequence[str]) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key="document_id", match=models.MatchAny(any=list(document_ids)))
        ]
    )


def _group_filter(session_id: str | None, document_id: str, ids: list[str]) -> models.Filter:
    conditions: list[models.Condition] = [
        models.HasIdCondition(has_id=list(ids)),
        models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id)),
    ]
    if session_id is not None:
        conditions.append(
            models.FieldCondition(key="session_id", match=models.MatchValue(value=session_id))
        )
    return models.Filter(must=conditions)


def _pin_filter(session_id: str | None, document_id: str | None, ids: list[str]) -> models.Filter:
    conditions: list[models.Condition] = [models.HasIdCondition(has_id=list(ids))]
    for field, value in (("session_id", session_id), ("document_id", document_id)):
        if value is not None:
            conditions.append(
                models.FieldCondition(key=field, match=models.MatchValue(value=value))
            )
    return models.Filter(must=conditions)


def _pins_hold(payload: dict[str, Any], pin: PointPin) -> bool:
    pinned = (("session_id", pin.session_id), ("document_id", pin.document_id))
    return all(value is None or _text(payload, f) == value for f, value in pinned)


def _still_as_judged(payload: dict[str, Any], ref: PointRef, created_before: float | None) -> bool:
    if _text(payload, "document_id") != ref.document_id:
        return False
    if ref.session_id is not None and _text(payload, "session_id") != ref.session_id:
        return False
    if created_before is None:
        return True
    created = payload.get("created_at")
    return (
        isinstance(created, int | float)
        and not isinstance(created, bool)
        and created < created_before
    )
