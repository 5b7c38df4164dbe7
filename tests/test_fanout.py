"""A Redis cleanup split over a cluster's primaries (README, "Scale past one machine"): the core's
shards, per-shard leases and cap shares, and redis_fanout_job on a real 3-primary cluster."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import redis
from redis.cluster import RedisCluster

from rlm_core.adapters.redis_cache import RedisCacheStore
from rlm_core.clock import FakeClock
from rlm_core.domain import ResourceType
from rlm_core.lifecycle import LifecycleManager, split_cap
from rlm_core.ports import CacheSeed, StoreError
from rlm_core.settings import Settings
from rlm_dagster.fanout import (
    COMBINE_OP,
    FANOUT_JOB,
    PART_OP,
    fanout_run_config,
    redis_fanout_job,
)
from rlm_dagster.guard import run_stores
from rlm_dagster.resources import LifecycleResource
from rlm_dagster.run_tags import RESOURCE_TYPE_TAG
from rlm_dagster.schedules import build_schedules
from rlm_dagster.wiring import build_definitions
from tests import test_connections

# The real 3-primary cluster of test_connections (one per module) and its flushed client.
cluster_ports = test_connections.cluster_ports
cluster = test_connections.cluster

PATTERNS = ("doc:text:*", "cache:*")
HOUR = 3600
LEASE = timedelta(minutes=20)


@pytest.fixture
def env(
    cluster_ports: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The cluster for Redis, the embedded stores for the rest, enforce mode."""
    values = {
        "REDIS_URL": f"redis://127.0.0.1:{cluster_ports[1]}/0",
        "REDIS_CLUSTER": "true",
        "RLM_DATA_DIR": str(tmp_path / "data"),
        "RLM_CLEANUP_MODE": "enforce",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def seed(store: RedisCacheStore, count: int, idle: int, prefix: str = "cache:") -> list[bytes]:
    keys = [f"{prefix}{i}".encode() for i in range(count)]
    store.seed([CacheSeed(k, b"x" * 50, None, idle) for k in keys])
    return keys


def by_primary(cluster: RedisCluster) -> dict[str, redis.Redis]:
    return {n.name: cluster.get_redis_connection(n) for n in cluster.get_primaries()}


def keys_of(node: redis.Redis) -> set[bytes]:
    return set(node.scan_iter(count=1000))


# ------------------------------------------------------------------ the core


def test_split_cap_adds_up_to_the_cap_and_never_past_it() -> None:
    assert split_cap(10, 3) == [4, 3, 3]
    assert split_cap(2, 3) == [1, 1, 0]
    assert split_cap(None, 2) == [None, None]
    assert split_cap(7, 1) == [7]
    for cap in range(0, 20):
        for parts in range(1, 6):
            shares = split_cap(cap, parts)
            assert sum(s or 0 for s in shares) == cap
            assert max(s or 0 for s in shares) - min(s or 0 for s in shares) <= 1
    with pytest.raises(ValueError, match="parts: 0"):
        split_cap(5, 0)


def test_shards_are_the_primaries_and_their_scans_partition_the_keys(
    cluster: RedisCluster,
) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    ours = set(seed(store, 200, 0))
    seed(store, 40, 0, prefix="blacklist:")
    shards = store.shards()
    assert shards == sorted(by_primary(cluster)) and len(shards) == 3
    seen: list[set[bytes]] = []
    for shard in shards:
        part = {k.key for batch in store.restricted(shard).scan(50) for k in batch}
        assert part == {k for k in keys_of(by_primary(cluster)[shard]) if k.startswith(b"cache:")}
        seen.append(part)
    assert set().union(*seen) == ours
    assert sum(len(s) for s in seen) == len(ours)  # disjoint
    assert {k.key for batch in store.scan(50) for k in batch} == ours  # the whole store unchanged


def test_a_shard_that_is_no_longer_a_primary_fails_the_scan(cluster: RedisCluster) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    gone = store.restricted("127.0.0.1:1")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1 is no longer a cluster primary"):
        next(iter(gone.scan(10)))


def test_each_shard_cleanup_deletes_only_its_primarys_idle_keys(
    cluster: RedisCluster, env: dict[str, str]
) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    idle = set(seed(store, 120, 2 * HOUR))
    fresh = set(seed(store, 60, 0, prefix="doc:text:"))
    foreign = set(seed(store, 30, 2 * HOUR, prefix="rate_limit:"))
    nodes = by_primary(cluster)
    before = {name: keys_of(node) for name, node in nodes.items()}
    total = 0
    with LifecycleManager.from_settings(Settings.from_env(), FakeClock()) as manager:
        for shard in manager.cache_shards():
            report = manager.cleanup(ResourceType.REDIS_CACHE, run_id="fan", shard=shard)
            assert report.success, report.errors
            after = {name: keys_of(node) for name, node in nodes.items()}
            assert after[shard] == before[shard] - idle  # its idle keys, nothing else
            for other in set(nodes) - {shard}:
                assert after[other] == before[other]  # other primaries untouched
            assert report.deleted_counts["redis"] == len(before[shard] & idle)
            total += report.deleted_counts["redis"]
            before = after
    assert total == len(idle)
    left = set().union(*(keys_of(n) for n in nodes.values()))
    assert fresh | foreign <= left and not left & idle


def test_shard_caps_add_up_to_the_runs_cap(cluster: RedisCluster, env: dict[str, str]) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    seed(store, 90, 2 * HOUR)
    deleted = 0
    with LifecycleManager.from_settings(Settings.from_env(), FakeClock()) as manager:
        shards = manager.cache_shards()
        for shard, share in zip(shards, split_cap(10, len(shards)), strict=True):
            report = manager.cleanup(ResourceType.REDIS_CACHE, max_deletions=share, shard=shard)
            assert report.deleted_counts["redis"] == share and report.capped
            deleted += report.deleted_counts["redis"]
    assert deleted == 10


def test_a_shard_held_by_another_run_is_refused_and_others_go_on(
    cluster: RedisCluster, env: dict[str, str]
) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    idle = set(seed(store, 60, 2 * HOUR))
    clock = FakeClock()
    with LifecycleManager.from_settings(Settings.from_env(), clock) as manager:
        busy, free = manager.cache_shards()[:2]
        metadata = manager.stores.metadata()
        metadata.ensure_indexes()
        assert metadata.acquire_lease(f"redis@{busy}", "other-run", clock.now(), LEASE) is None
        refused = manager.cleanup(ResourceType.REDIS_CACHE, shard=busy)
        assert refused.deleted_counts["redis"] == 0
        assert any("another cleanup of redis@" in e for e in refused.errors), refused.errors
        went = manager.cleanup(ResourceType.REDIS_CACHE, shard=free)
        assert went.success and went.deleted_counts["redis"] > 0
        # A run over the whole cache leases every shard too: it waits for the busy part.
        whole = manager.cleanup(ResourceType.REDIS_CACHE)
        assert whole.deleted_counts["redis"] == 0
        assert any(f"another cleanup of redis@{busy}" in e for e in whole.errors), whole.errors
    assert keys_of(by_primary(cluster)[busy]) & idle  # the busy shard kept its keys


def test_a_part_waits_for_a_run_over_the_whole_cache(
    cluster: RedisCluster, env: dict[str, str]
) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    seed(store, 30, 2 * HOUR)
    clock = FakeClock()
    with LifecycleManager.from_settings(Settings.from_env(), clock) as manager:
        shard = manager.cache_shards()[0]
        metadata = manager.stores.metadata()
        metadata.ensure_indexes()
        for name in manager.cache_shards():  # what a whole-cache run holds while it sweeps
            assert metadata.acquire_lease(f"redis@{name}", "whole-run", clock.now(), LEASE) is None
        part = manager.cleanup(ResourceType.REDIS_CACHE, shard=shard)
    assert part.deleted_counts["redis"] == 0
    assert any(f"another cleanup of redis@{shard}" in e for e in part.errors), part.errors


def test_a_shard_is_only_for_the_redis_cache(env: dict[str, str]) -> None:
    with LifecycleManager.from_settings(Settings.from_env(), FakeClock()) as manager:
        with pytest.raises(ValueError, match="shard: 'x' is not valid for resource_type"):
            manager.cleanup(ResourceType.QDRANT_VECTORS, shard="x")
        with pytest.raises(ValueError, match="shard: '' is not valid"):
            manager.cleanup(ResourceType.REDIS_CACHE, shard="")


# ------------------------------------------------------------------ Dagster


def output_metadata(result: dg.ExecuteInProcessResult, step: str) -> dict[str, Any]:
    [event] = [
        e for e in result.all_events if e.event_type_value == "STEP_OUTPUT" and e.step_key == step
    ]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def test_the_fanout_job_sweeps_every_primary_in_its_own_op(
    cluster: RedisCluster, env: dict[str, str]
) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    idle = set(seed(store, 150, 2 * HOUR))
    seed(store, 30, 2 * HOUR, prefix="rate_limit:")
    nodes = by_primary(cluster)
    expected = {name: len(keys_of(node) & idle) for name, node in nodes.items()}
    with dg.instance_for_test() as instance:
        result = redis_fanout_job.execute_in_process(
            run_config=fanout_run_config(max_deletions=1000),
            resources={"lifecycle": LifecycleResource()},
            instance=instance,
        )
    assert result.success
    parts = [
        e.step_key
        for e in result.all_events
        if e.event_type_value == "STEP_SUCCESS" and e.step_key.startswith(PART_OP)
    ]
    assert sorted(parts) == [f"{PART_OP}[part_{i}]" for i in range(3)]
    combined = result.output_for_node(COMBINE_OP)
    assert combined["deleted_counts"]["redis"] == len(idle)
    assert combined["parts"] == expected
    assert sum(1 for n in nodes.values() for k in keys_of(n) if k.startswith(b"cache:")) == 0
    metadata = output_metadata(result, COMBINE_OP)
    assert metadata["total_deleted"] == len(idle)
    assert metadata["mode"] == "enforce"
    # One audit for the run, whole lines from every part, under the run's id.
    audit_dir = Path(env["RLM_DATA_DIR"]) / "audit"
    lines = [json.loads(line) for f in audit_dir.glob("audit-*.jsonl") for line in f.open()]
    assert sorted(line["target"] for line in lines) == sorted(k.decode() for k in idle)
    assert {line["run_id"] for line in lines} == {result.run_id}


def test_the_fanout_job_splits_the_cap_and_keeps_the_dry_run(
    cluster: RedisCluster, env: dict[str, str]
) -> None:
    store = RedisCacheStore(cluster, PATTERNS)
    seed(store, 60, 2 * HOUR)
    with dg.instance_for_test() as instance:
        dry = redis_fanout_job.execute_in_process(
            run_config=fanout_run_config(dry_run=True, max_deletions=2),
            resources={"lifecycle": LifecycleResource()},
            instance=instance,
        )
        assert dry.success
        assert dry.output_for_node(COMBINE_OP)["deleted_counts"]["redis"] == 2
        assert dry.output_for_node(COMBINE_OP)["dry_run"] is True
        assert sum(n.dbsize() for n in by_primary(cluster).values()) == 60
        real = redis_fanout_job.execute_in_process(
            run_config=fanout_run_config(max_deletions=2),
            resources={"lifecycle": LifecycleResource()},
            instance=instance,
        )
    assert real.output_for_node(COMBINE_OP)["deleted_counts"]["redis"] == 2
    assert real.output_for_node(COMBINE_OP)["capped"] is True
    assert sorted(real.output_for_node(COMBINE_OP)["parts"].values()) == [0, 1, 1]
    assert sum(n.dbsize() for n in by_primary(cluster).values()) == 58


def test_a_cap_below_one_is_refused_before_any_part(env: dict[str, str]) -> None:
    with dg.instance_for_test() as instance:
        result = redis_fanout_job.execute_in_process(
            run_config=fanout_run_config(max_deletions=0),
            resources={"lifecycle": LifecycleResource()},
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "max_deletions: 0 is not valid" in str(failure[0].event_specific_data)


def test_in_cluster_mode_the_redis_schedule_runs_the_fanout(env: dict[str, str]) -> None:
    schedules = {s.name: s for s in build_schedules(Settings.from_env())}
    assert schedules["redis_cleanup_schedule"].job_name == FANOUT_JOB
    assert schedules["qdrant_cleanup_schedule"].job_name == "cleanup_job"
    defs = build_definitions(Settings.from_env())
    assert defs.resolve_job_def(FANOUT_JOB) is not None


def test_on_one_server_the_redis_schedule_runs_cleanup_job(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_CLUSTER")
    monkeypatch.delenv("REDIS_URL")
    schedules = {s.name: s for s in build_schedules(Settings.from_env())}
    assert schedules["redis_cleanup_schedule"].job_name == "cleanup_job"


def test_a_fanout_run_holds_the_redis_store_for_the_queue_and_the_guard() -> None:
    tags = redis_fanout_job.tags
    assert run_stores(FANOUT_JOB, tags) == {"redis"}
    assert tags[RESOURCE_TYPE_TAG] == "redis_cache"
