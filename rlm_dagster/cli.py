"""The `rlm` command: metrics, cleanup (recorded as a Dagster run), queue, ingest, demo seed, settings,
the HTTP API.

Nothing beyond the standard library is imported until a command runs (rlm_core alone takes about
0.15 s to import, Dagster 2 s), so `rlm --help` and `rlm --version` answer at once.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from rlm_dagster.cli_format import render
from rlm_dagster.cli_ops import add_init_and_audit
from rlm_dagster.cli_progress import cleanup_description, progress

if TYPE_CHECKING:
    import dagster as dg

    from rlm_core.domain import ResourceType
    from rlm_core.settings import Settings

Handler = Callable[[argparse.Namespace, "Settings"], int]
DEFAULT_API_PORT = 8001
# The values of rlm_core's ResourceType, for help text without importing it (a test keeps them equal).
RESOURCE_TYPES = ("redis_cache", "qdrant_vectors", "minio_files", "mongodb_metadata")


def _print(payload: Any, args: argparse.Namespace | None = None, kind: str = "") -> None:
    fmt = getattr(args, "format", "json")
    print(render(payload, fmt, kind) if kind else json.dumps(payload, indent=2, default=str))


def _resource_type(raw: str) -> ResourceType:
    from rlm_core.domain import ResourceType

    try:
        return ResourceType.parse(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(raw: str) -> int:
    from rlm_core.settings import MAX_COUNT

    # ASCII digits only ('²'.isdigit() is true, yet int() refuses it); the length check keeps
    # int() far below its digit limit.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20 and 0 < int(raw) <= MAX_COUNT):
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not valid; allowed: a whole number > 0 and <= {MAX_COUNT}"
        )
    return int(raw)


def _user_id(raw: str) -> str:
    if not raw.strip():
        raise argparse.ArgumentTypeError(f"{raw!r} is not valid; allowed: a non-empty user id")
    return raw


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    """Print the seed's metrics JSON; a store that is down gets an `error` entry (exit 1)."""
    from rlm_core.lifecycle import LifecycleManager
    from rlm_dagster.live import measure_all

    with LifecycleManager.from_settings(settings) as manager:
        out = measure_all(manager)
    _print(out, args, "metrics")
    return 1 if any("error" in entry for entry in out.values()) else 0


def cleanup_response(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The seed's cleanup response from a finished cleanup_job run."""
    from rlm_dagster.jobs import CLEANUP_OP

    if result.success:
        return dict(result.output_for_node(CLEANUP_OP))
    failure = result.failure_data_for_node(CLEANUP_OP)
    user = failure.user_failure_data if failure else None
    report = user.metadata.get("report") if user else None
    if report is not None and isinstance(report.value, dict):
        return dict(report.value)
    message = (user.description if user else None) or "cleanup_job failed; see the run's logs"
    return {
        "success": False,
        "deleted_counts": {},
        "message": message,
        "dagster_run_id": result.run_id,
    }


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    """Run cleanup_job in this process, recorded in the Dagster instance, and print the response.

    The run waits for an older cleanup of the same stores (queued, scheduled or another CLI run)
    to end, and the run queue holds same-store runs while this one executes."""
    if not _instance_home_ready(settings):
        return 2
    import dagster as dg

    from rlm_core.domain import CleanupPriority
    from rlm_dagster.jobs import cleanup_run_config
    from rlm_dagster.mode import cleanup_mode
    from rlm_dagster.queue import CLEANUP_JOB
    from rlm_dagster.run_tags import MANUAL_REASON, Trigger, cleanup_tags
    from rlm_dagster.wiring import build_definitions

    job = build_definitions(settings).get_job_def(CLEANUP_JOB)
    mode = cleanup_mode(settings).mode
    target = args.resource_type.value if args.resource_type else None
    with progress(cleanup_description(target, args.dry_run)), dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config=cleanup_run_config(args.resource_type, args.dry_run, args.max_deletions),
            instance=instance,
            tags=cleanup_tags(
                args.resource_type, CleanupPriority.HIGH, MANUAL_REASON, Trigger.MANUAL, mode
            ),
            raise_on_error=False,
        )
    response = cleanup_response(result)
    _print(response, args, "cleanup")
    return 0 if response["success"] else 1


