"""`rlm init` (SPEC 8.1): the indexes, bucket, collection and audit sink rlm relies on, created
idempotently, so a cleanup-only deployment has them."""

from __future__ import annotations

import json
from pathlib import Path

import mongomock
import pytest
from minio import Minio
from qdrant_client import QdrantClient

from rlm_core.adapters.audit_sinks import MongoAuditSink, S3AuditSink
from rlm_core.provision import initialize
from rlm_core.settings import ENV_VARIABLES, Settings
from rlm_core.stores import Stores
from rlm_dagster.cli import main
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.services import S3Server, free_port


def _stores(
    settings: Settings, redis_client: object, qdrant: QdrantClient, minio: Minio, db: object
) -> Stores:
    return Stores.from_clients(
        settings,
        redis=redis_client,  # type: ignore[arg-type]
        qdrant=qdrant,
        minio=minio,
        mongo_db=db,  # type: ignore[arg-type]
    )


@pytest.mark.integration
def test_init_creates_everything_and_a_second_init_changes_nothing(
    qdrant_client: QdrantClient, minio_client: Minio, bucket_name: str
) -> None:
    settings = Settings.from_env({"MINIO_BUCKET": bucket_name})
    db = mongomock.MongoClient(tz_aware=False)["rag"]
    stores = _stores(settings, object(), qdrant_client, minio_client, db)
    sink = MongoAuditSink(db)
    first = initialize(settings, stores, sink).as_json()
    indexes = db["documents"].index_information()
    second = initialize(settings, stores, sink).as_json()

    assert first == second
    assert first["success"] is True
    assert [(s["store"], s["action"], s["ok"]) for s in first["steps"]] == [
        ("mongodb", "ensure_indexes", True),
        ("minio", "ensure_bucket", True),
        ("qdrant", "ensure_collection", True),
        ("audit", "ensure_sink", True),
    ]
    assert indexes["rlm_user_file_hash"]["unique"] is True
    assert db["documents"].index_information() == indexes
    assert minio_client.bucket_exists(bucket_name)
    info = qdrant_client.get_collection("rag_documents")
    assert info.config.params.vectors.size == 384  # type: ignore[union-attr]
    assert {"rlm_audit_at", "rlm_audit_run"} <= set(db["rlm_audit"].index_information())


@pytest.mark.integration
def test_a_store_that_is_down_fails_its_step_only(
    qdrant_client: QdrantClient, tmp_path: Path
) -> None:
    settings = Settings.from_env({"RLM_STORE_TIMEOUT_SECONDS": "1"})
    dead = Minio(f"127.0.0.1:{free_port()}", access_key="k", secret_key="s", secure=False)
    db = mongomock.MongoClient(tz_aware=False)["rag"]
    stores = _stores(settings, object(), qdrant_client, dead, db)
    report = initialize(settings, stores, S3AuditSink(dead, "documents", ".rlm-audit/"))
    outcome = {step.store: step.error is None for step in report.steps}
    assert outcome == {"mongodb": True, "minio": False, "qdrant": True, "audit": False}
    assert report.success is False
    assert "S3 ensure_bucket on bucket 'documents' failed" in (report.steps[1].error or "")


def _run_init(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["init"])
    return code, json.loads(capsys.readouterr().out)


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.integration
def test_rlm_init_twice_on_the_embedded_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clear_env(monkeypatch)
    monkeypatch.setenv("RLM_DATA_DIR", str(tmp_path / "data"))
    first = _run_init(capsys)
    second = _run_init(capsys)
    assert first == second
    assert first[0] == 0
    assert (tmp_path / "data" / "objects").is_dir()
    assert (tmp_path / "data" / "audit").is_dir()


@pytest.mark.integration
def test_rlm_init_twice_against_an_s3_server_with_the_s3_audit_sink(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    s3_srv: S3Server,
    minio_client: Minio,
    bucket_name: str,
) -> None:
    _clear_env(monkeypatch)
    for name, value in {
        "RLM_DATA_DIR": str(tmp_path / "data"),
        "MINIO_ENDPOINT": s3_srv.endpoint,
        "MINIO_ACCESS_KEY": S3_ACCESS_KEY,
        "MINIO_SECRET_KEY": S3_SECRET_KEY,
        "MINIO_BUCKET": bucket_name,
        "RLM_AUDIT_SINK": "s3",
    }.items():
        monkeypatch.setenv(name, value)
    assert not minio_client.bucket_exists(bucket_name)
    first = _run_init(capsys)
    second = _run_init(capsys)
    assert first == second
    assert first[0] == 0, first
    assert minio_client.bucket_exists(bucket_name)
    steps = first[1]["steps"]
    assert isinstance(steps, list)
    assert steps[-1]["target"] == f"s3://{bucket_name}/.rlm-audit/"
