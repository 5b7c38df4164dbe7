"""ObjectStore on the local disk: the embedded stand-in for MinIO, one file per object."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from rlm_core.ports import ObjectInfo

TEMP_PREFIX = ".rlm-tmp-"
CHUNK_BYTES = 1024 * 1024
_MKDIR_ATTEMPTS = 5


class DiskObjectStore:
    """Objects of one bucket as files under root/bucket/<key>, written atomically."""

    def __init__(self, root: Path, bucket: str) -> None:
        if not bucket or bucket in {".", ".."} or any(c in bucket for c in "/\\\x00"):
            raise ValueError(f"bucket {bucket!r} is not a valid folder name")
        self.bucket = bucket
        self._bucket_dir = Path(root) / bucket

    def ensure_bucket(self) -> None:
        """Create the bucket folder if missing."""
        self._bucket_dir.mkdir(parents=True, exist_ok=True)

    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Stream every object in S3 key order, skipping unfinished uploads."""
        if self._bucket_dir.is_dir():
            yield from self._walk(str(self._bucket_dir), "")

    def put(self, key: str, stream: BinaryIO, length: int | None, content_type: str | None) -> int:
        """Write the stream to a temp file beside the target, then rename it into place."""
        target = self._path(key)
        fd, tmp_name = self._temp_file(target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                written = _copy(stream, out, length)
                out.flush()
                os.fsync(out.fileno())
            Path(tmp_name).replace(target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return written

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Delete objects (missing ones are fine); return the keys that could not go."""
        failed: list[str] = []
        for key in keys:
            try:
                path = self._path(key)
                path.unlink(missing_ok=True)
            except IsADirectoryError:
                continue  # a folder of other keys, not an object of this name
            except (ValueError, OSError):
                failed.append(key)
                continue
            self._prune(path.parent)
        return failed

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        return self._path(key).is_file()

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        """The stored size of each existing key (missing keys are absent)."""
        found: dict[str, int] = {}
        for key in keys:
            try:
                path = self._path(key)
                if path.is_file():
                    found[key] = path.stat().st_size
            except (ValueError, OSError):
                continue
        return found

    def close(self) -> None:
        """Nothing to release."""

    def _path(self, key: str) -> Path:
        """The file of a key; raises ValueError for keys that could leave the bucket folder."""
        parts = key.split("/")
        if "\x00" in key or "\\" in key or any(p in {"", ".", ".."} for p in parts):
            raise ValueError(
                f"object key {key!r} is not allowed on disk: no '.', '..' or empty path "
                "segments, no leading '/', no NUL or backslash"
            )
        if any(p.startswith(TEMP_PREFIX) for p in parts):
            raise ValueError(f"object key {key!r} uses the reserved prefix {TEMP_PREFIX!r}")
        return self._bucket_dir.joinpath(*parts)

    def _temp_file(self, folder: Path) -> tuple[int, str]:
        # A concurrent remove may prune the folder between mkdir and mkstemp: try again.
        for _ in range(_MKDIR_ATTEMPTS - 1):
            folder.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
            except FileNotFoundError:
                continue
        folder.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)

    def _prune(self, folder: Path) -> None:
        """Remove empty folders from `folder` up to, not including, the bucket folder."""
        while folder != self._bucket_dir and self._bucket_dir in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or already gone): parents are not empty either
            folder = folder.parent

    def _walk(self, folder: str, prefix: str) -> Iterator[ObjectInfo]:
        with os.scandir(folder) as scan:
            # Sorting a folder as "name/" gives S3's key order ("a.txt" before "a/b").
            entries = sorted(
                (e for e in scan if not e.name.startswith(TEMP_PREFIX)),
                key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name,
            )
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, f"{prefix}{entry.name}/")
            elif entry.is_file(follow_symlinks=False):
                yield _info(entry, prefix)


def _info(entry: os.DirEntry[str], prefix: str) -> ObjectInfo:
    stat = entry.stat(follow_symlinks=False)
    modified = datetime.fromtimestamp(stat.st_mtime, UTC)
    return ObjectInfo(prefix + entry.name, stat.st_size, modified)


def _copy(stream: BinaryIO, out: BinaryIO, length: int | None) -> int:
    """Copy in 1 MiB chunks: all of the stream, or exactly `length` bytes.

    Each chunk is written by a helper thread while the next one is read (and, for an upload,
    hashed): both release the GIL, so reading and writing overlap instead of taking turns.
    At most one write is in flight, so memory stays two chunks whatever the size."""
    written = 0
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future[int] | None = None
        while length is None or written < length:
            want = CHUNK_BYTES if length is None else min(CHUNK_BYTES, length - written)
            chunk = stream.read(want)
            if not chunk:
                break
            if pending is not None:
                pending.result()  # a failed write stops the copy here
            pending = writer.submit(out.write, chunk)
            written += len(chunk)
        if pending is not None:
            pending.result()
    if length is not None and written != length:
        raise OSError(f"stream ended after {written} bytes; expected {length}")
    return written
