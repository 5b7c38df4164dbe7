"""One wiring point: build each store adapter from settings or from clients, lazily."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from rlm_core.ports import CacheStore, MetadataStore, ObjectStore, VectorStore
from rlm_core.settings import Settings

if TYPE_CHECKING:
    from minio import Minio
    from pymongo.database import Database
    from qdrant_client import QdrantClient
    from redis import Redis


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class _Lazy(Generic[C]):
    """Builds an adapter on first use; closes it only if it was built."""

    def __init__(self, factory: Callable[[], C], owned: bool) -> None:
        self._factory: Callable[[], C] = factory
        self._owned = owned
        self._value: C | None = None
        self._lock = threading.Lock()

    def get(self) -> C:
        with self._lock:
            if self._value is None:
                self._value = self._factory()
            return self._value

    def close(self) -> None:
        with self._lock:
            if self._value is not None and self._owned:
                self._value.close()
            self._value = None


class Stores:
    """The four adapters, each connected on first use (Qdrant local mode locks its folder)."""

    def __init__(
        self,
        cache: Callable[[], CacheStore],
        vectors: Callable[[], VectorStore],
        objects: Callable[[], ObjectStore],
        metadata: Callable[[], MetadataStore],
        *,
        owned: bool = True,
    ) -> None:
        # Adapters over clients the caller passed in are not closed here: the caller owns them.
        self._cache: _Lazy[CacheStore] = _Lazy(cache, owned)
        self._vectors: _Lazy[VectorStore] = _Lazy(vectors, owned)
        self._objects: _Lazy[ObjectStore] = _Lazy(objects, owned)
        self._metadata: _Lazy[MetadataStore] = _Lazy(metadata, owned)

    @classmethod
    def from_settings(cls, settings: Settings) -> Stores:
        """Real servers where a URL is set, the embedded stores under RLM_DATA_DIR otherwise."""
        return cls(
            lambda: _cache_from_settings(settings),
            lambda: _vectors_from_settings(settings),
            lambda: _objects_from_settings(settings),
            lambda: _metadata_from_settings(settings),
        )

    @classmethod
    def from_clients(
        cls,
        settings: Settings,
        *,
        redis: Redis,
        qdrant: QdrantClient,
        minio: Minio,
        mongo_db: Database[Any],
    ) -> Stores:
        """Adapters over clients the caller built and owns."""
        from rlm_core.adapters.qdrant_vectors import QdrantVectorStore
        from rlm_core.adapters.redis_cache import RedisCacheStore
        from rlm_core.adapters.s3_objects import S3ObjectStore

        return cls(
            lambda: RedisCacheStore(redis, settings.redis_cache_key_patterns),
            lambda: QdrantVectorStore(
                qdrant, settings.qdrant_collection, settings.qdrant_vector_size
            ),
            lambda: S3ObjectStore(minio, settings.minio_bucket),
            lambda: _mongo_store(mongo_db, settings),
            owned=False,
        )

    def cache(self) -> CacheStore:
        """The Redis cache adapter."""
        return self._cache.get()

    def vectors(self) -> VectorStore:
        """The Qdrant adapter."""
        return self._vectors.get()

    def objects(self) -> ObjectStore:
        """The object store adapter."""
        return self._objects.get()

    def metadata(self) -> MetadataStore:
        """The metadata store adapter."""
        return self._metadata.get()

    def close(self) -> None:
        """Close whatever was opened."""
        self._vectors.close()
        self._cache.close()
        self._objects.close()
        self._metadata.close()


def _cache_from_settings(settings: Settings) -> CacheStore:
    from rlm_core.adapters.redis_cache import RedisCacheStore, connect_redis

    client = connect_redis(
        settings.redis_url,
        settings.data_dir,
        settings.store_timeout_seconds,
        cluster=settings.redis_cluster,
        ca_bundle=settings.redis_ca_bundle,
    )
    return RedisCacheStore(client, settings.redis_cache_key_patterns)


def hold_embedded_cache(settings: Settings) -> _Closable:
    """A connection to the embedded Redis that keeps its server up until closed."""
    from rlm_core.adapters.redis_cache import connect_redis

    client = connect_redis(None, settings.data_dir, settings.store_timeout_seconds)
    try:
        client.ping()
    except BaseException:
        client.close()
        raise
    return client


def _vectors_from_settings(settings: Settings) -> VectorStore:
    from rlm_core.adapters.qdrant_vectors import QdrantVectorStore, connect_qdrant

    client = connect_qdrant(
        settings.qdrant_url,
        settings.qdrant_api_key,
        settings.data_dir,
        settings.store_timeout_seconds,
        lock_wait=settings.embedded_lock_wait_seconds,
    )
    return QdrantVectorStore(client, settings.qdrant_collection, settings.qdrant_vector_size)


def _objects_from_settings(settings: Settings) -> ObjectStore:
    if settings.minio_endpoint is None:
        from rlm_core.adapters.disk_objects import DiskObjectStore

        return DiskObjectStore(settings.data_dir / "objects", settings.minio_bucket)
    from rlm_core.adapters.s3_objects import S3ObjectStore

    return S3ObjectStore(minio_client(settings), settings.minio_bucket)


def minio_client(settings: Settings) -> Minio:
    """A Minio client on MINIO_ENDPOINT with the region, session token and CA bundle set."""
    from rlm_core.adapters.s3_objects import connect_minio

    return connect_minio(
        settings.minio_endpoint or "",
        settings.minio_access_key or "",
        settings.minio_secret_key or "",
        settings.minio_secure,
        settings.store_timeout_seconds,
        region=settings.minio_region,
        session_token=settings.minio_session_token,
        ca_bundle=settings.minio_ca_bundle,
    )


def _metadata_from_settings(settings: Settings) -> MetadataStore:
    if settings.mongodb_url is None:
        from rlm_core.adapters.sqlite_metadata import SqliteMetadataStore

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return SqliteMetadataStore(
            settings.data_dir / "metadata.sqlite3", default_bucket=settings.minio_bucket
        )
    return _mongo_store(mongo_database(settings), settings, owns_client=True)


def mongo_database(settings: Settings) -> Database[Any]:
    """A pymongo handle on MONGODB_DATABASE of MONGODB_URL."""
    from rlm_core.adapters.mongo_metadata import connect_mongo

    return connect_mongo(
        settings.mongodb_url or "", settings.mongodb_database, settings.store_timeout_seconds
    )


def _mongo_store(db: Database[Any], settings: Settings, owns_client: bool = False) -> MetadataStore:
    from rlm_core.adapters.mongo_metadata import MongoMetadataStore

    return MongoMetadataStore(
        db,
        documents=settings.documents_collection,
        sessions=settings.sessions_collection,
        messages=settings.messages_collection,
        default_bucket=settings.minio_bucket,
        owns_client=owns_client,
    )
