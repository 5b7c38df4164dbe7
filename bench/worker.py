"""Entry point of one measured workload: `python -m bench.worker module:function '<json>'`."""

from __future__ import annotations

import importlib
import json
import sys

from bench.common import vm_kb


def main() -> None:
    target, raw = sys.argv[1], sys.argv[2]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(json.loads(raw))
    result["vm_hwm_mb"] = vm_kb("VmHWM") / 1024.0
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
