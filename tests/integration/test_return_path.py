"""The return path on real parts: vtibgp announces the gateway's networks through ExaBGP to
BIRD (the VGW), steered so that BIRD's best path back (AS path, then MED, as AWS's VGW picks)
is the tunnel vtibgp uses for the forward traffic, and it follows every failover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_crash_under_load import workers
from test_plugin import GatewayFactory, expect, plugin, vtibgp, wait_fib, write_config

from vtibgp.lab import parts as harness

V4 = ["10.100.0.0/16"]
OURS = "192.168.50.0/24"
PROBE = {"interval": 0.1, "multiplier": 3, "up_after": 3}


@pytest.fixture
def gateway(topology: harness.Topology, bird_peer: harness.BirdPeer,
            exabgp_gateway: GatewayFactory, tmp_path: Path,
            request: pytest.FixtureRequest) -> harness.ExaBGPGateway:
    exabgp = (request.getfixturevalue("exabgp_binary")
              if "exabgp_binary" in request.fixturenames else None)
    bird_peer.set_prepend(2, 2)  # tunnel 2 is the backup for the forward path
    bird_peer.announce(V4)
    cfg = write_config(tmp_path / "v.yaml", tunnel={"hold_down": 1.0}, probe=PROBE,
                       export={"networks": [OURS]})
    data = yaml.safe_load(cfg.read_text())
    for p in data["peers"]:
        p["vpn"] = "vpn-lab"  # both tunnels of one VPN connection: steered together
    cfg.write_text(yaml.safe_dump(data))
    gw = exabgp_gateway(plugin(cfg), exabgp=exabgp)
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"))
    gw.wait_for(lambda: bird_peer.return_tunnel(OURS) == 1, 20, what="return via tunnel 1")
    return gw


def status_peers(tmp_path: Path) -> dict[str, dict[str, object]]:
    res = vtibgp("status", "--json", "--socket", str(tmp_path / "ctl.sock"))
    return {p["peer"]: p for p in json.loads(res.stdout)["peers"]}


def follows(gw: harness.ExaBGPGateway, topology: harness.Topology,
            bird_peer: harness.BirdPeer, fib_now: list[str], tunnel: int) -> float:
    """Wait for vtibgp's own failover (the kernel routes), then for the VGW's return path to
    the same tunnel; the seconds between the two."""
    wait_fib(gw, topology, expect(V4, *fib_now), timeout=20)
    t0 = time.monotonic()
    gw.wait_for(lambda: bird_peer.return_tunnel(OURS) == tunnel, 10,
                what=f"the VGW's return path via tunnel {tunnel}")
    return time.monotonic() - t0


@pytest.mark.parametrize("signal", ["link", "blackhole", "bgp"])
def test_the_vgws_return_path_follows_the_forward_path(
    topology: harness.Topology, bird_peer: harness.BirdPeer, gateway: harness.ExaBGPGateway,
    tmp_path: Path, signal: str,
) -> None:
    peers = status_peers(tmp_path)
    assert peers[harness.TUNNELS[1].aws_v4]["exported"] == {"preferred": 1, "less_preferred": 0}
    assert peers[harness.TUNNELS[2].aws_v4]["exported"] == {"preferred": 0, "less_preferred": 1}
    text = vtibgp("status", "--socket", str(tmp_path / "ctl.sock")).stdout
    assert "1 preferred" in text and "1 less pref." in text
    if signal == "link":
        topology.carrier_off(1)
    elif signal == "blackhole":
        topology.blackhole(1, True)
    else:
        bird_peer.disable_session(1)
    lag = follows(gateway, topology, bird_peer, ["vti02"], 2)
    if signal != "bgp":
        assert bird_peer.established(1) or signal == "link"
    # back: the return path returns with the forward one
    topology.carrier_on(1)
    topology.blackhole(1, False)
    if 1 in bird_peer.disabled:
        bird_peer.enable_session(1)
    back = follows(gateway, topology, bird_peer, ["vti01", "vti02"], 1)
    print(f"{signal}: the VGW's return path followed {lag * 1000:.0f} ms after vtibgp's "
          f"failover and {back * 1000:.0f} ms after its return (includes polling birdc)")


def test_a_respawned_daemon_leaves_the_announcements_alone(
    exabgp_binary: str, topology: harness.Topology, bird_peer: harness.BirdPeer,
    gateway: harness.ExaBGPGateway, tmp_path: Path,
) -> None:
    """ExaBGP keeps announcing what a dead process told it; the respawned daemon says
    nothing until its view is complete, then the same again: no flap of the return path."""
    def attrs() -> list[str]:  # the routes' attributes, without the times BIRD prints
        out = bird_peer.birdc("show", "route", "table", "vgw4", "all", OURS)
        return [ln.split("[")[0] + ln.split("]")[-1] if "[tun" in ln else ln
                for ln in out.splitlines()]

    before = attrs()
    (victim,) = workers(topology)
    os.kill(victim, signal.SIGKILL)
    gateway.wait_for(lambda: workers(topology) not in ([], [victim]), 20, what="a new daemon")
    gateway.wait_for(lambda: gateway.log_text().count("start: sync complete") >= 2, 30,
                     what="the new daemon's sync")
    assert bird_peer.return_tunnel(OURS) == 1
    assert attrs() == before  # the same routes, attributes and best (re-announced alike)


def count_vpc_traffic(topology: harness.Topology, vpc: str) -> None:
    """nftables counters in the gateway: packets from the VPC host in through each tunnel
    device, and to it out through each (the probe's and BGP's own packets are not counted)."""
    rules = "".join(f"""
    counter in_{d} {{}}
    counter out_{d} {{}}""" for d in ("vti01", "vti02"))
    chains = "".join(f"""
      iifname "{d}" ip saddr {vpc} counter name in_{d}""" for d in ("vti01", "vti02"))
    outs = "".join(f"""
      oifname "{d}" ip daddr {vpc} counter name out_{d}""" for d in ("vti01", "vti02"))
    script = f"""table inet test-dataplane {{{rules}
  chain input {{ type filter hook input priority 0; policy accept;{chains}
  }}
  chain output {{ type filter hook output priority 0; policy accept;{outs}
  }}
}}"""
    subprocess.run(["ip", "netns", "exec", topology.gw, "nft", "-f", "-"], input=script,
                   text=True, check=True, capture_output=True, timeout=10)


def vpc_counters(topology: harness.Topology) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", topology.gw, "nft", "-j", "list", "counters"],
                         check=True, capture_output=True, text=True, timeout=10).stdout
    return {c["counter"]["name"]: c["counter"]["packets"]
            for c in json.loads(out)["nftables"] if "counter" in c}


def test_a_ping_from_the_vpc_and_its_reply_cross_the_same_tunnel(
    topology: harness.Topology, bird_peer: harness.BirdPeer, gateway: harness.ExaBGPGateway,
) -> None:
    """Data plane: a VPC host pings an on-premises address. BIRD's best route for our
    network (the VGW's return path, in its kernel) carries the request; vtibgp's route to the
    VPC carries the reply. Both go through the same tunnel, before and after a failover."""
    onprem, vpc = "192.168.50.1", "10.100.0.1"
    topology.ip("gw", "address", "add", f"{onprem}/32", "dev", "lo")
    topology.ip("aws", "address", "add", f"{vpc}/32", "dev", "lo")
    count_vpc_traffic(topology, vpc)
    tun = {n: topology.tunnels[n].aws_dev for n in (1, 2)}

    def ping() -> dict[str, int]:
        before = vpc_counters(topology)
        subprocess.run(["ip", "netns", "exec", topology.aws, "ping", "-q", "-c", "5", "-i",
                        "0.05", "-W", "1", "-I", vpc, onprem], check=True,
                       capture_output=True, timeout=20)
        return {k: n - before[k] for k, n in vpc_counters(topology).items()}

    def aws_route() -> str:
        return topology.ip("aws", "route", "get", onprem, "from", vpc)

    gateway.wait_for(lambda: tun[1] in aws_route(), 10, what="the VGW's route via tunnel 1")
    assert ping() == {"in_vti01": 5, "out_vti01": 5, "in_vti02": 0, "out_vti02": 0}
    topology.carrier_off(1)
    follows(gateway, topology, bird_peer, ["vti02"], 2)
    gateway.wait_for(lambda: tun[2] in aws_route(), 10, what="the VGW's route via tunnel 2")
    assert ping() == {"in_vti01": 0, "out_vti01": 0, "in_vti02": 5, "out_vti02": 5}
