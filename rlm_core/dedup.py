"""Upload with per-user deduplication: SHA-256 while streaming, a unique index decides races."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from rlm_core.clock import Clock
from rlm_core.domain import IngestResult
from rlm_core.events import DUPLICATE_DETECTED, log_event
from rlm_core.ports import (
    DocumentRecord,
    DuplicateDocumentError,
    MetadataStore,
    NewDocument,
    ObjectStore,
    StoreError,
    Touch,
)

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Attempts to settle an upload against records that other writers keep changing.
MAX_ATTEMPTS = 5
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
    # A fresh unique key is provisional until a document names it: the loser of a race, or a
    # duplicate, removes it; a crash leaves an orphan the object sweep reclaims.
    key = f"{uuid.uuid4()}/{name}"
    reader = HashingReader(stream)
    objects.put(key, reader, None, content_type or DEFAULT_CONTENT_TYPE)  # type: ignore[arg-type]
    upload = _Upload(user_id, name, key, reader.hexdigest(), reader.size, content_type)
    try:
        for _ in range(MAX_ATTEMPTS):
            result = _settle(objects, metadata, clock, upload)
            if result is not None:
                return result
    except BaseException:
        objects.remove([key])
        raise
    objects.remove([key])
    raise StoreError(
        f"ingest of {upload.file_hash} for user {user_id!r} kept racing with other writers; retry"
    )


@dataclass(frozen=True)
class _Upload:
    user_id: str
    name: str
    key: str
    file_hash: str
    size: int
    content_type: str | None


def _settle(
    objects: ObjectStore, metadata: MetadataStore, clock: Clock, upload: _Upload
) -> IngestResult | None:
    """One attempt: insert, or resolve to the existing record; None when the record changed
    under us (deleted by a cleanup, or inserted by a racing upload) and the caller retries."""
    existing = metadata.find_by_hash(upload.user_id, upload.file_hash)
    if existing is None:
        try:
            doc_id = metadata.insert_document(_new_document(objects, clock, upload))
        except DuplicateDocumentError:
            return None  # a concurrent upload of the same bytes won: resolve to it
        return IngestResult(doc_id, False, upload.file_hash, upload.size, upload.key)
    if existing.status == "failed":
        # SPEC 5: a failed document is not a duplicate: it is reset for reprocessing.
        return _relink(metadata, clock, existing, upload, "uploading")
    ours = existing.minio_bucket in (None, objects.bucket)
    if ours and not (existing.minio_key and objects.exists(existing.minio_key)):
        # An interrupted cascade deleted this record's file but not the record yet: the new
        # upload repairs it instead of being thrown away, and the app must process it again.
        return _relink(metadata, clock, existing, upload, "processing")
    # Touching keeps a re-uploaded document from expiring an hour after the user re-sent it. It
    # is refused while a cleanup holds a claim on the record: then the record is taken back
    # and relinked to this upload, never answered "duplicate" while it is going away.
    touch = metadata.touch_document(existing, clock.now())
    if touch is Touch.GONE:
        return None
    if touch is Touch.CLAIMED:
        return _relink(metadata, clock, existing, upload, "processing")
    objects.remove([upload.key])
    log_event(
        DUPLICATE_DETECTED,
        user_id=upload.user_id,
        filename=upload.name,
        file_hash=upload.file_hash,
        existing_document_id=existing.id,
        size_bytes=upload.size,
    )
    return IngestResult(existing.id, True, upload.file_hash, upload.size, existing.minio_key or "")


def _relink(
    metadata: MetadataStore, clock: Clock, existing: DocumentRecord, upload: _Upload, status: str
) -> IngestResult | None:
    if not metadata.relink_document(existing, upload.key, upload.size, clock.now(), status):
        return None
    return IngestResult(existing.id, False, upload.file_hash, upload.size, upload.key)


def _new_document(objects: ObjectStore, clock: Clock, upload: _Upload) -> NewDocument:
    return NewDocument(
        user_id=upload.user_id,
        filename=upload.name,
        content_type=upload.content_type or DEFAULT_CONTENT_TYPE,
        size_bytes=upload.size,
        minio_bucket=objects.bucket,
        minio_key=upload.key,
        file_hash=upload.file_hash,
        status="processing",
        created_at=clock.now(),
    )
