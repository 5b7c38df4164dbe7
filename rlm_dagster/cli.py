"""The `rlm` command: metrics, cleanup (recorded as a Dagster run), queue, ingest, demo seed, settings."""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import dagster as dg

from rlm_core.demo import seed_demo
from rlm_core.domain import CleanupPriority, ResourceType
from rlm_core.lifecycle import LifecycleManager
from rlm_core.ports import StoreError
from rlm_core.settings import MAX_COUNT, Settings, SettingsError
from rlm_dagster import dev
from rlm_dagster.home import ensure_dagster_home
from rlm_dagster.jobs import CLEANUP_OP, cleanup_run_config
from rlm_dagster.queue import CLEANUP_JOB, queue_json, queued_cleanup_runs
from rlm_dagster.run_tags import MANUAL_REASON, Trigger, cleanup_tags
from rlm_dagster.wiring import build_definitions

Handler = Callable[[argparse.Namespace, Settings], int]


def _print(payload: Any) -> None:
    print(json.dumps(payload, indent=2, default=str))


def _resource_type(raw: str) -> ResourceType:
    try:
        return ResourceType.parse(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(raw: str) -> int:
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


def measure_all(manager: LifecycleManager) -> dict[str, Any]:
    """Every store's seed metrics; when one is down, measure one by one so the others show."""
    try:
        return {rt.store: m.as_seed_json() for rt, m in manager.metrics().items()}
    except StoreError:
        pass
    out: dict[str, Any] = {}
    for rt in ResourceType:
        try:
            out[rt.store] = manager.metrics([rt])[rt].as_seed_json()
        except StoreError as exc:
            out[rt.store] = {"error": str(exc)}
    return out


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    """Print the seed's metrics JSON; a store that is down gets an `error` entry (exit 1)."""
    with LifecycleManager.from_settings(settings) as manager:
        out = measure_all(manager)
    _print(out)
    return 1 if any("error" in entry for entry in out.values()) else 0


def cleanup_response(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The seed's cleanup response from a finished cleanup_job run."""
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
    """Run cleanup_job in this process, recorded in the Dagster instance, and print the response."""
    if not _instance_home_ready(settings):
        return 2
    job = build_definitions(settings).get_job_def(CLEANUP_JOB)
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            run_config=cleanup_run_config(args.resource_type, args.dry_run, args.max_deletions),
            instance=instance,
            tags=cleanup_tags(
                args.resource_type, CleanupPriority.HIGH, MANUAL_REASON, Trigger.MANUAL
            ),
            raise_on_error=False,
        )
    response = cleanup_response(result)
    _print(response)
    return 0 if response["success"] else 1


def _instance_home_ready(settings: Settings) -> bool:
    # Dagster's own refusal of a missing DAGSTER_HOME is a traceback.
    home = ensure_dagster_home(settings)
    if home.is_dir():
        return True
    print(
        f"rlm: DAGSTER_HOME={str(home)!r} is not valid; allowed: an existing folder, "
        "or unset to use <RLM_DATA_DIR>/dagster-home",
        file=sys.stderr,
    )
    return False


def cmd_queue(args: argparse.Namespace, settings: Settings) -> int:
    """Print the seed's queue JSON from the instance's QUEUED cleanup_job runs."""
    if not _instance_home_ready(settings):
        return 2
    with dg.DagsterInstance.get() as instance:
        _print(queue_json(queued_cleanup_runs(instance)))
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
    if not (dev.is_embedded(settings) or args.allow_servers):
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
    try:
        return dev.run(settings)
    except ValueError as exc:
        print(f"rlm: {exc}", file=sys.stderr)
        return 2


def _add_cleanup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cleanup = sub.add_parser("cleanup", help="run cleanup_job now (recorded in Dagster)")
    allowed = ", ".join(rt.value for rt in ResourceType)
    cleanup.add_argument(
        "--resource-type", type=_resource_type, help=f"one of: {allowed} (default: all)"
    )
    cleanup.add_argument("--dry-run", action="store_true", help="report what would go only")
    cleanup.add_argument("--max-deletions", type=_positive_int, help="cap deletions in this run")
    cleanup.set_defaults(handler=cmd_cleanup)


def _add_ingest_and_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = sub.add_parser("ingest", help="upload a file with per-user deduplication")
    ingest.add_argument("--user", required=True, type=_user_id, help="the uploading user's id")
    ingest.add_argument("file", help="path of the file to upload")
    ingest.set_defaults(handler=cmd_ingest)
    demo = sub.add_parser("demo", help="demo data").add_subparsers(dest="demo", required=True)
    seed = demo.add_parser("seed", help="fill the stores with synthetic data")
    seed.add_argument("--scale", type=_positive_int, default=1, help="multiply the data volume")
    seed.add_argument("--seed", type=int, default=0, help="random seed")
    seed.add_argument(
        "--allow-servers", action="store_true", help="also seed when store URLs are configured"
    )
    seed.set_defaults(handler=cmd_demo_seed)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `rlm`."""
    parser = argparse.ArgumentParser(prog="rlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    simple: list[tuple[str, str, Handler]] = [
        ("metrics", "print usage metrics of every store", cmd_metrics),
        ("queue", "print queued cleanup runs", cmd_queue),
        ("settings", "print settings, secrets redacted", cmd_settings),
        ("run", "seed if empty, then start dagster dev on 127.0.0.1", cmd_run),
    ]
    for name, help_text, handler in simple:
        sub.add_parser(name, help=help_text).set_defaults(handler=handler)
    _add_cleanup(sub)
    _add_ingest_and_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `rlm`: bad input or configuration exits 2, a failing store 1, no traceback."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, Settings.from_env())
    except SettingsError as exc:
        print(f"rlm: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"rlm: a store failed: {exc}", file=sys.stderr)
        return 1
