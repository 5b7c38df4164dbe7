"""Dagster's per-store pieces cover every row of the core's store table and cannot drift from it."""

from __future__ import annotations

import pytest

from rlm_core.domain import ResourceType
from rlm_core.settings import Settings
from rlm_core.store_table import STORE_TABLE
from rlm_dagster.assets import USAGE_ASSETS
from rlm_dagster.checks import ttl_hours
from rlm_dagster.jobs import CleanupTarget, cleanup_run_config
from rlm_dagster.schedules import build_schedules, interval_to_cron
from tests.unit.test_store_table import ENV

SETTINGS = Settings.from_env(ENV)


def test_cleanup_targets_are_the_table_rows() -> None:
    assert [(t.name, t.value) for t in CleanupTarget] == [
        (rt.value, rt.value) for rt in STORE_TABLE
    ]
    assert all(CleanupTarget(rt.value).resource_type is rt for rt in STORE_TABLE)


@pytest.mark.parametrize("rt", list(ResourceType))
def test_every_row_builds_its_run_config(rt: ResourceType) -> None:
    config = cleanup_run_config(rt).ops["cleanup"]
    assert config.resource_type is CleanupTarget(rt.value)


@pytest.mark.parametrize("rt", list(ResourceType))
def test_checks_ttl_is_the_rows(rt: ResourceType) -> None:
    assert ttl_hours(SETTINGS, rt) == STORE_TABLE[rt].ttl_hours(SETTINGS)


def test_every_row_has_a_usage_asset() -> None:
    assert list(USAGE_ASSETS) == list(STORE_TABLE)


def test_every_row_with_an_interval_has_its_schedule() -> None:
    crons = {s.name: s.cron_schedule for s in build_schedules(SETTINGS)}
    for row in STORE_TABLE.values():
        name = f"{row.store}_cleanup_schedule"
        if row.interval is None:
            assert name not in crons
        else:
            assert crons[name] == interval_to_cron(row.interval.read(SETTINGS))
