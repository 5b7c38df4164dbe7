"""`rlm init` and `rlm audit`: prepare the stores of a deployment, read its audit trail back.

Like cli.py, only the standard library is imported until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from rlm_core.settings import Settings

    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
    MakeParser = Callable[[SubParsers, str, str], argparse.ArgumentParser]


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the indexes, bucket, collection and audit sink rlm relies on; print each step."""
    from rlm_core.audit import audit_sink
    from rlm_core.provision import initialize
    from rlm_core.stores import Stores

    stores = Stores.from_settings(settings)
    sink = audit_sink(settings)
    try:
        report = initialize(settings, stores, sink)
    finally:
        sink.close()
        stores.close()
    print(json.dumps(report.as_json(), indent=2))
    return 0 if report.success else 1


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    """Print the audit trail of the configured sink as JSON lines, oldest first."""
    from rlm_core.audit import audit_sink

    sink = audit_sink(settings)
    try:
        for line in sink.read(args.since, args.run):
            sys.stdout.write(json.dumps(line, default=str) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `rlm audit | head` closed the pipe: not an error. Silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        sink.close()
    return 0


def since_time(raw: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not valid; allowed: an ISO 8601 date or time such as 2026-01-15 "
            "or 2026-01-15T12:00:00Z"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def add_init_and_audit(sub: SubParsers, make: MakeParser) -> None:
    """Register `rlm init` and `rlm audit` with the parser factory of cli.py."""
    init = make(sub, "init", "create the indexes, bucket and collection rlm relies on (idempotent)")
    init.set_defaults(handler=cmd_init)
    audit = make(sub, "audit", "print the audit trail (RLM_AUDIT_SINK) as JSON lines")
    audit.add_argument(
        "--since", type=since_time, help="only runs started at or after this ISO 8601 time"
    )
    audit.add_argument("--run", help="only this run id")
    audit.set_defaults(handler=cmd_audit)
