"""The client half of the control socket (see vtibgp.control.server): one JSON request, one answer.

Kept apart from the server, and light: `vtibgp updown`, which the IPsec daemon runs on every
tunnel event and waits for, imports only this and vtibgp.control.updown. It uses the C modules under
`socket` and `json` directly (`_socket`, `_json`: json.loads's own scanner), because the
Python modules pull in `re` and `enum`, which cost more than the interpreter's own start-up
(see updown.main and docs/failover.md).
"""

from __future__ import annotations

import _json
import _socket

from vtibgp import defaults

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TIMEOUT = 5.0
DEFAULT_SOCKET = defaults.CONTROL_SOCKET


class ControlError(RuntimeError):
    """The daemon could not be asked (not running, refused, or answered an error)."""


class _Decoding:
    """What json's C scanner reads from its decoder: json.loads's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    array_hook = None  # (read from Python 3.15 on)
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} in an answer")  # the daemon never sends NaN or Infinity


def _loads(text: str) -> Any:
    """json.loads(text) without importing json (and so re), falling back to it if this
    Python's scanner wants more than _Decoding gives."""
    try:
        scan = _json.make_scanner(_Decoding)  # type: ignore[arg-type]
        value, end = scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    except (TypeError, AttributeError):
        import json

        return json.loads(text)
    if text[end:].strip():
        raise ValueError("extra data after the JSON value")
    return value


def dumps(obj: dict[str, Any]) -> str:
    """One request as JSON: an object whose values are strings, numbers, booleans or None
    (all a request holds), keys and strings ASCII-escaped as json.dumps does."""
    enc = _json.encode_basestring_ascii
    parts = []
    for key, value in obj.items():
        if isinstance(value, str):
            text = enc(value)
        elif value is None or isinstance(value, bool):
            text = {None: "null", True: "true", False: "false"}[value]
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            raise TypeError(f"request value of type {type(value).__name__}: {key}")
        parts.append(f"{enc(str(key))}: {text}")
    return "{" + ", ".join(parts) + "}"


def request(path: str, req: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send one request to the daemon and return its answer."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{path}: no such socket; is vtibgp running?") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as root)") from None
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
        try:  # noqa: SIM105 (contextlib.suppress: one more import to start up)
            s.sendall(dumps(req).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse before reading (e.g. wrong user): its answer says why
        chunks: list[bytes] = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    break
        except OSError as e:
            raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    try:
        answer = _loads(b"".join(chunks).decode())
    except ValueError:  # (UnicodeDecodeError is one)
        raise ControlError(f"{path}: unreadable answer") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: unreadable answer")
    if "error" in answer:
        raise ControlError(str(answer["error"]))
    return answer
