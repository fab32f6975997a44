"""Proves the lab harness itself: namespaces and links, and BIRD -> real ExaBGP -> an API
process (a recorder that only appends stdin to a file), on ExaBGP 5.0 and 4.2."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from lab_support import Recorder, as_path, route_dsts

from vtibgp.core.model import Announce, PeerState, Withdraw
from vtibgp.exabgp.parse import LineKind, parse_line
from vtibgp.lab.parts import (
    TUNNELS,
    BirdPeer,
    ExaBGPGateway,
    Topology,
    cleanup_stale,
    list_namespaces,
    netns_pids,
    routes,
    wait_until,
)

V4 = ["10.10.0.0/24", "10.10.1.0/24", "10.10.2.0/24"]
V6 = ["2001:db8:10::/48"]
PEER1 = TUNNELS[1].aws_v4
PEER2 = TUNNELS[2].aws_v4


def test_topology_links_and_routes(topology: Topology) -> None:
    for n, t in TUNNELS.items():
        assert topology.link_ready(n)
        for ns, dev, v4, v6 in (
            ("gw", t.gw_dev, t.gw_v4, t.gw_v6),
            ("aws", t.aws_dev, t.aws_v4, t.aws_v6),
        ):
            info = topology.link(ns, dev)
            assert info is not None
            addrs = {a["local"] for a in info["addr_info"]}
            assert {v4, v6} <= addrs, (ns, dev, addrs)
    # the two ends talk to each other, over IPv4 and IPv6
    _udp_echo(topology, TUNNELS[1].aws_v4)
    _udp_echo(topology, TUNNELS[2].aws_v6)

    topology.ip("gw", "route", "add", "10.99.0.0/24", "dev", "vti01", "proto", "bgp")
    topology.ip("gw", "-6", "route", "add", "2001:db8:99::/48", "dev", "vti02", "proto", "186")
    got = routes(topology.gw, proto="bgp")
    assert [(r["dst"], r["dev"]) for r in got] == [("10.99.0.0/24", "vti01")]
    assert route_dsts(topology.gw, proto=186, family=6) == {"2001:db8:99::/48"}
    assert topology.routes("gw", table=1000) == []

    # carrier loss on the far end: device stays admin-up, route kept but flagged linkdown
    topology.carrier_off(1)
    wait_until(lambda: "NO-CARRIER" in topology.link("gw", "vti01")["flags"], 5)  # type: ignore[index]
    assert "linkdown" in routes(topology.gw, proto="bgp")[0].get("flags", [])
    topology.carrier_on(1)
    topology.wait_link_ready(1)

    topology.set_link("gw", "vti02", False)
    assert route_dsts(topology.gw, proto="bgp", family=6) == set()  # kernel flushed it
    topology.set_link("gw", "vti02", True)
    topology.wait_link_ready(2)

    topology.delete_link("vti01")
    assert topology.link("gw", "vti01") is None
    assert topology.link("aws", "tun1") is None
    assert routes(topology.gw, proto="bgp") == []
    topology.recreate_link(1)
    assert topology.link_ready(1)
    _udp_echo(topology, TUNNELS[1].aws_v4)


_UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5555))
print("ready", flush=True)
s.settimeout(5)
data, addr = s.recvfrom(100)
s.sendto(data, addr)
"""

_UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"vtb", (sys.argv[1], 5555))
assert s.recvfrom(100)[0] == b"vtb"
"""


def _udp_echo(topology: Topology, aws_addr: str) -> None:
    """One UDP datagram from the gateway namespace to ``aws_addr`` and back (no ping
    binary needed)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", topology.aws, sys.executable, "-c", _UDP_SERVER, aws_addr],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        topology.run("gw", sys.executable, "-c", _UDP_CLIENT, aws_addr, timeout=10)
        assert server.wait(10) == 0
    finally:
        server.kill()
        server.wait()


def test_down_is_idempotent_and_kills_processes() -> None:
    topo = Topology()
    topo.down()  # never built: nothing to do
    with topo:
        sleeper = subprocess.Popen(["ip", "netns", "exec", topo.aws, "sleep", "300"])
        wait_until(lambda: sleeper.pid in netns_pids(topo.aws), 5)
    assert sleeper.wait(5) is not None
    assert not topo.exists()
    topo.down()


def test_cleanup_stale_removes_only_dead_runs(topology: Topology) -> None:
    dead = Topology().up()
    try:
        # pretend its owner died: a marker naming a pid that cannot exist
        (Path("/run/vtibgp-harness") / dead.tag).write_text('{"pid": 4194304, "starttime": "0"}')
        deleted = cleanup_stale()
        # (a parallel run's own stale leftovers may be in the list too)
        assert {dead.gw, dead.aws} <= set(deleted)
        names = list_namespaces()
        assert dead.gw not in names and dead.aws not in names
        assert topology.gw in names and topology.aws in names  # ours is alive: kept
    finally:
        dead.down()


def _recorder_sees(rec: Recorder, peer: str, prefixes: list[str]) -> Callable[[], bool]:
    return lambda: rec.state(peer) == "up" and set(prefixes) <= set(rec.announced(peer))


