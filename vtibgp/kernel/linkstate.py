"""Link state as the kernel reports it, read one way for the whole project: RTM_GETLINK over
an rtnetlink socket (:mod:`vtibgp.kernel.netlink`), decoded by :mod:`vtibgp.kernel.codec`.

* :class:`Link`: one device (index, name, flags, MTU, operational state) and whether vtibgp
  can route through it; :func:`usability` is the one rule for that (exists, administratively
  up, carrier), also applied by the link monitor to the events it follows;
* :func:`read_links` / :func:`read_link`: every device, or one by name, in this thread's
  network namespace or a named one (a short-lived socket each call);
* :class:`LinkCache`: the writer's name <-> ifindex cache over the writer's own socket (so
  always in the socket's namespace), and the translation of a route's NextHops into
  (ifindex, gateway) pairs.

Owns: reading and interpreting links. Must not know: routes and what they are for, nexthop
objects, BGP, the shell (callers act on what it reports).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from vtibgp.core.model import NextHop
from vtibgp.kernel import codec as nc
from vtibgp.kernel.netlink import REQUEST_TIMEOUT, Rtnl

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000  # carrier: a VTI/XFRM device always has it once up; a veth loses it
# when its peer end goes down
# IF_OPER_* (RFC 2863), as `ip link` spells them
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
_HOP_CACHE_MAX = 65536


def usability(flags: int) -> tuple[bool, str]:
    """Usable or not, and why, from a device's ifi_flags (a device that exists)."""
    if not flags & IFF_UP:
        return False, "admin down"
    if not flags & IFF_LOWER_UP:
        return False, "carrier lost"
    return True, "up"


@dataclass(frozen=True, slots=True)
class Link:
    """One device as RTM_NEWLINK reports it."""

    index: int
    name: str
    flags: int
    mtu: int
    operstate: str  # "UP", "DOWN", "LOWERLAYERDOWN", "UNKNOWN"...

    @property
    def admin_up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def carrier(self) -> bool:
        return bool(self.flags & IFF_LOWER_UP)

    @property
    def usable(self) -> bool:
        return usability(self.flags)[0]

    @property
    def reason(self) -> str:
        """Why it is usable or not: "up", "admin down", "carrier lost"."""
        return usability(self.flags)[1]

    @classmethod
    def of(cls, attrs: nc.LinkAttrs) -> Link:
        state = OPERSTATES[attrs.operstate] if attrs.operstate < len(OPERSTATES) else str(
            attrs.operstate)
        return cls(attrs.ifindex, attrs.name, attrs.flags, attrs.mtu, state)


class _RepliesLost(Exception):
    """The answers to a single link request kept being lost to receive-queue overflows."""


def dump_links(nl: Rtnl) -> list[Link]:
    """Every device in the namespace of `nl`'s socket."""
    found: list[Link] = []

    def take(n: int, seq: int) -> tuple[bool, int]:
        chunk = nc.parse_link_attrs(nl.rbuf, n, seq=seq)
        found.extend(Link.of(a) for a in chunk.links)
        return chunk.done or bool(chunk.error), chunk.error

    nl.dump(nc.pack_link_dump_request, take, "link dump")
    return found


def get_link(nl: Rtnl, name: str) -> Link | None:
    """Device `name` by a single RTM_GETLINK; None if there is none (or the name cannot be
    one). Raises _RepliesLost if the answer was lost three times (then a dump, which the
    kernel flow-controls, is the way to ask)."""
    seq = nl.take_seqs(1)
    try:
        request = nc.pack_link_request(name, seq)
    except ValueError:  # not a possible interface name
        return None
    for _attempt in range(3):
        nl.discard_pending()
        nl.sock.send(request)
        deadline = time.monotonic() + REQUEST_TIMEOUT
        found: Link | None = None
        while True:
            n = nl.read_reply(deadline, "link lookup")
            if n is None:
                break  # the reply may be lost: ask again
            chunk = nc.parse_link_attrs(nl.rbuf, n, seq=seq)
            for attrs in chunk.links:
                if attrs.name == name:
                    found = Link.of(attrs)
            if chunk.done:
                if chunk.error not in (0, errno.ENODEV):
                    raise OSError(chunk.error, f"link lookup: {os.strerror(chunk.error)}")
                return found
    raise _RepliesLost(name)


