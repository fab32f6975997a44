"""The probe signal on the real kernel: BIRD (the VGW) → real ExaBGP → vtibgp with its ICMP
prober. A tunnel that silently drops everything (device up, carrier, BGP still up: the
production failure the hold timer sees only after 30 s) loses its routes to the other
tunnel; a target that never answers decides nothing; losses shorter than the detect time
move nothing; replies again bring the routes back after the hold-down."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from pathlib import Path

import pytest
from test_plugin import (
    GatewayFactory,
    RouteMonitor,
    expect,
    fib,
    plugin,
    vtibgp,
    wait_fib,
    write_config,
)

from vtibgp.lab import parts as harness

PROBE = {"interval": 0.1, "multiplier": 3, "up_after": 3}  # detect time 0.3 s
HOLD = 1.0
MANY = [str(n) for n in list(ipaddress.ip_network("10.64.0.0/10").subnets(new_prefix=24))
        [:10_000]]


def gateway(topology: harness.Topology, bird_peer: harness.BirdPeer,
            exabgp_gateway: GatewayFactory, tmp_path: Path, prefixes: list[str],
            probe: dict[str, object] = PROBE) -> harness.ExaBGPGateway:
    bird_peer.set_prepend(2, 2)
    bird_peer.announce(prefixes)
    cfg = write_config(tmp_path / "v.yaml", tunnel={"hold_down": HOLD}, probe=probe)
    gw = exabgp_gateway(plugin(cfg))
    wait_fib(gw, topology, expect(prefixes, "vti01", "vti02"), timeout=60)
    return gw


def devices(tmp_path: Path) -> dict[str, dict[str, object]]:
    res = vtibgp("status", "--json", "--socket", str(tmp_path / "ctl.sock"))
    return {d["device"]: d for d in json.loads(res.stdout)["devices"]}


def probe_state(tmp_path: Path, device: str) -> object:
    return devices(tmp_path)[device]["probe"]["state"]  # type: ignore[index]


def nft_aws(topology: harness.Topology, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", topology.aws, "nft", "-f", "-"], input=script,
                   text=True, check=True, capture_output=True, timeout=10)


def test_a_blackholed_tunnel_moves_its_prefixes_while_bgp_stays_up(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    gw = gateway(topology, bird_peer, exabgp_gateway, tmp_path, MANY)
    gw.wait_for(lambda: probe_state(tmp_path, "vti01") == "up", 10, what="probe up")
    t0 = time.monotonic()
    topology.blackhole(1, True)
    wait_fib(gw, topology, expect(MANY, "vti02"), timeout=20)
    moved = time.monotonic() - t0
    assert bird_peer.established(1), "BGP noticed: the hold timer, not the probe, moved them"
    dev = devices(tmp_path)["vti01"]
    assert dev["down"] == ["probe"] and dev["usable"] is False
    assert dev["probe"]["state"] == "down"  # type: ignore[index]
    assert "probe: no echo reply from 169.254.10.1" in dev["reason"]  # type: ignore[operator]
    # replies again: back after a run of replies and the hold-down
    topology.blackhole(1, False)
    wait_fib(gw, topology, expect(MANY, "vti01", "vti02"), timeout=20)
    assert probe_state(tmp_path, "vti01") == "up"
    print(f"10,000 prefixes moved {moved:.2f} s after the blackhole (detect time 0.3 s, "
          "this includes the test's polling)")


def test_a_target_that_never_answers_keeps_the_tunnel_in_use(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    # the VGW of tunnel 1 answers no ping (ICMP echo dropped there; BGP passes)
    nft_aws(topology, f"""table inet test-noping {{
  chain input {{ type filter hook input priority -100; policy accept;
    iifname "{topology.tunnels[1].aws_dev}" icmp type echo-request drop
  }}
}}""")
    v4 = ["10.100.0.0/16"]
    gw = gateway(topology, bird_peer, exabgp_gateway, tmp_path, v4)
    gw.wait_for(lambda: probe_state(tmp_path, "vti02") == "up", 10, what="vti02 probe up")
    time.sleep(1.0)  # 10 detect times without a reply from tunnel 1's target
    assert probe_state(tmp_path, "vti01") == "waiting"
    assert fib(topology) == expect(v4, "vti01", "vti02")  # the probe decided nothing
    # and a blackhole of tunnel 2 (whose probe answered) still moves its routes
    topology.blackhole(2, True)
    wait_fib(gw, topology, expect(v4, "vti01"), timeout=10)


def test_losses_shorter_than_the_detect_time_cause_no_flap(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    v4 = ["10.100.0.0/16", "10.101.0.0/24"]
    gw = gateway(topology, bird_peer, exabgp_gateway, tmp_path, v4)
    gw.wait_for(lambda: probe_state(tmp_path, "vti01") == "up", 10, what="probe up")
    monitor = RouteMonitor(topology, tmp_path / "routes.log")
    try:
        # every second echo request of tunnel 1 is dropped: 50 % loss, never two in a row
        nft_aws(topology, f"""table inet test-loss {{
  chain input {{ type filter hook input priority -100; policy accept;
    iifname "{topology.tunnels[1].aws_dev}" icmp type echo-request numgen inc mod 2 == 0 drop
  }}
}}""")
        time.sleep(3.0)  # 30 probes, 15 lost
    finally:
        monitor.stop()
    assert [ln for ln in monitor.lines() if "10.10" in ln] == []  # no route changed
    dev = devices(tmp_path)["vti01"]
    assert dev["usable"] is True and dev["flaps"] == 0
    assert dev["probe"]["state"] == "up"  # type: ignore[index]
    assert fib(topology) == expect(v4, "vti01", "vti02")


@pytest.mark.parametrize("when", ["keep", "withdraw"])
def test_every_tunnel_down_by_the_probe_alone(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path, when: str,
) -> None:
    """Both tunnels black (an uplink failure, or a broken probe): by default the routes stay
    while BGP is up, so traffic never falls to a less specific route in clear."""
    v4 = ["10.100.0.0/16"]
    gw = gateway(topology, bird_peer, exabgp_gateway, tmp_path, v4,
                 probe={**PROBE, "when_all_down": when})
    gw.wait_for(lambda: probe_state(tmp_path, "vti02") == "up", 10, what="probe up")
    topology.blackhole(1, True)
    wait_fib(gw, topology, expect(v4, "vti02"), timeout=10)
    topology.blackhole(2, True)
    gw.wait_for(lambda: probe_state(tmp_path, "vti02") == "down", 10, what="vti02 down")
    want = expect(v4, "vti01", "vti02") if when == "keep" else {}
    wait_fib(gw, topology, want, timeout=10)
    assert bird_peer.established(1) and bird_peer.established(2)
