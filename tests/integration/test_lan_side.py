"""The LAN side on real parts: two gateways (each ExaBGP + vtibgp, two tunnels to its own BIRD
VGW announcing the same VPC) and a LAN router (BIRD) peering with both. vtibgp tells the LAN
router the VPC's prefixes while a tunnel of its gateway carries them (gateway 2 with a worse
MED: the standby); when gateway 1 loses both tunnels, the LAN router's route to the VPC moves
to gateway 2, and back on the return. One tunnel failing says nothing to the LAN."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_plugin import expect, fib, plugin, vtibgp, wait_fib, write_config

from vtibgp.lab import parts as harness
from vtibgp.lab.lan import LanRouter

VPC = ["10.100.0.0/16", "10.101.0.0/24"]
PROBE = {"interval": 0.1, "multiplier": 3, "up_after": 3}


class Gateway:
    def __init__(self, topo: harness.Topology, bird: harness.BirdPeer,
                 exabgp: harness.ExaBGPGateway, workdir: Path) -> None:
        self.topo, self.bird, self.exabgp, self.workdir = topo, bird, exabgp, workdir

    def status(self) -> dict[str, object]:
        res = vtibgp("status", "--json", "--socket", str(self.workdir / "ctl.sock"))
        return json.loads(res.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[list[Gateway], LanRouter]]:
    """Two gateways and the LAN router, everything up and converged; all removed after."""
    made: list[object] = []
    try:
        topos = [harness.Topology() for _ in (1, 2)]
        for t in topos:
            made.append(t)
            t.up()
        lan = LanRouter(topos, tmp_path / "lan")
        made.append(lan)
        lan.up()
        gateways = []
        for n, topo in enumerate(topos, 1):
            work = tmp_path / f"gw{n}"
            work.mkdir()
            bird = harness.BirdPeer(topo, work / "bird")
            made.append(bird)
            bird.start()
            bird.announce(VPC)
            cfg = write_config(work / "v.yaml", tunnel={"hold_down": 1.0}, probe=PROBE,
                               export={"lan_peers": [lan.lan_peer(n)],
                                       "lan_med": 100 * n})  # gateway 2: the standby
            exabgp = harness.ExaBGPGateway(topo, plugin(cfg), work / "exabgp",
                                           lan_peers=[lan.lan_peer(n)])
            made.append(exabgp)
            exabgp.start()
            gateways.append(Gateway(topo, bird, exabgp, work))
        for gw in gateways:
            wait_fib(gw.exabgp, gw.topo, expect(VPC, "vti01", "vti02"))
        gateways[0].exabgp.wait_for(lambda: lan.gateways_announcing(VPC[0]) == {1, 2}, 30,
                                    what="both gateways announcing to the LAN router")
        assert lan.best_gateway(VPC[0]) == 1  # the lower MED
        yield gateways, lan
    finally:
        for obj in reversed(made):
            if isinstance(obj, harness.ExaBGPGateway):
                print(f"--- {obj!r}\n{harness.tail(obj.log_text(), 30)}")
            obj.close()  # type: ignore[attr-defined]


def lan_route(lan: LanRouter, prefix: str) -> str:
    """The LAN namespace's kernel route for `prefix` (BIRD's best, exported)."""
    return harness._ip(lan.ns, "-4", "route", "show", prefix).strip()


@pytest.mark.parametrize("signal", ["link", "blackhole"])
def test_the_lan_moves_to_the_other_gateway_when_one_loses_both_tunnels(
    site: tuple[list[Gateway], LanRouter], signal: str,
) -> None:
    (gw1, gw2), lan = site
    assert "via 192.168.101.2" in lan_route(lan, VPC[0])
    st = gw1.status()
    assert st["lan_peers"] == [{"peer": "192.168.101.1", "description": "lab LAN router",
                                "state": "up", "announced": len(VPC)}]

    def fail(n: int) -> None:
        if signal == "link":
            gw1.topo.carrier_off(n)
        else:
            gw1.topo.blackhole(n, True)

    # one tunnel: vtibgp fails over inside the gateway; the LAN hears nothing
    fail(1)
    if signal == "link":
        wait_fib(gw1.exabgp, gw1.topo, expect(VPC, "vti02"))
    else:
        gw1.exabgp.wait_for(lambda: gw1.status()["devices"][0]["down"] == ["probe"], 10,
                            what="the probe's verdict on vti01")
    time.sleep(0.5)
    assert lan.gateways_announcing(VPC[0]) == {1, 2} and lan.best_gateway(VPC[0]) == 1

    # both: gateway 1 withdraws from the LAN, which moves to gateway 2
    fail(2)
    t0 = time.monotonic()
    gw1.exabgp.wait_for(lambda: lan.best_gateway(VPC[0]) == 2, 10,
                        what="the LAN router's route via gateway 2")
    moved = time.monotonic() - t0
    lan_fib = lan_route(lan, VPC[0])
    assert "via 192.168.102.2" in lan_fib, lan_fib
    assert lan.gateways_announcing(VPC[1]) == {2}
    if signal == "blackhole":
        # the probe alone says down: gateway 1 keeps its routes (no leak in clear), but
        # the LAN is told to go elsewhere
        assert {p for p, _ in fib(gw1.topo)} == set(VPC)
    else:
        assert fib(gw1.topo) == {}
    assert gw1.status()["lan_peers"][0]["announced"] == 0  # type: ignore[index]
    print(f"{signal}: the LAN router moved to gateway 2 {moved * 1000:.0f} ms after the "
          "second tunnel failed (includes polling birdc)")

    # back: gateway 1 announces again after the hold-down, and is the best again
    for n in (1, 2):
        if signal == "link":
            gw1.topo.carrier_on(n)
        else:
            gw1.topo.blackhole(n, False)
    gw1.exabgp.wait_for(lambda: lan.best_gateway(VPC[0]) == 1, 20,
                        what="the LAN router back via gateway 1")
    assert lan.gateways_announcing(VPC[1]) == {1, 2}
    assert gw2.status()["lan_peers"][0]["announced"] == len(VPC)  # type: ignore[index]


def test_a_lan_session_that_comes_back_is_told_everything_again(
    site: tuple[list[Gateway], LanRouter],
) -> None:
    """The LAN router restarts its session with gateway 1 (a reboot, a reset): ExaBGP keeps
    what vtibgp told it and sends it on the new session; vtibgp sees the state change."""
    (gw1, _), lan = site
    lan.birdc("disable", "gw1")
    gw1.exabgp.wait_for(lambda: gw1.status()["lan_peers"][0]["state"] == "down", 20,  # type: ignore[index]
                        what="gateway 1's LAN session down")
    assert lan.gateways_announcing(VPC[0]) == {2} and lan.best_gateway(VPC[0]) == 2
    lan.birdc("enable", "gw1")
    gw1.exabgp.wait_for(lambda: lan.gateways_announcing(VPC[1]) == {1, 2}, 30,
                        what="gateway 1's announcements back on the new session")
    assert lan.best_gateway(VPC[0]) == 1
    assert gw1.status()["lan_peers"][0]["state"] == "up"  # type: ignore[index]
