"""Usage history as a DataFrame, and per-store trends projected to the HIGH and CRITICAL levels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from rlm_core.priority import Thresholds
from rlm_dagster.snapshots import Snapshot

COLUMNS = (
    "resource",
    "timestamp",
    "total_items",
    "size_mb",
    "usage_percentage",
    "cleanup_priority",
    "oldest_age_hours",
)
TREND_WINDOW_HOURS = 24.0
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Trend:
    """Where one store's usage is heading, from its recent snapshots."""

    resource: str
    snapshots: int
    usage_percentage: float
    growth_per_hour: float | None
    hours_to_high: float | None
    hours_to_critical: float | None


def snapshots_frame(snapshots: Iterable[Snapshot]) -> pd.DataFrame:
    """One row per snapshot, oldest first, timestamps as UTC."""
    rows = [
        {
            "resource": s.resource_type.store,
            "timestamp": pd.Timestamp(s.timestamp, unit="s", tz="UTC"),
            "total_items": s.total_items,
            "size_mb": s.size_mb,
            "usage_percentage": s.usage_percentage,
            "cleanup_priority": s.cleanup_priority.name,
            "oldest_age_hours": s.oldest_age_hours,
        }
        for s in snapshots
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def growth_per_hour(frame: pd.DataFrame) -> float | None:
    """Least-squares slope of usage_percentage per hour; None without two distinct times."""
    hours = (frame["timestamp"] - frame["timestamp"].min()).dt.total_seconds() / SECONDS_PER_HOUR
    if len(frame) < 2 or hours.nunique() < 2:
        return None
    usage = frame["usage_percentage"].astype(float)
    centered = hours - hours.mean()
    return float((centered * (usage - usage.mean())).sum() / (centered**2).sum())


def hours_to_level(current: float, level: float, growth: float | None) -> float | None:
    """Hours until usage reaches `level` percent at `growth` per hour; None when not growing."""
    if current >= level:
        return 0.0
    if growth is None or growth <= 0:
        return None
    return (level - current) / growth


def resource_trend(
    frame: pd.DataFrame, thresholds: Thresholds, window_hours: float = TREND_WINDOW_HOURS
) -> Trend:
    """Trend of one store's snapshots, fitted over the last `window_hours` of them."""
    ordered = frame.sort_values("timestamp", kind="stable")
    recent = ordered[
        ordered["timestamp"] >= ordered["timestamp"].max() - pd.Timedelta(hours=window_hours)
    ]
    current = float(recent["usage_percentage"].iloc[-1])
    growth = growth_per_hour(recent)
    return Trend(
        resource=str(ordered["resource"].iloc[0]),
        snapshots=len(ordered),
        usage_percentage=current,
        growth_per_hour=growth,
        hours_to_high=hours_to_level(current, thresholds.high * 100.0, growth),
        hours_to_critical=hours_to_level(current, thresholds.critical * 100.0, growth),
    )


def trends(frame: pd.DataFrame, thresholds: Thresholds) -> list[Trend]:
    """One trend per store present in the history, in store-name order."""
    return [resource_trend(group, thresholds) for _, group in frame.groupby("resource", sort=True)]


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def trends_markdown(items: Iterable[Trend]) -> str:
    """A markdown table of trends for the asset's metadata."""
    lines = [
        "| resource | snapshots | usage % | growth %/h | hours to HIGH | hours to CRITICAL |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {t.resource} | {t.snapshots} | {t.usage_percentage:.2f} | {_cell(t.growth_per_hour)} "
        f"| {_cell(t.hours_to_high)} | {_cell(t.hours_to_critical)} |"
        for t in items
    )
    return "\n".join(lines)
