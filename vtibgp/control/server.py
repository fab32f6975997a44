"""The local control socket: `vtibgp status`, `vtibgp routes` and `vtibgp updown` talk to the
running daemon through it.

A unix stream socket in a root-only directory, mode 0600; the peer's credentials
(SO_PEERCRED) must be root or the daemon's own user; one JSON object per line in each
direction, requests bounded in size. The server thread never touches daemon state: it hands
each request to `handle` (the daemon answers it from its own loop) and writes the answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the client half lives apart, light to import (`vtibgp updown` runs on every tunnel event)
from vtibgp.control.client import DEFAULT_SOCKET, TIMEOUT, ControlError, request

__all__ = ["DEFAULT_SOCKET", "MAX_REQUEST", "ControlError", "ControlServer", "request"]

log = logging.getLogger("vtibgp.control.server")

MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(self, path: str, handle: Handler) -> None:
        self.path = path
        self.handle = handle
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="vtibgp-control", daemon=True)

    def start(self) -> None:
        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if p.exists() or p.is_symlink():
            if not stat.S_ISSOCK(p.lstat().st_mode):
                raise ControlError(f"{p} exists and is not a socket; not replacing it")
            if _alive(self.path):
                raise ControlError(f"{p}: another vtibgp is already listening there")
            p.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        self._sock = sock
        self._thread.start()
        log.info("control socket %s", self.path)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    self._one(conn)
                except Exception as e:  # one client's problem never stops the server
                    log.warning("control: request failed: %s", e)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        uid = _peer_uid(conn)
        if uid not in (0, os.geteuid()):
            log.warning("control: refused a request from uid %d", uid)
            _send(conn, {"error": "permission denied"})
            return
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                _send(conn, {"error": f"request larger than {MAX_REQUEST} bytes"})
                return
        try:
            req = json.loads(data.split(b"\n", 1)[0] or b"null")
        except ValueError:
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            _send(conn, {"error": 'expected one JSON object with a "cmd" on one line'})
            return
        _send(conn, self.handle(req))


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj, sort_keys=True).encode() + b"\n")


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True
