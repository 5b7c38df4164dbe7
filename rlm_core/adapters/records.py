"""Raw Mongo-shaped records and the domain records read from them, shared by the metadata adapters.

The RAG app's `documents`, `chat_sessions` and `messages` records as pymongo returns them: the Mongo
adapter reads them from a server, the embedded SQLite store from its own encoding of the same
shapes. Neither adapter imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bson import ObjectId

from rlm_core.clock import to_utc
from rlm_core.ports import DocumentRecord, MessageRecord, NewDocument, SessionRecord

IN_BATCH = 1000
# Object keys per reference query: the orphan sweep reads references for 10 listing pages at once.
KEY_BATCH = 10_000
LOGICAL_COLLECTIONS = ("documents", "chat_sessions", "messages")

Raw = dict[str, Any]
# rlm's own field on a document record: the run id of the cleanup that claimed it for expiry.
CLAIM_FIELD = "rlm_claim"

# (field, expected type, required). Missing optional fields read as None; policy decides.
_FIELDS: tuple[tuple[str, type, bool], ...] = (
    ("user_id", str, True),
    ("status", str, False),
    ("created_at", datetime, True),
    ("updated_at", datetime, False),
    ("minio_key", str, False),
    ("size_bytes", int, False),
    ("conversation_id", str, False),
)


def document_record(raw: Mapping[str, Any]) -> DocumentRecord:
    """The lifecycle view of a raw `documents` record; never raises, names what is wrong."""
    problems: list[str] = []
    doc_id = _id_text(raw.get("_id"), problems)
    values = {name: _typed(raw, name, kind, required, problems) for name, kind, required in _FIELDS}
    bucket = _bucket(raw.get("minio_bucket"), problems)
    file_hash = _file_hash(raw.get("metadata"), problems)
    created, updated = values["created_at"], values["updated_at"]
    claim = raw.get(CLAIM_FIELD)
    return DocumentRecord(
        id=doc_id,
        user_id=values["user_id"],
        status=values["status"],
        created_at=to_utc(created) if created is not None else None,
        updated_at=to_utc(updated) if updated is not None else None,
        minio_bucket=bucket,
        minio_key=values["minio_key"],
        size_bytes=values["size_bytes"],
        conversation_id=values["conversation_id"],
        file_hash=file_hash,
        problem="; ".join(problems) or None,
        oid=isinstance(raw.get("_id"), ObjectId),
        claim=claim if isinstance(claim, str) else None,
    )


def _bucket(value: Any, problems: list[str]) -> str | None:
    # SPEC 4.1 (5): a record without a usable bucket names its key in our bucket for protection
    # (see _names_our_bucket) and is never expired on a guess.
    if isinstance(value, str) and value:
        return value
    shown = '""' if value == "" else _type_name(value)
    problems.append(f"minio_bucket is {shown}, expected a bucket name")
    return None


def session_record(raw: Mapping[str, Any]) -> SessionRecord | None:
    """A session by its exact `_id` and owner; None when `_id` is neither an ObjectId nor a
    string (it cannot be named exactly)."""
    session_id = id_text(raw.get("_id"))
    if session_id is None:
        return None
    owner = raw.get("user_id")
    oid = isinstance(raw.get("_id"), ObjectId)
    return SessionRecord(session_id, oid, owner if isinstance(owner, str) else None)


def message_record(raw: Mapping[str, Any]) -> MessageRecord | None:
    """A message by its exact `_id` and the session its chat_id names; None when either
    cannot be read as an id."""
    message_id, chat_id = id_text(raw.get("_id")), id_text(raw.get("chat_id"))
    if message_id is None or chat_id is None:
        return None
    return MessageRecord(message_id, isinstance(raw.get("_id"), ObjectId), chat_id)


def id_text(value: Any) -> str | None:
    """The string form of an id held as a string or an ObjectId; None for anything else."""
    if isinstance(value, ObjectId):
        return str(value)
    return value if isinstance(value, str) and value else None


def _id_text(value: Any, problems: list[str]) -> str:
    if isinstance(value, ObjectId | str):
        return str(value)
    problems.append(f"_id is {_type_name(value)}, expected ObjectId or str")
    return "" if value is None else str(value)


def _typed(
    raw: Mapping[str, Any], name: str, kind: type, required: bool, problems: list[str]
) -> Any:
    value = raw.get(name)
    if value is None:
        if required:
            problems.append(f"{name} is missing")
        return None
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # drivers of other languages write whole numbers as doubles
    if name == "conversation_id" and isinstance(value, ObjectId):
        return str(value)  # it names a session, whose _id may be an ObjectId
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    problems.append(f"{name} is {_type_name(value)}, expected {kind.__name__}")
    return None


def _file_hash(metadata: Any, problems: list[str]) -> str | None:
    # A non-object metadata holds no hash; the projection on metadata.file_hash drops it anyway.
    if not isinstance(metadata, Mapping):
        return None
    value = metadata.get("file_hash")
    if value is None or isinstance(value, str):
        return value
    problems.append(f"metadata.file_hash is {_type_name(value)}, expected str")
    return None


def _type_name(value: Any) -> str:
    return "missing" if value is None else type(value).__name__


def new_document_body(doc: NewDocument) -> Raw:
    """The `documents` record ingest writes, shaped as the RAG app writes it (no _id yet)."""
    created = naive_utc(doc.created_at)
    return {
        "user_id": doc.user_id,
        "filename": doc.filename,
        "content_type": doc.content_type,
        "size_bytes": doc.size_bytes,
        "minio_bucket": doc.minio_bucket,
        "minio_key": doc.minio_key,
        "status": doc.status,
        "conversation_id": None,
        "created_at": created,
        "updated_at": created,
        "metadata": {"file_hash": doc.file_hash},
    }


def naive_utc(value: datetime) -> datetime:
    """The naive UTC datetime pymongo stores and returns."""
    return to_utc(value).replace(tzinfo=None)
