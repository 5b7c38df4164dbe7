"""ObjectStore contract: S3 over HTTP (moto's server), the on-disk store and the in-memory fake
(tests/fakes/) behave alike."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from minio import Minio

from rlm_core.adapters.disk_objects import TEMP_PREFIX, DiskObjectStore
from rlm_core.adapters.s3_objects import S3ObjectStore, connect_minio, split_endpoint
from rlm_core.ports import MissingStoreError, ObjectStore, StoreError
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY
from tests.fakes import MemoryObjects, MemoryS3
from tests.services import S3Server, free_port

MANY = 1500  # crosses a 1000-key listing page and a 1000-key delete request


@pytest.fixture(params=["s3", "disk", "fakes"])
def fresh_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """An adapter whose bucket does not exist yet."""
    if request.param == "s3":
        client: Minio = request.getfixturevalue("minio_client")
        return S3ObjectStore(client, request.getfixturevalue("bucket_name"))
    if request.param == "fakes":
        return MemoryObjects(MemoryS3(), "documents")
    return DiskObjectStore(tmp_path / "objects", "documents")


@pytest.fixture
def store(fresh_store: ObjectStore) -> Iterator[ObjectStore]:
    """An adapter with its bucket created."""
    fresh_store.ensure_bucket()
    yield fresh_store
    fresh_store.close()


class _Unsized(io.RawIOBase):
    """A non-seekable stream of `size` bytes produced in small reads, like a socket."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left, 64 * 1024)
        buffer[:n] = b"z" * n
        self._left -= n
        return n


def _put(store: ObjectStore, key: str, data: bytes) -> int:
    return store.put(key, io.BytesIO(data), len(data), "application/pdf")


def test_ensure_bucket_is_idempotent(fresh_store: ObjectStore) -> None:
    fresh_store.ensure_bucket()
    fresh_store.ensure_bucket()
    assert list(fresh_store.iter_objects()) == []


def test_put_then_exists_and_listed_with_size_and_time(store: ObjectStore) -> None:
    before = datetime.now(UTC) - timedelta(minutes=1)
    assert _put(store, "ab12/report.pdf", b"hello world") == 11
    assert store.exists("ab12/report.pdf")
    assert not store.exists("ab12/other.pdf")
    (info,) = store.iter_objects()
    assert (info.key, info.size) == ("ab12/report.pdf", 11)
    assert info.last_modified.tzinfo is not None
    assert before <= info.last_modified <= datetime.now(UTC) + timedelta(minutes=1)


def test_put_replaces_an_object(store: ObjectStore) -> None:
    _put(store, "k/one", b"first version")
    assert _put(store, "k/one", b"v2") == 2
    assert [(o.key, o.size) for o in store.iter_objects()] == [("k/one", 2)]


@pytest.mark.parametrize(
    "key", ["ab12/Informe anual ñ 2024.pdf", "日本/ファイル 1.txt", "a b/c+d (1).png", "x/%41 #?"]
)
def test_keys_with_unicode_spaces_and_symbols(store: ObjectStore, key: str) -> None:
    assert _put(store, key, b"data") == 4
    assert store.exists(key)
    assert [o.key for o in store.iter_objects()] == [key]
    assert store.remove([key]) == []
    assert not store.exists(key)


def test_listing_is_in_key_order(store: ObjectStore) -> None:
    keys = ["a/b", "a.txt", "a0", "b/c/d", "b/c.txt"]
    for key in keys:
        _put(store, key, b"x")
    assert [o.key for o in store.iter_objects()] == sorted(keys)


def test_many_objects_list_once_each_and_remove_in_batches(store: ObjectStore) -> None:
    keys = [f"{i % 7}/doc-{i:05d}.pdf" for i in range(MANY)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: _put(store, k, b"x"), keys))
    listing = store.iter_objects()
    assert iter(listing) is listing  # a stream, not a list held in memory
    listed = [o.key for o in listing]
    assert len(listed) == MANY
    assert set(listed) == set(keys)
    assert store.remove(keys) == []
    assert list(store.iter_objects()) == []


