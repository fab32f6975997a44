"""The control socket: permissions, peer credentials, bounded and malformed requests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from vtibgp.control.server import MAX_REQUEST, ControlError, ControlServer, request


@pytest.fixture
def server(tmp_path: Path) -> Any:
    seen: list[dict[str, Any]] = []

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        seen.append(req)
        return {"ok": True, "echo": req}

    srv = ControlServer(str(tmp_path / "run" / "ctl.sock"), handle)
    srv.start()
    yield srv, seen
    srv.close()


def raw(path: str, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(4096):
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer


def test_round_trip_and_file_modes(server: Any) -> None:
    srv, seen = server
    assert request(srv.path, {"cmd": "status"}) == {"ok": True, "echo": {"cmd": "status"}}
    assert seen == [{"cmd": "status"}]
    assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(Path(srv.path).parent).st_mode) == 0o700


def test_malformed_and_oversized_requests_are_refused(server: Any) -> None:
    srv, seen = server
    assert "expected one JSON object" in raw(srv.path, b"not json\n")["error"]
    assert "expected one JSON object" in raw(srv.path, b'{"nocmd": 1}\n')["error"]
    assert "larger than" in raw(srv.path, b"x" * (MAX_REQUEST + 10))["error"]
    assert seen == []
    assert request(srv.path, {"cmd": "status"})["ok"]  # still serving


def test_second_daemon_does_not_steal_the_socket(server: Any) -> None:
    srv, _ = server
    with pytest.raises(ControlError, match="already listening"):
        ControlServer(srv.path, lambda r: r).start()


def test_stale_socket_is_replaced_and_regular_file_is_not(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on: left by a crash
    srv = ControlServer(str(stale), lambda r: {"fine": True})
    srv.start()
    assert request(str(stale), {"cmd": "x"}) == {"fine": True}
    srv.close()
    plain = tmp_path / "file"
    plain.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(str(plain), lambda r: r).start()
    assert plain.read_text() == "keep me"


def test_client_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="is vtibgp running"):
        request(str(tmp_path / "none.sock"), {"cmd": "status"})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_other_users_are_refused() -> None:
    seen: list[dict[str, Any]] = []
    top = Path(tempfile.mkdtemp(prefix="vtibgp-ctl-"))
    srv = ControlServer(str(top / "run" / "ctl.sock"), lambda r: seen.append(r) or {"ok": 1})
    srv.start()
    # Open the directories and socket so only the credential check stands in the way.
    for d in (top, top / "run"):
        os.chmod(d, 0o755)
    os.chmod(srv.path, 0o666)
    try:
        _as_nobody(srv.path, seen)
    finally:
        srv.close()
        shutil.rmtree(top)


def _as_nobody(path: str, seen: list[dict[str, Any]]) -> None:
    code = (  # import first: the interpreter's own files may not be readable by nobody
        "import os, sys\nfrom vtibgp.control.server import request, ControlError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n request(sys.argv[1], {'cmd': 'status'})\n"
        "except ControlError as e:\n print(e)\n"
    )
    src = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=30, check=False, env={**os.environ, "PYTHONPATH": src})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "permission denied"
    assert seen == []
