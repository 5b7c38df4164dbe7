"""Entry point of one measured workload: `python -m bench.worker module:function '<json>'`.

`python -m bench.worker --serve MODULE...` is a fork server (bench.common.run_worker with
fork=True): it imports the modules once, then forks one child per request line, so a workload
starts in a few ms instead of paying its imports. The child measures exactly what a fresh
worker measures (its timings are taken inside it, its memory above its own loaded baseline)."""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import signal
import sys
import traceback
from typing import Any

from bench.common import vm_kb


def call(target: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run `module:function(params)`; add the peak RSS (VmHWM) of this process."""
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result: dict[str, Any] = func(params)
    result["vm_hwm_mb"] = vm_kb("VmHWM") / 1024.0
    return result


def main() -> None:
    if sys.argv[1] == "--serve":
        serve(sys.argv[2:])
        return
    print(json.dumps(call(sys.argv[1], json.loads(sys.argv[2]))), flush=True)


def serve(modules: list[str]) -> None:
    """Read {"target", "params", "out", "err"} lines; fork a child per line and answer its pid.
    The child writes its result (or {"error": ...}) to `out` atomically; children are reaped by
    the kernel (SIGCHLD ignored), so the caller polls `out` and the pid."""
    for name in modules:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    gc.collect()
    gc.freeze()  # the children's collections leave the preloaded objects' pages shared
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(pid, flush=True)


def _child(request: dict[str, Any]) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _map_parents_file_pages()
        fd = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdin.close()
        try:
            result = call(request["target"], request["params"])
            usage = resource.getrusage(resource.RUSAGE_SELF)
            result["ru_maxrss_mb"] = usage.ru_maxrss / 1024.0
            # The kernel reaps the child, so its CPU reaches no parent's rusage: it says it.
            result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
        except BaseException:
            result = {"error": traceback.format_exc()}
        else:
            code = 0
        tmp = request["out"] + ".tmp"
        with open(tmp, "w") as handle:
            handle.write(json.dumps(result))
        os.replace(tmp, request["out"])
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _map_parents_file_pages() -> None:
    """Map in this child the file-backed pages (library code, read-only data) its parent has
    mapped: fork copies no page table entries of such mappings, so without this they would
    fault in during the measured run and count as its RSS growth, which they do not in a fresh
    worker (its imports mapped them before its loaded baseline). Which pages: the parent's
    /proc/PID/pagemap "present" bits, over this process's identical memory map."""
    import ctypes

    page = os.sysconf("SC_PAGE_SIZE")
    touch = ctypes.c_char * 1
    with open(f"/proc/{os.getppid()}/pagemap", "rb") as pagemap, open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or not fields[5].startswith("/") or fields[5].startswith("/dev/"):
                continue
            if "r" not in fields[1]:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // page * 8)
            entries = pagemap.read((end - start) // page * 8)
            for i in range(0, len(entries), 8):
                if entries[i + 7] & 0x80:  # bit 63: present
                    touch.from_address(start + i // 8 * page)[0]


if __name__ == "__main__":
    main()
