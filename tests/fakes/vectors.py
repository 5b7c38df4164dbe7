"""VectorStore in memory: Qdrant collections of payloads, and the adapter over one of them."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlm_core.ports import CreatedAt, MissingStoreError, PointInfo, PointPin, PointRef, VectorPoint

Payload = dict[str, Any]
# Points QdrantVectorStore reads per scroll in local mode (the scan path).
SCAN_PAGE = 10_000


@dataclass
class Collection:
    """One collection: its configured vector size and each point's payload by point id."""

    vector_size: int
    points: dict[str, Payload] = field(default_factory=dict)


class MemoryQdrant:
    """The collections of one Qdrant instance, shared by every adapter built over it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.collections: dict[str, Collection] = {}


class MemoryVectors:
    """Points of one collection of a MemoryQdrant, read and deleted by their lifecycle payload.

    Deletes re-check each judged point exactly as QdrantVectorStore's scan path does (read back
    by id, delete only while the payload still says what was judged), in one step under the
    collections' lock.
    """

    scan_deletes = True

    def __init__(self, client: MemoryQdrant, collection: str, vector_size: int) -> None:
        self._client = client
        self.collection = collection
        self.vector_size = vector_size

    def ensure_collection(self) -> None:
        """Create the collection with this adapter's vector size if missing."""
        with self._client.lock:
            self._client.collections.setdefault(self.collection, Collection(self.vector_size))

    def count(self) -> int:
        """Exact number of points; 0 when the collection does not exist yet."""
        with self._client.lock:
            found = self._client.collections.get(self.collection)
            return len(found.points) if found else 0

    def iter_points(
        self, batch_size: int, with_payload_size: bool = False
    ) -> Iterator[list[PointInfo]]:
        """Stream points in QdrantVectorStore's local-mode order: pages of ids in id order, each
        page (read at once) grouped by document; payload weighing reads plain id order."""
        page_size = batch_size if with_payload_size else max(batch_size, SCAN_PAGE)
        for page in self._pages(page_size):
            if len(page) > batch_size:
                page.sort(key=lambda item: _document_order(item[1]))
            for start in range(0, len(page), batch_size):
                yield [
                    _info(pid, p, with_payload_size) for pid, p in page[start : start + batch_size]
                ]

    def iter_created(self, batch_size: int, weigh_first: int = 0) -> Iterator[list[CreatedAt]]:
        """Every point's id and created_at in id order; the first weigh_first weighed."""
        seen = 0
        for page in self._pages(max(batch_size, SCAN_PAGE)):
            for start in range(0, len(page), batch_size):
                batch = []
                for pid, payload in page[start : start + batch_size]:
                    size = len(json.dumps(payload).encode()) if seen < weigh_first else None
                    batch.append(CreatedAt(pid, payload.get("created_at"), size))
                    seen += 1
                yield batch

    def points_by_id(self, point_ids: Sequence[str | int]) -> list[PointInfo]:
        """Those of these points that exist, with their lifecycle payload."""
        with self._client.lock:
            stored = self._points()
            wanted = {_point_id_or_none(str(pid)) for pid in point_ids} - {None}
            return [_info(pid, stored[pid], False) for pid in sorted(wanted) if pid in stored]

    def _pages(self, page_size: int) -> Iterator[list[tuple[str, Payload]]]:
        after = ""
        while True:
            with self._client.lock:
                stored = self._points()
                ids = sorted(pid for pid in stored if pid > after)[:page_size]
                page = [(pid, stored[pid]) for pid in ids]
            yield page
            if len(ids) < page_size:
                return
            after = ids[-1]

    def points_for_documents(self, document_ids: Sequence[str]) -> dict[str, list[str]]:
        """Ids of the points whose document_id is exactly one of these strings, per document."""
        wanted = set(document_ids)
        found: dict[str, list[str]] = {}
        with self._client.lock:
            for pid, payload in self._points().items():
                doc = _text(payload, "document_id")
                if doc in wanted:
                    found.setdefault(doc, []).append(pid)
        return found

    def delete_for_documents(self, points: Sequence[PointRef]) -> int:
        """Delete these points if their document_id is still the one read; return how many."""
        return self._delete_refs(points, None)

    def delete_points(self, points: Sequence[PointRef], created_before: float) -> int:
        """Delete these points if their session_id/document_id are still the ones read and their
        created_at is still a number < created_before; return how many went."""
        return self._delete_refs(points, created_before)

    def points_of(self, document_ids: Sequence[str], session_ids: Sequence[str]) -> list[PointInfo]:
        """Points whose document_id is exactly one of document_ids or whose session_id is
        exactly one of session_ids."""
        wanted = {"document_id": set(document_ids), "session_id": set(session_ids)}
        with self._client.lock:
            return [
                _info(pid, payload, False)
                for pid, payload in sorted(self._points().items())
                if any(_text(payload, name) in ids for name, ids in wanted.items())
            ]

    def delete_pinned(self, points: Sequence[PointPin]) -> int:
        """Delete these points while every value each one pins is still the one read; a pin of
        nothing deletes nothing."""
        deleted = 0
        with self._client.lock:
            stored = self._points()
            for pin in points:
                pid = _point_id_or_none(pin.point_id)
                if pid is None or (payload := stored.get(pid)) is None:
                    continue
                if _pins_hold(payload, pin):
                    del stored[pid]
                    deleted += 1
        return deleted

    def point_bytes(self) -> int:
        """Bytes of one point's float32 vector, from the collection's own vector size."""
        with self._client.lock:
            return self._require().vector_size * 4

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Write points; payloads are stored as the JSON Qdrant keeps."""
        with self._client.lock:
            collection = self._require()
            for point in points:
                if len(point.vector) != collection.vector_size:
                    raise ValueError(
                        f"point {point.point_id} has {len(point.vector)} dimensions; "
                        f"collection {self.collection!r} holds {collection.vector_size}"
                    )
            for point in points:
                collection.points[_point_id(point.point_id)] = json.loads(json.dumps(point.payload))

    def close(self) -> None:
        """Nothing to release: the collections outlive their adapters, as a server's do."""

    def _points(self) -> dict[str, Payload]:
        found = self._client.collections.get(self.collection)
        return found.points if found else {}

    def _require(self) -> Collection:
        found = self._client.collections.get(self.collection)
        if found is None:
            raise MissingStoreError(
                f"QDRANT_COLLECTION: collection {self.collection!r} does not exist"
            )
        return found

    def _delete_refs(self, points: Sequence[PointRef], created_before: float | None) -> int:
        deleted = 0
        with self._client.lock:
            stored = self._points()
            for ref in points:
                pid = _point_id_or_none(ref.point_id)
                if pid is None or (payload := stored.get(pid)) is None:
                    continue
                if _still_as_judged(payload, ref, created_before):
                    del stored[pid]
                    deleted += 1
        return deleted


