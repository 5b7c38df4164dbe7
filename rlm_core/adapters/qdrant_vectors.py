"""VectorStore over qdrant-client: a Qdrant server, or the local on-disk engine in RLM_DATA_DIR."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from rlm_core.ports import PointInfo, StoreError, VectorPoint

LIFECYCLE_FIELDS = ("session_id", "document_id", "created_at")
INDEXED_FIELDS = ("session_id", "document_id")
_DOCUMENT_BATCH = 256
_PAIR_BATCH = 128
_UPSERT_BATCH = 256
# Local mode sorts every point id for each scroll page (qdrant_client/local/local_collection.py,
# `_scroll_by_id`), so a pass costs O(N^2 / page): it reads big pages and yields slices.
_LOCAL_PAGE = 10_000

_T = TypeVar("_T")


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
        # Payload weighing reads a small prefix sample: big pages would only copy more text.
        big = self.scan_deletes and not with_payload_size
        page = max(batch_size, _LOCAL_PAGE) if big else batch_size
        for records in self._scroll(page, payload):
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                yield [_point_info(r, with_payload_size) for r in chunk]

    def count_for_documents(self, document_ids: Sequence[str]) -> int:
        """Points whose document_id is one of these (0 when the collection does not exist)."""
        total = 0
        if not self._exists():
            return 0
        if self.scan_deletes:
            # Count what the scan delete will select, so dry runs and reports agree with it.
            wanted = set(document_ids)
            return sum(
                1
                for records in self._scroll(_LOCAL_PAGE, ["document_id"])
                for r in records
                if _text(r.payload or {}, "document_id") in wanted
            )
        with self._errors("count"):
            for chunk in _chunks(document_ids, _DOCUMENT_BATCH):
                total += self._client.count(
                    self.collection, count_filter=_documents_filter(chunk), exact=True
                ).count
        return total

    def delete_for_documents(self, document_ids: Sequence[str]) -> None:
        """Server-side delete of points whose document_id is one of these."""
        if not self._exists():
            return
        if self.scan_deletes:
            wanted = set(document_ids)
            self._delete_scanned(lambda p: _text(p, "document_id") in wanted)
            return
        for chunk in _chunks(document_ids, _DOCUMENT_BATCH):
            self._delete(_documents_filter(chunk))

    def delete_for_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Server-side delete of points matching any (session_id, document_id) pair."""
        if not self._exists():
            return
        if self.scan_deletes:
            doomed = set(pairs)
            self._delete_scanned(
                lambda p: (_text(p, "session_id"), _text(p, "document_id")) in doomed
            )
            return
        for chunk in _chunks(pairs, _PAIR_BATCH):
            # The must clause narrows to the chunk's documents first: a server answers it from
            # the document_id index, and local mode skips the pair checks for other points.
            self._delete(
                models.Filter(
                    must=[_documents_filter(sorted({d for _, d in chunk}))],
                    should=[_pair_filter(s, d) for s, d in chunk],
                )
            )

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Write points, waiting until they are applied."""
        with self._errors("upsert"):
            for chunk in _chunks(points, _UPSERT_BATCH):
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

    def _scroll(self, page: int, payload: list[str] | bool) -> Iterator[list[models.Record]]:
        with self._errors("scroll"):
            offset: models.ExtendedPointId | None = None
            while True:
                records, offset = self._client.scroll(
                    self.collection,
                    limit=page,
                    offset=offset,
                    with_payload=payload,
                    with_vectors=False,
                )
                if records:
                    yield records
                if offset is None:
                    return

    def _delete_scanned(self, selected: Callable[[dict[str, Any]], bool]) -> None:
        for records in self._scroll(_LOCAL_PAGE, ["session_id", "document_id"]):
            ids = [r.id for r in records if selected(r.payload or {})]
            if ids:
                with self._errors("delete"):
                    self._client.delete(
                        self.collection,
                        points_selector=models.PointIdsList(points=ids),
                        wait=True,
                    )

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
    return PointInfo(
        point_id=str(record.id),
        session_id=payload.get("session_id"),
        document_id=payload.get("document_id"),
        created_at=payload.get("created_at"),
        payload_bytes=size,
    )


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


def _pair_filter(session_id: str, document_id: str) -> models.Filter:
    return models.Filter(
        must=[
            models.FieldCondition(key="session_id", match=models.MatchValue(value=session_id)),
            models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id)),
        ]
    )


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
