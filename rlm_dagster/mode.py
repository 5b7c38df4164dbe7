"""RLM_CLEANUP_MODE: `observe` turns every automatic cleanup into a dry run; `enforce` deletes.

Manual runs (UI, CLI, API) obey their own `dry_run` in both modes. Unset, the mode is `enforce` on
the embedded default and `observe` as soon as any store URL is set, so a first deployment against
real servers only reports until the operator chooses `enforce`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rlm_core.events import log_event
from rlm_core.settings import Settings
from rlm_core.store_table import is_embedded

MODE_EVENT = "Cleanup mode"


class CleanupMode(enum.StrEnum):
    """What automatic cleanups do (the rlm/mode tag)."""

    ENFORCE = "enforce"
    OBSERVE = "observe"


@dataclass(frozen=True)
class ModeDecision:
    """The mode in force and why."""

    mode: CleanupMode
    reason: str

    @property
    def automatic_dry_run(self) -> bool:
        """True when schedule and sensor runs must only report."""
        return self.mode is CleanupMode.OBSERVE


def cleanup_mode(settings: Settings) -> ModeDecision:
    """The mode RLM_CLEANUP_MODE sets, else the default for the configured stores."""
    if settings.cleanup_mode is not None:
        return ModeDecision(CleanupMode(settings.cleanup_mode), "set by RLM_CLEANUP_MODE")
    if is_embedded(settings):
        return ModeDecision(CleanupMode.ENFORCE, "RLM_CLEANUP_MODE unset, embedded stores")
    return ModeDecision(
        CleanupMode.OBSERVE,
        "RLM_CLEANUP_MODE unset and a store URL is set: schedules and the sensor only report "
        "until RLM_CLEANUP_MODE=enforce",
    )


def log_mode(decision: ModeDecision, component: str) -> None:
    """The one start-up line saying which mode is in force."""
    log_event(MODE_EVENT, mode=decision.mode.value, reason=decision.reason, component=component)