def _info(point_id: str, payload: Payload, with_payload_size: bool) -> PointInfo:
    size = len(json.dumps(payload).encode()) if with_payload_size else None
    return PointInfo(
        point_id=point_id,
        session_id=payload.get("session_id"),
        document_id=payload.get("document_id"),
        created_at=payload.get("created_at"),
        payload_bytes=size,
    )


def _document_order(payload: Payload) -> str:
    # As the scan path groups a page: by document (a stable sort); other values sort as "".
    return _text(payload, "document_id") or ""


def _point_id(value: str) -> str:
    """The canonical form Qdrant gives a UUID point id back in; anything else is refused."""
    return str(uuid.UUID(value))


def _point_id_or_none(value: str) -> str | None:
    try:
        return _point_id(value)
    except ValueError:
        return None


def _text(payload: Payload, name: str) -> str | None:
    value = payload.get(name)
    return value if isinstance(value, str) else None


def _pins_hold(payload: Payload, pin: PointPin) -> bool:
    pinned = (("session_id", pin.session_id), ("document_id", pin.document_id))
    if all(value is None for _, value in pinned):
        return False
    return all(value is None or _text(payload, name) == value for name, value in pinned)


def _still_as_judged(payload: Payload, ref: PointRef, created_before: float | None) -> bool:
    """The judgement still holds: same document_id (and session_id when it was relied on),
    and, for the session rule, created_at still a number older than the cut-off."""
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
