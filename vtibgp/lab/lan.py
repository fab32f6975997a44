"""The LAN side of the lab: a LAN router (BIRD) in its own namespace, joined to each gateway
by a veth pair, peering with each gateway's ExaBGP (vtibgp's `export.lan_peers`). It learns
the VPC's prefixes from every gateway that has a usable tunnel and installs its best into its
kernel, so a gateway losing both tunnels shows as the LAN's route moving to another gateway
(AWS's recommended two customer gateways, active/standby by MED or active/active)::

    gateway 1 ns                       lan ns                        gateway 2 ns
      lan0 192.168.101.2/24 <-veth-> gw1 192.168.101.1/24
                                       gw2 192.168.102.1/24 <-veth-> lan0 192.168.102.2/24

The namespace is named after the first gateway's topology (``vtb-<tag>-lan``), so a dead
run's leftovers go with that topology's (:func:`~vtibgp.lab.parts.cleanup_stale`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vtibgp.lab import parts
from vtibgp.lab.parts import GW_ASN, HarnessError, Topology

LAN_ASN = 65010
LAN_DEV = "lan0"  # the gateway's LAN device


def lan_addresses(n: int) -> tuple[str, str]:
    """(the LAN router's, gateway n's) addresses on their link, n = 1, 2, ..."""
    return f"192.168.{100 + n}.1", f"192.168.{100 + n}.2"


class LanRouter(parts._Daemon):
    """BIRD as the LAN router, peering with every gateway of ``gateways`` (their topologies,
    gateway n = ``gateways[n - 1]``)."""

    def __init__(self, gateways: Sequence[Topology], workdir: str | Path | None = None,
                 *, hold_time: int = 9, name: str | None = None) -> None:
        if not gateways:
            raise ValueError("a LAN router needs at least one gateway")
        self.gateways = list(gateways)
        # (`name`: the lab's own, outside the test harness' vtb- namespaces)
        self.ns = name or f"{parts.NS_PREFIX}-{self.gateways[0].tag}-lan"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(
            tempfile.mkdtemp(prefix=f"{parts.NS_PREFIX}-{self.gateways[0].tag}-lan-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "bird.ctl"
        self.conf_path = self.workdir / "bird.conf"
        self.log_path = self.workdir / "bird.log"
        self.hold_time = hold_time
        self.disabled: set[int] = set()

    def __repr__(self) -> str:
        return f"LanRouter(ns={self.ns!r})"

    # -- the links
    def up(self) -> LanRouter:
        """The namespace, one veth pair per gateway with addresses, then BIRD."""
        parts._register(self)
        try:
            parts._cmd(["ip", "netns", "add", self.ns])
            parts._ip(self.ns, "link", "set", "lo", "up")
            for n, topo in enumerate(self.gateways, 1):
                router, gateway = lan_addresses(n)
                parts._cmd(["ip", "link", "add", f"gw{n}", "netns", self.ns, "type", "veth",
                            "peer", "name", LAN_DEV, "netns", topo.gw])
                parts._ip(self.ns, "addr", "add", f"{router}/24", "dev", f"gw{n}")
                parts._ip(self.ns, "link", "set", f"gw{n}", "up")
                parts._ip(topo.gw, "addr", "add", f"{gateway}/24", "dev", LAN_DEV)
                parts._ip(topo.gw, "link", "set", LAN_DEV, "up")
            self._start()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """BIRD, the namespace (and so the veth pairs), the work dir. Idempotent."""
        self._terminate(5.0)
        parts._delete_netns(self.ns)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        parts._unregister(self)

    close = down

    def __enter__(self) -> LanRouter:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- BIRD
    def _conf(self) -> str:
        lines = [f'log "{self.log_path}" all;', f"router id {lan_addresses(1)[0]};",
                 "protocol device { scan time 10; }",
                 # the LAN's own FIB: where the traffic to the VPC goes
                 "protocol kernel { ipv4 { import none; export all; }; }"]
        for n in range(1, len(self.gateways) + 1):
            router, gateway = lan_addresses(n)
            lines.append(f"""protocol bgp gw{n} {{
  disabled {"yes" if n in self.disabled else "no"};
  local {router} as {LAN_ASN};
  neighbor {gateway} as {GW_ASN};
  direct;
  hold time {self.hold_time};
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 5;
  ipv4 {{ import all; export none; }};
}}""")
        return "\n".join(lines) + "\n"

    def _start(self) -> None:
        self.conf_path.write_text(self._conf())
        bird = shutil.which("bird") or "bird"
        self._spawn(["ip", "netns", "exec", self.ns, bird, "-f", "-c", str(self.conf_path),
                     "-s", str(self.socket)], self.workdir / "bird.stdout")
        parts.wait_until(self._ready, 10, what="the LAN router's BIRD")

    def _ready(self) -> bool:
        if not self.running():
            raise HarnessError(f"the LAN router's BIRD exited:\n{self.log_text()}")
        try:
            self.birdc("show", "status")
        except HarnessError:
            return False
        return True

    def birdc(self, *args: str) -> str:
        return parts.birdc(shutil.which("birdc") or "birdc", self.socket, *args)

    def established(self, n: int) -> bool:
        return "Established" in self.birdc("show", "protocols", f"gw{n}")

    def best_gateway(self, prefix: str) -> int | None:
        """The gateway the LAN router sends traffic for `prefix` to (its best route's next
        hop), None: no route."""
        try:
            out = self.birdc("show", "route", "primary", prefix)
        except HarnessError:
            return None  # "Network not found"
        m = re.search(r"via 192\.168\.(\d+)\.2\b", out)
        return int(m.group(1)) - 100 if m else None

    def gateways_announcing(self, prefix: str) -> set[int]:
        """The gateways whose announcement of `prefix` the LAN router holds."""
        try:
            out = self.birdc("show", "route", "all", prefix)
        except HarnessError:
            return set()
        return {int(g) - 100 for g in re.findall(r"via 192\.168\.(\d+)\.2\b", out)}

    def wait_gateways(self, prefix: str, want: set[int], timeout: float) -> None:
        """Until the gateways announcing `prefix` to this router are `want`."""
        parts.wait_until(lambda: self.gateways_announcing(prefix) == want, timeout,
                         what=f"gateways {sorted(want)} announcing {prefix} to the LAN router")

    def lan_peer(self, n: int) -> dict[str, Any]:
        """Gateway n's `export.lan_peers` entry for this router."""
        router, gateway = lan_addresses(n)
        return {"address": router, "peer_as": LAN_ASN, "local_address": gateway,
                "description": "lab LAN router", "hold_time": self.hold_time}
