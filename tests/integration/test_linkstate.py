"""The link reader (vtibgp.kernel.linkstate) against a real kernel, inside the harness's
gateway namespace (vti01 and vti02: veth pairs whose peer ends live in a second namespace).
Every expectation is read back with ``ip -j link show`` (through the harness), not through the
reader. The namespaces are created and always deleted by the ``topology`` fixture."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import pytest

from vtibgp.core.model import NextHop
from vtibgp.kernel.links import LinkMonitor
from vtibgp.kernel.linkstate import Link, LinkCache, Unresolved, read_link, read_links
from vtibgp.kernel.netlink import Rtnl, in_netns
from vtibgp.lab.parts import Topology, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


def ip_links(topo: Topology) -> dict[str, dict[str, Any]]:
    """`ip -j link show` in the gateway namespace, by name."""
    found: list[dict[str, Any]] = json.loads(topo.ip("gw", "-j", "link", "show"))
    return {entry["ifname"]: entry for entry in found}


def wait_for(topo: Topology, dev: str, reason: str) -> None:
    def seen() -> bool:
        link = read_link(dev, topo.gw)
        return link is not None and link.reason == reason

    wait_until(seen, 5.0, interval=0.02, what=f"{dev} {reason}")


def test_every_device_as_ip_reports_it(topology: Topology) -> None:
    got = read_links(topology.gw)
    want = ip_links(topology)
    assert set(got) == set(want) >= {"lo", "vti01", "vti02"}
    for name, link in got.items():
        entry = want[name]
        assert (link.index, link.name, link.mtu) == (entry["ifindex"], name, entry["mtu"])
        assert link.operstate == entry["operstate"]
        assert link.admin_up == ("UP" in entry["flags"])
        assert link.carrier == ("LOWER_UP" in entry["flags"])
    for dev in ("vti01", "vti02"):
        assert (got[dev].usable, got[dev].reason, got[dev].operstate) == (True, "up", "UP")


def test_carrier_loss_and_admin_down(topology: Topology) -> None:
    topology.carrier_off(1)  # the far end of vti01 goes down: vti01 loses carrier
    wait_for(topology, "vti01", "carrier lost")
    link = read_link("vti01", topology.gw)
    assert link is not None
    assert (link.usable, link.admin_up, link.carrier, link.operstate) == (
        False, True, False, "DOWN")  # (a veth without its peer is DOWN, not LOWERLAYERDOWN)
    entry = ip_links(topology)["vti01"]
    assert "NO-CARRIER" in entry["flags"] and entry["operstate"] == link.operstate

    topology.set_link("gw", "vti02", False)
    link = read_link("vti02", topology.gw)
    assert link is not None
    assert (link.usable, link.reason, link.operstate, link.admin_up) == (
        False, "admin down", "DOWN", False)

    topology.carrier_on(1)
    topology.set_link("gw", "vti02", True)
    wait_for(topology, "vti01", "up")
    wait_for(topology, "vti02", "up")
    # the operational state follows the carrier a moment later (the kernel's linkwatch)
    wait_until(lambda: getattr(read_link("vti01", topology.gw), "operstate", "") == "UP", 5.0,
               interval=0.02, what="vti01 operationally up")
    assert all(read_links(topology.gw)[d].usable for d in ("vti01", "vti02"))


def test_one_device_by_name(topology: Topology) -> None:
    assert read_link("vti01", topology.gw) == read_links(topology.gw)["vti01"]
    assert read_link("vti99", topology.gw) is None
    assert read_link("x" * 16, topology.gw) is None  # no device can have that name
    assert read_link("", topology.gw) is None


def test_the_calling_threads_namespace_by_default(topology: Topology) -> None:
    inside = in_netns(topology.gw, read_links)
    assert inside == read_links(topology.gw)
    assert read_links(f"/run/netns/{topology.gw}") == inside  # a path works as well as a name
    # without a namespace: this process's own (other tests may add devices there meanwhile)
    assert read_links().keys() != inside.keys() and "lo" in read_links()


def test_a_dump_over_many_datagrams(topology: Topology) -> None:
    """200 more devices: the dump's answer spans many datagrams, every one read."""
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
        for n in range(100, 200):
            batch.write(f"link add vti{n} type veth peer name vtp{n}\n")
        batch.flush()
        topology.run("gw", "ip", "-batch", batch.name)
    got = read_links(topology.gw)
    assert set(got) == set(ip_links(topology))
    assert {f"vti{n}" for n in range(100, 200)} | {f"vtp{n}" for n in range(100, 200)} <= set(got)
    assert len({link.index for link in got.values()}) == len(got)
    assert not got["vti150"].admin_up and got["vti150"].reason == "admin down"


def test_the_cache_follows_a_recreated_device(topology: Topology) -> None:
    nl = Rtnl(netns=topology.gw, rcvbuf=1 << 20, sndbuf=1 << 20)
    changes: list[int] = []
    try:
        cache = LinkCache(nl, on_change=lambda: changes.append(1))
        old = cache.resolve("vti01")
        assert old == ip_links(topology)["vti01"]["ifindex"]
        assert cache.resolve("nope0") is None
        hops = (NextHop("vti01", "169.254.10.1"),)
        assert [(h.ifindex, h.gateway) for h in cache.hops(hops)] == [(old, "169.254.10.1")]
        with pytest.raises(Unresolved):
            cache.hops((NextHop("vti02"),))  # known to the kernel, not to the cache yet

        topology.recreate_link(1)
        new = ip_links(topology)["vti01"]["ifindex"]
        assert new != old
        assert cache.resolve("vti01") == old  # cached until told
        cache.forget("vti01")
        assert changes and cache.resolve("vti01") == new
        assert cache.hops(hops)[0].ifindex == new  # the hop cache was dropped with it

        cache.refresh()
        assert cache.by_name == {n: e["ifindex"] for n, e in ip_links(topology).items()}
        assert cache.by_index[new] == "vti01" and old not in cache.by_index
    finally:
        nl.close()


def test_the_monitor_starts_from_the_reader(topology: Topology) -> None:
    topology.carrier_off(2)
    wait_for(topology, "vti02", "carrier lost")
    mon = LinkMonitor(lambda ev: None)
    try:
        snap = in_netns(topology.gw, mon.snapshot)
        down = in_netns(topology.gw, lambda: mon.start({"vti01", "vti02", "vti09"}))
    finally:
        mon.close()
    links: dict[str, Link] = read_links(topology.gw)
    assert snap == {name: (link.usable, link.reason) for name, link in links.items()}
    assert [(d.device, d.usable, d.reason) for d in down] == [
        ("vti02", False, "carrier lost"), ("vti09", False, "missing")]
