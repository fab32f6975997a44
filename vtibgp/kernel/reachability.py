"""Which of our networks (export.networks) the kernel can reach by a route that is not ours:
with `export.reachable_only` only those are announced, as FRR's `bgp network import-check`
announces a `network` only while its RIB has it.

One lookup per network (RTM_GETROUTE with RTM_F_FIB_MATCH for its first address: the FIB
entry that traffic to it would use, not a dump of the table): reachable when that entry is a
unicast route of another owner (connected, static, another routing daemon) as specific as
the network or more. A covering route (a default route, a summary) does not count, nor a
route of ours (a cloud announcing our own network), nor blackhole/unreachable/prohibit.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

RTM_F_FIB_MATCH = 0x2000
RTN_UNICAST = 1
UNREACHABLE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL)

__all__ = ["IPRoute", "NetlinkError", "reachable"]


def reachable(networks: Iterable[str], protocol: int,
              ipr: IPRoute | None = None) -> frozenset[str]:
    """The networks of `networks` the kernel has another owner's route to (see the module
    docstring). A netlink error other than "no route" is raised (NetlinkError, OSError)."""
    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        out = set()
        for text in networks:
            net = ipaddress.ip_network(text)
            try:
                msgs = ipr.route("get", dst=str(net.network_address), flags=RTM_F_FIB_MATCH,
                                 family=10 if net.version == 6 else 2)
            except NetlinkError as e:
                if e.code in UNREACHABLE:
                    continue
                raise
            for msg in msgs:
                if msg["type"] == RTN_UNICAST and msg["proto"] != protocol and \
                        msg["dst_len"] >= net.prefixlen:
                    out.add(text)
        return frozenset(out)
    finally:
        if own:
            ipr.close()
