"""Progress of a long CLI command on stderr, for a person at a terminal.

A spinner, what runs and for how long, below the run's own log lines; it is removed when the
command ends. Nothing is drawn when stderr is not a terminal: cron and scripts read the JSON on
stdout, and a log file wants no control characters.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def progress(description: str) -> Iterator[None]:
    """Show `description` with a spinner and the elapsed time while the block runs, on a
    terminal only."""
    if not sys.stderr.isatty():
        yield
        return
    # rich comes with Dagster; imported only here, so `rlm --help` stays fast.
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as shown:
        shown.add_task(description, total=None)
        yield


def cleanup_description(resource_type: str | None, dry_run: bool) -> str:
    """`rlm cleanup of qdrant_vectors (dry run)`."""
    return f"rlm cleanup of {resource_type or 'all stores'}" + (" (dry run)" if dry_run else "")
