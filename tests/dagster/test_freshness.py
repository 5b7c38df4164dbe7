"""The usage assets carry a FreshnessPolicy derived from the monitoring interval (issue 12)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from rlm_core.settings import Settings
from rlm_dagster.wiring import build_definitions

STORES = ("redis", "qdrant", "minio", "mongodb")


@pytest.mark.parametrize(("interval", "warn", "fail"), [(60, 90, 120), (300, 450, 600)])
def test_usage_assets_go_stale_after_missed_snapshots(
    rlm_env: Path, interval: int, warn: int, fail: int
) -> None:
    """Warn after 1.5 and fail after 2 monitoring intervals without a snapshot."""
    settings = Settings.from_env(
        {"RESOURCE_MONITORING_INTERVAL_SECONDS": str(interval), "RLM_DATA_DIR": str(rlm_env)}
    )
    specs = {spec.key: spec for spec in build_definitions(settings).resolve_all_asset_specs()}
    expected = dg.FreshnessPolicy.time_window(
        fail_window=timedelta(seconds=fail), warn_window=timedelta(seconds=warn)
    )
    for store in STORES:
        assert specs[dg.AssetKey(["usage", store])].freshness_policy == expected, store
