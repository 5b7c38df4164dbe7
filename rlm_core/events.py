"""Structured JSON logging: one JSON object per line with an `event` name and its fields."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "rlm"

MONITORING_COMPLETED = "Resource monitoring completed"
CLEANUP_PROCESSED = "Cleanup task processed"
DUPLICATE_DETECTED = "Duplicate file detected"


class JsonFormatter(logging.Formatter):
    """Formats records logged through `log_event` as single-line JSON."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object: event, level, fields and timestamp."""
        payload: dict[str, Any] = {"event": record.getMessage(), "level": record.levelname}
        payload.update(getattr(record, "rlm_fields", {}))
        payload.setdefault(
            "timestamp",
            datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
        )
        return json.dumps(payload, default=str, sort_keys=False)


def get_logger() -> logging.Logger:
    """The rlm logger, with a JSON handler on stderr if none is configured."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = True
    # Also when a handler was attached first: left unset, the root's WARNING would drop INFO events.
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event; `fields` become top-level JSON keys."""
    get_logger().log(level, event, extra={"rlm_fields": fields})
