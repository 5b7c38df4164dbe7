"""Realistic synthetic data shaped like SPEC section 3, for the demo, tests and benchmarks."""

from __future__ import annotations

import hashlib
import io
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from rlm_core.ports import CacheSeed, VectorPoint
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from rlm_core.stores import Stores

if TYPE_CHECKING:
    from rlm_core.lifecycle import LifecycleManager

FILENAMES = (
    "Informe anual 2024.pdf",
    "contrato_servicios.pdf",
    "balance-q3.xlsx",
    "foto recibo.jpg",
    "presentación ventas.pptx",
    "manual_usuario.pdf",
    "notas reunión.docx",
    "factura-0042.pdf",
)
NOT_OURS_PREFIXES = ("blacklist:", "rate_limit:", "upload-idk:")


@dataclass
class DemoCounts:
    """How many items the seed wrote to each store."""

    users: int = 0
    documents: int = 0
    sessions: int = 0
    messages: int = 0
    points: int = 0
    objects: int = 0
    cache_keys: int = 0
    foreign_keys: int = 0
    malformed: int = 0
    reuploads: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        """Counts as a plain dict."""
        out = {k: v for k, v in self.__dict__.items() if isinstance(v, int)}
        out.update(self.extra)
        return out


@dataclass
class _Doc:
    id: str
    user_id: str
    filename: str
    content: bytes
    minio_key: str
    age: timedelta
    status: str
    legacy: bool = False
    session_id: str | None = None


