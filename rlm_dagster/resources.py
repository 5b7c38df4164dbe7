"""The Dagster resource wiring rlm_core's LifecycleManager into runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from rlm_core.lifecycle import LifecycleManager
from rlm_core.settings import Settings
from rlm_dagster.mode import cleanup_mode
from rlm_dagster.run_tags import MODE_TAG


def load_settings(data_dir: str | None = None) -> Settings:
    """Settings from the environment at run time, with an optional data folder override."""
    settings = Settings.from_env()
    if data_dir:
        settings = dataclasses.replace(settings, data_dir=Path(data_dir).expanduser())
    return settings


def tag_mode(context: dg.InitResourceContext, settings: Settings) -> None:
    """Tag a run that was launched without `rlm/mode` (e.g. from the UI) with the mode in force."""
    run, instance = context.run, context.instance
    if run is not None and instance is not None and MODE_TAG not in run.tags:
        instance.add_run_tags(run.run_id, {MODE_TAG: cleanup_mode(settings).mode.value})


# A store that is briefly down (restart, failover, Qdrant's folder lock held by another run)
# usually answers again within seconds: retry 3 times at about 2, 4 and 8 s.
STORE_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class LifecycleResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """rlm's LifecycleManager for one run: settings from the environment, stores opened lazily."""

    data_dir: str | None = None

    _settings: Settings | None = PrivateAttr(default=None)
    _manager: LifecycleManager | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Read settings (secrets never enter run config) and build the manager."""
        self._settings = load_settings(self.data_dir)
        tag_mode(context, self._settings)
        self._manager = self.open_manager(self._settings)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Close every store the run opened (releases Qdrant's folder lock)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def open_manager(self, settings: Settings) -> LifecycleManager:
        """Build the manager; the core connects to each store only when first used."""
        return LifecycleManager.from_settings(settings)

    @property
    def settings(self) -> Settings:
        """Settings of the current run."""
        if self._settings is None:
            raise dg.DagsterInvariantViolationError("LifecycleResource used outside a run")
        return self._settings

    @property
    def manager(self) -> LifecycleManager:
        """The manager of the current run."""
        if self._manager is None:
            raise dg.DagsterInvariantViolationError("LifecycleResource used outside a run")
        return self._manager