def test_remove_is_idempotent_and_missing_keys_are_fine(store: ObjectStore) -> None:
    _put(store, "u1/a.pdf", b"a")
    assert store.remove(["u1/a.pdf", "never/was.pdf"]) == []
    assert store.remove(["u1/a.pdf", "never/was.pdf"]) == []
    assert store.remove([]) == []
    assert not store.exists("u1/a.pdf")


def test_put_of_unknown_length_streams_in_parts(store: ObjectStore) -> None:
    size = 10 * 1024 * 1024 + 123
    assert store.put("big/stream.bin", _Unsized(size), None, None) == size  # type: ignore[arg-type]
    assert [(o.key, o.size) for o in store.iter_objects()] == [("big/stream.bin", size)]


def test_put_of_a_short_stream_fails_and_stores_nothing(store: ObjectStore) -> None:
    with pytest.raises(OSError, match="15"):
        store.put("short/one", io.BytesIO(b"only ten b"), 15, None)
    assert not store.exists("short/one")


def test_sizes_of_existing_keys_only(store: ObjectStore) -> None:
    _put(store, "u1/a.pdf", b"a" * 1234)
    _put(store, "u1/empty", b"")
    _put(store, "日本/ファイル 1.txt", b"abc")
    asked = ["u1/a.pdf", "u1/empty", "日本/ファイル 1.txt", "u1/missing.pdf", "u1"]
    assert store.sizes(asked) == {"u1/a.pdf": 1234, "u1/empty": 0, "日本/ファイル 1.txt": 3}
    _put(store, "u1/a.pdf", b"v2")
    assert store.remove(["u1/empty"]) == []
    assert store.sizes(asked) == {"u1/a.pdf": 2, "日本/ファイル 1.txt": 3}
    assert store.sizes([]) == {}


# ---------------------------------------------------------------- disk store only


@pytest.fixture
def disk(tmp_path: Path) -> DiskObjectStore:
    """The on-disk store with its bucket."""
    store = DiskObjectStore(tmp_path / "objects", "documents")
    store.ensure_bucket()
    return store


@pytest.mark.parametrize(
    "key", ["../escape", "/abs", "a/../../b", "a/./b", "a//b", "dir/", "a\\b", "nul\x00x", ""]
)
def test_disk_rejects_keys_that_could_leave_the_bucket(
    disk: DiskObjectStore, tmp_path: Path, key: str
) -> None:
    with pytest.raises(ValueError, match="key") as caught:
        _put(disk, key, b"x")
    assert repr(key) in str(caught.value)
    with pytest.raises(ValueError):
        disk.exists(key)
    assert disk.remove([key]) == [key]
    assert not (tmp_path / "escape").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects"]


def test_disk_sizes_leave_out_keys_it_rejects(disk: DiskObjectStore) -> None:
    _put(disk, "a/b.pdf", b"12")
    assert disk.sizes(["../escape", "a/../a/b.pdf", "a", f"a/{TEMP_PREFIX}x", "a/b.pdf"]) == {
        "a/b.pdf": 2
    }


def test_disk_rejects_the_reserved_temp_prefix(disk: DiskObjectStore) -> None:
    with pytest.raises(ValueError, match="reserved"):
        _put(disk, f"a/{TEMP_PREFIX}x", b"x")


def test_disk_listing_skips_unfinished_uploads(disk: DiskObjectStore, tmp_path: Path) -> None:
    _put(disk, "u/done.pdf", b"done")
    (tmp_path / "objects" / "documents" / "u" / f"{TEMP_PREFIX}abc").write_bytes(b"partial")
    assert [o.key for o in disk.iter_objects()] == ["u/done.pdf"]


def test_disk_remove_prunes_empty_folders_up_to_the_bucket(
    disk: DiskObjectStore, tmp_path: Path
) -> None:
    _put(disk, "a/b/c/one.pdf", b"1")
    _put(disk, "a/two.pdf", b"2")
    assert disk.remove(["a/b/c/one.pdf"]) == []
    bucket = tmp_path / "objects" / "documents"
    assert not (bucket / "a" / "b").exists()
    assert (bucket / "a" / "two.pdf").exists()
    assert disk.remove(["a/two.pdf"]) == []
    assert bucket.is_dir()
    assert list(bucket.iterdir()) == []


