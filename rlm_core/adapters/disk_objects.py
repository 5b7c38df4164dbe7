"""ObjectStore on the local disk: the embedded stand-in for MinIO, one file per object."""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from rlm_core.ports import ObjectInfo

TEMP_PREFIX = ".rlm-tmp-"
CHUNK_BYTES = 1024 * 1024
# While copying, the written bytes are handed to the disk every this many bytes, so the disk
# writes them while the next ones are read and hashed, and the final fsync has little left.
WRITEBACK_BYTES = 16 * CHUNK_BYTES
_MKDIR_ATTEMPTS = 5
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, no wait


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
    At most one write is in flight, so memory stays two chunks whatever the size. Every
    WRITEBACK_BYTES the helper also starts the disk writing what it wrote (no wait): the caller's
    fsync still makes the bytes durable, it just finds most of them already on disk."""
    written = 0
    writer = _Writer(out)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future[None] | None = None
        while length is None or written < length:
            want = CHUNK_BYTES if length is None else min(CHUNK_BYTES, length - written)
            chunk = stream.read(want)
            if not chunk:
                break
            if pending is not None:
                pending.result()  # a failed write stops the copy here
            pending = pool.submit(writer.write, chunk)
            written += len(chunk)
        if pending is not None:
            pending.result()
    if length is not None and written != length:
        raise OSError(f"stream ended after {written} bytes; expected {length}")
    return written


class _Writer:
    """Writes chunks to `out` and starts the writeback of every WRITEBACK_BYTES written."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._written = 0
        self._handed = 0  # bytes whose writeback has been started

    def write(self, chunk: bytes) -> None:
        self._out.write(chunk)
        self._written += len(chunk)
        if self._written - self._handed >= WRITEBACK_BYTES:
            self._out.flush()
            start_writeback(self._out.fileno(), self._handed, self._written - self._handed)
            self._handed = self._written


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None  # not Linux (glibc): no early writeback, the final fsync does it all
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Ask the kernel to start writing a range of the file to disk, without waiting; whether it
    was asked. Only a head start: an error here (or no such call) changes nothing, as the fsync
    that follows writes whatever is left and reports any error itself."""
    if _sync_file_range is None:
        return False
    return _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) == 0
