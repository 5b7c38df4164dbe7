"""Servers for the deployment tests: a 3-primary Redis Cluster, Redis over TLS and moto's S3
behind TLS, with certificates from a private CA made here. Loopback only, never port 6379."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.services import _wait_for_port, free_port, require_or_skip

CLUSTER_BUS_OFFSET = 10_000


@dataclass(frozen=True)
class PrivateCA:
    """PEM files of a CA and of a server certificate it signed for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path


def make_private_ca(folder: Path) -> PrivateCA:
    """A throwaway CA and a server certificate signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("rlm test CA"))
        .issuer_name(name("rlm test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = PrivateCA(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _redis_binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        require_or_skip("redis-server and redis-cli (Debian's redis package) are needed")
        raise AssertionError("unreachable")
    return server, cli


def _spawn(args: list[str], port: int) -> subprocess.Popen[bytes]:
    assert port != 6379, "never use the shared server on 6379"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_port(port, proc)
    return proc


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cluster_port(taken: set[int]) -> int:
    # A node also listens on port + 10000 (the cluster bus): both must be free.
    for _ in range(200):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535 or {port, port + CLUSTER_BUS_OFFSET} & taken:
            continue
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port + CLUSTER_BUS_OFFSET)) != 0:
                taken.update({port, port + CLUSTER_BUS_OFFSET})
                return port
    raise RuntimeError("no free port pair for a cluster node")


@contextmanager
def redis_cluster(primaries: int = 3) -> Iterator[list[int]]:
    """A Redis Cluster of `primaries` primaries (no replicas); yields their ports."""
    server, cli = _redis_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="rlm-cluster-"))
    taken: set[int] = set()
    ports = [_cluster_port(taken) for _ in range(primaries)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled"]
            args += ["yes", "--cluster-config-file", str(node_dir / "nodes.conf")]
            args += ["--dir", str(node_dir), "--save", "", "--appendonly", "no"]
            procs.append(_spawn(args, port))
        nodes = [f"127.0.0.1:{port}" for port in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait_cluster_ok(cli, ports)
        yield ports
    finally:
        _stop(procs)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_cluster_ok(cli: str, ports: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [
            subprocess.run(
                [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True
            ).stdout
            for port in ports
        ]
        if all("cluster_state:ok" in state for state in states):
            return
        time.sleep(0.2)
    raise RuntimeError("the test cluster did not reach cluster_state:ok")


@contextmanager
def redis_tls(ca: PrivateCA) -> Iterator[int]:
    """redis-server serving TLS only, with a certificate of the private CA; yields the port."""
    server, _ = _redis_binaries()
    workdir = tempfile.mkdtemp(prefix="rlm-redis-tls-")
    port = free_port()
    args = [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    args += ["--tls-cert-file", str(ca.cert), "--tls-key-file", str(ca.key)]
    args += ["--tls-ca-cert-file", str(ca.ca), "--tls-auth-clients", "no"]
    args += ["--dir", workdir, "--save", "", "--appendonly", "no"]
    proc = _spawn(args, port)
    try:
        yield port
    finally:
        _stop([proc])
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def s3_tls(ca: PrivateCA) -> Iterator[int]:
    """moto's S3 app served over HTTPS with a certificate of the private CA; yields the port."""
    try:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server
    except ImportError:
        require_or_skip("moto[server] is not installed")
        raise AssertionError("unreachable") from None
    port = free_port()
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1",
        port,
        app,
        threaded=True,
        request_handler=MotoRequestHandler,
        ssl_context=(str(ca.cert), str(ca.key)),
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _wait_for_port(port, None)
    try:
        yield port
    finally:
        server.shutdown()
