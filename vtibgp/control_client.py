"""The client half of the control socket (see vtibgp.control): one JSON request, one answer.

Kept apart from the server so that `vtibgp updown`, which the IPsec daemon runs on every
tunnel event, imports nothing but json and socket on its way to the daemon.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

TIMEOUT = 5.0
DEFAULT_SOCKET = "/run/vtibgp/vtibgp.sock"


class ControlError(RuntimeError):
    """The daemon could not be asked (not running, refused, or answered an error)."""


def request(path: str, req: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request to the daemon and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{path}: no such socket; is vtibgp running?") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as root)") from None
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
        # the server may refuse before reading (e.g. wrong user): its answer says why
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: unreadable answer") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: unreadable answer")
    if "error" in answer:
        raise ControlError(str(answer["error"]))
    return answer
