"""Upload with per-user deduplication: SHA-256 while streaming, a unique index decides races."""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import BinaryIO

from rlm_core.clock import Clock
from rlm_core.domain import IngestResult
from rlm_core.events import DUPLICATE_DETECTED, log_event
from rlm_core.ports import DuplicateDocumentError, MetadataStore, NewDocument, ObjectStore

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


class HashingReader:
    """A file-like wrapper that hashes and counts every byte read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        """Read from the wrapped stream, hashing on the way."""
        chunk = self._stream.read(size)
        if chunk:
            self._hash.update(chunk)
            self.size += len(chunk)
        return chunk

    def hexdigest(self) -> str:
        """Hex SHA-256 of everything read so far."""
        return self._hash.hexdigest()


def safe_filename(filename: str) -> str:
    """The last path segment with control characters and separators removed."""
    name = _UNSAFE.sub("_", filename.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if name in {"", ".", ".."}:
        raise ValueError(f"filename: {filename!r} is not valid; allowed: a non-empty file name")
    return name[:255]


def ingest(
    objects: ObjectStore,
    metadata: MetadataStore,
    clock: Clock,
    *,
    user_id: str,
    filename: str,
    stream: BinaryIO,
    content_type: str | None = None,
) -> IngestResult:
    """Store a new upload or resolve it to the user's existing copy of the same bytes."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise ValueError(f"user_id: {user_id!r} is not valid; allowed: a non-empty string")
    name = safe_filename(filename)
    # A fresh unique key is provisional until the unique index accepts the document: the loser
    # of a race, or a duplicate, removes it; a crash leaves an orphan the object sweep reclaims.
    key = f"{uuid.uuid4()}/{name}"
    reader = HashingReader(stream)
    objects.put(key, reader, None, content_type or DEFAULT_CONTENT_TYPE)  # type: ignore[arg-type]
    file_hash, size = reader.hexdigest(), reader.size
    existing = metadata.find_by_hash(user_id, file_hash)
    if existing is None:
        doc = NewDocument(
            user_id=user_id,
            filename=name,
            content_type=content_type or DEFAULT_CONTENT_TYPE,
            size_bytes=size,
            minio_bucket=objects.bucket,
            minio_key=key,
            file_hash=file_hash,
            status="processing",
            created_at=clock.now(),
        )
        try:
            return IngestResult(metadata.insert_document(doc), False, file_hash, size, key)
        except DuplicateDocumentError:
            pass
        except BaseException:
            objects.remove([key])
            raise
    return _resolve_duplicate(objects, metadata, clock, (user_id, name, key, file_hash, size))


def _resolve_duplicate(
    objects: ObjectStore,
    metadata: MetadataStore,
    clock: Clock,
    upload: tuple[str, str, str, str, int],
) -> IngestResult:
    user_id, name, key, file_hash, size = upload
    existing = metadata.find_by_hash(user_id, file_hash)
    if existing is None:
        objects.remove([key])
        raise RuntimeError(f"duplicate of {file_hash} for user {user_id} vanished during ingest")
    ours = existing.minio_bucket in (None, objects.bucket)
    if ours and not (existing.minio_key and objects.exists(existing.minio_key)):
        # An interrupted cascade deleted this record's file but not the record yet: the new
        # upload repairs it instead of being thrown away, and the app must process it again.
        metadata.relink_document(existing.id, key, size, clock.now())
        return IngestResult(existing.id, False, file_hash, size, key)
    objects.remove([key])
    # Touching keeps a re-uploaded document from expiring an hour after the user re-sent it.
    metadata.touch_document(existing.id, clock.now())
    log_event(
        DUPLICATE_DETECTED,
        user_id=user_id,
        filename=name,
        file_hash=file_hash,
        existing_document_id=existing.id,
        size_bytes=size,
    )
    return IngestResult(existing.id, True, file_hash, size, existing.minio_key or "")
