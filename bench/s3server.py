"""moto's S3 server in its own process, with a stdin control line to bulk-load objects.

Putting 100k objects over HTTP takes minutes on moto, so `put BUCKET START STOP STEP` writes
keys straight into moto's in-process backend (the same objects HTTP requests then see).

moto's `list_objects_v2` (moto/s3/models.py, `S3Backend.list_objects_v2` -> `list_objects`)
copies and sorts the whole bucket for every page, so listing N objects costs O(N^2): about
7 s per 1,000-key page at 100k objects, which would make the server, not the client, the
whole measurement. `SortedListing` answers the same request from a sorted index of key names
(bisect to the continuation token, then walk one page), so a page costs O(page). moto then
renders the page through its generic botocore-model serializer (~110 ms per 1,000 keys on an
idle core, 0.6 s under load): `render_list_v2` writes the same ListObjectsV2 XML directly, as a
real S3 server does in a few ms (every page: minio's start-after, equal to the token, used to
send pages after the first back to moto's serializer). The HTTP protocol, the pagination tokens
and the request count are moto's own.
"""

from __future__ import annotations

import bisect
import sys
from typing import Any
from xml.sax.saxutils import escape

import moto.backends
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.s3.models import FakeDeleteMarker, S3Backend, s3_backends
from moto.s3.responses import S3Response

BODY = b"%PDF-1.4 bench object\n" * 3


def object_key(i: int) -> str:
    return f"{i * 2654435761 % 2**32:08x}-{i:07d}/file.pdf"


class SortedListing:
    """list_objects_v2 in O(page) for flat listings (no delimiter) of unversioned buckets."""

    def __init__(self, backend: S3Backend) -> None:
        self.backend = backend
        self.names: dict[str, list[str]] = {}
        self.original_list = backend.list_objects_v2
        self.original_put = backend.put_object
        backend.list_objects_v2 = self.list_objects_v2  # type: ignore[method-assign]
        backend.put_object = self.put_object  # type: ignore[method-assign]

    def put_object(self, bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
        names = self.names.get(bucket_name)
        if names is not None:
            at = bisect.bisect_left(names, key_name)
            if at == len(names) or names[at] != key_name:
                del self.names[bucket_name]  # a new name: sort again at the next listing
        return self.original_put(bucket_name, key_name, *args, **kwargs)

    def list_objects_v2(
        self,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        if delimiter or bucket.is_versioned:
            return self.original_list(
                bucket, prefix, delimiter, continuation_token, start_after, max_keys
            )
        names = self.names.get(bucket.name)
        if names is None:
            names = self.names[bucket.name] = sorted(bucket.keys.keys())
        prefix = prefix or ""
        after = start_after
        if continuation_token:
            after = self.backend._pagination_tokens.get(continuation_token)
        at = bisect.bisect_right(names, after) if after else bisect.bisect_left(names, prefix)
        page: list[Any] = []
        # Deleted names stay in the index and are skipped here (puts of new names re-sort).
        while at < len(names) and len(page) <= max_keys:
            name = names[at]
            at += 1
            if not name.startswith(prefix):
                if name > prefix:
                    break
                continue
            key = bucket.keys.get(name)
            if key is not None and not isinstance(key, FakeDeleteMarker):
                page.append(key)
        return self.backend._truncate_result(page, max_keys)


_ORIGINAL_LIST_V2 = S3Response.list_objects_v2


def render_list_v2(self: S3Response) -> Any:
    """ListObjectsV2 for a flat listing, the XML written directly (the same elements moto's
    serializer writes); anything else goes to moto's own handler."""
    query = self.querystring
    # minio sends start-after equal to the continuation token on every page after the first
    # (S3 lets the token win): both are handled here, not by moto's serializer.
    plain = not any(query.get(k, [""])[0] for k in ("delimiter", "fetch-owner"))
    if not plain or query.get("continuation-token", [None])[0] == "":
        return _ORIGINAL_LIST_V2(self)
    bucket = self.backend.get_bucket(self.bucket_name)
    prefix = query.get("prefix", [""])[0] or ""
    max_keys = int(query.get("max-keys", ["1000"])[0])
    encoding = query.get("encoding-type", [None])[0]
    keys, truncated, token = self.backend.list_objects_v2(
        bucket=bucket,
        prefix=prefix,
        delimiter=None,
        continuation_token=query.get("continuation-token", [None])[0],
        start_after=query.get("start-after", [None])[0] or None,
        max_keys=max_keys,
    )
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
    ]
    for key in keys:
        parts.append(
            f"<Contents><Key>{escape(key.safe_name(encoding))}</Key>"
            f"<LastModified>{key.last_modified_ISO8601}</LastModified>"
            f"<ETag>{escape(key.etag)}</ETag><Size>{key.size}</Size>"
            f"<StorageClass>{key.storage_class}</StorageClass></Contents>"
        )
    parts.append(f"<Name>{escape(bucket.name)}</Name><Prefix>{escape(prefix)}</Prefix>")
    parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
    if encoding:
        parts.append(f"<EncodingType>{escape(encoding)}</EncodingType>")
    parts.append(f"<KeyCount>{len(keys)}</KeyCount>")
    if token:
        parts.append(f"<NextContinuationToken>{token}</NextContinuationToken>")
    parts.append("</ListBucketResult>")
    return 200, {"Content-Type": "application/xml"}, "".join(parts)


def cache_module_list() -> None:
    """moto's dispatcher lists its own package folder (`os.listdir` + an `isdir` per entry,
    ~180 stat calls) on every request to find the backend: half of a HEAD's server time. The
    folder does not change while the server runs, so the list is read once."""
    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: iter(modules)


def main() -> None:
    port = int(sys.argv[1])
    cache_module_list()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    SortedListing(backend)
    S3Response.list_objects_v2 = render_list_v2  # type: ignore[method-assign]
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "bucket":
            if parts[1] not in backend.buckets:
                backend.create_bucket(parts[1], "us-east-1")
        elif parts[0] == "put":
            bucket, start, stop, step = parts[1], *map(int, parts[2:])
            for i in range(start, stop, step):
                backend.put_object(bucket, object_key(i), BODY)
        elif parts[0] == "count":
            print(len(backend.get_bucket(parts[1]).keys), flush=True)
            continue
        elif parts[0] == "quit":
            break
        print("ok", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