def _short_lived(netns: str | None) -> Rtnl:
    return Rtnl(netns=netns, rcvbuf=1 << 20, sndbuf=1 << 16, multi_recv=False,
                reply_buffer=1 << 16)


def read_links(netns: str | None = None) -> dict[str, Link]:
    """Every device by name, in network namespace `netns` (a name under /run/netns or a
    path), else in the calling thread's."""
    nl = _short_lived(netns)
    try:
        return {link.name: link for link in dump_links(nl)}
    finally:
        nl.close()


def read_link(name: str, netns: str | None = None) -> Link | None:
    """Device `name` (None if it does not exist), as read_links finds it."""
    nl = _short_lived(netns)
    try:
        try:
            return get_link(nl, name)
        except _RepliesLost:
            return next((link for link in dump_links(nl) if link.name == name), None)
    finally:
        nl.close()


class Unresolved(Exception):
    """A route names a device the cache does not know."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class LinkCache:
    """Device name <-> ifindex over one socket, looked up on demand and rebuilt from a dump
    on request. `on_change` is called whenever an entry may have changed (a user caching
    anything derived from ifindexes drops it then). The owner serialises calls."""

    def __init__(self, nl: Rtnl, on_change: Callable[[], None] | None = None) -> None:
        self._nl = nl
        self.on_change = on_change
        self.by_name: dict[str, int] = {}
        self.by_index: dict[int, str] = {}
        # id of a NextHop tuple -> (the tuple, its (ifindex, gateway) pairs); see hops()
        self._hops: dict[int, tuple[tuple[NextHop, ...], tuple[nc.Hop, ...]]] = {}

    def _changed(self) -> None:
        self._hops.clear()
        if self.on_change is not None:
            self.on_change()

    def resolve(self, name: str) -> int | None:
        """ifindex of device `name` (cached), None if there is no such device."""
        index = self.by_name.get(name)
        if index is None:
            try:
                link = get_link(self._nl, name)
            except _RepliesLost:  # replies keep getting lost (tiny receive buffer)
                self.refresh()
                return self.by_name.get(name)
            if link is not None:
                index = link.index
                self.remember(index, name)
        return index

    def forget(self, name: str) -> None:
        """Drop `name` from the cache (the link monitor saw it change)."""
        index = self.by_name.pop(name, None)
        if index is not None and self.by_index.get(index) == name:
            del self.by_index[index]
        self._changed()

    def refresh(self) -> None:
        """Rebuild the cache from a link dump."""
        by_name = {link.name: link.index for link in dump_links(self._nl)}
        self.by_name = by_name
        self.by_index = {i: n for n, i in by_name.items()}
        self._changed()

    def remember(self, index: int, name: str) -> None:
        old = self.by_index.get(index)
        if old is not None and old != name:
            self.by_name.pop(old, None)
        previous = self.by_name.get(name)
        if previous is not None and previous != index:
            self.by_index.pop(previous, None)
        self.by_name[name] = index
        self.by_index[index] = name
        self._changed()

    def hops(self, nexthops: tuple[NextHop, ...]) -> tuple[nc.Hop, ...]:
        """NextHops -> (ifindex, gateway) from the cache only; raises Unresolved on a miss.
        Cached by the identity of the tuple (the core shares one per path)."""
        hit = self._hops.get(id(nexthops))
        if hit is not None and hit[0] is nexthops:
            return hit[1]
        by_name = self.by_name
        hops = []
        for nh in nexthops:
            index = by_name.get(nh.device)
            if index is None:
                raise Unresolved(nh.device)
            hops.append(nc.Hop(index, nh.gateway))
        out = tuple(hops)
        if len(self._hops) >= _HOP_CACHE_MAX:
            self._hops.clear()
        self._hops[id(nexthops)] = (nexthops, out)
        return out
