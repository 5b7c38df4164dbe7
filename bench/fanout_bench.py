"""What one worker sustains, and what a fan-out adds: a Redis cleanup on a real 3-primary cluster.

One worker runs `cleanup(REDIS_CACHE)` over the whole cluster (SCAN on each primary in turn);
the fan-out runs `cleanup(REDIS_CACHE, shard=<primary>)` in one process per primary at the same
time, as redis_fanout_job's parts do. Both sweep the same data (reloaded before each run):
n cache keys without a TTL, half idle 2 h (UNLINK), half idle 0 (EXPIRE), plus n/10 foreign keys.
Keys per second counts the cache keys each sweep judged. The fan-out's wall time is the slowest
part's. On this 2-core machine the three redis-servers and the parts share the cores, so the
fan-out's gain here is a floor; the README's worker counts use the one-worker rate.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import Row, log, median, ratio, run_worker
from bench.redis_bench import REDIS_CLI, VALUE, _resp

PATTERNS = "doc:text:*,cache:*"
IDLE = 7200


def _settings(ports: list[int], data_dir: str) -> Any:
    from rlm_core.settings import Settings

    return Settings.from_env(
        {
            "REDIS_URL": f"redis://127.0.0.1:{ports[0]}/0",
            "REDIS_CLUSTER": "true",
            "REDIS_CACHE_TTL_HOURS": "1",
            "RLM_DATA_DIR": data_dir,
            "RLM_CLEANUP_MODE": "enforce",
            "RLM_BATCH_SIZE": "1000",
        }
    )


def sweep(params: dict[str, Any]) -> dict[str, Any]:
    """One cleanup (the whole cluster, or one shard) in this process; seconds and counts."""
    from rlm_core.domain import ResourceType
    from rlm_core.lifecycle import LifecycleManager

    settings = _settings(params["ports"], params["data_dir"])
    with LifecycleManager.from_settings(settings) as manager:
        start = time.perf_counter()
        report = manager.cleanup(
            ResourceType.REDIS_CACHE, run_id=params["run_id"], shard=params.get("shard")
        )
        seconds = time.perf_counter() - start
    assert report.success, report.errors
    return {
        "seconds": seconds,
        "deleted": report.deleted_counts["redis"],
        "repaired": report.repaired,
    }


def _part(params: dict[str, Any], shard: str) -> dict[str, Any]:
    return run_worker("bench.fanout_bench:sweep", {**params, "shard": shard}, fork=True)


def _shards(ports: list[int], data_dir: str) -> list[str]:
    from rlm_core.lifecycle import LifecycleManager

    with LifecycleManager.from_settings(_settings(ports, data_dir)) as manager:
        return manager.cache_shards()


def _datasets(ports: list[int], n: int, folder: Path) -> dict[int, Path]:
    """One RESP file of RESTORE commands per primary, holding the keys of its slots."""
    import redis
    from redis.cluster import RedisCluster
    from redis.crc import key_slot

    cluster = RedisCluster(host="127.0.0.1", port=ports[0])
    slots: dict[int, list[Any]] = cluster.nodes_manager.slots_cache
    owner = {slot: int(nodes[0].port) for slot, nodes in slots.items()}
    client = redis.Redis(port=ports[0])
    client.set(b"{bench}tmp", VALUE)
    payload = client.dump(b"{bench}tmp")
    client.delete(b"{bench}tmp")
    client.close()
    cluster.close()
    assert isinstance(payload, bytes)
    buffers: dict[int, list[bytes]] = {port: [] for port in ports}

    def add(key: bytes, idle: int) -> None:
        cmd = _resp(b"RESTORE", key, b"0", payload, b"REPLACE", b"IDLETIME", b"%d" % idle)
        buffers[owner[key_slot(key)]].append(cmd)

    for i in range(n):
        add((b"doc:text:%d" if i % 2 else b"cache:query:u%d") % i, IDLE if i % 4 < 2 else 0)
    for i in range(n // 10):
        add(b"blacklist:%d" % i, 86400)
    paths = {}
    for port, commands in buffers.items():
        paths[port] = folder / f"cluster-{n}-{port}.resp"
        paths[port].write_bytes(b"".join(commands))
    return paths


def _reset(datasets: dict[int, Path]) -> None:
    for port, path in datasets.items():
        subprocess.run(
            [REDIS_CLI, "-p", str(port), "FLUSHALL", "SYNC"], check=True, capture_output=True
        )
        with path.open("rb") as handle:
            subprocess.run(
                [REDIS_CLI, "-p", str(port), "--pipe"],
                stdin=handle,
                check=True,
                capture_output=True,
            )


def run(sizes: list[int], runs: int) -> list[Row]:
    """Rows: keys/s of one worker, of the fan-out, and the fan-out's gain, per size."""
    from tests.secure_services import redis_cluster

    rows: list[Row] = []
    with redis_cluster(3) as ports, tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        data_dir = str(folder / "data")
        shards = _shards(ports, data_dir)
        for n in sizes:
            datasets = _datasets(ports, n, folder)
            one: list[float] = []
            fan: list[float] = []
            for r in range(runs):
                _reset(datasets)
                res = run_worker(
                    "bench.fanout_bench:sweep",
                    {"ports": ports, "data_dir": data_dir, "run_id": f"one-{n}-{r}"},
                    fork=True,
                )
                assert res["deleted"] + res["repaired"] == n, res
                one.append(res["seconds"])
                _reset(datasets)
                start = time.perf_counter()
                params = {"ports": ports, "data_dir": data_dir, "run_id": f"fan-{n}-{r}"}
                with ThreadPoolExecutor(len(shards)) as pool:
                    parts = list(
                        pool.map(
                            partial(_part, params),
                            shards,
                        )
                    )
                assert sum(p["deleted"] + p["repaired"] for p in parts) == n, parts
                # The slowest part is the fan-out's time (process start-up left out, as above;
                # the parts are forked from bench/run's fork server at once, see bench/worker.py).
                fan.append(max(p["seconds"] for p in parts))
                log(
                    f"fanout n={n} run {r + 1}: one worker {one[-1]:.2f}s, "
                    f"{len(shards)} parts {fan[-1]:.2f}s (wall with start-up "
                    f"{time.perf_counter() - start:.2f}s)"
                )
            t_one, t_fan = median(one), median(fan)
            label = f"redis_cluster_sweep_{n // 1000}k" if n < 1_000_000 else "redis_cluster_1M"
            note = f"3-primary cluster on loopback, {n} cache keys + {n // 10} foreign"
            rows += [
                Row(label, "keys per second, one worker", n / t_one, None, None, note=note),
                Row(
                    label,
                    f"keys per second, {len(shards)} parts at once vs one worker",
                    n / t_fan,
                    n / t_one,
                    ratio(t_one, t_fan),
                    note="2 cores shared by 3 redis-servers and 3 parts: a floor for the gain",
                ),
            ]
            for path in datasets.values():
                path.unlink()
    return rows