def _instance_home_ready(settings: Settings) -> bool:
    # Dagster's own refusal of a missing DAGSTER_HOME is a traceback.
    from rlm_dagster.home import ensure_dagster_home

    home = ensure_dagster_home(settings)
    if home.is_dir():
        return True
    print(
        f"rlm: DAGSTER_HOME={str(home)!r} is not valid; allowed: an existing folder, "
        "or unset to use <RLM_DATA_DIR>/dagster-home",
        file=sys.stderr,
    )
    return False


def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    """Run erase_user_job in this process, recorded in the Dagster instance; print the receipt.

    Exits 2 when the user id matches nothing (unless --allow-empty), 1 when a store failed or
    the re-scan still found something of the user."""
    if not _instance_home_ready(settings):
        return 2
    from rlm_dagster.erasure import erase_from_cli

    code, receipt, message = erase_from_cli(args.user, args.dry_run, args.allow_empty)
    if message:
        print(f"rlm erase: {message}", file=sys.stderr)
    if receipt is not None:
        _print(receipt)
    return code


def cmd_queue(args: argparse.Namespace, settings: Settings) -> int:
    """Print the seed's queue JSON from the instance's QUEUED cleanup_job runs."""
    if not _instance_home_ready(settings):
        return 2
    import dagster as dg

    from rlm_dagster.queue import queue_json, queued_cleanup_runs

    with dg.DagsterInstance.get() as instance:
        _print(queue_json(queued_cleanup_runs(instance)), args, "queue")
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    """Upload one file for a user through per-user SHA-256 deduplication."""
    path = Path(args.file)
    stream = _open_file(path)
    if stream is None:
        print(
            f"rlm ingest: FILE={args.file!r} is not valid; allowed: the path of a readable file",
            file=sys.stderr,
        )
        return 2
    content_type = mimetypes.guess_type(path.name)[0]
    from rlm_core.lifecycle import LifecycleManager

    with stream, LifecycleManager.from_settings(settings) as manager:
        try:
            result = manager.ingest(args.user, path.name, stream, content_type)
        except ValueError as exc:  # the core refuses a user id or file name: input, not a bug
            print(f"rlm ingest: {exc}", file=sys.stderr)
            return 2
    _print(
        {
            "document_id": result.document_id,
            "duplicate": result.duplicate,
            "file_hash": result.file_hash,
            "size_bytes": result.size_bytes,
        }
    )
    return 0


def _open_file(path: Path) -> BinaryIO | None:
    # Opened before any store, so a wrong path costs no connection and leaves nothing behind.
    try:
        return path.open("rb") if path.is_file() else None
    except OSError:
        return None


