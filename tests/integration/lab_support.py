"""Lab helpers only the integration tests use (the lab itself is vtibgp.lab.parts).

* :class:`Recorder`: a trivial ExaBGP API process that appends every line it gets to a file,
  and a reader for that file (states, updates, the RIB they add up to);
* :func:`as_path`: an update's AS path in both ExaBGP JSON dialects;
* :func:`route_dsts`: a namespace's routes as a set of "prefix/len";
* :func:`default_exabgp42`: where the ExaBGP 4.2 binary the tests also run is.

Imported as a plain module (``from lab_support import ...``): pytest puts this directory on
``sys.path`` for its conftest, as tests/unit does for its helper modules.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vtibgp.lab.parts import routes

REPO = Path(__file__).resolve().parents[2]


def default_exabgp42(repo: Path | None = None) -> str | None:
    """ExaBGP 4.2 binary: $VTIBGP_EXABGP42, else <repo>/.venv42/bin/exabgp, else
    /tmp/venv42/bin/exabgp. None if none of them is executable."""
    env = os.environ.get("VTIBGP_EXABGP42")
    if env:
        return env if os.access(env, os.X_OK) else None
    repo = repo or REPO
    for cand in (repo / ".venv42" / "bin" / "exabgp", Path("/tmp/venv42/bin/exabgp")):
        if os.access(cand, os.X_OK):
            return str(cand)
    return None


def route_dsts(
    ns: str, table: int | str = 254, proto: int | str | None = None, family: int = 4
) -> set[str]:
    """The destinations of :func:`vtibgp.lab.parts.routes`, normalised to "prefix/len" (host
    routes too)."""
    out: set[str] = set()
    for r in routes(ns, table=table, proto=proto, family=family):
        dst = r.get("dst", "")
        if dst == "default":
            dst = "0.0.0.0/0" if family == 4 else "::/0"
        out.add(str(ipaddress.ip_network(dst, strict=False)))
    return out


def as_path(attribute: Mapping[str, Any]) -> list[int]:
    """The AS numbers of an update's ``attribute`` in order, for both JSON dialects
    (4.2: a list plus "as-set"; 5.0: {"0": {"element": ..., "value": [...]}, ...})."""
    raw = attribute.get("as-path", [])
    if isinstance(raw, list):
        return [int(x) for x in raw] + [int(x) for x in attribute.get("as-set", [])]
    out: list[int] = []
    for key in sorted(raw, key=int):
        out += [int(x) for x in raw[key].get("value", [])]
    return out


_RECORDER_SRC = """\
import sys
# append every line ExaBGP writes to our stdin, verbatim, flushed per line
with open(sys.argv[1], "a", encoding="utf-8", errors="surrogateescape") as out:
    for line in sys.stdin:
        out.write(line)
        out.flush()
"""


class Recorder:
    """A trivial API process that appends every stdin line to a file, and a reader for
    that file. ``command`` is what to give :class:`vtibgp.lab.parts.ExaBGPGateway`."""

    def __init__(self, path: str | os.PathLike[str], python: str = sys.executable) -> None:
        self.path = Path(path)
        self.script = self.path.with_name(self.path.stem + "-recorder.py")
        self.script.write_text(_RECORDER_SRC)
        self.command = [python, str(self.script), str(self.path)]

    def lines(self) -> list[str]:
        """Complete lines recorded so far (a half-written last line is left out)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return text.splitlines()[: text.count("\n")]

    def messages(self) -> list[dict[str, Any]]:
        """The JSON lines (acks, command output and 4.2's broken refresh lines skipped)."""
        out: list[dict[str, Any]] = []
        for line in self.lines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                out.append(msg)
        return out

    @staticmethod
    def peer_of(msg: Mapping[str, Any]) -> str | None:
        addr = msg.get("neighbor", {}).get("address", {})
        peer = addr.get("peer") if isinstance(addr, dict) else None
        return str(peer) if peer is not None else None

    def states(self, peer: str | None = None) -> list[tuple[str, str]]:
        """(peer, state) of every state message, in order."""
        out: list[tuple[str, str]] = []
        for m in self.messages():
            if m.get("type") == "state":
                p = self.peer_of(m)
                if p is not None and (peer is None or p == peer):
                    out.append((p, str(m["neighbor"]["state"])))
        return out

    def state(self, peer: str) -> str | None:
        """The last state seen for ``peer`` (None if none yet)."""
        s = self.states(peer)
        return s[-1][1] if s else None

    def updates(self, peer: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(peer, update) for every received update message (EORs excluded)."""
        out: list[tuple[str, dict[str, Any]]] = []
        for m in self.messages():
            if m.get("type") != "update":
                continue
            p = self.peer_of(m)
            upd = m.get("neighbor", {}).get("message", {}).get("update")
            if p is not None and isinstance(upd, dict) and (peer is None or p == peer):
                out.append((p, upd))
        return out

    def announced(self, peer: str) -> dict[str, dict[str, Any]]:
        """Prefix -> {"next_hops": [...], "attribute": {...}} after replaying all updates
        from ``peer`` in order (a withdraw removes, a later announce replaces)."""
        rib: dict[str, dict[str, Any]] = {}
        for _, upd in self.updates(peer):
            for prefixes in upd.get("withdraw", {}).values():
                for nlri in prefixes:
                    rib.pop(_nlri(nlri), None)
            seen: set[str] = set()
            for by_nh in upd.get("announce", {}).values():
                for nh, prefixes in by_nh.items():
                    for nlri in prefixes:
                        p = _nlri(nlri)
                        if p in seen:  # 5.0: a second (link-local) next hop, same prefix
                            rib[p]["next_hops"].append(nh)
                            continue
                        seen.add(p)
                        rib[p] = {"next_hops": [nh], "attribute": upd.get("attribute", {})}
        return rib

    def withdrawn(self, peer: str) -> list[str]:
        """Every withdrawn prefix from ``peer``, in order (with repeats)."""
        out: list[str] = []
        for _, upd in self.updates(peer):
            for prefixes in upd.get("withdraw", {}).values():
                out += [_nlri(n) for n in prefixes]
        return out


def _nlri(item: Any) -> str:
    return str(item["nlri"] if isinstance(item, dict) else item)
