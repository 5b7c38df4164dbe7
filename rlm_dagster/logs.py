"""RLM_LOG_FORMAT: rlm's structured events as JSON lines (default) or as plain text for people.

In runs, the instance's `python_logs: managed_python_loggers: [rlm]` (dagster.yaml) also sends
the events to the run's event log in the UI; this only chooses how rlm's own stderr lines look.
"""

from __future__ import annotations

import logging
from typing import Any

from rlm_core.events import JsonFormatter, get_logger
from rlm_core.settings import Settings


class TextFormatter(logging.Formatter):
    """`2026-11-29 10:00:00 INFO Cleanup task processed resource_type=redis_cache ...`."""

    def format(self, record: logging.LogRecord) -> str:
        """Time, level, event, then its fields as key=value."""
        fields: dict[str, Any] = getattr(record, "rlm_fields", {})
        pairs = " ".join(f"{key}={value}" for key, value in fields.items())
        line = f"{self.formatTime(record)} {record.levelname} {record.getMessage()}"
        return f"{line} {pairs}" if pairs else line


def configure_logging(settings: Settings) -> None:
    """Give rlm's stderr handler the formatter RLM_LOG_FORMAT names."""
    formatter = TextFormatter() if settings.log_format == "text" else JsonFormatter()
    for handler in get_logger().handlers:
        if isinstance(handler.formatter, JsonFormatter | TextFormatter):
            handler.setFormatter(formatter)
