"""The injected clock and the structured JSON events."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from rlm_core.clock import FakeClock, SystemClock, age_hours, to_utc
from rlm_core.events import (
    CLEANUP_PROCESSED,
    DUPLICATE_DETECTED,
    LOGGER_NAME,
    MONITORING_COMPLETED,
    JsonFormatter,
    get_logger,
    log_event,
)

START = datetime(2025, 1, 20, 15, 30, tzinfo=UTC)


# --- clock -----------------------------------------------------------------------------------


def test_fake_clock_starts_where_told_and_stays_put() -> None:
    clock = FakeClock(START)
    assert clock.now() == START
    assert clock.now() == START


def test_fake_clock_default_start_is_aware_utc() -> None:
    now = FakeClock().now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)


def test_fake_clock_advance_by_delta_or_keywords() -> None:
    clock = FakeClock(START)
    assert clock.advance(timedelta(minutes=30)) == START + timedelta(minutes=30)
    assert clock.advance(hours=1.5) == START + timedelta(hours=2)
    assert clock.advance(days=1, seconds=10) == START + timedelta(days=1, hours=2, seconds=10)
    assert clock.now() == START + timedelta(days=1, hours=2, seconds=10)


def test_fake_clock_set_normalises_to_utc() -> None:
    clock = FakeClock(START)
    clock.set(datetime(2030, 6, 1, 12, 0))
    assert clock.now() == datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    paris = timezone(timedelta(hours=2))
    clock.set(datetime(2030, 6, 1, 14, 0, tzinfo=paris))
    assert clock.now() == datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    assert clock.now().utcoffset() == timedelta(0)


def test_fake_clock_from_naive_start_is_utc() -> None:
    clock = FakeClock(datetime(2025, 1, 20, 15, 30))
    assert clock.now() == START
    assert clock.now().tzinfo is not None


def test_system_clock_is_aware_utc_and_current() -> None:
    before = datetime.now(UTC)
    now = SystemClock().now()
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= datetime.now(UTC)


def test_to_utc_treats_naive_as_utc() -> None:
    naive = datetime(2025, 1, 20, 15, 30)
    converted = to_utc(naive)
    assert converted == START
    assert converted.tzinfo is UTC
    assert (converted.hour, converted.minute) == (15, 30)


def test_to_utc_converts_aware_values() -> None:
    minus_five = timezone(timedelta(hours=-5))
    converted = to_utc(datetime(2025, 1, 20, 10, 30, tzinfo=minus_five))
    assert converted == START
    assert converted.utcoffset() == timedelta(0)
    assert (converted.hour, converted.minute) == (15, 30)
    assert to_utc(START) == START


def test_age_hours_measures_and_is_never_negative() -> None:
    assert age_hours(START, START - timedelta(hours=3)) == 3.0
    assert age_hours(START, START - timedelta(minutes=30)) == 0.5
    assert age_hours(START, START) == 0.0
    assert age_hours(START, START + timedelta(hours=5)) == 0.0


def test_age_hours_mixes_naive_and_aware() -> None:
    naive_then = datetime(2025, 1, 20, 12, 30)
    assert age_hours(START, naive_then) == 3.0
    assert age_hours(START.replace(tzinfo=None), START - timedelta(hours=1)) == 1.0


def test_ages_follow_the_fake_clock() -> None:
    clock = FakeClock(START)
    created = clock.now()
    clock.advance(hours=25)
    assert age_hours(clock.now(), created) == 25.0


# --- events ----------------------------------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the rlm logger writes through a JsonFormatter handler."""
    logger = get_logger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def only_line(stream: io.StringIO) -> dict[str, Any]:
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    payload = json.loads(lines[0])
    assert isinstance(payload, dict)
    return payload


SEED_EVENTS: list[tuple[str, dict[str, Any]]] = [
    (
        MONITORING_COMPLETED,
        {
            "metrics": {
                "redis": {"usage_percentage": 0.177, "priority": "LOW"},
                "qdrant": {"usage_percentage": 0.0003, "priority": "LOW"},
                "minio": {"usage_percentage": 0.009, "priority": "LOW"},
            }
        },
    ),
    (
        CLEANUP_PROCESSED,
        {
            "resource_type": "qdrant_vectors",
            "priority": "HIGH",
            "deleted_count": 150,
            "reason": "High resource usage: 78.5%",
        },
    ),
    (
        DUPLICATE_DETECTED,
        {"user_id": "user-1", "file_hash": "ab" * 32, "existing_document_id": "65a0"},
    ),
]


def test_event_names_are_the_seed_names() -> None:
    assert MONITORING_COMPLETED == "Resource monitoring completed"
    assert CLEANUP_PROCESSED == "Cleanup task processed"
    assert DUPLICATE_DETECTED == "Duplicate file detected"


@pytest.mark.parametrize(("event", "fields"), SEED_EVENTS)
def test_log_event_writes_one_json_line_with_event_and_fields(
    json_lines: io.StringIO, event: str, fields: dict[str, Any]
) -> None:
    log_event(event, **fields)
    payload = only_line(json_lines)
    assert payload["event"] == event
    assert payload["level"] == "INFO"
    for key, value in fields.items():
        assert payload[key] == value
    assert payload["timestamp"].endswith("Z")
    datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))


def test_given_timestamp_is_kept(json_lines: io.StringIO) -> None:
    log_event(CLEANUP_PROCESSED, deleted_count=1, timestamp="2025-01-20T15:35:00Z")
    assert only_line(json_lines)["timestamp"] == "2025-01-20T15:35:00Z"


def test_values_json_cannot_encode_are_stringified(json_lines: io.StringIO) -> None:
    log_event(MONITORING_COMPLETED, measured_at=START)
    assert only_line(json_lines)["measured_at"] == str(START)


def test_log_event_level(json_lines: io.StringIO) -> None:
    log_event(CLEANUP_PROCESSED, level=logging.WARNING, deleted_count=0)
    assert only_line(json_lines)["level"] == "WARNING"


@pytest.mark.parametrize(("event", "fields"), SEED_EVENTS)
def test_caplog_sees_the_event_and_its_fields(
    caplog: pytest.LogCaptureFixture, event: str, fields: dict[str, Any]
) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log_event(event, **fields)
    records = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert len(records) == 1
    payload = json.loads(JsonFormatter().format(records[0]))
    assert payload["event"] == event
    for key, value in fields.items():
        assert payload[key] == value


def test_info_events_survive_a_handler_configured_before_get_logger() -> None:
    # An application (or Dagster) may attach its own handler to "rlm" first; INFO must still flow.
    logger = logging.getLogger(LOGGER_NAME)
    saved_handlers, saved_level = list(logger.handlers), logger.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.handlers = [handler]
    logger.setLevel(logging.NOTSET)
    try:
        log_event(DUPLICATE_DETECTED, user_id="u")
    finally:
        logger.handlers = saved_handlers
        logger.setLevel(saved_level)
    assert only_line(stream)["event"] == DUPLICATE_DETECTED
