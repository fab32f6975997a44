"""The netlink codec without root: route requests byte-for-byte against pyroute2's own rtmsg
encoder, the dump parser's fast (compiled layout) and slow paths, acks, links, and hypothesis
round trips (pack -> parse)."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from vtibgp.addresses import canonical_address
from vtibgp.core.model import OpKind
from vtibgp.kernel import codec as nc

FLAGS = {
    OpKind.ADD: (nc.RTM_NEWROUTE, 0x605),  # REQUEST|ACK|CREATE|EXCL
    OpKind.REPLACE: (nc.RTM_NEWROUTE, 0x505),  # REQUEST|ACK|CREATE|REPLACE
    OpKind.DELETE: (nc.RTM_DELROUTE, 0x005),  # REQUEST|ACK
}


def family_of(prefix: str) -> int:
    return socket.AF_INET6 if ":" in prefix else socket.AF_INET


def pyroute2_route(
    kind: OpKind,
    prefix: str,
    metric: int,
    hops: list[nc.Hop],
    seq: int,
    table: int = 254,
    proto: int = 186,
    scope: int | None = None,
    rtm_flags: int | None = None,
    extra_attrs: list[tuple[str, Any]] | None = None,
) -> bytes:
    """The same request encoded by pyroute2's rtmsg, with the header fields and attribute
    order the codec documents (DST, TABLE, PRIORITY, then OIF [GATEWAY] or MULTIPATH)."""
    addr, plen = prefix.split("/")
    mtype, mflags = FLAGS[kind]
    if scope is None and kind is OpKind.DELETE:
        scope = 255
    elif scope is None:
        scope = 0 if any(h.gateway for h in hops) else 253
    if rtm_flags is None:
        rtm_flags = 4 if (kind is not OpKind.DELETE and len(hops) == 1 and hops[0].gateway) else 0
    msg = rtmsg()
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = mflags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg["family"] = family_of(prefix)
    msg["dst_len"] = int(plen)
    msg["src_len"] = 0
    msg["tos"] = 0
    msg["table"] = table if table < 256 else 0
    msg["proto"] = proto
    msg["scope"] = scope
    msg["type"] = 1
    msg["flags"] = rtm_flags
    attrs: list[tuple[str, Any]] = [
        ("RTA_DST", addr),
        ("RTA_TABLE", table),
        ("RTA_PRIORITY", metric),
    ]
    if kind is not OpKind.DELETE:
        if len(hops) == 1:
            attrs.append(("RTA_OIF", hops[0].ifindex))
            if hops[0].gateway:
                attrs.append(("RTA_GATEWAY", hops[0].gateway))
        else:
            attrs.append(
                (
                    "RTA_MULTIPATH",
                    [
                        {
                            "oif": h.ifindex,
                            "hops": 0,
                            "flags": 4 if h.gateway else 0,
                            "attrs": [("RTA_GATEWAY", h.gateway)] if h.gateway else [],
                        }
                        for h in hops
                    ],
                )
            )
    attrs.extend(extra_attrs or [])
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


HOPS = {
    "v4 dev": [nc.Hop(3)],
    "v4 gw": [nc.Hop(3, "169.254.10.1")],
    "v4 ecmp dev": [nc.Hop(3), nc.Hop(4)],
    "v4 ecmp gw": [nc.Hop(3, "169.254.10.1"), nc.Hop(4, "169.254.11.1")],
    "v4 ecmp mixed": [nc.Hop(3, "169.254.10.1"), nc.Hop(4)],
    "v6 dev": [nc.Hop(7)],
    "v6 gw": [nc.Hop(7, "fe80::1")],
    "v6 ecmp gw": [nc.Hop(7, "fd00:10::1"), nc.Hop(8, "fd00:11::1"), nc.Hop(9, "fe80::2")],
}
PREFIX = {"v4": "10.20.30.0/24", "v6": "2001:db8:1::/48"}


@pytest.mark.parametrize("table", [254, 1000, 100, 2**31 + 5])
@pytest.mark.parametrize("kind", list(OpKind), ids=lambda k: k.value)
@pytest.mark.parametrize("shape", list(HOPS))
def test_route_request_bytes_equal_pyroute2(shape: str, kind: OpKind, table: int) -> None:
    prefix = PREFIX[shape[:2]]
    hops = HOPS[shape]
    ours = nc.pack_route(kind, prefix, 1234, hops, seq=77, table=table, protocol=186)
    theirs = pyroute2_route(kind, prefix, 1234, hops, seq=77, table=table)
    assert ours == theirs


def test_header_fields_documented() -> None:
    packer = nc.RoutePacker(table=1000, protocol=186)
    dev = packer.pack(OpKind.ADD, "10.0.0.0/8", 5, (nc.Hop(2),), 9)
    length, mtype, flags, seq, pid = nc.NLMSGHDR.unpack_from(dev)
    assert (length, mtype, seq, pid) == (len(dev), nc.RTM_NEWROUTE, 9, 0)
    assert flags == nc.NLM_F_REQUEST | nc.NLM_F_ACK | nc.NLM_F_CREATE | nc.NLM_F_EXCL
    fam, dlen, _s, _t, rtable, proto, scope, rtype, rflags = nc.RTMSG.unpack_from(dev, 16)
    assert (fam, dlen, rtable, proto, scope, rtype, rflags) == (2, 8, 0, 186, 253, 1, 0)

    rep = packer.pack(OpKind.REPLACE, "10.0.0.0/8", 5, (nc.Hop(2, "169.254.10.1"),), 10)
    flags = nc.NLMSGHDR.unpack_from(rep)[2]
    assert flags & nc.NLM_F_REPLACE and not flags & nc.NLM_F_EXCL
    _f, _d, _s, _t, _tb, _p, scope, _ty, rflags = nc.RTMSG.unpack_from(rep, 16)
    assert (scope, rflags) == (nc.RT_SCOPE_UNIVERSE, nc.RTNH_F_ONLINK)

    dele = packer.pack(OpKind.DELETE, "10.0.0.0/8", 5, (nc.Hop(2),), 11)
    info = nc.parse_route_at(dele)
    assert (info.scope, info.table, info.protocol, info.priority) == (255, 1000, 186, 5)
    assert info.hops == ()  # deletes carry the key only

    small = nc.RoutePacker(table=100).pack(OpKind.ADD, "10.0.0.0/8", 5, (nc.Hop(2),), 1)
    assert nc.RTMSG.unpack_from(small, 16)[4] == 100


def test_add_never_uses_replace() -> None:
    for shape, hops in HOPS.items():
        data = nc.pack_route(OpKind.ADD, PREFIX[shape[:2]], 1, hops, 1)
        flags = nc.NLMSGHDR.unpack_from(data)[2]
        assert flags & nc.NLM_F_EXCL and not flags & nc.NLM_F_REPLACE


@pytest.mark.parametrize(
    ("prefix", "hops", "metric"),
    [
        ("10.0.0.1/24x", [nc.Hop(1)], 1),
        ("10.0.0.0/33", [nc.Hop(1)], 1),
        ("10.0.0.0", [nc.Hop(1)], 1),
        ("10.0.0.0/x", [nc.Hop(1)], 1),
        ("300.0.0.0/8", [nc.Hop(1)], 1),
        ("2001:db8::1/64", [nc.Hop(1)], 1),
        ("2001:db8::/129", [nc.Hop(1)], 1),
        ("10.0.0.0/8", [nc.Hop(1, "fe80::1")], 1),  # gateway of the other family
        ("2001:db8::/32", [nc.Hop(1, "10.0.0.1")], 1),
        ("10.0.0.0/8", [], 1),  # no nexthop
        ("10.0.0.0/8", [nc.Hop(0)], 1),  # no such ifindex
        ("10.0.0.0/8", [nc.Hop(1)], -1),
        ("10.0.0.0/8", [nc.Hop(1)], 2**32),
    ],
)
def test_refuses_malformed(prefix: str, hops: list[nc.Hop], metric: int) -> None:
    with pytest.raises(ValueError):
        nc.pack_route(OpKind.ADD, prefix, metric, hops, 1)


def test_packer_rejects_bad_settings() -> None:
    for table in (0, 252, 2**32):
        with pytest.raises(ValueError):
            nc.RoutePacker(table=table)
    for proto in (0, 256):
        with pytest.raises(ValueError):
            nc.RoutePacker(protocol=proto)


def test_template_cache_is_bounded() -> None:
    packer = nc.RoutePacker()
    packer.MAX_TEMPLATES = 8
    for i in range(1, 40):
        packer.pack(OpKind.ADD, "10.0.0.0/8", 1, (nc.Hop(i),), i)
    assert len(packer._templates) <= 8
    again = packer.pack(OpKind.ADD, "10.0.0.0/8", 1, (nc.Hop(1),), 1)
    assert again == nc.pack_route(OpKind.ADD, "10.0.0.0/8", 1, [nc.Hop(1)], 1)


# ------------------------------------------------------------------ dump parsing


def as_dump(*messages: bytes, seq: int | None = None) -> bytearray:
    """Turn packed requests into something shaped like dump replies (type RTM_NEWROUTE,
    NLM_F_MULTI, the dump's sequence, and rtm_table = RT_TABLE_COMPAT for tables above 255,
    as the kernel reports them)."""
    out = bytearray()
    for m in messages:
        b = bytearray(m)
        if b[20] == nc.RT_TABLE_UNSPEC:
            b[20] = nc.RT_TABLE_COMPAT
        length, _t, _f, mseq, pid = nc.NLMSGHDR.unpack_from(b)
        nc.NLMSGHDR.pack_into(b, 0, length, nc.RTM_NEWROUTE, nc.NLM_F_MULTI,
                              mseq if seq is None else seq, pid)
        out += b
    return out


def done_message(seq: int, error: int = 0) -> bytes:
    return nc.NLMSGHDR.pack(20, nc.NLMSG_DONE, nc.NLM_F_MULTI, seq, 0) + struct.pack("=i", error)


def test_dump_filters_on_protocol_table_and_type() -> None:
    ours = nc.RoutePacker(table=1000, protocol=186)
    other_proto = nc.RoutePacker(table=1000, protocol=4)
    other_table = nc.RoutePacker(table=1001, protocol=186)
    main = nc.RoutePacker(table=254, protocol=186)
    hop = (nc.Hop(3),)
    blackhole = bytearray(ours.pack(OpKind.ADD, "10.9.0.0/16", 1, hop, 1))
    blackhole[23] = 6  # RTN_BLACKHOLE
    buf = as_dump(
        ours.pack(OpKind.ADD, "10.1.0.0/16", 1, hop, 1),
        other_proto.pack(OpKind.ADD, "10.2.0.0/16", 1, hop, 1),
        other_table.pack(OpKind.ADD, "10.3.0.0/16", 1, hop, 1),
        main.pack(OpKind.ADD, "10.4.0.0/16", 1, hop, 1),
        bytes(blackhole),
        ours.pack(OpKind.ADD, "2001:db8::/32", 7, (nc.Hop(3, "fe80::1"),), 1),
        seq=42,
    )
    chunk = nc.parse_route_dump(buf, table=1000, protocol=186, seq=42)
    assert [r[0] for r in chunk.routes] == ["10.1.0.0/16", "2001:db8::/32"]
    assert chunk.routes[1] == ("2001:db8::/32", 1000, 7, (nc.Hop(3, "fe80::1"),))
    assert not chunk.done
    everything = nc.parse_route_dump(buf)
    assert len(everything.routes) == 5  # all but the blackhole


def test_dump_with_kernel_style_table_byte_and_extra_attrs() -> None:
    # what Linux sends for table 1000: rtm_table = RT_TABLE_COMPAT, RTA_TABLE = 1000, and for
    # IPv6 RTA_CACHEINFO and RTA_PREF among the attributes
    cacheinfo = {"rta_clntref": 0, "rta_lastuse": 0, "rta_expires": 0, "rta_error": 0,
                 "rta_used": 0, "rta_id": 0, "rta_ts": 0, "rta_tsage": 0}
    raw = pyroute2_route(OpKind.ADD, "2001:db8:5::/48", 1024, [nc.Hop(9)], 5, table=1000,
                         extra_attrs=[("RTA_CACHEINFO", cacheinfo), ("RTA_PREF", 0)])
    msg = bytearray(raw)
    msg[20] = nc.RT_TABLE_COMPAT
    chunk = nc.parse_route_dump(as_dump(bytes(msg), bytes(msg), seq=5) + done_message(5),
                                table=1000, protocol=186, seq=5)
    assert chunk.done and not chunk.error
    assert chunk.routes == [("2001:db8:5::/48", 1000, 1024, (nc.Hop(9),))] * 2


def test_dump_same_length_other_attribute_order() -> None:
    # two shapes of equal length and family: the compiled layout of the first must not be
    # applied to the second (their attribute headers differ)
    a = pyroute2_route(OpKind.ADD, "10.1.0.0/16", 11, [nc.Hop(3)], 1)
    msg = rtmsg()
    msg["header"].update({"type": 24, "flags": 0x605, "sequence_number": 1, "pid": 0})
    for key, val in {"family": 2, "dst_len": 16, "table": 254, "proto": 186, "scope": 253,
                     "type": 1, "flags": 0}.items():
        msg[key] = val
    msg["attrs"] = [("RTA_OIF", 5), ("RTA_PRIORITY", 22), ("RTA_TABLE", 254),
                    ("RTA_DST", "10.2.0.0")]
    msg.encode()
    b = bytes(msg.data)
    assert len(a) == len(b) and a != b
    nc._LAYOUTS.clear()
    chunk = nc.parse_route_dump(as_dump(a, b, a, b))
    assert chunk.routes == [
        ("10.1.0.0/16", 254, 11, (nc.Hop(3),)),
        ("10.2.0.0/16", 254, 22, (nc.Hop(5),)),
    ] * 2


def test_dump_default_route_has_no_rta_dst() -> None:
    msg = rtmsg()
    msg["header"].update({"type": 24, "flags": 2, "sequence_number": 3, "pid": 0})
    for key, val in {"family": 2, "dst_len": 0, "table": 254, "proto": 186, "scope": 0,
                     "type": 1, "flags": 0}.items():
        msg[key] = val
    msg["attrs"] = [("RTA_TABLE", 254), ("RTA_PRIORITY", 5), ("RTA_GATEWAY", "169.254.10.1"),
                    ("RTA_OIF", 4)]
    msg.encode()
    chunk = nc.parse_route_dump(bytes(msg.data))
    assert chunk.routes == [("0.0.0.0/0", 254, 5, (nc.Hop(4, "169.254.10.1"),))]


def test_dump_done_error_interrupted_and_stale() -> None:
    route = nc.pack_route(OpKind.ADD, "10.0.0.0/8", 1, [nc.Hop(2)], 1)
    buf = as_dump(route, seq=8) + as_dump(route, seq=9)
    intr = bytearray(route)
    nc.NLMSGHDR.pack_into(intr, 0, len(route), nc.RTM_NEWROUTE,
                          nc.NLM_F_MULTI | nc.NLM_F_DUMP_INTR, 9, 0)
    chunk = nc.parse_route_dump(buf + intr + done_message(9, -2), seq=9)
    assert len(chunk.routes) == 2  # the seq-8 one is stale
    assert chunk.done and chunk.interrupted and chunk.error == 2
    err = nc.NLMSGHDR.pack(36, nc.NLMSG_ERROR, nc.NLM_F_CAPPED, 9, 0) + struct.pack(
        "=i", -95) + nc.NLMSGHDR.pack(40, nc.RTM_GETROUTE, 0x301, 9, 0)
    chunk = nc.parse_route_dump(err, seq=9)
    assert chunk.done and chunk.error == 95 and not chunk.routes


def test_dump_truncated_input_does_not_crash() -> None:
    route = nc.pack_route(OpKind.ADD, "10.0.0.0/8", 1, [nc.Hop(2, "169.254.10.1")], 1)
    for cut in range(len(route)):
        nc.parse_route_dump(route[:cut])
        nc.parse_acks(route[:cut])


# ------------------------------------------------------------------ acks, links, requests


def test_parse_acks() -> None:
    ok = nc.NLMSGHDR.pack(36, nc.NLMSG_ERROR, nc.NLM_F_CAPPED, 5, 99) + struct.pack(
        "=i", 0) + nc.NLMSGHDR.pack(60, nc.RTM_NEWROUTE, 0x605, 5, 0)
    assert len(ok) == nc.ACK_SIZE
    text = b"Nexthop has invalid gateway\0"
    tlv = struct.pack("=HH", 4 + len(text), nc.NLMSGERR_ATTR_MSG) + text
    tlv += b"\0" * (nc.align4(len(tlv)) - len(tlv))
    capped = nc.NLMSGHDR.pack(36 + len(tlv), nc.NLMSG_ERROR,
                              nc.NLM_F_CAPPED | nc.NLM_F_ACK_TLVS, 6, 99)
    capped += struct.pack("=i", -22) + nc.NLMSGHDR.pack(60, 24, 0x605, 6, 0) + tlv
    request = nc.pack_route(OpKind.ADD, "10.0.0.0/8", 1, [nc.Hop(2)], 7)
    echoed = nc.NLMSGHDR.pack(20 + len(request) + len(tlv), nc.NLMSG_ERROR, nc.NLM_F_ACK_TLVS,
                              7, 99) + struct.pack("=i", -17) + request + tlv
    acks = nc.parse_acks(ok + capped + echoed)
    assert acks == [
        nc.Ack(5, 0, None),
        nc.Ack(6, 22, "Nexthop has invalid gateway"),
        nc.Ack(7, 17, "Nexthop has invalid gateway"),
    ]
    assert nc.ACK.unpack_from(ok)[3:] == (5, 99, 0)


def test_links_request_and_parse() -> None:
    req = nc.pack_link_request("vti01", 12)
    length, mtype, flags, seq, _pid = nc.NLMSGHDR.unpack_from(req)
    assert (length, mtype, seq) == (len(req), nc.RTM_GETLINK, 12)
    assert flags == nc.NLM_F_REQUEST | nc.NLM_F_ACK
    assert b"vti01\0" in req
    for bad in ("", "x" * 16, "a\0b"):
        with pytest.raises(ValueError):
            nc.pack_link_request(bad, 1)

    def link(index: int, name: str) -> bytes:
        m = ifinfmsg()
        m["header"].update({"type": nc.RTM_NEWLINK, "flags": 2, "sequence_number": 12,
                            "pid": 0})
        m["family"] = 0
        m["index"] = index
        m["flags"] = 1
        m["change"] = 0
        m["ifi_type"] = 1
        m["attrs"] = [("IFLA_MTU", 1500), ("IFLA_IFNAME", name)]
        m.encode()
        return bytes(m.data)

    data = link(3, "vti01") + link(4, "vti02") + done_message(12)
    chunk = nc.parse_links(data, seq=12)
    assert chunk == nc.LinkChunk([(3, "vti01"), (4, "vti02")], True, 0)
    assert nc.parse_links(data, seq=13).links == []
    dump = nc.pack_link_dump_request(3)
    assert nc.NLMSGHDR.unpack_from(dump)[1:3] == (nc.RTM_GETLINK, nc.NLM_F_REQUEST | nc.NLM_F_DUMP)


def test_route_dump_request() -> None:
    req = nc.pack_route_dump_request(socket.AF_INET6, 4, table=1000, protocol=186)
    length, mtype, flags, seq, _pid = nc.NLMSGHDR.unpack_from(req)
    assert (length, mtype, flags, seq) == (len(req), nc.RTM_GETROUTE,
                                           nc.NLM_F_REQUEST | nc.NLM_F_DUMP, 4)
    # strict-check rules: dst_len/src_len/tos/scope zero, only RTA_TABLE attached
    fam, dlen, slen, tos, table, proto, scope, rtype, rflags = nc.RTMSG.unpack_from(req, 16)
    assert (fam, dlen, slen, tos, table, proto, scope, rtype, rflags) == (10, 0, 0, 0, 0, 186,
                                                                          0, 0, 0)
    assert nc.NLA.unpack_from(req, 28) == (8, nc.RTA_TABLE)
    assert nc.U32.unpack_from(req, 32)[0] == 1000


def test_permission_probe_matches_nothing() -> None:
    probe = nc.pack_permission_probe(3, table=1000)
    info = nc.parse_route_at(probe)
    assert nc.NLMSGHDR.unpack_from(probe)[1] == nc.RTM_DELROUTE
    assert info.family == socket.AF_INET and info.dst_len == 33 and info.table == 1000


# ------------------------------------------------------------------ round trips

def ntop(family: int, value: int) -> str:
    """Canonical text as the codec writes it (inet_ntop, like ExaBGP; note "::0.1.0.0")."""
    return socket.inet_ntop(family, value.to_bytes(16 if family == socket.AF_INET6 else 4, "big"))


def network(family: int, value: int, plen: int) -> str:
    bits = 128 if family == socket.AF_INET6 else 32
    masked = value & ~((1 << (bits - plen)) - 1)
    return f"{ntop(family, masked)}/{plen}"


v4_prefixes = st.builds(
    lambda a, n: network(socket.AF_INET, a, n), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
v6_prefixes = st.builds(
    lambda a, n: network(socket.AF_INET6, a, n), st.integers(0, 2**128 - 1), st.integers(0, 128)
)
ifindexes = st.integers(1, 2**31 - 1)


@st.composite
def routes(draw: st.DrawFn) -> tuple[str, int, list[nc.Hop]]:
    v6 = draw(st.booleans())
    prefix = draw(v6_prefixes if v6 else v4_prefixes)
    family = socket.AF_INET6 if v6 else socket.AF_INET
    gw = st.integers(0, 2 ** (128 if v6 else 32) - 1).map(lambda a: ntop(family, a))
    hops = draw(st.lists(st.builds(nc.Hop, ifindexes, st.none() | gw), min_size=1, max_size=5))
    metric = draw(st.integers(0, 2**32 - 1))
    return prefix, metric, hops


tables = st.sampled_from([1, 100, 251, 253, 254, 255, 256, 1000, 2**32 - 1])


@settings(max_examples=300, deadline=None)
@given(route=routes(), table=tables, kind=st.sampled_from([OpKind.ADD, OpKind.REPLACE]),
       seq=st.integers(0, 2**32 - 1))
def test_round_trip_pack_then_parse(
    route: tuple[str, int, list[nc.Hop]], table: int, kind: OpKind, seq: int
) -> None:
    prefix, metric, hops = route
    data = nc.pack_route(kind, prefix, metric, hops, seq, table=table, protocol=186)
    info = nc.parse_route_at(data)
    assert (info.prefix, info.table, info.protocol, info.priority) == (prefix, table, 186, metric)
    assert info.family == family_of(prefix)
    assert info.hops == tuple(hops)
    if len(hops) == 1:
        assert (info.oif, info.gateway, info.multipath) == (hops[0].ifindex, hops[0].gateway, ())
    else:
        assert info.oif == 0 and info.multipath == tuple(hops)
    # the dump parser (compiled layout and attribute walk) reads the same
    nc._LAYOUTS.clear()
    dump = as_dump(data, data, seq=seq)
    for _ in range(2):  # first: learns the layout; second: uses it
        chunk = nc.parse_route_dump(dump, table=table, protocol=186, seq=seq)
        assert chunk.routes == [(prefix, table, metric, tuple(hops))] * 2
    assert nc.parse_route_dump(dump, table=table, protocol=187).routes == []
    with_bytes = nc.parse_route_dump(memoryview(bytes(dump)), table=table)
    assert len(with_bytes.routes) == 2


@settings(max_examples=100, deadline=None)
@given(route=routes(), seq=st.integers(0, 2**32 - 1))
def test_round_trip_delete(route: tuple[str, int, list[nc.Hop]], seq: int) -> None:
    prefix, metric, hops = route
    data = nc.pack_route(OpKind.DELETE, prefix, metric, hops, seq, table=1000)
    assert nc.NLMSGHDR.unpack_from(data)[1:4] == (nc.RTM_DELROUTE, 0x5, seq)
    info = nc.parse_route_at(data)
    assert (info.prefix, info.table, info.priority, info.scope) == (prefix, 1000, metric, 255)
    assert info.hops == ()


@settings(max_examples=50, deadline=None)
@given(batch=st.lists(routes(), min_size=1, max_size=30))
def test_mixed_batch_parses_in_order(batch: list[tuple[str, int, list[nc.Hop]]]) -> None:
    packer = nc.RoutePacker(table=254)
    msgs = [packer.pack(OpKind.ADD, p, m, tuple(h), 1) for p, m, h in batch]
    chunk = nc.parse_route_dump(as_dump(*msgs, seq=1), table=254, protocol=186, seq=1)
    assert chunk.routes == [(p, 254, m, tuple(h)) for p, m, h in batch]


# ------------------------------------------------------------------ one spelling of addresses

# IPv4 inside IPv6 (mapped, compatible), the unspecified and loopback addresses, runs of zero
# groups to compress (the longest, the first of equals, never a single one), upper case
AWKWARD_PREFIXES = [
    "::ffff:10.0.0.0/104", "::FFFF:A00:0/104", "::10.0.0.0/104", "::a00:0/104", "::/0",
    "::ffff:0:0/96", "::1/128", "::2/128", "::1.2.3.4/128", "2001:DB8:0:0:0:0:0:0/32",
    "1:0:0:1:0:0:0:0/112", "0:0:1::/48", "2001:db8:0:1:0:0:0:0/64", "fd00:0:0:0:0:0:0:1/128",
]
AWKWARD_GATEWAYS = [
    "::ffff:169.254.10.1", "::FFFF:a9fe:a01", "::169.254.10.1", "::a9fe:a01", "::", "::1",
    "FD00:10::1", "fe80:0:0:0:0:0:0:1", "2001:db8:0:0:1:0:0:1", "1:0:0:1:0:0:0:1",
]


def _parsed_route(prefix: str, gateway: str) -> tuple[str, str]:
    """(prefix, next-hop) as the ExaBGP input parser puts them into the RIB."""
    from vtibgp.core.model import Announce
    from vtibgp.exabgp.parse import parse_line

    line = json.dumps({
        "exabgp": "5.0.0", "type": "update", "neighbor": {
            "address": {"local": "169.254.10.2", "peer": "169.254.10.1"},
            "direction": "receive", "message": {"update": {
                "attribute": {"origin": "igp"},
                "announce": {"ipv6 unicast": {gateway: [{"nlri": prefix}]}}}}}})  # fmt: skip
    (announce,) = parse_line(line).events
    assert isinstance(announce, Announce)
    return announce.prefixes[0], announce.attrs.next_hop


@pytest.mark.parametrize("prefix", AWKWARD_PREFIXES)
@pytest.mark.parametrize("gateway", AWKWARD_GATEWAYS)
def test_rib_and_kernel_dump_spell_addresses_alike(prefix: str, gateway: str) -> None:
    """The RIB's text of a prefix and a next-hop is the text the kernel dump gives back for
    the route installed from it: else a route is REPLACEd at every reconcile, or lost after a
    restart because the dumped prefix matches nothing in the RIB."""
    rib_prefix, rib_gateway = _parsed_route(prefix, gateway)
    assert rib_prefix == f"{canonical_address(prefix.split('/')[0])}/{prefix.split('/')[1]}"
    assert rib_gateway == canonical_address(gateway)
    data = nc.pack_route(OpKind.ADD, rib_prefix, 100, [nc.Hop(3, rib_gateway)], 1)
    info = nc.parse_route_at(data)
    assert (info.prefix, info.gateway) == (rib_prefix, rib_gateway)
    nc._LAYOUTS.clear()
    dump = as_dump(data, data, seq=1)
    for _ in range(2):  # learns the layout, then uses it
        chunk = nc.parse_route_dump(dump, seq=1)
        assert chunk.routes == [(rib_prefix, 254, 100, (nc.Hop(3, rib_gateway),))] * 2
    # and a two-hop route (RTA_MULTIPATH)
    hops = [nc.Hop(3, rib_gateway), nc.Hop(4, rib_gateway)]
    multi = nc.parse_route_at(nc.pack_route(OpKind.ADD, rib_prefix, 100, hops, 1))
    assert multi.prefix == rib_prefix and multi.multipath == tuple(hops)


def test_canonical_address() -> None:
    assert canonical_address("::FFFF:A9FE:A01") == "::ffff:169.254.10.1"
    assert canonical_address("0:0:0:0:0:0:102:304") == "::1.2.3.4"
    assert canonical_address("::0.0.0.1") == "::1"  # (seven zero groups: no dotted form)
    assert canonical_address("1:0:0:2:0:0:0:3") == "1:0:0:2::3"
    assert canonical_address("1:0:2:3:4:5:6:7") == "1:0:2:3:4:5:6:7"
    assert canonical_address("169.254.10.1") == "169.254.10.1"
    for bad in ("", "1.2.3", "01.2.3.4", "fe80::1%eth0", "::1\x00", "1::2::3", "\udcff", "x"):
        assert canonical_address(bad) is None


def test_requests_without_ack_and_the_datagram_closing_ack() -> None:
    """The writer's packer leaves NLM_F_ACK off (the kernel then answers refusals only);
    with_ack puts it back on the last message only: a REPLACE's add, not its delete."""
    quiet = nc.RoutePacker(table=254, protocol=186, ack=False)
    loud = nc.RoutePacker(table=254, protocol=186)
    for kind in OpKind:
        hops = () if kind is OpKind.DELETE else (nc.Hop(2),)
        a = quiet.pack(kind, "10.0.0.0/8", 5, hops, 9)
        b = loud.pack(kind, "10.0.0.0/8", 5, hops, 9)
        assert not nc.NLMSGHDR.unpack_from(a)[2] & nc.NLM_F_ACK
        assert nc.with_ack(a) == b
    delete = quiet.pack(OpKind.DELETE, "10.0.0.0/8", 5, (), 3)
    add = quiet.pack(OpKind.ADD, "10.0.0.0/8", 5, 7, 4)
    both = nc.with_ack(delete + add)
    assert both[:len(delete)] == delete
    assert nc.NLMSGHDR.unpack_from(both, len(delete))[2] & nc.NLM_F_ACK
    assert both[len(delete):] == loud.pack(OpKind.ADD, "10.0.0.0/8", 5, 7, 4)
    with pytest.raises(ValueError, match="whole netlink message"):
        nc.with_ack(delete[:-4])
