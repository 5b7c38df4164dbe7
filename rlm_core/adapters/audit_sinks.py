"""Audit sinks that outlive the worker: objects under RLM_AUDIT_PREFIX in our bucket, or the
`rlm_audit` collection of the RAG database."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from pymongo import ReadPreference, WriteConcern
from pymongo.errors import ConnectionFailure, ExecutionTimeout, WriteConcernError
from urllib3.exceptions import HTTPError

from rlm_core.adapters.records import naive_utc
from rlm_core.adapters.s3_objects import DELETE_BATCH, S3ObjectStore, tls_hint
from rlm_core.clock import to_utc
from rlm_core.ports import StoreError

if TYPE_CHECKING:
    from minio import Minio
    from pymongo.collection import Collection
    from pymongo.database import Database

    from rlm_core.settings import Settings

AUDIT_COLLECTION = "rlm_audit"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class S3AuditSink:
    """One object per `write` under `<prefix><YYYY-MM-DD>/` of our bucket; durable once the PUT
    has been answered. The orphan sweep never lists the prefix (cleanup/objects.py)."""

    def __init__(self, client: Minio, bucket: str, prefix: str) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.location = f"s3://{bucket}/{prefix}"
        # A retried op reuses its run id: the token keeps its objects from overwriting the first.
        self._token = uuid.uuid4().hex[:8]
        self._seq = 0

    def ensure(self) -> None:
        """Create the bucket if missing (the prefix needs nothing)."""
        S3ObjectStore(self._client, self.bucket).ensure_bucket()

    def write(self, run_id: str, at: datetime, lines: list[dict[str, Any]]) -> None:
        """PUT the lines as one JSON-lines object; returns once the server has stored it."""
        self._seq += 1
        name = f"{_UNSAFE.sub('_', run_id)[:80]}-{self._token}-{self._seq:06d}.jsonl"
        key = f"{self.prefix}{to_utc(at):%Y-%m-%d}/{name}"
        body = "".join(json.dumps(line, default=str) + "\n" for line in lines).encode()
        with self._guard("put_object"):
            self._client.put_object(
                self.bucket,
                key,
                io.BytesIO(body),
                length=len(body),
                content_type="application/x-ndjson",
            )

    def read(self, since: datetime | None, run_id: str | None) -> Iterator[dict[str, Any]]:
        """Lines of the day folders from since's day on, filtered by start time and run."""
        from rlm_core.audit import is_selected

        for day, folder in self._days():
            if since is not None and day < to_utc(since).date():
                continue
            for key in self._keys(folder):
                yield from (line for line in self._lines(key) if is_selected(line, since, run_id))

    def prune(self, before: datetime) -> int:
        """Delete the day folders older than before's day; return how many objects went."""
        cutoff = to_utc(before).date()
        removed = 0
        for day, folder in self._days():
            if day >= cutoff:
                continue
            keys = list(self._keys(folder))
            for start in range(0, len(keys), DELETE_BATCH):
                batch = [DeleteObject(k) for k in keys[start : start + DELETE_BATCH]]
                with self._guard("remove_objects"):
                    errors = list(self._client.remove_objects(self.bucket, batch))
                removed += len(batch) - len(errors)
        return removed

    def close(self) -> None:
        """Nothing to release."""

    def _days(self) -> list[tuple[date, str]]:
        with self._guard("list_objects"):
            listed = list(self._client.list_objects(self.bucket, prefix=self.prefix))
        days = []
        for obj in listed:
            name = obj.object_name or ""
            try:
                day = date.fromisoformat(name[len(self.prefix) :].rstrip("/"))
            except ValueError:
                continue  # not one of our day folders: never read, never pruned
            days.append((day, name))
        return sorted(days)

    def _keys(self, folder: str) -> Iterator[str]:
        with self._guard("list_objects"):
            for obj in self._client.list_objects(self.bucket, prefix=folder, recursive=True):
                if obj.object_name and not obj.is_dir:
                    yield obj.object_name

    def _lines(self, key: str) -> list[dict[str, Any]]:
        with self._guard("get_object"):
            response = self._client.get_object(self.bucket, key)
            try:
                text = response.read().decode()
            finally:
                response.close()
                response.release_conn()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    @contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (S3Error, HTTPError, ServerError, InvalidResponseError) as exc:
            raise StoreError(
                f"audit S3 {operation} in {self.location} failed: {type(exc).__name__}: "
                f"{exc}{tls_hint(exc)}"
            ) from exc


class MongoAuditSink:
    """Entries in `rlm_audit`, inserted with write concern majority + journal: acknowledged
    means on disk on a majority of the replica set before the delete goes ahead."""

    def __init__(
        self, db: Database[Any], collection: str = AUDIT_COLLECTION, owns_client: bool = False
    ) -> None:
        self._db = db
        self._owns_client = owns_client
        self._collection: Collection[Any] = db.get_collection(
            collection,
            write_concern=WriteConcern(w="majority", j=True),
            read_preference=ReadPreference.PRIMARY,
        )
        self.location = f"mongodb:{db.name}.{collection}"

    def ensure(self) -> None:
        """Index the start time (reads by date, pruning) and the run id."""
        with self._guard("create_index"):
            self._collection.create_index([("at", 1)], name="rlm_audit_at")
            self._collection.create_index([("run_id", 1), ("at", 1)], name="rlm_audit_run")

    def write(self, run_id: str, at: datetime, lines: list[dict[str, Any]]) -> None:
        """Insert one entry per line; returns once a majority has journaled them."""
        started = naive_utc(at)
        with self._guard("insert"):
            self._collection.insert_many(
                [{"run_id": run_id, "at": started, "line": line} for line in lines], ordered=True
            )

    def read(self, since: datetime | None, run_id: str | None) -> Iterator[dict[str, Any]]:
        """Lines of runs started at or after since, of one run if given, oldest first."""
        query: dict[str, Any] = {}
        if since is not None:
            query["at"] = {"$gte": naive_utc(since)}
        if run_id is not None:
            query["run_id"] = run_id
        with self._guard("find"):
            for doc in self._collection.find(query, {"line": 1}).sort([("at", 1), ("_id", 1)]):
                yield dict(doc["line"])

    def prune(self, before: datetime) -> int:
        """Delete the entries of runs started before before's day."""
        cutoff = datetime.combine(to_utc(before).date(), time(), UTC)
        with self._guard("delete"):
            return self._collection.delete_many({"at": {"$lt": naive_utc(cutoff)}}).deleted_count

    def close(self) -> None:
        """Close the client if this sink opened it."""
        if self._owns_client:
            self._db.client.close()

    @contextmanager
    def _guard(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (ConnectionFailure, ExecutionTimeout, WriteConcernError) as exc:
            raise StoreError(
                f"audit MongoDB {operation} in {self.location} failed: {type(exc).__name__}: {exc}"
            ) from exc


def s3_audit_sink(settings: Settings) -> S3AuditSink:
    """The S3 sink on MINIO_ENDPOINT, in MINIO_BUCKET under RLM_AUDIT_PREFIX."""
    from rlm_core.stores import minio_client

    return S3AuditSink(minio_client(settings), settings.minio_bucket, settings.audit_prefix)


def mongo_audit_sink(settings: Settings) -> MongoAuditSink:
    """The MongoDB sink: `rlm_audit` in MONGODB_DATABASE on MONGODB_URL."""
    from rlm_core.stores import mongo_database

    return MongoAuditSink(mongo_database(settings), owns_client=True)
