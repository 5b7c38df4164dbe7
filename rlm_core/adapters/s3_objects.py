"""ObjectStore over the minio client: MinIO or any S3 server, spoken to over HTTP."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, cast

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError

from rlm_core.clock import to_utc
from rlm_core.ports import MissingStoreError, ObjectInfo, StoreError

DELETE_BATCH = 1000
UNKNOWN_LENGTH_PART_SIZE = 8 * 1024 * 1024

# Failures a retry may fix; an S3Error (NoSuchBucket, AccessDenied) is an answer, not a failure.
_TRANSIENT = (HTTPError, ServerError, InvalidResponseError)


def connect_minio(
    endpoint: str,
    access_key: str,
    secret_key: str,
    secure: bool = False,
    timeout: float = 10.0,
    *,
    region: str | None = None,
    session_token: str | None = None,
    ca_bundle: Path | None = None,
) -> Minio:
    """A Minio client whose every call has a connect and read timeout and a bounded retry;
    TLS trusts `ca_bundle` (MINIO_CA_BUNDLE) when given, the public CAs otherwise."""
    host, secure = split_endpoint(endpoint, secure)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=str(ca_bundle) if ca_bundle is not None else certifi.where(),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
    )
    return Minio(
        host,
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        secure=secure,
        region=region,
        http_client=http,
    )


def tls_hint(exc: BaseException) -> str:
    """A pointer to MINIO_CA_BUNDLE when the failure is an untrusted server certificate."""
    if "CERTIFICATE_VERIFY_FAILED" not in str(exc):
        return ""
    return (
        "; the S3 endpoint's TLS certificate is not trusted: set MINIO_CA_BUNDLE to the PEM "
        "file of the CA that signed it"
    )


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """host:port and TLS flag from an endpoint; an explicit http:// or https:// wins."""
    value = endpoint.strip().rstrip("/")
    for scheme, scheme_secure in (("https://", True), ("http://", False)):
        if value.lower().startswith(scheme):
            return value[len(scheme) :], scheme_secure
    return value, secure


class S3ObjectStore:
    """Objects of one bucket of an S3 server (MinIO in production, moto in tests)."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.bucket = bucket
        self._client = client

    def ensure_bucket(self) -> None:
        """Create the bucket if missing."""
        with self._guard("ensure_bucket"):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    # Another process created it between the check and the create.
                    if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise

    def iter_objects(self) -> Iterator[ObjectInfo]:
        """Stream every object (the client pages 1000 keys per request); skip folder markers."""
        with self._guard("list_objects"):
            for obj in self._client.list_objects(self.bucket, recursive=True):
                if obj.is_dir or obj.object_name is None or obj.last_modified is None:
                    continue
                yield ObjectInfo(obj.object_name, obj.size or 0, to_utc(obj.last_modified))

    def put(self, key: str, stream: BinaryIO, length: int | None, content_type: str | None) -> int:
        """Upload a stream (multipart in 8 MiB parts when the length is unknown)."""
        counter = _CountingReader(stream)
        with self._guard("put_object"):
            self._client.put_object(
                self.bucket,
                key,
                cast(BinaryIO, counter),
                length=-1 if length is None else length,
                content_type=content_type or "application/octet-stream",
                part_size=UNKNOWN_LENGTH_PART_SIZE if length is None else 0,
            )
        return counter.count

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Delete keys, one request per 1000; return the keys that failed."""
        failed: list[str] = []
        for start in range(0, len(keys), DELETE_BATCH):
            failed.extend(self._remove_batch(keys[start : start + DELETE_BATCH]))
        return failed

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        with self._guard("stat_object"):
            try:
                self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code == "NoSuchKey":
                    self._require_bucket()
                    return False
                raise
        return True

    def sizes(self, keys: Sequence[str]) -> dict[str, int]:
        """The stored size of each existing key (one HEAD each; missing keys are absent)."""
        found: dict[str, int] = {}
        with self._guard("stat_object"):
            for key in keys:
                try:
                    found[key] = self._client.stat_object(self.bucket, key).size or 0
                except S3Error as exc:
                    if exc.code != "NoSuchKey":
                        raise
            if len(found) < len(keys):
                self._require_bucket()
        return found

    def _require_bucket(self) -> None:
        # A client with a region set skips the bucket lookup, and S3 then answers NoSuchKey for
        # a missing bucket: "absent" must not be taken for "already deleted".
        if not self._client.bucket_exists(self.bucket):
            raise MissingStoreError(
                f"MINIO_BUCKET: bucket {self.bucket!r} does not exist on the S3 server; "
                "allowed: the name of an existing bucket"
            )

    def close(self) -> None:
        """Nothing to release: the client (and its pool) belongs to the caller."""

    def _remove_batch(self, batch: Sequence[str]) -> list[str]:
        # remove_objects is lazy: nothing is sent until its error iterator is consumed.
        with self._guard("remove_objects"):
            errors = list(
                self._client.remove_objects(self.bucket, [DeleteObject(k) for k in batch])
            )
        if any(e.name is None for e in errors):
            return list(batch)  # the whole request was refused, not single keys
        return [e.name for e in errors if e.name is not None]

    @contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        try:
            yield
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                raise MissingStoreError(
                    f"MINIO_BUCKET: bucket {self.bucket!r} does not exist on the S3 server "
                    f"({operation}); allowed: the name of an existing bucket"
                ) from exc
            raise
        except _TRANSIENT as exc:
            raise StoreError(
                f"S3 {operation} on bucket {self.bucket!r} failed: {type(exc).__name__}: "
                f"{exc}{tls_hint(exc)}"
            ) from exc


class _CountingReader:
    """A read-only view of a stream that counts the bytes read through it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        """Read from the wrapped stream and count what came back."""
        data = self._stream.read(size)
        self.count += len(data)
        return data
