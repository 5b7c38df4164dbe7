"""Hand-built data shaped like SPEC section 3, written through the store ports, and state snapshots."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId

from rlm_core.clock import Clock
from rlm_core.ports import CacheSeed, VectorPoint
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from rlm_core.stores import Stores

DIM = 384


def naive(when: datetime) -> datetime:
    """Naive UTC, as pymongo returns datetimes and the RAG app writes them."""
    return when.replace(tzinfo=None)


@dataclass
class World:
    """Writes documents, sessions, messages, chunks, objects and cache keys at given ages."""

    stores: Stores
    clock: Clock
    counter: int = 0

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def _next(self) -> int:
        # Deterministic ids, so two worlds built alike compare equal item by item.
        self.counter += 1
        return self.counter

    def _oid(self) -> str:
        return f"{self._next():024x}"

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._next()))

    def setup(self) -> None:
        self.stores.metadata().ensure_indexes()
        self.stores.vectors().ensure_collection()
        self.stores.objects().ensure_bucket()

    def document(
        self,
        *,
        age: timedelta,
        status: str = "ready",
        user: str = "user-1",
        session: str | None = None,
        chunks: int = 3,
        conversation_id: str | None = None,
        cache: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """A document with its object, chunks (in `session`, else upload_{id}) and text cache."""
        doc_id = self._oid()
        key = f"{self._uuid()}/informe {doc_id[-4:]}.pdf"
        body = f"contenido {doc_id}".encode() * 50
        self.stores.objects().put(key, io.BytesIO(body), len(body), "application/pdf")
        created = naive(self.now - age)
        record = {
            "_id": ObjectId(doc_id),
            "user_id": user,
            "filename": key.split("/", 1)[1],
            "content_type": "application/pdf",
            "size_bytes": len(body),
            "minio_bucket": self.stores.objects().bucket,
            "minio_key": key,
            "status": status,
            "conversation_id": conversation_id,
            "created_at": created,
            "updated_at": created,
            "metadata": {},
        }
        record.update(extra or {})
        metadata_seeder(self.stores.metadata()).insert_raw("documents", [record])
        self.points(doc_id, session or f"upload_{doc_id}", age=age, count=chunks)
        if cache:
            cache_seeder(self.stores.cache()).seed(
                [CacheSeed(f"doc:text:{doc_id}".encode(), body, 3600)]
            )
        return doc_id

    def points(self, doc_id: str, session: str, *, age: timedelta, count: int = 3) -> None:
        created = (self.now - age).timestamp()
        vector_seeder(self.stores.vectors()).upsert(
            [
                VectorPoint(
                    str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}_{session}_{i}")),
                    [0.01 * (i + 1)] * DIM,
                    {
                        "session_id": session,
                        "document_id": doc_id,
                        "chunk_id": i,
                        "text": "fragmento",
                        "page": 1,
                        "created_at": created,
                        "metadata": {},
                    },
                )
                for i in range(count)
            ]
        )

    def session(
        self,
        *,
        idle: timedelta,
        documents: tuple[str, ...] = (),
        attached: tuple[str, ...] = (),
        user: str = "user-1",
    ) -> str:
        session_id = self._uuid()
        updated = naive(self.now - idle)
        metadata_seeder(self.stores.metadata()).insert_raw(
            "chat_sessions",
            [
                {
                    "_id": session_id,
                    "user_id": user,
                    "created_at": updated - timedelta(hours=1),
                    "updated_at": updated,
                    "documents": [{"doc_id": d, "filename": "x.pdf"} for d in documents],
                    "attached_file_ids": list(attached),
                }
            ],
        )
        return session_id

    def message(self, chat_id: str, file_ids: list[str]) -> None:
        metadata_seeder(self.stores.metadata()).insert_raw(
            "messages",
            [
                {
                    "_id": ObjectId(self._oid()),
                    "chat_id": chat_id,
                    "file_ids": file_ids,
                    "created_at": naive(self.now),
                }
            ],
        )

    def orphan_object(self) -> str:
        key = f"{self._uuid()}/huérfano.pdf"
        self.stores.objects().put(key, io.BytesIO(b"orphan" * 10), 60, "application/pdf")
        return key


@dataclass(frozen=True)
class State:
    """Everything in the four stores, for exact before/after comparisons."""

    documents: frozenset[str]
    objects: frozenset[str]
    points: frozenset[str]
    cache_keys: frozenset[bytes]
    cache_ttls: frozenset[tuple[bytes, bool]]


def snapshot(stores: Stores, redis_client: Any) -> State:
    """Read every store fully (small test data only)."""
    docs = {d.id for batch in stores.metadata().iter_documents(500) for d in batch}
    objects = {o.key for o in stores.objects().iter_objects()}
    points = {p.point_id for batch in stores.vectors().iter_points(500) for p in batch}
    keys = set(redis_client.scan_iter(count=1000))
    ttls = {(k, redis_client.ttl(k) >= 0) for k in keys}
    return State(
        frozenset(docs), frozenset(objects), frozenset(points), frozenset(keys), frozenset(ttls)
    )