def cmd_demo_seed(args: argparse.Namespace, settings: Settings) -> int:
    """Fill the configured stores with realistic synthetic data."""
    from rlm_core.demo import seed_demo
    from rlm_core.lifecycle import LifecycleManager
    from rlm_core.store_table import is_embedded

    if not (is_embedded(settings) or args.allow_servers):
        # Demo data includes keys that are not rlm's (blacklist:*, ...) and synthetic users:
        # never written into real servers by accident.
        print(
            "rlm: demo seed writes synthetic data; a store URL is set, so pass --allow-servers "
            "to write it into those servers",
            file=sys.stderr,
        )
        return 2
    with LifecycleManager.from_settings(settings) as manager:
        _print(seed_demo(manager, scale=args.scale, seed=args.seed))
    return 0


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    """Print the effective settings with secrets redacted."""
    _print(settings.public_view())
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """Seed the embedded demo if empty, then serve Dagster on 127.0.0.1 until Ctrl-C."""
    from rlm_dagster import dev

    try:
        return dev.run(settings)
    except ValueError as exc:
        print(f"rlm: {exc}", file=sys.stderr)
        return 2


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the HTTP API with uvicorn (127.0.0.1:8001 unless told otherwise) until Ctrl-C."""
    from rlm_dagster.api import serve

    serve(settings, args.host, args.port)
    return 0


def _port(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw[:6]) <= 65535):
        raise argparse.ArgumentTypeError(f"{raw!r} is not valid; allowed: a port from 1 to 65535")
    return int(raw)


# Every subcommand's help ends with an example (RawDescriptionHelpFormatter keeps the layout).
EXAMPLES: dict[str, str] = {
    "metrics": "rlm metrics --format table",
    "queue": "rlm queue",
    "settings": "rlm settings",
    "run": "RLM_PORT=3001 rlm run",
    "cleanup": "rlm cleanup --resource-type qdrant_vectors --dry-run",
    "ingest": "rlm ingest --user user-1 informe.pdf",
    "erase": "rlm erase --user user-1 --dry-run",
    "demo": "rlm demo seed --scale 2",
    "seed": "rlm demo seed --scale 2",
    "api": "RLM_API_TOKEN=$(openssl rand -hex 32) rlm api --port 8001",
    "init": "rlm init",
    "audit": "rlm audit --since 2026-01-15 --run 3f2a9c",
}


def _sub(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    """A subcommand parser whose help ends with its example."""
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json (default, for scripts) or an aligned table for people",
    )


def _add_api(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    api = _sub(sub, "api", "serve the HTTP API (bearer tokens RLM_API_TOKEN / RLM_API_ADMIN_TOKEN)")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    api.add_argument(
        "--port", type=_port, default=DEFAULT_API_PORT, help=f"default: {DEFAULT_API_PORT}"
    )
    api.set_defaults(handler=cmd_api)


def _add_cleanup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cleanup = _sub(sub, "cleanup", "run cleanup_job now (recorded in Dagster)")
    _add_format(cleanup)
    allowed = ", ".join(RESOURCE_TYPES)
    cleanup.add_argument(
        "--resource-type", type=_resource_type, help=f"one of: {allowed} (default: all)"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="report what would go only")
    cleanup.add_argument("--max-deletions", type=_positive_int, help="cap deletions in this run")
    cleanup.set_defaults(handler=cmd_cleanup)


def _add_erase(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    erase = _sub(sub, "erase", "erase every item of one user (runs erase_user_job)")
    erase.add_argument("--user", required=True, type=_user_id, help="the user whose data goes")
    erase.add_argument("--dry-run", action="store_true", help="list what would go only")
    erase.add_argument(
        "--allow-empty", action="store_true", help="accept a user id that matches nothing"
    )
    erase.set_defaults(handler=cmd_erase)


def _add_ingest_and_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = _sub(sub, "ingest", "upload a file with per-user deduplication")
    ingest.add_argument("--user", required=True, type=_user_id, help="the uploading user's id")
    ingest.add_argument("file", help="path of the file to upload")
    ingest.set_defaults(handler=cmd_ingest)
    demo = _sub(sub, "demo", "demo data").add_subparsers(dest="demo", required=True)
    seed = _sub(demo, "seed", "fill the stores with synthetic data")
    seed.add_argument("--scale", type=_positive_int, default=1, help="multiply the data volume")
    seed.add_argument("--seed", type=int, default=0, help="random seed")
    seed.add_argument(
        "--allow-servers", action="store_true", help="also seed when store URLs are configured"
    )
    seed.set_defaults(handler=cmd_demo_seed)


class _Version(argparse.Action):
    """`--version`, reading the installed version only when asked (importlib.metadata is slow)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from importlib import metadata

        print(f"rlm {metadata.version('rlm')}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `rlm`."""
    parser = argparse.ArgumentParser(
        prog="rlm",
        description=__doc__,
        epilog="exit codes: 0 ok, 1 a store or run failed, 2 bad input or configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print rlm's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    simple: list[tuple[str, str, Handler, bool]] = [
        ("metrics", "print usage metrics of every store", cmd_metrics, True),
        ("queue", "print queued cleanup runs", cmd_queue, True),
        ("settings", "print settings, secrets redacted", cmd_settings, False),
        ("run", "seed if empty, then start dagster dev on 127.0.0.1", cmd_run, False),
    ]
    for name, help_text, handler, formats in simple:
        command = _sub(sub, name, help_text)
        if formats:
            _add_format(command)
        command.set_defaults(handler=handler)
    _add_cleanup(sub)
    _add_erase(sub)
    _add_ingest_and_demo(sub)
    _add_api(sub)
    add_init_and_audit(sub, _sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `rlm`: bad input or configuration exits 2, a failing store 1, no traceback."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    from rlm_core.ports import StoreError
    from rlm_core.settings import Settings, SettingsError
    from rlm_dagster.logs import configure_logging

    try:
        settings = Settings.from_env()
        configure_logging(settings)
        return handler(args, settings)
    except SettingsError as exc:
        print(f"rlm: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"rlm: a store failed: {exc}", file=sys.stderr)
        return 1
