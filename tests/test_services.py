"""The test harness itself: each service fixture really answers, and missing services fail in CI."""

from __future__ import annotations

import io

import mongomock
import psycopg2
import pytest
import redis
from minio import Minio
from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams

from tests.services import RedisServer, S3Server, redis_server_binary, require_or_skip


def test_private_redis_server_answers_ping_and_is_not_the_shared_one(
    redis_srv: RedisServer, redis_client: redis.Redis
) -> None:
    assert redis_srv.port != 6379
    assert redis_client.connection_pool.connection_kwargs["port"] == redis_srv.port
    assert redis_client.connection_pool.connection_kwargs["port"] != 6379
    assert redis_client.ping() is True
    assert redis_srv.process.poll() is None
    assert redis_srv.url == f"redis://127.0.0.1:{redis_srv.port}/0"


def test_private_redis_server_stores_values(redis_client: redis.Redis) -> None:
    redis_client.set("doc:text:abc", b"hello", ex=60)
    assert redis_client.get("doc:text:abc") == b"hello"
    assert 0 < redis_client.ttl("doc:text:abc") <= 60


def test_redis_client_starts_on_an_empty_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_redis_binary_is_found() -> None:
    assert redis_server_binary() is not None


def test_s3_server_round_trip_through_the_minio_client(
    s3_srv: S3Server, minio_client: Minio, bucket_name: str
) -> None:
    assert s3_srv.endpoint == f"127.0.0.1:{s3_srv.port}"
    minio_client.make_bucket(bucket_name)
    assert minio_client.bucket_exists(bucket_name)
    body = b"%PDF-1.4 synthetic"
    minio_client.put_object(
        bucket_name, "u1/report.pdf", io.BytesIO(body), len(body), content_type="application/pdf"
    )
    response = minio_client.get_object(bucket_name, "u1/report.pdf")
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()
    stat = minio_client.stat_object(bucket_name, "u1/report.pdf")
    assert stat.size == len(body)
    names = [o.object_name for o in minio_client.list_objects(bucket_name, recursive=True)]
    assert names == ["u1/report.pdf"]


def test_qdrant_local_creates_a_collection(qdrant_client: QdrantClient) -> None:
    qdrant_client.create_collection(
        "rag_documents", vectors_config=VectorParams(size=4, distance=Distance.COSINE)
    )
    assert qdrant_client.collection_exists("rag_documents")
    qdrant_client.upsert(
        "rag_documents",
        points=[PointStruct(id=1, vector=[0.1, 0.2, 0.3, 0.4], payload={"document_id": "d1"})],
    )
    assert qdrant_client.count("rag_documents").count == 1


def test_mongomock_insert_and_find(mongo_db: mongomock.Database) -> None:
    mongo_db["documents"].insert_one({"user_id": "u1", "filename": "a.pdf"})
    found = mongo_db["documents"].find_one({"user_id": "u1"})
    assert found is not None
    assert found["filename"] == "a.pdf"
    assert mongo_db["documents"].count_documents({}) == 1
    assert mongo_db.name == "rag"


def test_postgres_probe_connects(postgres_url: str) -> None:
    connection = psycopg2.connect(postgres_url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute("select 1")
            assert cursor.fetchone() == (1,)
    finally:
        connection.close()


def test_require_or_skip_fails_when_services_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RLM_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="required service missing: no widget"):
        require_or_skip("no widget")


@pytest.mark.parametrize("value", [None, "0", ""])
def test_require_or_skip_skips_otherwise(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("RLM_REQUIRE_SERVICES", raising=False)
    else:
        monkeypatch.setenv("RLM_REQUIRE_SERVICES", value)
    with pytest.raises(pytest.skip.Exception, match="no widget"):
        require_or_skip("no widget")
