"""export.reachable_only on real parts: our networks are announced to the VGW (BIRD) only
while the gateway's kernel has a route to them of another owner (connected, static), and
withdrawn when it goes; covering routes and routes of ours do not count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from test_plugin import GatewayFactory, expect, plugin, wait_fib, write_config

from vtibgp.lab import parts as harness

V4 = ["10.100.0.0/16"]
LAN, STATIC, NONE = "192.168.50.0/24", "192.168.60.0/24", "192.168.70.0/24"


def lookup(topology: harness.Topology, networks: list[str]) -> set[str]:
    code = ("import sys; from vtibgp.kernel.reachability import reachable; "
            "print(' '.join(sorted(reachable(sys.argv[1:], 186))))")
    res = subprocess.run(["ip", "netns", "exec", topology.gw, sys.executable, "-c", code,
                          *networks], capture_output=True, text=True, timeout=30, check=True)
    return set(res.stdout.split())


def test_the_lookup_counts_only_another_owners_route_as_specific(
        topology: harness.Topology) -> None:
    ip = topology.ip
    ip("gw", "link", "add", "lanx", "type", "veth", "peer", "name", "lany")
    ip("gw", "link", "set", "lanx", "up")
    ip("gw", "link", "set", "lany", "up")
    ip("gw", "addr", "add", "192.168.50.1/24", "dev", "lanx")
    nets = [LAN, STATIC, NONE, "192.168.0.0/16", "10.200.0.0/16"]
    assert lookup(topology, nets) == {LAN}  # connected; the rest: no route at all
    ip("gw", "route", "add", STATIC, "via", "192.168.50.9", "proto", "static")
    ip("gw", "route", "add", "unreachable", NONE)  # not a way there
    ip("gw", "route", "add", "10.200.0.0/16", "dev", "vti01", "proto", "186")  # ours
    ip("gw", "route", "add", "default", "via", "192.168.50.9")  # covers everything
    assert lookup(topology, nets) == {LAN, STATIC}  # the /16: only a more specific part


def test_only_reachable_networks_are_announced(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    ip = topology.ip
    ip("gw", "link", "add", "lanx", "type", "veth", "peer", "name", "lany")
    ip("gw", "link", "set", "lanx", "up")
    ip("gw", "link", "set", "lany", "up")
    ip("gw", "addr", "add", "192.168.50.1/24", "dev", "lanx")
    bird_peer.announce(V4)
    cfg = write_config(tmp_path / "v.yaml", export={"networks": [LAN, STATIC],
                                                     "reachable_only": True})
    gw = exabgp_gateway(plugin(cfg))
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"))
    gw.wait_for(lambda: bird_peer.return_tunnel(LAN) is not None, 20, what="LAN announced")
    assert bird_peer.return_tunnel(STATIC) is None  # no route to it yet
    ip("gw", "route", "add", STATIC, "via", "192.168.50.9", "proto", "static")
    gw.wait_for(lambda: bird_peer.return_tunnel(STATIC) is not None, 10,
                what="the static network announced")
    ip("gw", "route", "del", STATIC)
    gw.wait_for(lambda: bird_peer.return_tunnel(STATIC) is None, 10,
                what="the static network withdrawn")
    assert bird_peer.return_tunnel(LAN) is not None
    assert "reachable_only: reachable 192.168.50.0/24; no longer 192.168.60.0/24" in \
        gw.log_text()
