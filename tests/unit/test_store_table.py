"""The store table: one complete row per ResourceType, and what the core derives from it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rlm_core.cleanup.documents import expire_documents
from rlm_core.domain import ResourceType
from rlm_core.lifecycle import PLANS, STEP_LEASES
from rlm_core.settings import CONNECTION_VARIABLES, ENV_VARIABLES, Settings
from rlm_core.store_table import FULL_PLAN, STORE_TABLE, is_embedded, step_stores
from tests.fakes.stores import memory_stores

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# One value per setting a row reads, different from every default.
ENV = {
    "REDIS_CACHE_TTL_HOURS": "3",
    "RAG_SESSION_TTL_HOURS": "5",
    "FILES_TTL_DAYS": "2",
    "REDIS_CLEANUP_INTERVAL_SECONDS": "300",
    "QDRANT_CLEANUP_INTERVAL_SECONDS": "600",
    "MINIO_CLEANUP_INTERVAL_SECONDS": "7200",
}


def test_every_resource_type_has_its_row() -> None:
    assert list(STORE_TABLE) == list(ResourceType)
    assert all(row.resource_type is rt for rt, row in STORE_TABLE.items())


@pytest.mark.parametrize("rt", list(ResourceType))
def test_a_row_is_complete(rt: ResourceType) -> None:
    row = STORE_TABLE[rt]
    settings = Settings.from_env(ENV)
    assert row.store == rt.store
    assert row.steps, "a store with no sweep would never be cleaned"
    stores = memory_stores(settings)
    stores.objects().ensure_bucket()
    assert row.measure(stores, settings, NOW).resource_type is rt
    assert row.ttl_hours(settings) > 0
    assert row.connection.variable in ENV_VARIABLES
    if row.interval is not None:
        assert row.interval.variable in ENV_VARIABLES
        assert row.interval.read(settings) == int(ENV[row.interval.variable])


# A valid value of each connection variable, with what Settings requires next to it.
CONNECTIONS = {
    "REDIS_URL": ("redis://127.0.0.1:6390/0", {}),
    "QDRANT_URL": ("http://127.0.0.1:6333", {}),
    "MINIO_ENDPOINT": ("127.0.0.1:9000", {"MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s"}),
    "MONGODB_URL": ("mongodb://127.0.0.1:27017", {}),
}


@pytest.mark.parametrize("rt", list(ResourceType))
def test_a_rows_connection_reads_its_own_variable(rt: ResourceType) -> None:
    variable = STORE_TABLE[rt].connection.variable
    url, extra = CONNECTIONS[variable]
    settings = Settings.from_env({variable: url, **extra})
    assert STORE_TABLE[rt].connection.read(settings) == url
    assert not is_embedded(settings)
    others = [r for r in STORE_TABLE.values() if r.resource_type is not rt]
    assert all(r.connection.read(settings) is None for r in others)


def test_settings_redacts_exactly_the_tables_connection_variables() -> None:
    assert {row.connection.variable for row in STORE_TABLE.values()} == CONNECTION_VARIABLES


def test_plans_and_leases_come_from_the_table() -> None:
    assert {rt: PLANS[rt] for rt in ResourceType} == {
        rt: row.steps for rt, row in STORE_TABLE.items()
    }
    assert PLANS[None] == FULL_PLAN and FULL_PLAN[0] is expire_documents
    assert {s for row in STORE_TABLE.values() for s in row.steps} == set(FULL_PLAN)
    assert set(STEP_LEASES) == set(FULL_PLAN)
    assert set(step_stores(expire_documents)) == {rt.store for rt in ResourceType}
    for row in STORE_TABLE.values():
        if row.sweep is not None:
            assert STEP_LEASES[row.sweep] == (row.store,)


def test_embedded_when_no_connection_is_set() -> None:
    assert is_embedded(Settings.from_env({}))
