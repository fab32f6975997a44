"""KernelWriter against a real kernel, as root, inside the harness's gateway namespace (vti01
169.254.10.2/30 and vti02 169.254.11.2/30, veth pairs whose peer ends live in a second
namespace). The writer opens its netlink socket inside that namespace (``netns=``: a helper
thread joins it with setns(2) just to create the socket), so this process never leaves its own
namespace and nothing depends on the test's thread. Every assertion reads the kernel back with
``ip -j route show`` (through the harness), not through the writer. The namespaces are deleted
by the ``topology`` fixture, also on failure."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vtibgp.core.model import KernelRoute, NextHop, OpKind, RouteOp
from vtibgp.kernel import codec as nc
from vtibgp.kernel.writer import _SPREAD, KernelPermissionError, KernelWriter, _send_order
from vtibgp.lab.parts import TUNNELS, Topology, routes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

REPO = Path(__file__).resolve().parents[2]
GW1 = TUNNELS[1].aws_v4  # 169.254.10.1, the far end of vti01
GW2 = TUNNELS[2].aws_v4
GW1_6 = TUNNELS[1].aws_v6  # fd00:10::1
GW2_6 = TUNNELS[2].aws_v6
DEVS = ("vti01", "vti02")

WriterFactory = Callable[..., KernelWriter]


@pytest.fixture(params=["inline", "objects", "objects-python"])
def make_writer(topology: Topology, request: pytest.FixtureRequest) -> Iterator[WriterFactory]:
    """Every writer test runs three times: nexthops inline in each route, and through kernel
    nexthop objects (RTA_NH_ID) as `vtibgp run` uses them where the kernel has them, packed
    by the compiled packer (which CI builds) and, the last time, by Python alone."""
    made: list[KernelWriter] = []

    def make(**kwargs: Any) -> KernelWriter:
        python = request.param == "objects-python"
        w = KernelWriter(netns=topology.gw, compiled_packer=not python, **kwargs)
        made.append(w)
        if os.environ.get("CI") and not python:
            assert w.compiled_packer, "the compiled packer was not built (setup.py)"
        if request.param != "inline":
            assert w.enable_nexthop_objects()
        return w

    try:
        yield make
    finally:
        for w in made:
            w.close()


@pytest.fixture
def writer(make_writer: WriterFactory) -> KernelWriter:
    return make_writer()


def route(prefix: str, *hops: NextHop | str, metric: int = 100) -> KernelRoute:
    nexthops = tuple(sorted((h if isinstance(h, NextHop) else NextHop(h) for h in hops),
                            key=NextHop.sort_key))
    return KernelRoute(prefix, metric, nexthops)


def add(r: KernelRoute) -> RouteOp:
    return RouteOp(OpKind.ADD, r)


def replace(r: KernelRoute) -> RouteOp:
    return RouteOp(OpKind.REPLACE, r)


def delete(r: KernelRoute) -> RouteOp:
    return RouteOp(OpKind.DELETE, r)


def kernel(topo: Topology, table: int = 254, proto: int | None = 186,
           family: int = 4) -> dict[str, dict[str, Any]]:
    """Routes read back with `ip -j route show`, keyed by destination."""
    return {r["dst"]: r for r in routes(topo.gw, table=table, proto=proto, family=family)}


def hops_of(entry: dict[str, Any]) -> set[tuple[str, str | None]]:
    if "nexthops" in entry:
        return {(h["dev"], h.get("gateway")) for h in entry["nexthops"]}
    return {(entry["dev"], entry.get("gateway"))}


def ifindex(topo: Topology, dev: str) -> int:
    out = topo.ip("gw", "-j", "link", "show", "dev", dev)
    index: int = json.loads(out)[0]["ifindex"]
    return index


def test_add_replace_delete(topology: Topology, writer: KernelWriter) -> None:
    r1 = route("10.50.0.0/24", "vti01")
    res = writer.apply([add(r1)])
    assert (res.applied, res.failed) == (1, [])
    got = kernel(topology)["10.50.0.0/24"]
    # inline: a device route has scope link; through a nexthop object the route is global
    # and the object carries the scope (ip -j leaves "global" out)
    assert (got["dev"], got["metric"], got.get("scope", "global"), got.get("gateway")) == (
        "vti01", 100, "global" if writer.nexthop_objects else "link", None)
    assert ("nhid" in got) == writer.nexthop_objects

    r2 = route("10.50.0.0/24", NextHop("vti02", GW2))
    res = writer.apply([replace(r2)])
    assert (res.applied, res.failed) == (1, [])
    table = kernel(topology)
    assert list(table) == ["10.50.0.0/24"]
    got = table["10.50.0.0/24"]
    assert (got["dev"], got["gateway"], got["metric"]) == ("vti02", GW2, 100)
    assert "onlink" in got.get("flags", [])

    again = add(r2)
    res = writer.apply([again])  # ADD never overwrites, not even our own route
    assert res.failed == [(again, errno.EEXIST)]

    res = writer.apply([delete(r2)])
    assert (res.applied, res.failed) == (1, [])
    assert kernel(topology) == {}
    res = writer.apply([delete(r2)])  # already gone: ESRCH counts as applied
    assert (res.applied, res.failed) == (1, [])


def test_delete_matches_key_not_nexthops(topology: Topology, writer: KernelWriter) -> None:
    writer.apply([add(route("10.51.0.0/24", "vti01"))])
    # the core's idea of the nexthops may be stale: the delete still removes our route
    res = writer.apply([delete(route("10.51.0.0/24", NextHop("vti02", GW2)))])
    assert res.failed == []
    assert kernel(topology) == {}


def test_multipath_v4_and_v6(topology: Topology, writer: KernelWriter) -> None:
    v4 = route("10.60.0.0/24", NextHop("vti01", GW1), NextHop("vti02", GW2))
    v4dev = route("10.61.0.0/24", "vti01", "vti02")
    v6 = route("2001:db8:60::/48", NextHop("vti01", GW1_6), NextHop("vti02", GW2_6))
    res = writer.apply([add(v4), add(v4dev), add(v6)])
    assert (res.applied, res.failed) == (3, [])
    k4 = kernel(topology)
    assert hops_of(k4["10.60.0.0/24"]) == {("vti01", GW1), ("vti02", GW2)}
    assert all("onlink" in h.get("flags", []) for h in k4["10.60.0.0/24"]["nexthops"])
    assert hops_of(k4["10.61.0.0/24"]) == {("vti01", None), ("vti02", None)}
    k6 = kernel(topology, family=6)
    assert hops_of(k6["2001:db8:60::/48"]) == {("vti01", GW1_6), ("vti02", GW2_6)}
    assert k6["2001:db8:60::/48"]["metric"] == 100
    assert sorted(writer.dump(), key=lambda r: r.prefix) == [v4, v4dev, v6]

    # replace one multipath by another, then by a single nexthop
    v4b = route("10.60.0.0/24", NextHop("vti01", "169.254.10.5"), NextHop("vti02", GW2))
    assert writer.apply([replace(v4b)]).failed == []
    assert hops_of(kernel(topology)["10.60.0.0/24"]) == {("vti01", "169.254.10.5"),
                                                         ("vti02", GW2)}
    v4c = route("10.60.0.0/24", "vti02")
    assert writer.apply([replace(v4c)]).failed == []
    assert hops_of(kernel(topology)["10.60.0.0/24"]) == {("vti02", None)}
    res = writer.apply([delete(v4c), delete(v4dev), delete(v6)])
    assert (res.applied, res.failed) == (3, [])
    assert kernel(topology) == {} and kernel(topology, family=6) == {}


def test_ipv6(topology: Topology, writer: KernelWriter) -> None:
    dev = route("2001:db8:1::/48", "vti01")
    gw = route("2001:db8:2::/48", NextHop("vti02", "fe80::1"), metric=200)
    assert writer.apply([add(dev), add(gw)]).failed == []
    k6 = kernel(topology, family=6)
    assert (k6["2001:db8:1::/48"]["dev"], k6["2001:db8:1::/48"]["metric"]) == ("vti01", 100)
    assert hops_of(k6["2001:db8:2::/48"]) == {("vti02", "fe80::1")}
    assert k6["2001:db8:2::/48"]["metric"] == 200
    moved = route("2001:db8:1::/48", NextHop("vti02", GW2_6))
    assert writer.apply([replace(moved)]).failed == []
    assert hops_of(kernel(topology, family=6)["2001:db8:1::/48"]) == {("vti02", GW2_6)}
    assert sorted(writer.dump(), key=lambda r: r.prefix) == [moved, gw]
    assert writer.apply([delete(moved), delete(gw)]).failed == []
    assert kernel(topology, family=6) == {}
    # the kernel has no IPv6 multipath without gateways: refused, reported, nothing left
    # (a group of nexthop objects has no such limit)
    devonly = add(route("2001:db8:3::/48", "vti01", "vti02"))
    if writer.nexthop_objects:
        assert writer.apply([devonly]).failed == []
        return
    assert writer.apply([devonly]).failed == [(devonly, errno.EINVAL)]
    assert kernel(topology, family=6) == {}


def test_table_1000(topology: Topology, make_writer: WriterFactory) -> None:
    w = make_writer(table=1000)
    v4 = route("10.70.0.0/16", NextHop("vti01", GW1))
    v6 = route("2001:db8:70::/48", "vti02")
    assert w.dump() == []  # the table does not exist yet
    assert w.apply([add(v4), add(v6)]).failed == []
    assert set(kernel(topology, table=1000)) == {"10.70.0.0/16"}
    assert set(kernel(topology, table=1000, family=6)) == {"2001:db8:70::/48"}
    assert kernel(topology) == {}  # nothing in main
    assert sorted(w.dump(), key=lambda r: r.prefix) == [v4, v6]
    assert w.apply([delete(v4), delete(v6)]).failed == []
    assert kernel(topology, table=1000) == {} and kernel(topology, table=1000, family=6) == {}


def test_eexist_leaves_foreign_route_untouched(topology: Topology,
                                               writer: KernelWriter) -> None:
    topology.ip("gw", "route", "add", "10.80.0.0/24", "dev", "vti01", "metric", "100",
                "proto", "static")
    before = kernel(topology, proto=None)["10.80.0.0/24"]
    mine = route("10.80.0.0/24", NextHop("vti02", GW2))
    op = add(mine)
    res = writer.apply([op, add(route("10.81.0.0/24", "vti02"))])
    assert res.applied == 1
    assert res.failed == [(op, errno.EEXIST)]
    # a delete of that key by us matches our protocol only: the static route survives
    assert writer.apply([delete(mine)]).failed == []
    after = kernel(topology, proto=None)["10.80.0.0/24"]
    assert after == before
    assert after["protocol"] == "static" and after["dev"] == "vti01"
    # same prefix with another metric is a different key: allowed
    assert writer.apply([add(route("10.80.0.0/24", "vti02", metric=200))]).failed == []


def test_replace_never_overwrites_a_foreign_route_that_took_our_key(
        topology: Topology, writer: KernelWriter) -> None:
    """The kernel's own replace would overwrite whatever holds prefix+metric; the writer's
    replace deletes ours (by protocol) and adds exclusively, so a foreign route that took our
    key stays and the replace is refused with EEXIST."""
    ours = route("10.82.0.0/24", "vti01")
    assert writer.apply([add(ours)]).failed == []
    moved = route("10.82.0.0/24", NextHop("vti02", GW2))
    assert writer.apply([replace(moved)]).failed == []  # our own route: replaced
    assert hops_of(kernel(topology)["10.82.0.0/24"]) == {("vti02", GW2)}
    # someone else replaces our route with theirs at the same key
    topology.ip("gw", "route", "replace", "10.82.0.0/24", "dev", "vti01", "metric", "100",
                "proto", "static")
    op = replace(route("10.82.0.0/24", "vti02"))
    res = writer.apply([op, add(route("10.83.0.0/24", "vti02"))])
    assert res.failed == [(op, errno.EEXIST)] and res.applied == 1
    after = kernel(topology, proto=None)["10.82.0.0/24"]
    assert after["protocol"] == "static" and after["dev"] == "vti01"


def test_enodev_and_einval_leave_the_rest_applied(topology: Topology,
                                                  writer: KernelWriter) -> None:
    ok1 = add(route("10.90.1.0/24", "vti01"))
    missing = add(route("10.90.2.0/24", "vti99"))
    ok2 = add(route("10.90.3.0/24", "vti02"))
    missing_in_ecmp = add(route("10.90.4.0/24", "vti01", "vti98"))
    malformed = add(route("10.90.5.1/24", "vti01"))  # host bits
    wrong_family = add(route("10.90.6.0/24", NextHop("vti01", "fe80::1")))
    ok3 = add(route("2001:db8:90::/48", "vti02"))
    res = writer.apply([ok1, missing, ok2, missing_in_ecmp, malformed, wrong_family, ok3])
    assert res.applied == 3
    assert res.failed == [
        (missing, errno.ENODEV),
        (missing_in_ecmp, errno.ENODEV),
        (malformed, errno.EINVAL),
        (wrong_family, errno.EINVAL),
    ]
    assert set(kernel(topology)) == {"10.90.1.0/24", "10.90.3.0/24"}
    assert set(kernel(topology, family=6)) == {"2001:db8:90::/48"}


def test_dump_returns_exactly_ours(topology: Topology, writer: KernelWriter) -> None:
    ours = [
        route("10.100.0.0/24", "vti01"),
        route("10.100.1.0/24", NextHop("vti02", GW2), metric=50),
        route("10.100.2.0/24", NextHop("vti01", GW1), NextHop("vti02", GW2)),
        route("2001:db8:100::/48", "vti01"),
    ]
    assert writer.apply([add(r) for r in ours]).failed == []
    # not ours: another protocol in our table, our protocol in another table, a
    # non-unicast route with our protocol id, and the kernel's own connected routes
    topology.ip("gw", "route", "add", "10.101.0.0/24", "dev", "vti01", "proto", "static")
    topology.ip("gw", "route", "add", "10.102.0.0/24", "dev", "vti01", "proto", "186",
                "table", "1000")
    topology.ip("gw", "route", "add", "blackhole", "10.103.0.0/24", "proto", "186")
    topology.ip("gw", "-6", "route", "add", "2001:db8:101::/48", "dev", "vti02", "proto",
                "static")
    got = writer.dump()
    assert sorted(got, key=lambda r: r.prefix) == sorted(ours, key=lambda r: r.prefix)


@pytest.mark.parametrize(("pipeline", "multi_recv"),
                         [(True, True), (False, True), (True, False), (False, False)])
def test_many_routes_in_batches(topology: Topology, make_writer: WriterFactory,
                                pipeline: bool, multi_recv: bool) -> None:
    w = make_writer(batch=700, pipeline=pipeline, multi_recv=multi_recv)
    # the routes share two nexthops tuples, as the core's do (the compiled packer's case),
    # but every 301st has its own: the Python path packs it in the middle of a batch
    shared = [route("0.0.0.0/0", d).nexthops for d in DEVS]

    def hops(i: int, turn: int) -> tuple[NextHop, ...]:
        dev = DEVS[(i + turn) % 2]
        return (NextHop(dev),) if i % 301 == 0 else shared[(i + turn) % 2]

    prefixes = [f"10.{110 + i // 65536}.{i // 256 % 256}.{i % 256}/32" for i in range(5000)]
    rs = [KernelRoute(p, 100, hops(i, 0)) for i, p in enumerate(prefixes)]
    res = w.apply([add(r) for r in rs])
    assert (res.applied, res.failed) == (5000, [])
    assert len(kernel(topology)) == 5000
    assert sorted(w.dump(), key=lambda r: r.prefix) == sorted(rs, key=lambda r: r.prefix)
    rs = [KernelRoute(p, 100, hops(i, 1)) for i, p in enumerate(prefixes)]  # the other device
    res = w.apply([replace(r) for r in rs])
    assert (res.applied, res.failed) == (5000, [])
    got = kernel(topology)
    assert {p: got[p.removesuffix("/32")]["dev"] for p in prefixes[:5]} == {
        p: r.nexthops[0].device for p, r in zip(prefixes[:5], rs, strict=False)}
    assert sorted(w.dump(), key=lambda r: r.prefix) == sorted(rs, key=lambda r: r.prefix)
    res = w.apply([delete(r) for r in rs])
    assert (res.applied, res.failed) == (5000, [])
    assert kernel(topology) == {}



def test_lost_acks_are_resolved(topology: Topology, make_writer: WriterFactory) -> None:
    """A receive queue far too small for a batch's acks: the kernel drops most of them
    (ENOBUFS). Every op must still end with its true outcome."""
    topology.ip("gw", "route", "add", "10.120.0.7/32", "dev", "vti01", "metric", "100",
                "proto", "static")
    w = make_writer(rcvbuf=1, batch=3000)  # the kernel rounds up to its minimum (~4 kB)
    rs = [route(f"10.120.{i // 256}.{i % 256}/32", DEVS[i % 2]) for i in range(3000)]
    ops = [add(r) for r in rs]
    res = w.apply(ops)
    assert w.overruns > 0
    assert res.failed == [(ops[7], errno.EEXIST)]  # 10.120.0.7 belongs to someone else
    assert res.applied == 2999
    assert kernel(topology, proto=None)["10.120.0.7"]["protocol"] == "static"
    assert len(kernel(topology)) == 2999
    res = w.apply([delete(r) for r in rs])
    assert (res.applied, res.failed) == (3000, [])
    assert kernel(topology) == {}
    assert "10.120.0.7" in kernel(topology, proto=None)  # ip omits /32
    # lost acks of ops that a later op on the same key supersedes: not resent (the later
    # op decides), so a quick add-then-delete leaves nothing behind
    ops = [add(r) for r in rs[:1000]] + [delete(r) for r in rs[:500]]
    res = w.apply(ops)
    # ops[7] meets the static route: EEXIST if its ack arrived; if it was lost, the later
    # delete of that key decides and both count as applied (the static route is untouched)
    assert res.failed in ([], [(ops[7], errno.EEXIST)])
    assert res.applied == len(ops) - len(res.failed)
    assert kernel(topology, proto=None)["10.120.0.7"]["protocol"] == "static"
    assert len(kernel(topology)) == 500
    assert {r.prefix for r in w.dump()} == {r.prefix for r in rs[500:1000]}


def test_lost_refusals_are_resolved(topology: Topology, make_writer: WriterFactory,
                                   tmp_path: Path) -> None:
    """Only refusals and each datagram's last request are answered: a flood of refusals
    into a tiny receive queue loses most of them (ENOBUFS). No op may then pass for applied
    because its datagram's last ack came through: each ends with its true outcome."""
    foreign = [f"10.121.{i // 256}.{i % 256}" for i in range(0, 3000, 10)]  # every tenth
    batch = tmp_path / "foreign.txt"
    batch.write_text("".join(f"route add {p}/32 dev vti01 metric 100 proto static\n"
                             for p in foreign))
    topology.ip("gw", "-batch", str(batch))
    # small pipelined datagrams: answers are read while the kernel works on the next one, so
    # a datagram's last ack can get into the queue after an earlier refusal was dropped
    w = make_writer(rcvbuf=1, batch=40)
    rs = [route(f"10.121.{i // 256}.{i % 256}/32", DEVS[i % 2]) for i in range(3000)]
    ops = [add(r) for r in rs]
    res = w.apply(ops)
    assert w.overruns > 0
    assert res.failed == [(ops[i], errno.EEXIST) for i in range(0, 3000, 10)]
    assert res.applied == 2700
    mine = kernel(topology)
    assert len(mine) == 2700 and not set(foreign) & set(mine)
    everyone = kernel(topology, proto=None)
    assert all(everyone[p]["protocol"] == "static" for p in foreign)
    # deleting routes that are not there: every request refused (ESRCH), most answers lost
    absent = [route(f"10.122.{i // 256}.{i % 256}/32", DEVS[0]) for i in range(3000)]
    before = w.overruns
    res = w.apply([delete(r) for r in absent + rs])
    assert w.overruns > before
    assert (res.applied, res.failed) == (6000, [])
    assert kernel(topology) == {}
    assert len([p for p in kernel(topology, proto=None) if p.startswith("10.121.")]) == 300


