"""RLM_LOG_FORMAT: rlm's events on stderr as JSON lines (default) or text."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from rlm_core.events import JsonFormatter, log_event
from rlm_core.settings import Settings
from rlm_dagster.logs import TextFormatter, configure_logging


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The rlm logger writing to a string, with the core's JSON formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    monkeypatch.setattr(logging.getLogger("rlm"), "handlers", [handler])
    yield out


def test_json_is_the_default(stream: io.StringIO) -> None:
    configure_logging(Settings.from_env({}))
    log_event("Cleanup task processed", deleted_count=3)
    line = json.loads(stream.getvalue())
    assert line["event"] == "Cleanup task processed" and line["deleted_count"] == 3


def test_text_for_people(stream: io.StringIO) -> None:
    configure_logging(Settings.from_env({"RLM_LOG_FORMAT": "text"}))
    log_event("Cleanup task processed", resource_type="redis_cache", deleted_count=3)
    line = stream.getvalue().strip()
    assert line.endswith("INFO Cleanup task processed resource_type=redis_cache deleted_count=3")
    assert isinstance(logging.getLogger("rlm").handlers[0].formatter, TextFormatter)