def _withdrawn(rec: Recorder, peer: str, prefix: str) -> Callable[[], bool]:
    return lambda: prefix in rec.withdrawn(peer)


def test_bird_to_exabgp_to_plugin(
    topology: Topology,
    bird_peer: BirdPeer,
    exabgp_gateway: Callable[..., ExaBGPGateway],
    exabgp_binary: str,
    tmp_path: Path,
) -> None:
    bird_peer.set_prepend(2, 1)  # tunnel 2 is the backup, as AWS users configure it
    bird_peer.announce(V4 + V6, tunnels=(1, 2), med=100)
    assert bird_peer.originated(1) == set(V4)
    assert bird_peer.originated(2, family=6) == set(V6)
    assert bird_peer.exported(1) == set()  # no session yet

    rec = Recorder(tmp_path / "api.jsonl")
    gw = exabgp_gateway(rec.command, exabgp=exabgp_binary)
    for peer in (PEER1, PEER2):
        gw.wait_for(_recorder_sees(rec, peer, V4 + V6), 20, what=f"up + routes from {peer}")
    assert bird_peer.established(1) and bird_peer.established(2)
    assert bird_peer.exported(2) == set(V4)

    # every line ExaBGP wrote was JSON (no acks: the recorder sends no commands)
    for line in rec.lines():
        json.loads(line)
    assert [s for p, s in rec.states(PEER1)][-2:] == ["connected", "up"]
    rib1, rib2 = rec.announced(PEER1), rec.announced(PEER2)
    assert set(rib1) == set(rib2) == set(V4 + V6)
    for prefix in V4:
        assert rib1[prefix]["next_hops"] == [PEER1]
        assert rib2[prefix]["next_hops"] == [PEER2]
        assert rib1[prefix]["attribute"]["med"] == 100
        assert as_path(rib1[prefix]["attribute"]) == [64512]
        assert as_path(rib2[prefix]["attribute"]) == [64512, 64512]
    # IPv6 over the IPv4 session: the global next hop first (link-local may follow)
    assert rib1[V6[0]]["next_hops"][0] == TUNNELS[1].aws_v6
    assert rib2[V6[0]]["next_hops"][0] == TUNNELS[2].aws_v6

    # withdraw one prefix on both tunnels
    bird_peer.withdraw([V4[1]])
    for peer in (PEER1, PEER2):
        gw.wait_for(_withdrawn(rec, peer, V4[1]), 10, what=f"withdraw from {peer}")
        assert set(rec.announced(peer)) == {V4[0], V4[2], *V6}

    # BIRD closes session 1 with a Cease: ExaBGP reports it down, session 2 is untouched
    bird_peer.disable_session(1)
    gw.wait_for(lambda: rec.state(PEER1) == "down", 10, what="session 1 down")
    assert bird_peer.session_state(1) == "down"
    assert rec.state(PEER2) == "up"

    # and back: ExaBGP reconnects by itself and gets the routes again
    n_updates = len(rec.updates(PEER1))
    bird_peer.enable_session(1)
    gw.wait_for(lambda: rec.state(PEER1) == "up", 15, what="session 1 up again")
    gw.wait_for(lambda: len(rec.updates(PEER1)) > n_updates, 10, what="re-announce")
    assert bird_peer.established(1)

    assert gw.stop() is not None
    assert not gw.running()
    _parser_agrees_with_fresh_capture(rec)


def _replay(lines: list[str]) -> dict[str, set[str]]:
    """The prefixes each peer holds after `lines`, through vtibgp's parser."""
    rib: dict[str, set[str]] = {PEER1: set(), PEER2: set()}
    for line in lines:
        for ev in parse_line(line).events:
            if isinstance(ev, Announce):
                rib[ev.peer].update(ev.prefixes)
            elif isinstance(ev, Withdraw):
                rib[ev.peer].difference_update(ev.prefixes)
            elif isinstance(ev, PeerState) and ev.state == "down":
                rib[ev.peer].clear()
    return rib


def _parser_agrees_with_fresh_capture(rec: Recorder) -> None:
    """vtibgp's parser on the stream this real ExaBGP just wrote: every line understood, and
    the routes it yields per peer equal the recorder's own replay of the JSON."""
    lines = rec.lines()
    parsed = [parse_line(line) for line in lines]
    bad = [(p, ln) for p, ln in zip(parsed, lines, strict=True)
           if p.kind is LineKind.INVALID or p.reason is not None]
    assert not bad
    assert {LineKind.STATE, LineKind.UPDATE, LineKind.SHUTDOWN} <= {p.kind for p in parsed}
    assert _replay(lines) == {PEER1: set(), PEER2: set()}  # ExaBGP stopped: sessions down
    cut = next(i for i, ln in enumerate(lines) if "shutting down" in ln)
    rib = _replay(lines[:cut])
    assert rib[PEER2] == {V4[0], V4[2], *V6}  # session 2 never dropped
    assert rib[PEER1] and rib[PEER1] <= set(rec.announced(PEER1))  # re-sent after its drop