def test_disk_remove_of_a_folder_name_leaves_the_objects_under_it(disk: DiskObjectStore) -> None:
    _put(disk, "a/b.pdf", b"1")
    assert disk.remove(["a"]) == []
    assert disk.exists("a/b.pdf")


def test_disk_is_shared_between_store_objects(tmp_path: Path) -> None:
    writer = DiskObjectStore(tmp_path / "objects", "documents")
    reader = DiskObjectStore(tmp_path / "objects", "documents")
    writer.ensure_bucket()
    _put(writer, "k/shared", b"abc")
    assert reader.exists("k/shared")


# ---------------------------------------------------------------- S3 store only


@pytest.mark.parametrize(
    ("endpoint", "secure", "expected"),
    [
        ("minio:9000", False, ("minio:9000", False)),
        ("minio:9000", True, ("minio:9000", True)),
        ("https://minio:9000/", False, ("minio:9000", True)),
        ("http://minio:9000", True, ("minio:9000", False)),
    ],
)
def test_split_endpoint(endpoint: str, secure: bool, expected: tuple[str, bool]) -> None:
    assert split_endpoint(endpoint, secure) == expected


def test_connect_minio_speaks_to_the_server(s3_srv: S3Server, bucket_name: str) -> None:
    endpoint = f"http://{s3_srv.endpoint}"
    client = connect_minio(endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, timeout=5)
    store = S3ObjectStore(client, bucket_name)
    store.ensure_bucket()
    assert _put(store, "k", b"abc") == 3
    assert store.exists("k")


def test_unreachable_server_is_a_store_error_without_the_secret(bucket_name: str) -> None:
    client = connect_minio(f"127.0.0.1:{free_port()}", S3_ACCESS_KEY, S3_SECRET_KEY, timeout=1)
    store = S3ObjectStore(client, bucket_name)
    for call in (
        store.ensure_bucket,
        lambda: store.exists("k"),
        lambda: list(store.iter_objects()),
    ):
        with pytest.raises(StoreError) as caught:
            call()
        assert S3_SECRET_KEY not in str(caught.value)
        assert bucket_name in str(caught.value)


def test_s3_listing_skips_folder_placeholders(minio_client: Minio, bucket_name: str) -> None:
    store = S3ObjectStore(minio_client, bucket_name)
    store.ensure_bucket()
    minio_client.put_object(bucket_name, "folder/", io.BytesIO(b""), 0)
    _put(store, "folder/file.pdf", b"abc")
    assert [o.key for o in store.iter_objects()] == ["folder/file.pdf"]


@pytest.mark.parametrize("operation", ["iter_objects", "exists", "sizes", "put", "remove"])
@pytest.mark.parametrize("region", [None, "us-east-1"], ids=["region-lookup", "region-set"])
def test_s3_missing_bucket_is_a_missing_store_error_naming_the_setting(
    s3_srv: S3Server, bucket_name: str, region: str | None, operation: str
) -> None:
    # With a region configured the client skips its bucket-location lookup, so a HEAD on a key
    # of a missing bucket is the only answer: it must still say the bucket is missing.
    client = Minio(
        s3_srv.endpoint,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        secure=False,
        region=region,
    )
    store = S3ObjectStore(client, bucket_name)
    calls: dict[str, Callable[[], object]] = {
        "iter_objects": lambda: list(store.iter_objects()),
        "exists": lambda: store.exists("k"),
        "sizes": lambda: store.sizes(["k"]),
        "put": lambda: _put(store, "k", b"x"),
        "remove": lambda: store.remove(["k"]),
    }
    with pytest.raises(MissingStoreError) as caught:
        calls[operation]()
    assert isinstance(caught.value, StoreError)
    assert "MINIO_BUCKET" in str(caught.value)
    assert bucket_name in str(caught.value)
    store.ensure_bucket()
    assert store.sizes(["k"]) == {}
    assert list(store.iter_objects()) == []
