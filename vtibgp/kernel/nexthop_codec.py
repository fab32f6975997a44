"""Byte-level rtnetlink messages for kernel nexthop objects (Linux >= 5.3). Pure: no I/O.

Why vtibgp uses them: a route that names a nexthop object (RTA_NH_ID) instead of carrying
its device inline goes away with that object. Deleting one object, or the kernel flushing
the objects of a device on admin down, carrier loss or unregister, removes every route
through it in one step inside the kernel, so the same-prefix backup routes through the other
tunnel take over at kernel speed (measured in docs/failover.md). With inline nexthops carrier
loss leaves the routes in use (flagged linkdown) and an IPsec-down notification has to delete
them one message at a time.

Shapes covered (uapi linux/nexthop.h)::

    nlmsghdr   len type flags seq pid                                16 bytes
    nhmsg      family scope protocol resvd flags                      8 bytes
    NHA_ID     u32
    one nexthop:  NHA_OIF u32 [+ NHA_GATEWAY 4|16 bytes]   (family AF_INET / AF_INET6)
    a group:      NHA_GROUP  nexthop_grp{id u32, weight u8, resvd u8, resvd u16}...
                  (family AF_UNSPEC, as the kernel requires for groups; weight 0 = 1)

`scope` and `resvd` must be 0 (the kernel picks the scope). A gateway nexthop is sent with
RTNH_F_ONLINK in nh_flags: on a tunnel the peer's address is rarely in a connected subnet.
IPv6 routes refuse IPv4 nexthops, even without a gateway, so a device-only nexthop exists once
per family. Checked against `ip nexthop` (iproute2 6.1) and Linux 6.x by the integration tests.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import NamedTuple

from vtibgp.kernel.codec import (
    AF_INET,
    AF_INET6,
    NLA,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSGHDR,
    ROUTE_HDR_SIZE,
    RTA_NH_ID,
    RTM_NEWROUTE,
    RTNH_F_ONLINK,
    U32,
    align4,
    end_of,
    walk,
)

RTM_NEWNEXTHOP = 104
RTM_DELNEXTHOP = 105
RTM_GETNEXTHOP = 106

NHA_ID = 1
NHA_GROUP = 2
NHA_GROUP_TYPE = 3
NHA_BLACKHOLE = 4
NHA_OIF = 5
NHA_GATEWAY = 6

NHMSG = struct.Struct("=BBBBI")  # family, scope, protocol, resvd, flags
NEXTHOP_GRP = struct.Struct("=IBBH")  # id, weight - 1, resvd, resvd
_ADDR_LEN = {AF_INET: 4, AF_INET6: 16}
_U32_MAX = 0xFFFFFFFF
_NEW = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL


class Nexthop(NamedTuple):
    """A nexthop object as a dump shows it. `group` holds member ids (empty for a single
    nexthop); `ifindex`/`gateway` describe a single one (0/None otherwise)."""

    id: int
    family: int
    protocol: int
    flags: int
    ifindex: int
    gateway: str | None
    group: tuple[int, ...]
    blackhole: bool


class NexthopChunk(NamedTuple):
    nexthops: list[Nexthop]
    done: bool
    error: int


def _attr(kind: int, payload: bytes) -> bytes:
    size = NLA.size + len(payload)
    return NLA.pack(size, kind) + payload + b"\0" * (align4(size) - size)


def _check_id(nhid: int) -> None:
    if not 0 < nhid <= _U32_MAX:
        raise ValueError(f"nexthop id must be 1..{_U32_MAX}, not {nhid}")


def _message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body


def pack_nexthop(seq: int, nhid: int, family: int, ifindex: int, gateway: str | None,
                 protocol: int) -> bytes:
    """RTM_NEWNEXTHOP for one nexthop through `ifindex` (onlink via `gateway` if given).
    Created exclusively: EEXIST if the id is taken."""
    _check_id(nhid)
    if family not in _ADDR_LEN:
        raise ValueError(f"nexthop family must be AF_INET or AF_INET6, not {family}")
    if not 0 < ifindex <= 0x7FFFFFFF:
        raise ValueError(f"bad interface index {ifindex}")
    flags = 0
    attrs = _attr(NHA_ID, U32.pack(nhid)) + _attr(NHA_OIF, U32.pack(ifindex))
    if gateway is not None:
        gw_family = AF_INET6 if ":" in gateway else AF_INET
        if gw_family != family:
            raise ValueError(f"gateway {gateway} is not of the nexthop's family")
        try:
            raw = socket.inet_pton(family, gateway)
        except OSError:
            raise ValueError(f"bad gateway {gateway!r}") from None
        attrs += _attr(NHA_GATEWAY, raw)
        flags = RTNH_F_ONLINK
    body = NHMSG.pack(family, 0, protocol, 0, flags) + attrs
    return _message(RTM_NEWNEXTHOP, _NEW, seq, body)


def pack_group(seq: int, nhid: int, members: Sequence[int], protocol: int) -> bytes:
    """RTM_NEWNEXTHOP for a multipath group of existing nexthops, weight 1 each."""
    _check_id(nhid)
    if not members:
        raise ValueError("a nexthop group needs at least one member")
    for member in members:
        _check_id(member)
    entries = b"".join(NEXTHOP_GRP.pack(m, 0, 0, 0) for m in members)
    body = NHMSG.pack(0, 0, protocol, 0, 0) + _attr(NHA_ID, U32.pack(nhid))
    body += _attr(NHA_GROUP, entries)
    return _message(RTM_NEWNEXTHOP, _NEW, seq, body)


def pack_group_replace(seq: int, nhid: int, members: Sequence[int], protocol: int) -> bytes:
    """The same group message as a replace: routes using `nhid` follow its new members."""
    data = bytearray(pack_group(seq, nhid, members, protocol))
    NLMSGHDR.pack_into(data, 0, len(data), RTM_NEWNEXTHOP,
                       NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, seq, 0)
    return bytes(data)


def pack_nexthop_delete(seq: int, nhid: int) -> bytes:
    """RTM_DELNEXTHOP: the kernel also removes every route using `nhid` (ENOENT if none)."""
    _check_id(nhid)
    body = NHMSG.pack(0, 0, 0, 0, 0) + _attr(NHA_ID, U32.pack(nhid))
    return _message(RTM_DELNEXTHOP, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def pack_nexthop_dump_request(seq: int) -> bytes:
    """RTM_GETNEXTHOP dump of every nexthop object (all owners: ids in use are avoided)."""
    return _message(RTM_GETNEXTHOP, NLM_F_REQUEST | NLM_F_DUMP, seq, NHMSG.pack(0, 0, 0, 0, 0))


def _parse_one(data: bytes | bytearray | memoryview, off: int, end: int) -> Nexthop:
    family, _scope, protocol, _resvd, flags = NHMSG.unpack_from(data, off + NLMSGHDR.size)
    nhid = ifindex = 0
    gateway: str | None = None
    group: list[int] = []
    blackhole = False
    a = off + NLMSGHDR.size + NHMSG.size
    while a + NLA.size <= end:
        alen, atype = NLA.unpack_from(data, a)
        if alen < NLA.size or a + alen > end:
            break
        payload = a + NLA.size
        size = alen - NLA.size
        if atype == NHA_ID and size == 4:
            nhid = U32.unpack_from(data, payload)[0]
        elif atype == NHA_OIF and size == 4:
            ifindex = U32.unpack_from(data, payload)[0]
        elif atype == NHA_GATEWAY and size in (4, 16):
            gateway = socket.inet_ntop(AF_INET if size == 4 else AF_INET6,
                                       bytes(data[payload : payload + size]))
        elif atype == NHA_GROUP:
            for g in range(payload, payload + size - NEXTHOP_GRP.size + 1, NEXTHOP_GRP.size):
                group.append(NEXTHOP_GRP.unpack_from(data, g)[0])
        elif atype == NHA_BLACKHOLE:
            blackhole = True
        a += align4(alen)
    return Nexthop(nhid, family, protocol, flags, ifindex, gateway, tuple(group), blackhole)


def parse_nexthops(data: bytes | bytearray | memoryview, nbytes: int | None = None, *,
                   seq: int | None = None) -> NexthopChunk:
    """RTM_NEWNEXTHOP messages of a dump (or a notification) -> Nexthop tuples."""
    found: list[Nexthop] = []
    done = False
    error = 0
    for off, length, mtype in walk(data, nbytes, seq=seq):
        if mtype == RTM_NEWNEXTHOP and length >= NLMSGHDR.size + NHMSG.size:
            found.append(_parse_one(data, off, off + length))
        elif (ended := end_of(data, off, length, mtype)) is not None:
            done, error = True, ended
    return NexthopChunk(found, done, error)


def parse_route_nhids(data: bytes | bytearray | memoryview, nbytes: int | None = None, *,
                      seq: int | None = None) -> tuple[set[int], bool, int]:
    """The nexthop ids that the routes of one route-dump datagram use (RTA_NH_ID), whether
    the dump ended, and its errno."""
    ids: set[int] = set()
    done = False
    error = 0
    for off, length, mtype in walk(data, nbytes, seq=seq):
        if mtype == RTM_NEWROUTE:
            a = off + ROUTE_HDR_SIZE
            while a + NLA.size <= off + length:
                alen, atype = NLA.unpack_from(data, a)
                if alen < NLA.size:
                    break
                if atype == RTA_NH_ID and alen == NLA.size + 4:
                    ids.add(U32.unpack_from(data, a + NLA.size)[0])
                a += align4(alen)
        elif (ended := end_of(data, off, length, mtype)) is not None:
            done, error = True, ended
    return ids, done, error
