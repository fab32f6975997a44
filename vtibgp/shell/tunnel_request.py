"""An IPsec updown notification (the control socket's `tunnel` request) made into tunnel
events: which device or peers' tunnels it is about, from `tunnels:` in the config (keyed on
the connection name: PLUTO_UNIQUEID changes on rekey), and what follows from it (the outside
endpoint learned, the sessions to reset). Pure: the daemon performs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vtibgp.config.schema import Config
from vtibgp.core.model import IpsecState

CEASE_ADMIN_RESET = 4  # Cease subcode: Administrative Reset (RFC 4486)


@dataclass(frozen=True, slots=True)
class TunnelRequest:
    reason: str  # e.g. "ipsec aws-1: down-client"
    events: tuple[IpsecState, ...]
    peers: tuple[str, ...]  # the configured peers it is about (its peers, or on its device)
    outside: str | None  # the tunnel's public endpoint the IPsec daemon told (state up)
    reset: bool  # reset those peers' BGP sessions (tunnels[].teardown, on down)


def tunnel_request(body: Mapping[str, Any], cfg: Config,
                   device_of: Callable[[str], str | None], now: float) -> TunnelRequest | str:
    """The request as events, or the error to answer."""
    state, conn = body.get("state"), body.get("connection")
    dev = body.get("device")
    if state not in ("up", "down") or not isinstance(conn, str):
        return 'tunnel: expected "state": "up"|"down" and a "connection"'
    up = state == "up"
    entries = [t for t in cfg.tunnels if t.connection == conn]
    reason = f"ipsec {conn}: {body.get('verb') or state}"
    events: list[IpsecState] = []
    for t in entries:
        if t.peers:
            events.append(IpsecState(None, t.peers, up, reason, now))
        elif t.device or isinstance(dev, str):
            events.append(IpsecState(t.device or str(dev), (), up, reason, now))
    if not entries and isinstance(dev, str) and dev:
        events.append(IpsecState(dev, (), up, reason, now))
    if not events:
        return (f"unknown connection {conn!r} and no device given: map it under tunnels: in "
                f"{cfg.source}")
    peers = {p for ev in events for p in ev.peers}
    peers.update(p.address for p in cfg.peers for ev in events
                 if ev.device and device_of(p.address) == ev.device)
    outside = body.get("outside")
    return TunnelRequest(reason, tuple(events), tuple(sorted(peers)),
                         outside if up and isinstance(outside, str) else None,
                         not up and any(t.teardown for t in entries))
