"""`vtibgp updown`: chained from libreswan's `leftupdown=` (after the stock `_updown`) or
strongSwan's updown, it tells the running daemon that an IPsec tunnel went up or down.

libreswan's down-client does not delete or down the VTI device: without this notification
the device looks fine while the tunnel behind it is gone. The state is keyed on the
connection name (PLUTO_CONNECTION), not PLUTO_UNIQUEID, which changes on rekey.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Verbs of libreswan's and strongSwan's updown calls that mean the tunnel carries traffic or
# has stopped; the others (prepare-*, route-*, unroute-*) are not about tunnel state.
UP_VERBS = frozenset({"up-client", "up-host", "up-client-v6", "up-host-v6"})
DOWN_VERBS = frozenset({"down-client", "down-host", "down-client-v6", "down-host-v6"})


def request_from_env(env: Mapping[str, str], *, device: str | None = None,
                     connection: str | None = None) -> dict[str, Any] | None:
    """The control request for an updown call's environment, or None for verbs that are not
    about tunnel state. `device` / `connection` override what the environment says."""
    verb = env.get("PLUTO_VERB", "")
    if verb in UP_VERBS:
        state = "up"
    elif verb in DOWN_VERBS:
        state = "down"
    else:
        return None
    conn = connection or env.get("PLUTO_CONNECTION", "")
    if not conn:
        raise ValueError("PLUTO_CONNECTION is not set (and no --connection given)")
    req: dict[str, Any] = {"cmd": "tunnel", "state": state, "connection": conn, "verb": verb}
    dev = device or env.get("VTI_IFACE")
    if dev:
        req["device"] = dev
    if env.get("PLUTO_PEER"):
        req["outside"] = env["PLUTO_PEER"]  # the tunnel's outside endpoint (for the log)
    return req
