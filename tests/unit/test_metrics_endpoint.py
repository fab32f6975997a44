"""The metrics endpoint itself: served over HTTP, or HTTPS with the configured certificate,
on loopback."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from vtibgp.shell import metrics as m


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_endpoint_serves_vtibgp_metrics() -> None:
    port = free_port()
    server = m.serve(f"127.0.0.1:{port}")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"vtibgp_kernel_route_operations_total" in body
    finally:
        server.shutdown()


def test_busy_port_is_reported_not_fatal() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert m.serve(f"127.0.0.1:{s.getsockname()[1]}") is None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_https_endpoint_with_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    server = m.serve(f"127.0.0.1:{port}", str(cert), str(key))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        body = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=5,
                                      context=ctx).read()
        assert b"vtibgp_build_info" in body or b"vtibgp_kernel_routes" in body
        with pytest.raises(OSError):  # plain HTTP is not answered as metrics
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()
