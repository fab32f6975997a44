"""Our routes read back from the kernel: RTM_GETROUTE per family with the table/protocol
filter (NETLINK_GET_STRICT_CHK), every datagram filtered on raw bytes (protocol byte, type
byte, table byte, then RTA_TABLE) before anything is decoded (:func:`codec.parse_route_dump`).

A route whose oif has no known name even after refreshing the link cache is reported with the
device name ``"#<ifindex>"`` (so it can still be deleted: deletes match on the key only).
Only unicast routes (and the fallback's type, without nexthops) are reported; a dump the
kernel flags as interrupted is taken again.

Owns: turning a route dump into KernelRoutes. Must not know: which routes should be there
(the core compares), nexthop objects (dumps show their nexthops, compat mode), BGP.
"""

from __future__ import annotations

import gc
import logging

from vtibgp.core.model import KernelRoute, NextHop
from vtibgp.kernel import codec as nc
from vtibgp.kernel.linkstate import LinkCache
from vtibgp.kernel.netlink import Rtnl

log = logging.getLogger("vtibgp.kernel.routedump")

_ATTEMPTS = 3  # dumps interrupted by concurrent changes are taken again, this many times


def read_routes(nl: Rtnl, links: LinkCache, table: int, proto: int,
                types: tuple[int, ...]) -> list[KernelRoute]:
    """Our routes (`table`, `proto`, of `types`) as KernelRoutes."""
    # a dump builds a few objects per route, none of them in a reference cycle: the
    # cyclic collector would only rescan the growing heap (a third of the time at 100k)
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _attempt in range(_ATTEMPTS):
            found, interrupted = _dump_raw(nl, table, proto, types)
            if not interrupted:
                break
            log.info("kernel: route dump interrupted by concurrent changes; again")
        return to_routes(found, links)
    finally:
        if collecting:
            gc.enable()


def _dump_raw(nl: Rtnl, table: int, proto: int,
              types: tuple[int, ...]) -> tuple[list[nc.DumpedRoute], bool]:
    out: list[nc.DumpedRoute] = []
    hop_cache: dict[tuple[int, str | None], tuple[nc.Hop, ...]] = {}
    interrupted = False

    def take(n: int, seq: int) -> tuple[bool, int]:
        nonlocal interrupted
        chunk = nc.parse_route_dump(nl.rbuf, n, table=table, protocol=proto, seq=seq,
                                    hop_cache=hop_cache, types=types)
        out.extend(chunk.routes)
        interrupted = interrupted or chunk.interrupted
        return chunk.done, chunk.error

    nl.dump_routes(table, proto, take)
    return out, interrupted


def to_routes(found: list[nc.DumpedRoute], links: LinkCache) -> list[KernelRoute]:
    """Dumped routes -> KernelRoutes, devices named through `links` (refreshed once if an
    ifindex is unknown)."""
    # one NextHop tuple per distinct set of kernel nexthops, shared by its routes
    shared: dict[tuple[nc.Hop, ...], tuple[NextHop, ...]] = {}
    for _prefix, _table, _metric, hops in found:
        if hops not in shared:
            shared[hops] = ()
    if any(h.ifindex not in links.by_index for hops in shared for h in hops):
        links.refresh()
    names = links.by_index
    for hops in shared:
        made = [NextHop(names.get(h.ifindex) or f"#{h.ifindex}", h.gateway) for h in hops]
        made.sort(key=NextHop.sort_key)
        shared[hops] = tuple(made)
    return [KernelRoute(prefix, metric, shared[hops]) for prefix, _t, metric, hops in found]