def test_order_of_results_with_spread_runs(topology: Topology,
                                                  writer: KernelWriter) -> None:
    rs = [route(f"10.125.{i}.0/24", DEVS[i % 2]) for i in range(200)]
    assert writer.apply([add(r) for r in rs]).failed == []
    bad = delete(route("10.125.7.1/24", "vti01"))  # host bits: the kernel says EINVAL
    missing = delete(route("10.126.0.0/24", "vti01"))  # not there: ESRCH = applied
    keep = add(route("10.127.0.0/24", "vti02"))
    v6 = [route(f"2001:db8:125:{i:x}::/64", "vti01") for i in range(3)]
    assert writer.apply([add(r) for r in v6]).failed == []
    ops = [delete(r) for r in rs[:100]] + [bad, missing] + [delete(r) for r in rs[100:]]
    ops[120:120] = [delete(r) for r in v6]
    ops.insert(50, keep)  # splits the delete run: the ADD stays where it is
    order = _send_order(ops)
    assert order is not None and order[50] == 50
    assert sorted(order) == list(range(len(ops)))
    assert order[:50] == list(range(50))  # a run shorter than _SORT_RUN: as given
    # the long run: its IPv4 prefixes spread (dealt into hash buckets, each keeping the
    # given order), then its IPv6 ones as given
    run = [ops[i].route.prefix for i in range(51, len(ops))]
    four = [p for p in run if ":" not in p]
    spread = sorted(four, key=lambda p: hash(p) % _SPREAD)  # (stable)
    assert [ops[i].route.prefix for i in order[51:]] == spread + [p for p in run if ":" in p]
    assert spread != four
    assert [ops[i].route.prefix for i in order[-3:]] == [r.prefix for r in v6]
    res = writer.apply(ops)
    assert res.failed == [(bad, errno.EINVAL)]
    assert res.applied == len(ops) - 1
    assert set(kernel(topology)) == {"10.127.0.0/24"} and kernel(topology, family=6) == {}


