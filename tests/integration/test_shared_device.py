"""Shared devices (libreswan vti-shared=yes, road warriors): two BGP peers over one device.

Sessions 1 (169.254.10.1) and 3 (169.254.12.1) both run over vti01 (tun1 on the aws side),
session 2 (169.254.11.1) over vti02. Both vti01 peers are configured with `interface: vti01`,
so vtibgp turns `gateway` on for them and installs their routes via the BGP next hop as an
onlink gateway. An updown call for the connection that carries only peer 169.254.12.1 (no
VTI_IFACE: the device itself is fine) must move that peer's routes and nothing else.
BIRD (the VGW) → real ExaBGP → vtibgp → the gateway namespace's kernel.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_plugin import GatewayFactory, plugin, vtibgp
from test_tunnels import updown

from vtibgp.lab import parts as harness

T1, T2, T3 = (harness.ALL_TUNNELS[n] for n in (1, 2, 3))
P1, P2, P3 = T1.aws_v4, T2.aws_v4, T3.aws_v4  # .10.1 and .12.1 on vti01, .11.1 on vti02
A, B, C = "10.110.0.0/24", "10.120.0.0/24", "10.130.0.0/24"
CONN = "rw-12"  # the IPsec connection behind peer 169.254.12.1
HOLD = 0.5

# (prefix, metric) -> (device, gateway or None)
Fib = dict[tuple[str, int], tuple[str, str | None]]

# Every route of a vti01 peer goes via its own next hop (onlink); vti02 has one peer, no gateway.
# C is announced by both vti01 peers with equal attributes: the tie goes to the lower peer
# address (core/engine.py, rule 7), so 169.254.10.1 is best and 169.254.12.1 the first backup.
ALL_UP: Fib = {
    (A, 100): ("vti01", P1), (A, 101): ("vti02", None),
    (B, 100): ("vti01", P3), (B, 101): ("vti02", None),
    (C, 100): ("vti01", P1), (C, 101): ("vti01", P3), (C, 102): ("vti02", None),
}
# peer 169.254.12.1's tunnel down: its paths go, everything else stays as it was
RW12_DOWN: Fib = {
    (A, 100): ("vti01", P1), (A, 101): ("vti02", None),
    (B, 100): ("vti02", None),
    (C, 100): ("vti01", P1), (C, 101): ("vti02", None),
}
DOWN_ENV = {"PLUTO_VERB": "down-client", "PLUTO_CONNECTION": CONN,
            "PLUTO_PEER": "198.51.100.12", "PLUTO_UNIQUEID": "12"}


@pytest.fixture
def topology() -> Iterator[harness.Topology]:
    """The conftest topology plus session 3's addresses on vti01/tun1 (overrides it, so the
    exabgp_gateway factory runs in this one)."""
    with harness.Topology(tunnels=(1, 2, 3)) as topo:
        yield topo


@pytest.fixture
def bird(topology: harness.Topology, tmp_path: Path) -> Iterator[harness.BirdPeer]:
    peer = harness.BirdPeer(topology, tmp_path / "bird", tunnels=(1, 2, 3), prepend={2: 2})
    try:
        peer.start()
        yield peer
    finally:
        print(f"--- BIRD log ({peer.workdir}) ---\n{harness.tail(peer.log_text(), 60)}")
        peer.stop()


def kernel(topo: harness.Topology) -> Fib:
    out: Fib = {}
    for r in topo.routes("gw", proto=186):
        assert "nexthops" not in r, r  # no multipath here
        dst = str(ipaddress.ip_network(r["dst"], strict=False))
        out[(dst, int(r.get("metric", 0)))] = (r["dev"], r.get("gateway"))
        if "gateway" in r:
            assert "onlink" in r.get("flags", []), r
    return out


def wait_kernel(gw: harness.ExaBGPGateway, topo: harness.Topology, want: Fib,
                timeout: float = 5.0) -> None:
    last: list[Fib] = [{}]

    def check() -> bool:
        last[0] = kernel(topo)
        return last[0] == want

    try:
        gw.wait_for(check, timeout, what="kernel routes")
    except TimeoutError as e:
        raise AssertionError(f"kernel routes {last[0]} != expected {want}") from e


def config(path: Path) -> Path:
    """Both vti01 peers name their interface: two on one device turns `gateway` on (auto)."""
    path.write_text(yaml.safe_dump({
        "log_level": "debug",
        "peers": [{"address": P1, "interface": T1.gw_dev},
                  {"address": P3, "interface": T3.gw_dev},
                  {"address": P2, "interface": T2.gw_dev}],
        "tunnel": {"hold_down": HOLD},
        "tunnels": [{"connection": CONN, "peers": [P3]}],
        "metrics": {"listen": None},
        "startup": {"grace_time": 30},
        "control": {"socket": str(path.parent / "ctl.sock")},
    }))
    return path


def status(tmp_path: Path) -> dict[str, Any]:
    res = vtibgp("status", "--json", "--socket", str(tmp_path / "ctl.sock"))
    assert res.returncode == 0, res.stderr
    st: dict[str, Any] = json.loads(res.stdout)
    return {"peers": {p["peer"]: p for p in st["peers"]},
            "devices": {d["device"]: d for d in st["devices"]}}


def test_per_peer_tunnel_event_on_a_shared_device_moves_only_that_peers_routes(
    topology: harness.Topology, bird: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    # the lab: both vti01 sessions really share one device pair
    for ns, dev, mine in (("gw", "vti01", {T1.gw_v4, T3.gw_v4}),
                          ("aws", "tun1", {T1.aws_v4, T3.aws_v4})):
        info = topology.link(ns, dev)
        assert info is not None and mine <= {a["local"] for a in info["addr_info"]}

    bird.announce([A], tunnels=(1,))
    bird.announce([B], tunnels=(3,))
    bird.announce([C], tunnels=(1, 3))
    bird.announce([A, B, C], tunnels=(2,))  # the prepended backup tunnel
    cfg = config(tmp_path / "v.yaml")
    gw = exabgp_gateway(plugin(cfg), tunnels=(1, 2, 3))
    wait_kernel(gw, topology, ALL_UP, timeout=20)
    assert all(bird.established(n) for n in (1, 2, 3))

    st = status(tmp_path)
    assert st["peers"][P1]["device"] == st["peers"][P3]["device"] == "vti01"
    assert (st["peers"][P1]["best"], st["peers"][P1]["backup"]) == (2, 0)  # A, C
    assert (st["peers"][P3]["best"], st["peers"][P3]["backup"]) == (1, 1)  # B; C
    assert (st["peers"][P2]["best"], st["peers"][P2]["backup"]) == (0, 3)

    # the road warrior behind 169.254.12.1 goes away: no VTI_IFACE, the connection is mapped
    # to that peer only; vti01 and peer 169.254.10.1 are not touched
    res = updown(tmp_path, **DOWN_ENV)
    assert res.returncode == 0, res.stderr
    wait_kernel(gw, topology, RW12_DOWN)
    st = status(tmp_path)
    assert st["devices"]["vti01"]["usable"] is True and st["devices"]["vti01"]["down"] == []
    assert st["peers"][P3]["device_usable"] is False
    assert st["peers"][P1]["device_usable"] is True
    assert st["peers"][P3]["state"] == "up" and bird.established(3)  # BGP did not notice

    # it comes back: the peer's routes return once the hold-down has run out
    start = time.monotonic()
    res = updown(tmp_path, **{**DOWN_ENV, "PLUTO_VERB": "up-client", "PLUTO_UNIQUEID": "13"})
    assert res.returncode == 0, res.stderr
    assert kernel(topology) == RW12_DOWN  # still holding down
    wait_kernel(gw, topology, ALL_UP)
    assert time.monotonic() - start >= HOLD
    assert status(tmp_path)["peers"][P3]["device_usable"] is True
    assert "Traceback" not in gw.log_text()


def test_recreated_pair_keeps_the_shared_sessions_addresses(topology: harness.Topology) -> None:
    """recreate_link of the owner (or of the shared tunnel, which means the owner's pair)
    brings back both tunnels' addresses; a shared tunnel cannot exist without its owner."""
    for n in (1, 3):
        before = topology.link("gw", "vti01")
        topology.recreate_link(n)
        after = topology.link("gw", "vti01")
        assert before is not None and after is not None
        assert after["ifindex"] != before["ifindex"] and topology.link_ready(3)
        for ns, dev, want in (("gw", "vti01", [T1.gw_v4, T3.gw_v4, T1.gw_v6, T3.gw_v6]),
                              ("aws", "tun1", [T1.aws_v4, T3.aws_v4, T1.aws_v6, T3.aws_v6])):
            info = topology.link(ns, dev)
            assert info is not None
            assert set(want) <= {a["local"] for a in info["addr_info"]}, (ns, dev, info)
    with pytest.raises(ValueError, match="shares tunnel 1"):
        harness.Topology(tunnels=(2, 3))
    with pytest.raises(ValueError, match=r"tunnel\(s\) \[3\] not in"):
        harness.BirdPeer(harness.Topology(), tunnels=(1, 2, 3))
