"""The binding Python API names import from the package root."""

from __future__ import annotations


def test_binding_names_import_from_rlm_core() -> None:
    from rlm_core import CleanupPriority, ResourceType, Settings

    assert Settings.from_env({}).max_mongodb_documents == 10_000
    assert ResourceType.parse("redis") is ResourceType.REDIS_CACHE
    assert CleanupPriority.CRITICAL == 1