def test_spread_run_keeps_one_keys_ops_in_order(topology: Topology,
                                                writer: KernelWriter) -> None:
    """Two ADDs of one key inside a long, spread run: the first is applied, the second meets
    it (EEXIST), as in the given order."""
    first = add(route("10.128.77.0/24", "vti01"))
    second = add(route("10.128.77.0/24", "vti02"))
    ops = [add(route(f"10.128.{i}.0/24", "vti02")) for i in range(200) if i != 77]
    ops[10:10] = [first]
    ops[150:150] = [second]
    order = _send_order(ops)
    assert order is not None and order != sorted(order)
    assert order.index(10) < order.index(150)
    res = writer.apply(ops)
    assert res.failed == [(second, errno.EEXIST)]
    assert hops_of(kernel(topology)["10.128.77.0/24"]) == {("vti01", None)}


def test_unknown_ifindex_is_named_by_number(writer: KernelWriter) -> None:
    got = writer._to_routes([("10.0.0.0/8", 254, 5, (nc.Hop(999_999, "169.254.10.1"),))])
    assert got == [KernelRoute("10.0.0.0/8", 5, (NextHop("#999999", "169.254.10.1"),))]


def test_stale_ifindex_after_device_recreated(topology: Topology,
                                              writer: KernelWriter) -> None:
    assert writer.resolve("vti02") == ifindex(topology, "vti02")
    old = writer.resolve("vti02")
    topology.recreate_link(2)  # same name, new ifindex; nobody told the writer
    assert ifindex(topology, "vti02") != old
    r = route("10.130.0.0/24", NextHop("vti02", GW2))
    res = writer.apply([add(r)])
    assert (res.applied, res.failed) == (1, [])
    assert hops_of(kernel(topology)["10.130.0.0/24"]) == {("vti02", GW2)}
    assert writer.dump() == [r]


