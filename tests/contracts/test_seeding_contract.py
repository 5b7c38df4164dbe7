"""The seeding interface's contract (rlm_core.seeding), on every adapter and fake the port
contracts run on: the same fixtures, so a store that passes its port's suite passes this too."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from bson import ObjectId

from rlm_core.adapters.qdrant_vectors import QdrantVectorStore
from rlm_core.ports import CacheSeed, MetadataStore
from rlm_core.seeding import cache_seeder, metadata_seeder, vector_seeder
from tests.contracts import test_cache_contract as cache_contract
from tests.contracts import test_metadata_contract as metadata_contract
from tests.contracts import test_vector_contract as vector_contract
from tests.fakes import MemoryVectors

# The port contracts' fixtures: every adapter and the in-memory fake of each store.
cache = cache_contract.cache
vectors = vector_contract.vectors
store = metadata_contract.store


def test_seed_backdates_idle_time_and_sets_ttl(cache: cache_contract.Harness) -> None:
    cache_seeder(cache.store).seed(
        [
            CacheSeed(b"cache:old", b"v", None, idle_seconds=7200),
            CacheSeed(b"cache:new", b"v", None),
            CacheSeed(b"cache:ttl", b"v", 600, idle_seconds=7200),
            CacheSeed(b"blacklist:seeded", b"v", None, idle_seconds=7200),
        ]
    )
    keys = cache_contract.scanned(cache.store)
    assert (keys[b"cache:old"].ttl_seconds, keys[b"cache:new"].ttl_seconds) == (-1, -1)
    assert (keys[b"cache:old"].idle_seconds or 0) >= 7200
    assert (keys[b"cache:new"].idle_seconds or 0) < 60
    assert 0 < keys[b"cache:ttl"].ttl_seconds <= 600
    assert cache.raw.get(b"blacklist:seeded") == b"v"
    everything = [b"cache:old", b"cache:new", b"cache:ttl"]
    assert set(cache.store.unlink_idle(everything, 3600)) == {b"cache:old"}
    cache.raw.delete(b"blacklist:seeded")


def test_upsert_overwrites_by_point_id(vectors: QdrantVectorStore | MemoryVectors) -> None:
    vectors.ensure_collection()
    vector_seeder(vectors).upsert([vector_contract.point("d1", 0, "s1")])
    vector_seeder(vectors).upsert([vector_contract.point("d1", 0, "s2")])
    assert vector_contract.pairs_present(vectors) == {("s2", "d1")}


def test_insert_raw_round_trips_mongo_shapes(store: MetadataStore) -> None:
    oid = ObjectId()
    raw = metadata_contract._raw_doc(
        oid, created_at=datetime(2024, 5, 6, 7, 8, 9, 10000), updated_at=None
    )
    metadata_seeder(store).insert_raw("documents", [raw])
    assert raw["_id"] == oid
    record = store.get_documents([str(oid)])[str(oid)]
    assert record.id == str(oid)
    assert record.created_at == datetime(2024, 5, 6, 7, 8, 9, 10000, tzinfo=UTC)
    assert record.updated_at is None
    assert record.problem is None
    session = metadata_contract._session(
        "8c1d7a0e-5d3b-4f8e-9a51-0f9a1c2b3d4e", metadata_contract.ACTIVE_AT
    )
    messages = [{"chat_id": session["_id"], "file_ids": [str(oid)]}]
    metadata_seeder(store).insert_raw("chat_sessions", [session])
    metadata_seeder(store).insert_raw("messages", messages)
    assert "_id" not in messages[0]  # the caller's dicts are not changed
    assert store.active_sessions([session["_id"]], metadata_contract.SINCE) == {session["_id"]}
    assert store.active_references([str(oid)], metadata_contract.SINCE) == {str(oid)}


def test_insert_raw_rejects_unknown_collections(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match="users"):
        metadata_seeder(store).insert_raw("users", [{"_id": "x"}])
    metadata_seeder(store).insert_raw("messages", [])
