"""rlm_core: lifecycle management for a RAG system's stores, with no Dagster import."""

from rlm_core.clock import Clock, FakeClock, SystemClock
from rlm_core.domain import (
    CleanupPriority,
    CleanupReport,
    CleanupTask,
    ErasureReceipt,
    IngestResult,
    ResourceMetrics,
    ResourceType,
)
from rlm_core.lifecycle import LifecycleManager
from rlm_core.settings import Settings, SettingsError

__all__ = [
    "CleanupPriority",
    "CleanupReport",
    "CleanupTask",
    "Clock",
    "ErasureReceipt",
    "FakeClock",
    "IngestResult",
    "LifecycleManager",
    "ResourceMetrics",
    "ResourceType",
    "Settings",
    "SettingsError",
    "SystemClock",
]
