"""Code location `rlm_dagster.definitions:defs`, configured by the environment when it loads."""

from rlm_core.settings import Settings
from rlm_dagster.wiring import build_definitions

defs = build_definitions(Settings.from_env())
