"""vtibgp end to end: BIRD (the AWS side) → real ExaBGP 5.0 / 4.2 → `vtibgp run` → the
kernel of the gateway namespace, read back with `ip -j route`."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vtibgp.lab import parts as harness

V4 = ["10.100.0.0/16", "10.101.0.0/24", "10.102.0.0/24"]
V6 = ["fd10:100::/48"]  # ULA: documentation prefixes are martians
P1, P2 = harness.TUNNELS[1].aws_v4, harness.TUNNELS[2].aws_v4
Fib = dict[tuple[str, int], tuple[str, ...]]

GatewayFactory = Callable[..., harness.ExaBGPGateway]


def fib(topo: harness.Topology, family: int = 4, proto: int | str = 186) -> Fib:
    """(prefix, metric) -> devices, for the routes with our protocol id."""
    out: Fib = {}
    for r in topo.routes("gw", proto=proto, family=family):
        dst = r["dst"]
        dst = str(ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst, strict=False))
        devs = tuple(sorted(h["dev"] for h in r["nexthops"])) if "nexthops" in r else (r["dev"],)
        out[(dst, int(r.get("metric", 0)))] = devs
    return out


def expect(prefixes: list[str], *layers: str) -> Fib:
    return {(p, 100 + i): (dev,) for p in prefixes for i, dev in enumerate(layers)}


def write_config(path: Path, *, discover: bool = False, **extra: Any) -> Path:
    peers = []
    for n, pref in ((1, 100), (2, 100)):
        t = harness.TUNNELS[n]
        peer: dict[str, Any] = {"address": t.aws_v4, "preference": pref,
                                "families": ["ipv4", "ipv6"]}
        if not discover:
            peer["interface"] = t.gw_dev
        peers.append(peer)
    data: dict[str, Any] = {"log_level": "debug", "peers": peers,
                            "metrics": {"listen": None}, "startup": {"grace_time": 30},
                            "control": {"socket": str(path.parent / "ctl.sock")}}
    data.update(extra)
    path.write_text(yaml.safe_dump(data))
    return path


def plugin(config: Path) -> list[str]:
    return [sys.executable, "-m", "vtibgp", "run", "--config", str(config)]


@pytest.fixture
def prepended(bird_peer: harness.BirdPeer) -> harness.BirdPeer:
    """Tunnel 2 less preferred, the way AWS users set it up (AS-path prepend)."""
    bird_peer.set_prepend(2, 2)
    return bird_peer


def wait_fib(gw: harness.ExaBGPGateway, topo: harness.Topology, want: Fib, family: int = 4,
             timeout: float = 20.0) -> None:
    last: list[Fib] = [{}]

    def check() -> bool:
        last[0] = fib(topo, family)
        return last[0] == want

    try:
        gw.wait_for(check, timeout, what="kernel routes")
    except TimeoutError as e:
        raise AssertionError(f"kernel routes {last[0]} != expected {want}") from e


@pytest.mark.parametrize("discover", [False, True], ids=["configured", "discovered"])
def test_install_backup_withdraw_peer_down_and_exit(
    topology: harness.Topology, prepended: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    exabgp_binary: str, tmp_path: Path, discover: bool,
) -> None:
    bird = prepended
    bird.announce(V4 + V6)
    gw = exabgp_gateway(plugin(write_config(tmp_path / "v.yaml", discover=discover)),
                        exabgp=exabgp_binary)
    # best via tunnel 1 (shorter AS path), backup via tunnel 2 one metric higher
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"))
    wait_fib(gw, topology, expect(V6, "vti01", "vti02"), family=6)

    check_status_and_routes(tmp_path / "ctl.sock", discover)

    bird.withdraw(["10.101.0.0/24"])
    wait_fib(gw, topology, expect(["10.100.0.0/16", "10.102.0.0/24"], "vti01", "vti02"))

    # session 1 drops: ExaBGP sends no withdraws; vtibgp flushes the peer, tunnel 2 takes over.
    # The peer is alone on vti01: its routes go at once with vti01's nexthop objects
    bird.disable_session(1)
    wait_fib(gw, topology, expect(["10.100.0.0/16", "10.102.0.0/24"], "vti02"))
    assert f"peer {P1} session down: routes through vti01 taken out" in gw.log_text()
    bird.enable_session(1)
    wait_fib(gw, topology, expect(["10.100.0.0/16", "10.102.0.0/24"], "vti01", "vti02"))

    # tunnel 2 becomes the better one: the routes swap in place
    bird.set_prepend(2, 0)
    bird.set_prepend(1, 3)
    wait_fib(gw, topology, expect(["10.100.0.0/16", "10.102.0.0/24"], "vti02", "vti01"))

    # ExaBGP stops: on_exit withdraw removes every route of ours, and only ours
    topology.ip("gw", "route", "add", "10.200.0.0/16", "dev", "vti01", "proto", "static")
    gw.stop()
    assert fib(topology) == {} and fib(topology, 6) == {}
    assert ("10.200.0.0/16", 0) in fib(topology, proto="static")
    log = gw.log_text()
    assert "Traceback" not in log, harness.tail(log)


def vtibgp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vtibgp", *args], capture_output=True,
                          text=True, timeout=30, check=False)


def check_status_and_routes(sock: Path, discover: bool) -> None:
    """`vtibgp status` / `vtibgp routes` against the running daemon."""
    res = vtibgp("status", "--json", "--socket", str(sock))
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    peers = {p["peer"]: p for p in st["peers"]}
    assert peers[P1]["state"] == peers[P2]["state"] == "up"
    assert peers[P1]["device"] == "vti01" and peers[P2]["device"] == "vti02"
    assert (peers[P1]["best"], peers[P1]["backup"]) == (4, 0)  # 3 IPv4 + 1 IPv6
    assert (peers[P2]["best"], peers[P2]["backup"]) == (0, 4)
    assert st["routes"] == {"prefixes": 4, "best": 4, "total": 8} and st["synced"]
    human = vtibgp("status", "--socket", str(sock)).stdout
    assert P1 in human and "vti01" in human, human

    res = vtibgp("routes", "10.100.0.0/16", "--json", "--socket", str(sock))
    entry = json.loads(res.stdout)["prefixes"][0]
    assert [(p["peer"], p["role"], p["metric"]) for p in entry["paths"]] == [
        (P1, "best", 100), (P2, "backup", 101)]
    assert entry["paths"][1]["as_path"] == [64512, 64512, 64512]
    human = vtibgp("routes", "--socket", str(sock)).stdout
    assert "fd10:100::/48" in human and "backup" in human, human
    bad = vtibgp("status", "--socket", str(sock) + ".missing")
    assert bad.returncode == 1 and "is vtibgp running?" in bad.stderr


def test_foreign_route_is_never_overwritten(
    topology: harness.Topology, prepended: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    topology.ip("gw", "route", "add", "10.100.0.0/16", "dev", "vti02", "metric", "100",
                "proto", "static")
    prepended.announce(V4)
    gw = exabgp_gateway(plugin(write_config(tmp_path / "v.yaml")))
    wait_fib(gw, topology, {**expect(["10.101.0.0/24", "10.102.0.0/24"], "vti01", "vti02"),
                            ("10.100.0.0/16", 101): ("vti02",)})
    assert fib(topology, proto="static") == {("10.100.0.0/16", 100): ("vti02",)}
    gw.wait_for_log("a route of another owner holds 10.100.0.0/16 metric 100")
    gw.stop()
    assert fib(topology, proto="static") == {("10.100.0.0/16", 100): ("vti02",)}
    assert fib(topology) == {}


class RouteMonitor:
    """`ip monitor route` in the gateway namespace: what the kernel reported, in order."""

    def __init__(self, topo: harness.Topology, path: Path) -> None:
        self.path = path
        self.out = path.open("w")
        self.proc = subprocess.Popen(["ip", "-n", topo.gw, "-o", "monitor", "route"],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        time.sleep(0.2)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.out.close()


@pytest.fixture
def route_monitor(topology: harness.Topology, tmp_path: Path) -> Iterator[RouteMonitor]:
    mon = RouteMonitor(topology, tmp_path / "monitor.log")
    try:
        yield mon
    finally:
        mon.stop()


def test_killed_plugin_is_respawned_and_converges_without_churn(
    topology: harness.Topology, prepended: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    exabgp_binary: str, tmp_path: Path, route_monitor: RouteMonitor,
) -> None:
    bird = prepended
    bird.announce(V4)
    gw = exabgp_gateway(plugin(write_config(tmp_path / "v.yaml")), exabgp=exabgp_binary)
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"))
    before = len(route_monitor.lines())

    # The plugin dies hard; while it is gone one prefix is withdrawn and one is added.
    first = gw.plugin_pids()
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    bird.withdraw(["10.101.0.0/24"])
    bird.announce(["10.103.0.0/24"])
    gw.wait_for(lambda: len(gw.plugin_pids()) > len(first), 20, what="respawned plugin")
    want = expect(["10.100.0.0/16", "10.102.0.0/24", "10.103.0.0/24"], "vti01", "vti02")
    wait_fib(gw, topology, want)
    gw.wait_for_log("sync complete")
    time.sleep(0.5)
    assert fib(topology) == want
    # the kernel saw only the withdrawn prefix go and the new one come: nothing else moved
    changes = route_monitor.lines()[before:]
    touched = {line.split()[1] if line.startswith("Deleted") else line.split()[0]
               for line in changes if "proto bgp" in line}
    assert touched == {"10.101.0.0/24", "10.103.0.0/24"}, changes
    assert gw.log_text().count("resync: ExaBGP's adj-rib-in loaded") >= 1
    assert "Traceback" not in gw.log_text()


def test_retained_routes_are_adopted_by_the_next_run(
    topology: harness.Topology, prepended: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path, route_monitor: RouteMonitor,
) -> None:
    """on_exit: retain leaves the routes; a new ExaBGP (sessions start from scratch) keeps
    them in place while the peers re-send, and removes what they no longer announce once
    both have sent End-of-RIB (or the grace timer ran out)."""
    bird = prepended
    bird.announce(V4)
    cfg = write_config(tmp_path / "v.yaml", on_exit="retain")
    gw = exabgp_gateway(plugin(cfg))
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"))
    gw.stop()
    assert fib(topology) == expect(V4, "vti01", "vti02")  # retained
    bird.withdraw(["10.102.0.0/24"])
    mark = len(route_monitor.lines())
    gw2 = exabgp_gateway(plugin(cfg))
    wait_fib(gw2, topology, expect(["10.100.0.0/16", "10.101.0.0/24"], "vti01", "vti02"))
    changes = [ln for ln in route_monitor.lines()[mark:] if "proto bgp" in ln]
    assert changes and all(ln.startswith("Deleted 10.102.0.0/24") for ln in changes), changes


def test_device_down_moves_routes_and_up_restores(
    topology: harness.Topology, prepended: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    prepended.announce(V4)
    gw = exabgp_gateway(plugin(write_config(tmp_path / "v.yaml")))
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"))
    topology.set_link("gw", "vti01", False)
    wait_fib(gw, topology, expect(V4, "vti02"))
    topology.set_link("gw", "vti01", True)
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"))


def test_without_cap_net_admin_it_says_so_and_exits_nonzero(
    topology: harness.Topology, tmp_path: Path,
) -> None:
    """ExaBGP started as root with defaults drops the plugin's privileges: vtibgp must fail
    loudly, not run without being able to install anything."""
    cfg = write_config(tmp_path / "v.yaml")
    res = subprocess.run(
        ["ip", "netns", "exec", topology.gw, "setpriv", "--bounding-set=-net_admin",
         "--inh-caps=-net_admin", "--", *plugin(cfg)],
        input="", capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 2, res.stderr
    assert "vtibgp needs CAP_NET_ADMIN" in res.stderr
    assert "exabgp.daemon.user=root" in res.stderr
