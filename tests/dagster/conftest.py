"""Fixtures for the Dagster layer: a clean rlm environment, temporary instances, snapshot helpers."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.settings import ENV_VARIABLES
from rlm_dagster.snapshots import usage_key

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rlm_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No rlm variable from the outer environment; embedded stores under a fresh data folder."""
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # set-then-delete makes monkeypatch restore the outer value even though the CLI may set it.
    monkeypatch.setenv("DAGSTER_HOME", "unset")
    monkeypatch.delenv("DAGSTER_HOME")
    data_dir = tmp_path / "data"
    monkeypatch.setenv("RLM_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """A throwaway Dagster instance (SQLite in a temporary folder)."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


def report_snapshot(
    instance: dg.DagsterInstance,
    resource_type: ResourceType,
    usage_percentage: float,
    priority: CleanupPriority,
) -> int:
    """Record a usage snapshot as the usage asset would, without any store; return its storage id."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=usage_key(resource_type),
            metadata={
                "total_items": dg.MetadataValue.int(10),
                "size_mb": dg.MetadataValue.float(1.5),
                "usage_percentage": dg.MetadataValue.float(usage_percentage),
                "cleanup_priority": dg.MetadataValue.text(priority.name),
                "cleanup_priority_level": dg.MetadataValue.int(int(priority)),
                "oldest_age_hours": dg.MetadataValue.float(2.0),
                "sampled": dg.MetadataValue.bool(False),
            },
        )
    )
    record = instance.fetch_materializations(usage_key(resource_type), limit=1).records[0]
    return record.storage_id


def clean_subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment without rlm/Dagster variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES and k != "DAGSTER_HOME"}
    env.update(extra)
    return env


def dagster_home(path: Path, template: str = "dagster.yaml", **extra: str) -> Path:
    """A DAGSTER_HOME folder holding one of the repository's instance configs."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text((REPO_ROOT / template).read_text())
    return path


def launch(env: dict[str, str], job: str, tags: dict[str, str], config: dict[str, object]) -> None:
    """Submit a run through `dagster job launch` (the coordinator queues it)."""
    command = [
        str(REPO_ROOT / ".venv" / "bin" / "dagster"),
        "job",
        "launch",
        "-w",
        "workspace.yaml",
        "-j",
        job,
        "--tags",
        json.dumps(tags),
        "--config-json",
        json.dumps(config),
    ]
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
