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
        config.write_text(instance_template(), encoding="utf-8")
    # The UI's first-visit community pop-up hides the page from a newcomer; mark it seen.
    nux = home / ".nux" / "nux.yaml"
    if not nux.exists():
        nux.parent.mkdir(exist_ok=True)
        nux.write_text("seen: 1\n", encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
