"""Routes follow the tunnel, not only the BGP session: every tunnel-down signal moves the
routes to the other tunnel at once while BGP stays up, and they return after the hold-down.
BIRD (the VGW) → real ExaBGP → vtibgp → the gateway namespace's kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_plugin import (
    V4,
    GatewayFactory,
    RouteMonitor,
    expect,
    plugin,
    vtibgp,
    wait_fib,
    write_config,
)

from vtibgp.lab import parts as harness

P1 = harness.TUNNELS[1].aws_v4
BOTH = expect(V4, "vti01", "vti02")
ONLY2 = expect(V4, "vti02")
HOLD = 1.0


@pytest.fixture
def gateway(topology: harness.Topology, bird_peer: harness.BirdPeer,
            exabgp_gateway: GatewayFactory, tmp_path: Path) -> harness.ExaBGPGateway:
    bird_peer.set_prepend(2, 2)
    bird_peer.announce(V4)
    cfg = write_config(
        tmp_path / "v.yaml", tunnel={"hold_down": HOLD},
        tunnels=[{"connection": "aws-vpn-1-tunnel-1", "device": "vti01"},
                 {"connection": "aws-vpn-1-peer-1", "peers": [P1]}])
    gw = exabgp_gateway(plugin(cfg))
    wait_fib(gw, topology, BOTH)
    return gw


def updown(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PLUTO_", "VTI_"))}
    return subprocess.run(
        [sys.executable, "-m", "vtibgp", "updown", "--socket", str(tmp_path / "ctl.sock"),
         "--strict"], env={**clean, **env}, capture_output=True, text=True, timeout=30,
        check=False)


def status(tmp_path: Path) -> dict[str, dict[str, object]]:
    res = vtibgp("status", "--json", "--socket", str(tmp_path / "ctl.sock"))
    return {d["device"]: d for d in json.loads(res.stdout)["devices"]}


LIBRESWAN_DOWN = {"PLUTO_VERB": "down-client", "PLUTO_CONNECTION": "aws-vpn-1-tunnel-1",
                  "VTI_IFACE": "vti01", "PLUTO_PEER": "203.0.113.10",
                  "PLUTO_UNIQUEID": "7", "VTI_ROUTING": "no", "VTI_SHARED": "no"}


def test_libreswan_updown_moves_routes_while_bgp_stays_up(
    topology: harness.Topology, gateway: harness.ExaBGPGateway, bird_peer: harness.BirdPeer,
    tmp_path: Path,
) -> None:
    res = updown(tmp_path, **LIBRESWAN_DOWN)
    assert res.returncode == 0, res.stderr
    wait_fib(gateway, topology, ONLY2, timeout=5)
    assert bird_peer.established(1)  # BGP never noticed: the hold timer would take 30 s
    st = status(tmp_path)["vti01"]
    assert st["usable"] is False and st["down"] == ["ipsec"]
    # rekey: a new PLUTO_UNIQUEID, same connection name, up again
    res = updown(tmp_path, **{**LIBRESWAN_DOWN, "PLUTO_VERB": "up-client",
                              "PLUTO_UNIQUEID": "8"})
    assert res.returncode == 0, res.stderr
    assert status(tmp_path)["vti01"]["holding"] is True
    wait_fib(gateway, topology, BOTH, timeout=5)
    # verbs that are not about tunnel state are ignored
    assert updown(tmp_path, **{**LIBRESWAN_DOWN, "PLUTO_VERB": "unroute-client"}).returncode == 0
    assert harness.wait_until(lambda: status(tmp_path)["vti01"]["usable"], 3)


def test_strongswan_updown_by_connection_map_and_per_peer(
    topology: harness.Topology, gateway: harness.ExaBGPGateway, tmp_path: Path,
) -> None:
    # strongSwan has no VTI_IFACE: the connection name is mapped under tunnels: in the config
    env = {"PLUTO_VERB": "down-client", "PLUTO_CONNECTION": "aws-vpn-1-peer-1",
           "PLUTO_PEER": "203.0.113.10", "PLUTO_MARK_IN": "0x64/0xffffffff"}
    assert updown(tmp_path, **env).returncode == 0
    wait_fib(gateway, topology, ONLY2, timeout=5)
    assert status(tmp_path)["vti01"]["usable"] is True  # a per-peer event: the device is fine
    assert updown(tmp_path, **{**env, "PLUTO_VERB": "up-client"}).returncode == 0
    wait_fib(gateway, topology, BOTH, timeout=5)
    bad = updown(tmp_path, **{**env, "PLUTO_CONNECTION": "nobody-knows"})
    assert bad.returncode == 1 and "unknown connection 'nobody-knows'" in bad.stderr


@pytest.mark.parametrize("signal", ["admin", "carrier", "delete"])
def test_link_signals_move_routes_and_return_after_hold_down(
    topology: harness.Topology, gateway: harness.ExaBGPGateway, tmp_path: Path, signal: str,
) -> None:
    if signal == "admin":
        topology.set_link("gw", "vti01", False)
    elif signal == "carrier":
        topology.carrier_off(1)
    else:
        topology.delete_link("vti01")
    wait_fib(gateway, topology, ONLY2, timeout=5)
    assert status(tmp_path)["vti01"]["usable"] is False
    if signal == "admin":
        topology.set_link("gw", "vti01", True)
    elif signal == "carrier":
        topology.carrier_on(1)
    else:
        topology.recreate_link(1)  # same name, new ifindex
    # BGP over a recreated device reconnects by itself; routes come back through the new one
    wait_fib(gateway, topology, BOTH, timeout=40)


def test_flapping_tunnel_causes_no_route_churn(
    topology: harness.Topology, gateway: harness.ExaBGPGateway, tmp_path: Path,
) -> None:
    mon = RouteMonitor(topology, tmp_path / "monitor.log")
    try:
        updown(tmp_path, **LIBRESWAN_DOWN)
        wait_fib(gateway, topology, ONLY2, timeout=5)
        moved = len([ln for ln in mon.lines() if "proto bgp" in ln])
        for _ in range(3):  # up/down faster than the hold-down
            updown(tmp_path, **{**LIBRESWAN_DOWN, "PLUTO_VERB": "up-client"})
            updown(tmp_path, **LIBRESWAN_DOWN)
        assert [ln for ln in mon.lines() if "proto bgp" in ln][moved:] == []
        assert status(tmp_path)["vti01"]["flaps"] == 3
        updown(tmp_path, **{**LIBRESWAN_DOWN, "PLUTO_VERB": "up-client"})
        wait_fib(gateway, topology, BOTH, timeout=5)
    finally:
        mon.stop()


def test_teardown_option_resets_the_bgp_session(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    bird_peer.announce(V4)
    cfg = write_config(tmp_path / "v.yaml", tunnels=[
        {"connection": "aws-vpn-1-tunnel-1", "device": "vti01", "teardown": True}])
    gw = exabgp_gateway(plugin(cfg))
    wait_fib(gw, topology, {**expect(V4, "vti01", "vti02")})
    assert updown(tmp_path, **LIBRESWAN_DOWN).returncode == 0
    # ExaBGP sends a Cease (6/4, Administrative Reset) to the VGW over tunnel 1 only
    harness.wait_until(lambda: "Administrative reset" in bird_peer.log_text(), 10,
                       what="BIRD to log the reset")
    assert bird_peer.log_text().count("Administrative reset") == 1
    gw.wait_for_log("resetting the BGP session with 169.254.10.1")