class DemoWorld:
    """Generates users, documents, sessions, messages, chunks and cache keys at a scale."""

    def __init__(self, stores: Stores, now: datetime, *, scale: int = 1, seed: int = 0) -> None:
        if scale < 1:
            raise ValueError(f"scale: {scale!r} is not valid; allowed: a whole number >= 1")
        self.stores = stores
        self.now = now.replace(tzinfo=None)
        self.scale = scale
        self.rng = random.Random(seed)
        self.counts = DemoCounts()
        self.vector_size = 384
        self.hashed: list[_Doc] = []

    def seed(self, vector_size: int = 384) -> DemoCounts:
        """Write the whole data set through the store ports."""
        self.vector_size = vector_size
        self.stores.metadata().ensure_indexes()
        self.stores.vectors().ensure_collection()
        self.stores.objects().ensure_bucket()
        for index in range(20 * self.scale):
            self._seed_user(f"user-{index:04d}")
        self._seed_foreign_keys()
        self._seed_malformed()
        return self.counts

    def _seed_user(self, user_id: str) -> None:
        self.counts.users += 1
        docs = [self._document(user_id) for _ in range(self.rng.randint(8, 16))]
        docs += self._reuploads(docs)
        sessions = self._sessions(user_id, docs)
        self.hashed += [d for d in docs if not d.legacy][:1]
        self._write_documents(docs)
        metadata_seeder(self.stores.metadata()).insert_raw("chat_sessions", sessions)
        self._write_messages(sessions)
        self._write_points(docs)
        self._write_cache(docs)

    def _document(self, user_id: str) -> _Doc:
        name = self.rng.choice(FILENAMES)
        size = self.rng.randint(2_000, 40_000)
        content = self.rng.randbytes(size)
        age = timedelta(hours=self.rng.choice((1, 5, 20, 30, 60, 100, 200, 400, 700)))
        status = self.rng.choices(("ready", "processing", "failed"), (85, 8, 7))[0]
        doc_id = str(ObjectId())
        legacy = self.rng.random() < 0.3
        return _Doc(doc_id, user_id, name, content, f"{uuid.uuid4()}/{name}", age, status, legacy)

    def _reuploads(self, docs: list[_Doc]) -> list[_Doc]:
        # The system rlm replaces stored every re-upload again and dropped the hash, so legacy
        # data holds byte-identical copies under new ids and keys, without a file_hash.
        copies = []
        for doc in self.rng.sample(docs, k=min(2, len(docs))):
            copy = _Doc(
                str(ObjectId()),
                doc.user_id,
                doc.filename,
                doc.content,
                f"{uuid.uuid4()}/{doc.filename}",
                doc.age / 2,
                "ready",
                legacy=True,
            )
            copies.append(copy)
            self.counts.reuploads += 1
        return copies

    def _sessions(self, user_id: str, docs: list[_Doc]) -> list[dict[str, Any]]:
        sessions = []
        for _ in range(self.rng.randint(3, 6)):
            session_id = str(uuid.uuid4())
            idle = timedelta(hours=self.rng.choice((0.5, 3, 12, 30, 72, 300)))
            chosen = self.rng.sample(docs, k=min(len(docs), self.rng.randint(1, 3)))
            for doc in chosen:
                doc.session_id = doc.session_id or session_id
            sessions.append(
                {
                    "_id": session_id,
                    "user_id": user_id,
                    "created_at": self.now - idle - timedelta(hours=2),
                    "updated_at": self.now - idle,
                    "documents": [{"doc_id": d.id, "filename": d.filename} for d in chosen[:1]],
                    "attached_file_ids": [d.id for d in chosen[1:2]],
                    "title": "Consulta sobre documentos",
                }
            )
        self.counts.sessions += len(sessions)
        return sessions

    def _write_documents(self, docs: list[_Doc]) -> None:
        objects = self.stores.objects()
        records = []
        for doc in docs:
            objects.put(doc.minio_key, io.BytesIO(doc.content), len(doc.content), "application/pdf")
            records.append(self._record(doc))
        metadata_seeder(self.stores.metadata()).insert_raw("documents", records)
        self.counts.documents += len(records)
        self.counts.objects += len(records)

    def _record(self, doc: _Doc) -> dict[str, Any]:
        created = self.now - doc.age
        return {
            "_id": ObjectId(doc.id),
            "user_id": doc.user_id,
            "filename": doc.filename,
            "content_type": "application/pdf",
            "size_bytes": len(doc.content),
            "minio_bucket": self.stores.objects().bucket,
            "minio_key": doc.minio_key,
            "status": doc.status,
            "conversation_id": doc.session_id if self.rng.random() < 0.3 else None,
            "created_at": created,
            "updated_at": created + timedelta(minutes=2),
            # Legacy records lack the hash: the original ODM dropped it.
            "metadata": {} if doc.legacy else {"file_hash": _sha256(doc.content)},
        }

    def _write_messages(self, sessions: list[dict[str, Any]]) -> None:
        messages = []
        for session in sessions:
            files = [d["doc_id"] for d in session["documents"]] + session["attached_file_ids"]
            for turn in range(self.rng.randint(2, 6)):
                messages.append(
                    {
                        "_id": ObjectId(),
                        "chat_id": session["_id"],
                        "role": "user" if turn % 2 == 0 else "assistant",
                        "content": "¿Qué dice el documento sobre los plazos?",
                        "file_ids": files[:1] if turn == 0 else [],
                        "created_at": session["updated_at"] - timedelta(minutes=10 - turn),
                    }
                )
        metadata_seeder(self.stores.metadata()).insert_raw("messages", messages)
        self.counts.messages += len(messages)

    def _write_points(self, docs: list[_Doc]) -> None:
        points = [p for doc in docs for p in self._chunks(doc)]
        vector_seeder(self.stores.vectors()).upsert(points)
        self.counts.points += len(points)

    def _chunks(self, doc: _Doc) -> Iterator[VectorPoint]:
        session = doc.session_id or f"upload_{doc.id}"
        created = (self.now - doc.age + timedelta(minutes=1)).timestamp()
        for chunk in range(self.rng.randint(5, 11)):
            yield VectorPoint(
                point_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc.id}_{chunk}")),
                vector=[self.rng.uniform(-1, 1) for _ in range(self.vector_size)],
                payload={
                    "session_id": session,
                    "document_id": doc.id,
                    "chunk_id": chunk,
                    "text": f"Fragmento {chunk} de {doc.filename}. " * 8,
                    "page": chunk // 3 + 1,
                    "created_at": created,
                    "metadata": {"filename": doc.filename, "user_id": doc.user_id},
                },
            )

    def _write_cache(self, docs: list[_Doc]) -> None:
        seeds = []
        for doc in docs:
            persistent = self.rng.random() < 0.5
            idle = self.rng.choice((0, 600, 7200, 86400))
            text = f"Texto extraído de {doc.filename}. ".encode() * 40
            seeds.append(
                CacheSeed(f"doc:text:{doc.id}".encode(), text, None if persistent else 3600, idle)
            )
        for index in range(len(docs) // 2):
            key = f"cache:query:{doc.user_id}:{index}".encode()
            seeds.append(CacheSeed(key, b"[0.1, 0.2]", None, self.rng.choice((0, 7200))))
        cache_seeder(self.stores.cache()).seed(seeds)
        self.counts.cache_keys += len(seeds)

    def _seed_foreign_keys(self) -> None:
        seeds = [
            CacheSeed(f"{prefix}{index}".encode(), b"x", None, 86400)
            for prefix in NOT_OURS_PREFIXES
            for index in range(5 * self.scale)
        ]
        cache_seeder(self.stores.cache()).seed(seeds)
        self.counts.foreign_keys += len(seeds)

    def _seed_malformed(self) -> None:
        metadata_seeder(self.stores.metadata()).insert_raw(
            "documents",
            [
                {
                    "_id": ObjectId(),
                    "user_id": "user-0000",
                    "filename": "roto.pdf",
                    "created_at": "2024-01-01",
                    "status": "ready",
                    "metadata": {},
                },
                {
                    "_id": ObjectId(),
                    "filename": "sin_usuario.pdf",
                    "status": "ready",
                    "created_at": self.now - timedelta(days=60),
                    "metadata": {},
                },
            ],
        )
        vector_seeder(self.stores.vectors()).upsert(
            [
                VectorPoint(
                    str(uuid.uuid4()),
                    [0.0] * (self.vector_size - 1) + [1.0],
                    {"document_id": "missing-session", "text": "sin sesión"},
                ),
                VectorPoint(
                    str(uuid.uuid4()),
                    [1.0] + [0.0] * (self.vector_size - 1),
                    {"session_id": 42, "document_id": None, "created_at": "ayer"},
                ),
            ]
        )
        metadata_seeder(self.stores.metadata()).insert_raw(
            "messages",
            [
                {
                    "_id": ObjectId(),
                    "chat_id": None,
                    "file_ids": "not-a-list",
                    "created_at": self.now,
                },
            ],
        )
        self.counts.malformed += 5


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def seed_demo(manager: LifecycleManager, *, scale: int = 1, seed: int = 0) -> dict[str, int]:
    """Fill the manager's stores with realistic data, then re-upload a few files through dedup."""
    world = DemoWorld(manager.stores, manager.clock.now(), scale=scale, seed=seed)
    counts = world.seed(manager.settings.qdrant_vector_size)
    duplicates = 0
    for doc in world.hashed[:5]:
        result = manager.ingest(doc.user_id, doc.filename, io.BytesIO(doc.content))
        duplicates += int(result.duplicate)
    counts.extra["dedup_hits"] = duplicates
    return counts.as_dict()
