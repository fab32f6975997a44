"""`vtibgp lab up --gateways 2`: AWS's recommended second customer gateway, and the LAN
between the two.

Gateway 2 is a copy of the lab's gateway (its own namespaces, its own BIRD as the VGW of its
own VPN connection announcing the same VPC, ExaBGP + vtibgp); a LAN router (BIRD, namespace
``vtibgp-lab-lan``) peers with both gateways' ExaBGP (vtibgp's `export.lan_peers`). Gateway 1
tells the LAN the VPC with MED 100, gateway 2 with MED 200 (the standby): the LAN router's
route to the VPC goes through gateway 1 while it has a usable tunnel, and moves to gateway 2
when `lab fail 1` and `lab fail 2` take both of gateway 1's tunnels down.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vtibgp.lab import parts as lab
from vtibgp.lab.lan import LanRouter

NS_GW2 = "vtibgp-lab-gw2"
NS_AWS2 = "vtibgp-lab-aws2"
NS_LAN = "vtibgp-lab-lan"
LAN_MED = {1: 100, 2: 200}  # gateway 2 is the standby


class SecondSite:
    """Gateway 2 with its VGW, and the LAN router joining it to gateway 1 (`first`)."""

    def __init__(self, first: lab.Topology, state_dir: Path,
                 prepend: Mapping[int, int]) -> None:
        self.dir = state_dir / "gateway2"
        self.topo = lab.Topology(tag="lab2", names=(NS_GW2, NS_AWS2))
        self.bird = lab.BirdPeer(self.topo, self.dir / "bird", prepend=dict(prepend),
                                 socket=self.dir / "bird.ctl")
        self.config = self.dir / "vtibgp.yaml"
        self.socket = self.dir / "vtibgp.sock"
        self.lan = LanRouter([first, self.topo], state_dir / "lan", name=NS_LAN)
        self.gw = lab.ExaBGPGateway(
            self.topo, [sys.executable, "-m", "vtibgp", "run", "--config", str(self.config)],
            self.dir / "exabgp", lan_peers=[self.lan.lan_peer(2)])

    NAMESPACES = (NS_GW2, NS_AWS2, NS_LAN)

    def lan_export(self, n: int) -> dict[str, Any]:
        """Gateway n's `export:` additions: the LAN router as its LAN-side peer."""
        return {"lan_peers": [self.lan.lan_peer(n)], "lan_med": LAN_MED[n]}

    def build(self, vpc: list[str], peers: list[dict[str, Any]]) -> None:
        """Gateway 2's namespaces and VGW, the LAN router, then gateway 2's ExaBGP with
        vtibgp (`peers`: the vtibgp.yaml peers, the same addresses as gateway 1's)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.topo.up()
        self.lan.up()
        self.bird.start()
        self.bird.announce(vpc)
        self.config.write_text(yaml.safe_dump({
            "peers": peers, "control": {"socket": str(self.socket)},
            "startup": {"grace_time": 10}, "export": self.lan_export(2)}, sort_keys=False))
        self.gw.start()
        lab.detach(self.topo, self.bird, self.gw, self.lan)

    def records(self) -> dict[str, Any]:
        out = {name: d.record() for name, d in
               (("bird", self.bird), ("exabgp", self.gw), ("lan", self.lan))
               if d.pid is not None}
        if "bird" in out:
            out["bird_snapshot"] = self.bird.snapshot()
        return out

    def adopt(self, records: Mapping[str, Any]) -> None:
        if "bird" in records:
            self.bird.adopt(records["bird"])
            self.bird.load_snapshot(records["bird_snapshot"])
        if "exabgp" in records:
            self.gw.adopt(records["exabgp"])
        if "lan" in records:
            self.lan.adopt(records["lan"])

    def problems(self) -> list[str]:
        names = lab.list_namespaces()
        out = [f"namespace {ns} is missing" for ns in self.NAMESPACES if ns not in names]
        out += [f"{what} is not running" for what, d in
                (("gateway 2's BIRD", self.bird), ("gateway 2's ExaBGP", self.gw),
                 ("the LAN router's BIRD", self.lan)) if not d.running()]
        return out

    def teardown(self) -> list[str]:
        removed = [f"{what} (pid {d.pid})" for what, d in
                   (("gateway 2's ExaBGP and vtibgp", self.gw), ("gateway 2's BIRD", self.bird),
                    ("the LAN router", self.lan)) if d.running()]
        self.gw.stop()
        self.bird.stop()
        names = set(lab.list_namespaces())
        removed += [f"namespace {ns}" for ns in self.NAMESPACES if ns in names]
        self.lan.down()
        self.topo.down()
        return removed

    def overview(self, vpc: str) -> str:
        """Where the LAN router sends the VPC's traffic, and who announces it."""
        best = self.lan.best_gateway(vpc)
        told = sorted(self.lan.gateways_announcing(vpc))
        return (f"LAN router ({NS_LAN}): {vpc} via gateway {best if best else '-'} "
                f"(announced by gateway {', '.join(map(str, told)) or 'none'}; gateway 1 "
                f"MED {LAN_MED[1]}, gateway 2 MED {LAN_MED[2]}: the standby)")
