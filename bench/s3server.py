"""moto's S3 server in its own process, with a stdin control line to bulk-load objects.

Putting 100k objects over HTTP takes minutes on moto, so `put BUCKET START STOP STEP` writes
keys straight into moto's in-process backend (the same objects HTTP requests then see).
"""

from __future__ import annotations

import sys

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.s3.models import s3_backends

BODY = b"%PDF-1.4 bench object\n" * 3


def object_key(i: int) -> str:
    return f"{i * 2654435761 % 2**32:08x}-{i:07d}/file.pdf"


def main() -> None:
    port = int(sys.argv[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
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
