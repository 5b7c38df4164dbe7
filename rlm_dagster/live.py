"""Metrics measured now, straight from the stores (`rlm metrics`, the API's `?live=true`)."""

from __future__ import annotations

from typing import Any

from rlm_core.domain import ResourceType
from rlm_core.lifecycle import LifecycleManager
from rlm_core.ports import StoreError


def measure_all(manager: LifecycleManager) -> dict[str, Any]:
    """Every store's seed metrics; when one is down, measure one by one so the others show."""
    try:
        return {rt.store: m.as_seed_json() for rt, m in manager.metrics().items()}
    except StoreError:
        pass
    out: dict[str, Any] = {}
    for rt in ResourceType:
        try:
            out[rt.store] = manager.metrics([rt])[rt].as_seed_json()
        except StoreError as exc:
            out[rt.store] = {"error": str(exc)}
    return out