def test_resolve_forget_refresh(topology: Topology, writer: KernelWriter) -> None:
    assert writer.resolve("vti01") == ifindex(topology, "vti01")
    assert writer.resolve("nosuchdev") is None
    assert writer.resolve("x" * 20) is None
    writer.forget("vti01")
    writer.forget("nosuchdev")
    writer.refresh_links()
    assert writer.resolve("vti02") == ifindex(topology, "vti02")
    topology.delete_link("vti01")
    writer.forget("vti01")
    op = add(route("10.140.0.0/24", "vti01"))
    assert writer.apply([op]).failed == [(op, errno.ENODEV)]


def test_check_permission_and_eperm(topology: Topology) -> None:
    with KernelWriter(netns=topology.gw) as w:
        w.check_permission()  # root: no exception
    script = textwrap.dedent(
        """
        import sys
        from vtibgp.kernel.writer import KernelPermissionError, KernelWriter
        from vtibgp.core.model import KernelRoute, NextHop, OpKind, RouteOp
        with KernelWriter() as w:
            try:
                w.check_permission()
            except KernelPermissionError as exc:
                print("probe:", exc.errno)
            op = RouteOp(OpKind.ADD, KernelRoute("10.150.0.0/24", 1, (NextHop("vti01"),)))
            try:
                w.apply([op])
            except PermissionError as exc:
                print("apply:", exc.errno)
        """
    )
    # root without CAP_NET_ADMIN (dropped from the bounding set before exec)
    res = subprocess.run(
        ["ip", "netns", "exec", topology.gw, "setpriv", "--bounding-set", "-net_admin",
         "--inh-caps", "-net_admin", sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == [f"probe: {errno.EPERM}", f"apply: {errno.EPERM}"]
    assert kernel(topology) == {}
    assert issubclass(KernelPermissionError, PermissionError)


@pytest.mark.parametrize("kind", ["unreachable", "blackhole"])
def test_fallback_route_is_typed_dumped_and_deleted(topology: Topology,
                                                    make_writer: WriterFactory,
                                                    kind: str) -> None:
    """A route without nexthops is the fallback: installed with the configured type behind
    the real routes, read back without nexthops, used once the tunnel's routes are gone,
    and deleted by its own type."""
    writer = make_writer(fallback=kind)
    real = route("10.140.0.0/24", "vti01")
    fallback = KernelRoute("10.140.0.0/24", 104, ())
    fallback6 = KernelRoute("2001:db8:140::/48", 104, ())
    assert writer.apply([add(real), add(fallback), add(fallback6)]).failed == []
    entries = [r for r in routes(topology.gw, proto=186) if r["dst"] == "10.140.0.0/24"]
    assert {(r.get("type", "unicast"), r["metric"]) for r in entries} == {
        (kind, 104), ("unicast", 100)}
    assert sorted(writer.dump(), key=lambda r: (r.prefix, r.metric)) == [
        real, fallback, fallback6]
    topology.set_link("gw", "vti01", False)  # the tunnel's route goes; the fallback stays
    left = [r for r in routes(topology.gw, proto=186) if r["dst"] == "10.140.0.0/24"]
    assert [(r.get("type"), r["metric"]) for r in left] == [(kind, 104)]
    assert sorted(writer.dump(), key=lambda r: r.prefix) == [fallback, fallback6]
    topology.set_link("gw", "vti01", True)
    assert writer.apply([delete(fallback), delete(fallback6)]).failed == []
    assert writer.dump() == []
