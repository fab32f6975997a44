"""Kernel nexthop objects on a real kernel: what the writer makes, how the kernel takes routes
away with them (our flush for an IPsec down, carrier loss, admin down), and that ours are the
only objects we touch. Inside the harness's namespaces (vti01/vti02 veth pairs), deleted by
the ``topology`` fixture."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vtibgp.core.model import KernelRoute, NextHop, OpKind, RouteOp
from vtibgp.kernel.writer import NHID_BASE, KernelWriter
from vtibgp.lab.parts import TUNNELS, Topology

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

GW1 = TUNNELS[1].aws_v4
GW2 = TUNNELS[2].aws_v4
V1 = (NextHop("vti01"),)
V2 = (NextHop("vti02"),)
ECMP = (NextHop("vti01", GW1), NextHop("vti02", GW2))


@pytest.fixture
def writer(topology: Topology) -> Iterator[KernelWriter]:
    w = KernelWriter(netns=topology.gw)
    try:
        assert w.enable_nexthop_objects()
        yield w
    finally:
        w.close()


def add(prefix: str, metric: int, hops: tuple[NextHop, ...]) -> RouteOp:
    return RouteOp(OpKind.ADD, KernelRoute(prefix, metric, hops))


def our_routes(topo: Topology) -> list[dict[str, Any]]:
    out = topo.ip("gw", "-j", "route", "show", "proto", "186")
    return list(json.loads(out)) if out.strip() else []


def nexthops(topo: Topology) -> dict[int, dict[str, Any]]:
    out = topo.ip("gw", "-j", "nexthop", "show")
    return {n["id"]: n for n in json.loads(out)} if out.strip() else {}


def via(topo: Topology, address: str) -> str:
    got: str = json.loads(topo.ip("gw", "-j", "route", "get", address))[0]["dev"]
    return got


def primary_and_backup(writer: KernelWriter, n: int = 200) -> list[str]:
    prefixes = [f"10.{i // 256}.{i % 256}.0/24" for i in range(n)]
    ops = [add(p, 100, V1) for p in prefixes] + [add(p, 101, V2) for p in prefixes]
    ops.append(add("10.250.0.0/24", 100, ECMP))
    res = writer.apply(ops)
    assert res.failed == []
    return prefixes


def test_routes_name_shared_objects(topology: Topology, writer: KernelWriter) -> None:
    primary_and_backup(writer)
    objs = nexthops(topology)
    ours = {i: n for i, n in objs.items() if n.get("protocol") == "bgp"}
    # one object per device, one per onlink gateway, one group for the multipath route
    assert len(ours) == writer.nexthop_count() == 5
    assert all(i >= NHID_BASE for i in ours)
    groups = [n for n in ours.values() if "group" in n]
    assert len(groups) == 1 and len(groups[0]["group"]) == 2
    used = {r["nhid"] for r in our_routes(topology)}
    assert used <= set(ours) and len(used) == 3
    # the dump reads the routes back with their nexthops, as inline routes
    dumped = {r.key: r for r in writer.dump()}
    assert dumped[("10.0.0.0/24", 100)].nexthops == V1
    assert dumped[("10.250.0.0/24", 100)].nexthops == ECMP


def test_flush_device_takes_every_route_through_it_at_once(topology: Topology,
                                                           writer: KernelWriter) -> None:
    prefixes = primary_and_backup(writer)
    assert via(topology, "10.0.5.1") == "vti01"
    assert writer.flush_device("vti01") is True
    left = our_routes(topology)
    # the backups carry on; the multipath route kept its vti02 member
    assert {(r["dst"], r["metric"]) for r in left} == (
        {(p, 101) for p in prefixes} | {("10.250.0.0/24", 100)})
    assert {r["dev"] for r in left if "dev" in r} == {"vti02"}
    assert via(topology, "10.0.5.1") == "vti02"
    assert via(topology, "10.250.0.1") == "vti02"
    assert not [n for n in nexthops(topology).values() if n.get("dev") == "vti01"]
    # routes through vti01 again: fresh objects are made
    assert writer.apply([add("10.0.0.0/24", 100, V1)]).failed == []
    assert via(topology, "10.0.0.1") == "vti01"


def test_carrier_loss_takes_the_routes_and_the_writer_follows(topology: Topology,
                                                              writer: KernelWriter) -> None:
    """Unlike inline routes (kept, flagged linkdown and still used), routes through nexthop
    objects leave with the carrier: the kernel fails over to the backup by itself."""
    prefixes = primary_and_backup(writer, 50)
    topology.carrier_off(1)
    deadline = time.monotonic() + 5
    while via(topology, "10.0.5.1") != "vti02" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert via(topology, "10.0.5.1") == "vti02"
    assert {r["metric"] for r in our_routes(topology) if r["dst"] in prefixes} == {101}
    assert writer.note_device_gone("vti01") is True
    topology.carrier_on(1)
    topology.wait_link_ready(1)
    res = writer.apply([RouteOp(OpKind.ADD, KernelRoute(p, 100, V1)) for p in prefixes])
    assert res.failed == []
    assert via(topology, "10.0.5.1") == "vti01"


def test_admin_down_takes_the_routes(topology: Topology, writer: KernelWriter) -> None:
    primary_and_backup(writer, 20)
    topology.set_link("gw", "vti01", False)
    assert via(topology, "10.0.5.1") == "vti02"
    assert writer.note_device_gone("vti01")
    topology.set_link("gw", "vti01", True)


def test_restart_reuses_our_objects_and_skips_foreign_ids(topology: Topology) -> None:
    # another owner holds our first id: we must skip it and never touch it
    topology.ip("gw", "nexthop", "add", "id", str(NHID_BASE), "dev", "vti02", "proto", "static")
    with KernelWriter(netns=topology.gw) as first:
        assert first.enable_nexthop_objects()
        primary_and_backup(first, 10)
        before = nexthops(topology)
    assert NHID_BASE in before and before[NHID_BASE]["protocol"] == "static"
    with KernelWriter(netns=topology.gw) as second:
        assert second.enable_nexthop_objects()
        assert second.nexthop_count() == first.nexthop_count()
        res = second.apply([RouteOp(OpKind.REPLACE, KernelRoute("10.0.0.0/24", 100, V1)),
                            add("10.99.0.0/24", 100, ECMP)])
        assert res.failed == []
        assert nexthops(topology) == before  # nothing new: the objects were reused
        # withdraw everything, then our objects go and the foreign one stays
        ours = second.dump()
        assert second.apply([RouteOp(OpKind.DELETE, r) for r in ours]).failed == []
        assert second.release_nexthops() == 5
    assert set(nexthops(topology)) == {NHID_BASE}


def test_cut_down_group_is_collected_once_unused(topology: Topology,
                                                 writer: KernelWriter) -> None:
    assert writer.apply([add("10.250.0.0/24", 100, ECMP)]).failed == []
    group = our_routes(topology)[0]["nhid"]
    writer.flush_device("vti01")
    assert len(nexthops(topology)[group]["group"]) == 1  # the kernel kept it, cut down
    assert writer.collect_garbage() == 0  # still used by the route
    res = writer.apply([RouteOp(OpKind.REPLACE, KernelRoute("10.250.0.0/24", 100,
                                                            (NextHop("vti02", GW2),)))])
    assert res.failed == []
    assert writer.collect_garbage() == 1
    assert group not in nexthops(topology)
    assert via(topology, "10.250.0.1") == "vti02"


def test_compat_mode_off_keeps_nexthops_inline(topology: Topology) -> None:
    """With net.ipv4.nexthop_compat_mode=0 a route dump shows a route's object id but not
    its device: the writer would lose the nexthops of its own routes at start-up and in the
    periodic repair. It says why and keeps the nexthops inline, and its dump stays right."""
    topology.sysctl("gw", "net.ipv4.nexthop_compat_mode", 0)
    w = KernelWriter(netns=topology.gw)
    try:
        assert not w.enable_nexthop_objects()
        assert "nexthop_compat_mode" in w.nexthop_refusal
        assert w.apply([add("10.77.0.0/24", 100, V1)]).failed == []
        assert w.dump() == [KernelRoute("10.77.0.0/24", 100, V1)]
        assert nexthops(topology) == {}
    finally:
        w.close()
        topology.sysctl("gw", "net.ipv4.nexthop_compat_mode", 1)
    w = KernelWriter(netns=topology.gw)
    try:
        assert w.enable_nexthop_objects() and w.nexthop_refusal == ""
    finally:
        w.close()
