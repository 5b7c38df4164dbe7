"""Shared plumbing: workers in subprocesses (peak RSS per child), servers, rows, medians."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MIB = 1024 * 1024


@dataclass
class Row:
    """One line of the results table. ratio: > 1 means rlm is better, unless the goal says <=."""

    bench: str
    metric: str
    rlm: float | None
    baseline: float | None
    ratio: float | None
    goal: str = ""
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "metric": self.metric,
            "rlm": self.rlm,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
        }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ workers


def run_worker(target: str, params: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run `module:function(params)` in a fresh interpreter; add its peak RSS (MiB).

    The child's own rusage (os.wait4) is read, so peaks of different workloads never mix.
    """
    cmd = [PYTHON, "-m", "bench.worker", target, json.dumps(params)]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, env=_env())
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                raise RuntimeError(f"worker {target} timed out after {timeout}s")
            time.sleep(0.01)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"worker {target} failed ({proc.returncode}): {text[-2000:]}")
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    # ru_maxrss of a child also counts the forked copy of this (bigger) parent before exec, so
    # the peak is the child's own VmHWM, reported by bench.worker as it exits.
    result["ru_maxrss_mb"] = usage.ru_maxrss / 1024.0
    result["peak_rss_mb"] = result["vm_hwm_mb"]
    return result


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def vm_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s")


REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


@contextmanager
def redis_server() -> Iterator[int]:
    """A private redis-server (never the shared one on 6379) on a free port."""
    port = free_port()
    assert port != 6379
    workdir = tempfile.mkdtemp(prefix="rlm-bench-redis-")
    args = [
        REDIS_SERVER,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
        "--daemonize",
        "no",
        "--lazyfree-lazy-user-flush",
        "yes",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value
