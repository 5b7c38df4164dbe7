"""ObjectStore in memory: S3 buckets of bytes stamped by an injected clock, and the adapter."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from rlm_core.clock import Clock, SystemClock
from rlm_core.ports import MissingStoreError, ObjectInfo

LIST_PAGE = 1000
READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    """An object's bytes and the time the server stamped on it."""

    data: bytes
    last_modified: datetime


class MemoryS3:
    """The buckets of one S3 server; last_modified comes from its clock, not the caller's."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.lock = threading.RLock()
        self.buckets: dict[str, dict[str, StoredObject]] = {}


class MemoryObjects:
    """Objects of one bucket of a MemoryS3.

    A missing bucket is a MissingStoreError naming MINIO_BUCKET, as on S3. Keys that could leave
    a bucket folder ('.', '..' or empty segments, a leading '/', NUL, backslash) are refused the
    way DiskObjectStore refuses them, so data the disk store cannot hold fails here too.
    """

    def __init__(self, client: MemoryS3, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    def ensure_bucket(self) -> None:
        """Create the bucket if missing."""
        with self._client.lock:
            self._client.buckets.setdefault(self.bucket, {})

    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Stream every object in key order, one listing page read at a time."""
        after = ""
        while True:
            with self._client.lock:
                stored = self._objects()
                page = sorted(k for k in stored if k > after)[:LIST_PAGE]
                infos = [_info(k, stored[k]) for k in page]
            yield from infos
            if len(page) < LIST_PAGE:
                return
            after = page[-1]

    def put(self, key: str, stream: BinaryIO, length: int | None, content_type: str | None) -> int:
        """Read the whole stream (or exactly `length` bytes), then store it in one step."""
        _check_key(key)
        data = _read(stream, length)
        with self._client.lock:
            self._objects()[key] = StoredObject(data, self._client.clock.now())
        return len(data)

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Delete objects (missing ones are fine); return the keys refused as unsafe."""
        failed: list[str] = []
        with self._client.lock:
            stored = self._objects()
            for key in keys:
                try:
                    _check_key(key)
                except ValueError:
                    failed.append(key)
                    continue
                stored.pop(key, None)
        return failed

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        _check_key(key)
        with self._client.lock:
            return key in self._objects()

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        """The stored size of each existing key (missing and unsafe keys are absent)."""
        with self._client.lock:
            stored = self._objects()
            return {key: len(stored[key].data) for key in keys if key in stored}

    def close(self) -> None:
        """Nothing to release: the buckets outlive their adapters, as a server's do."""

    def _objects(self) -> dict[str, StoredObject]:
        found = self._client.buckets.get(self.bucket)
        if found is None:
            raise MissingStoreError(
                f"MINIO_BUCKET: bucket {self.bucket!r} does not exist on the S3 server; "
                "allowed: the name of an existing bucket"
            )
        return found


def _info(key: str, stored: StoredObject) -> ObjectInfo:
    return ObjectInfo(key, len(stored.data), stored.last_modified)


def _check_key(key: str) -> None:
    """Refuse keys DiskObjectStore refuses: they could leave the bucket folder."""
    parts = key.split("/")
    if "\x00" in key or "\\" in key or any(p in {"", ".", ".."} for p in parts):
        raise ValueError(
            f"object key {key!r} is not allowed: no '.', '..' or empty path segments, "
            "no leading '/', no NUL or backslash"
        )


def _read(stream: BinaryIO, length: int | None) -> bytes:
    """All of the stream, or exactly `length` bytes (a shorter stream is an OSError)."""
    chunks: list[bytes] = []
    read = 0
    while length is None or read < length:
        chunk = stream.read(READ_CHUNK if length is None else min(READ_CHUNK, length - read))
        if not chunk:
            break
        chunks.append(chunk)
        read += len(chunk)
    if length is not None and read != length:
        raise OSError(f"stream ended after {read} bytes; expected {length}")
    return b"".join(chunks)
