"""`--format table`: the CLI's JSON answers as aligned text columns for people."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

METRIC_COLUMNS = (
    "store",
    "total_items",
    "size_mb",
    "usage_percentage",
    "cleanup_priority",
    "oldest_age_hours",
)
QUEUE_COLUMNS = ("priority", "resource_type", "created_at", "reason", "run_id")
CLEANUP_COLUMNS = ("store", "deleted", "bytes_freed")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows under a header, each column as wide as its widest cell."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [columns, ["-" * w for w in widths], *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per store; a store that failed shows its error instead."""
    rows = [{"store": store, **entry} for store, entry in metrics.items() if "error" not in entry]
    errors = [f"{store}: {entry['error']}" for store, entry in metrics.items() if "error" in entry]
    return "\n".join([table(rows, METRIC_COLUMNS), *errors])


def queue_table(queue: Mapping[str, Any]) -> str:
    """The queued runs in launch order, then their count."""
    return f"{table(queue['tasks'], QUEUE_COLUMNS)}\n{queue['queue_size']} queued"


def cleanup_table(response: Mapping[str, Any]) -> str:
    """Deleted items and bytes per store, then the seed's message."""
    deleted: Mapping[str, int] = response.get("deleted_counts", {})
    freed: Mapping[str, int] = response.get("bytes_freed", {})
    rows = [{"store": s, "deleted": n, "bytes_freed": freed.get(s, 0)} for s, n in deleted.items()]
    return f"{table(rows, CLEANUP_COLUMNS)}\n{response.get('message', '')}"


def render(payload: Any, fmt: str, kind: str) -> str:
    """JSON (the default, for scripts) or the table of one kind of answer."""
    if fmt != "table":
        return json.dumps(payload, indent=2, default=str)
    renderers = {"metrics": metrics_table, "queue": queue_table, "cleanup": cleanup_table}
    return renderers[kind](payload)
