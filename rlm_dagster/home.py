"""Where the CLI's Dagster instance lives: $DAGSTER_HOME, else <RLM_DATA_DIR>/dagster-home."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from rlm_core.settings import Settings

INSTANCE_FILE = "dagster.yaml"


def instance_template() -> str:
    """The instance config shipped in the package (a copy of the repository's dagster.yaml)."""
    return resources.files("rlm_dagster").joinpath(INSTANCE_FILE).read_text(encoding="utf-8")


def ensure_dagster_home(settings: Settings) -> Path:
    """Use $DAGSTER_HOME as set; otherwise create <data dir>/dagster-home with rlm's dagster.yaml."""
    configured = os.environ.get("DAGSTER_HOME")
    if configured:
        return Path(configured)
    home = (settings.data_dir / "dagster-home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / INSTANCE_FILE
    if not config.exists():
        # Its `nux: enabled: false` keeps the UI's first-visit pop-up from hiding the page.
        config.write_text(instance_template(), encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
