"""The seeding writes stay off the ports and out of the lifecycle core's import graph."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlm_core.ports import CacheStore, MetadataStore, ObjectStore, VectorStore
from rlm_core.seeding import CacheSeeder, MetadataSeeder, VectorSeeder, cache_seeder

SEEDING_WRITES = {"seed", "upsert", "insert_raw"}


@pytest.mark.parametrize("port", [CacheStore, VectorStore, ObjectStore, MetadataStore])
def test_no_port_offers_a_seeding_write(port: type) -> None:
    assert not SEEDING_WRITES & set(dir(port))


def test_each_seeder_protocol_holds_its_write() -> None:
    assert {"seed", "upsert", "insert_raw"} == {
        name
        for proto in (CacheSeeder, VectorSeeder, MetadataSeeder)
        for name in SEEDING_WRITES
        if name in dir(proto)
    }


def test_a_store_without_the_write_is_refused() -> None:
    with pytest.raises(TypeError, match="CacheSeeder"):
        cache_seeder(object())


def test_the_lifecycle_imports_neither_the_demo_nor_the_seeding_module() -> None:
    code = (
        "import sys, rlm_core, rlm_core.lifecycle, rlm_core.store_table; "
        "print(sorted(m for m in ('rlm_core.demo', 'rlm_core.seeding') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
