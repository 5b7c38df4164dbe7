"""A MongoDB wire-protocol endpoint over mongomock, for tests that need a Mongo another process
can reach (no mongod on these machines). It speaks just enough for pymongo's handshake and the
commands of the audit sink: insert, find, delete, createIndexes, ping.

A write is acknowledged only after mongomock holds it, so a client that crashes right after an
acknowledged insert leaves the entry readable here, as a real server would.
"""

from __future__ import annotations

import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import bson
import mongomock
from bson.int64 import Int64

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
_HELLO = {"hello", "ismaster", "isMaster"}


class MongoWire:
    """The backing mongomock client and the served port."""

    def __init__(self, client: mongomock.MongoClient, port: int) -> None:
        self.client = client
        self.port = port

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"


@contextmanager
def mongo_wire_server() -> Iterator[MongoWire]:
    """Serve a fresh mongomock client on a free loopback port until the block ends."""
    backing = mongomock.MongoClient(tz_aware=False)
    lock = threading.Lock()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while True:
                header = _read(self.request, 16)
                if header is None:
                    return
                length, request_id, _, opcode = struct.unpack("<iiii", header)
                body = _read(self.request, length - 16)
                if body is None:
                    return
                with lock:
                    reply = _answer(backing, opcode, body)
                self.request.sendall(_frame(reply, request_id, opcode))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield MongoWire(backing, int(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()


def _read(sock: Any, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _answer(client: mongomock.MongoClient, opcode: int, body: bytes) -> dict[str, Any]:
    command = _query_command(body) if opcode == OP_QUERY else _msg_command(body)
    try:
        return {**_run(client, command), "ok": 1.0}
    except Exception as exc:  # every failure goes back to the client, as mongod does
        return {"ok": 0.0, "errmsg": str(exc), "code": 8000}


def _query_command(body: bytes) -> dict[str, Any]:
    # flags, fullCollectionName (cstring), numberToSkip, numberToReturn, query document
    end = body.index(b"\x00", 4)
    start = end + 1 + 8
    size = struct.unpack("<i", body[start : start + 4])[0]
    return dict(bson.decode(body[start : start + size]))


def _msg_command(body: bytes) -> dict[str, Any]:
    flags = struct.unpack("<I", body[:4])[0]
    end = len(body) - (4 if flags & 1 else 0)  # a trailing checksum
    pos, command = 4, {}
    while pos < end:
        kind = body[pos]
        pos += 1
        size = struct.unpack("<i", body[pos : pos + 4])[0]
        if kind == 0:
            command.update(bson.decode(body[pos : pos + size]))
        else:  # a document sequence: size, identifier, documents
            name_end = body.index(b"\x00", pos + 4)
            name = body[pos + 4 : name_end].decode()
            command[name] = list(bson.decode_all(body[name_end + 1 : pos + size]))
        pos += size
    return command


def _run(client: mongomock.MongoClient, command: dict[str, Any]) -> dict[str, Any]:
    name = next(iter(command))
    if name in _HELLO:
        return {
            "ismaster": True,
            "isWritablePrimary": True,
            "helloOk": True,
            "maxWireVersion": 21,
            "minWireVersion": 0,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": datetime.now(UTC),
        }
    if name in {"ping", "endSessions", "buildInfo", "buildinfo"}:
        return {}
    collection = client[command["$db"]][command[name]]
    if name == "insert":
        collection.insert_many(command["documents"])
        return {"n": len(command["documents"])}
    if name == "find":
        cursor = collection.find(command.get("filter", {}), command.get("projection"))
        if command.get("sort"):
            cursor = cursor.sort(list(command["sort"].items()))
        ns = f"{command['$db']}.{command[name]}"
        return {"cursor": {"id": Int64(0), "ns": ns, "firstBatch": list(cursor)}}
    if name == "delete":
        return {"n": sum(collection.delete_many(d["q"]).deleted_count for d in command["deletes"])}
    if name == "createIndexes":
        for index in command["indexes"]:
            collection.create_index(list(index["key"].items()), name=index["name"])
        return {}
    raise ValueError(f"command {name!r} is not served by this test endpoint")


def _frame(reply: dict[str, Any], response_to: int, opcode: int) -> bytes:
    document = bson.encode(reply)
    if opcode == OP_QUERY:
        body = struct.pack("<iqii", 0, 0, 0, 1) + document
        code = OP_REPLY
    else:
        body = struct.pack("<I", 0) + b"\x00" + document
        code = OP_MSG
    return struct.pack("<iiii", 16 + len(body), 0, response_to, code) + body
