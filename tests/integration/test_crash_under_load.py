"""Issue 12: the plugin killed while ExaBGP is delivering a large table.

BIRD (the VGW) announces PREFIXES prefixes on both tunnels; the real ExaBGP (5.0 and 4.2)
runs `vtibgp run`. The process that does vtibgp's work is SIGKILLed at random moments of
ExaBGP's output: during the initial table, during a change of every prefix's MED, and
during the start-up resync of the daemon that replaced it. Past the grace timer of the last
start, every prefix must be in the kernel (ours: protocol 186), best via vti01 and backup via
vti02, confirmed by the daemon (no route left from an earlier run, every path with the MED
BIRD sends now), and both BGP sessions established; ExaBGP must not have given up a peer.

The kill moments come from a seed, printed with each moment (``-s`` shows them; a failure
report shows them too): ``VTIBGP_CRASH_SEED=N`` repeats a run. ``VTIBGP_CRASH_PREFIXES``
changes the table size (default 10,000).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vtibgp.control.client import ControlError, request
from vtibgp.lab import parts as harness

PREFIXES = int(os.environ.get("VTIBGP_CRASH_PREFIXES", "10000"))
GRACE = 5  # startup.grace_time of the daemon, seconds
P1, P2 = harness.TUNNELS[1].aws_v4, harness.TUNNELS[2].aws_v4
GatewayFactory = Callable[..., harness.ExaBGPGateway]
Fib = dict[tuple[str, int], tuple[str, ...]]


def table(n: int) -> list[str]:
    """n /24s from 10.128.0.0 up (RFC 1918: allowed by the default policy)."""
    base = int(ipaddress.ip_address("10.128.0.0"))
    return [str(ipaddress.ip_network((base + (i << 8), 24))) for i in range(n)]


def fib(topo: harness.Topology) -> Fib:
    """(prefix, metric) -> devices of the IPv4 routes with our protocol id."""
    out: Fib = {}
    for r in topo.routes("gw", proto=186):
        dst = str(ipaddress.ip_network(r["dst"], strict=False))
        devs = tuple(sorted(h["dev"] for h in r["nexthops"])) if "nexthops" in r else (r["dev"],)
        out[(dst, int(r.get("metric", 0)))] = devs
    return out


def write_config(path: Path) -> Path:
    peers = [{"address": harness.TUNNELS[n].aws_v4, "interface": harness.TUNNELS[n].gw_dev}
             for n in (1, 2)]
    path.write_text(yaml.safe_dump({
        "log_level": "info", "peers": peers, "metrics": {"listen": None},
        "startup": {"grace_time": GRACE}, "control": {"socket": str(path.parent / "ctl.sock")},
    }))
    return path


def _cmdline(pid: int) -> str | None:
    """The command line of a live (not zombie) process, None otherwise."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    return None if stat.rpartition(")")[2].split()[0] == "Z" else cmd


@functools.cache
def _relayed() -> bool:
    """Whether `vtibgp run` runs the daemon as a child of a relay (`--no-supervisor` exists)."""
    res = subprocess.run([sys.executable, "-m", "vtibgp", "run", "--help"], capture_output=True,
                         text=True, timeout=30, check=False)
    return "--no-supervisor" in res.stdout


def workers(topo: harness.Topology) -> list[int]:
    """The live processes of the gateway doing vtibgp's work: the daemon children of the
    relay (`run --no-supervisor`), or, without a relay, the `vtibgp run` process itself."""
    mark = "--no-supervisor" if _relayed() else "vtibgp run"
    return sorted(pid for pid in harness.netns_pids(topo.gw)
                  if (cmd := _cmdline(pid)) is not None and mark in cmd)


class Crasher:
    """Kills the workers at seeded random moments and remembers what it did."""

    def __init__(self, topo: harness.Topology, gw: harness.ExaBGPGateway, seed: int) -> None:
        self.topo, self.gw, self.seed = topo, gw, seed
        self.rng = random.Random(seed)
        self.done: list[str] = []
        self.killed: set[int] = set()
        self.last_kill = 0.0

    def kill_after(self, what: str, low: float, high: float) -> threading.Thread:
        delay = round(self.rng.uniform(low, high), 3)

        def run() -> None:
            time.sleep(delay)
            pids = workers(self.topo)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            self.killed.update(pids)
            self.last_kill = time.monotonic()
            self.done.append(f"{what}: +{delay}s SIGKILL {pids}")
            print(f"[seed {self.seed}] {self.done[-1]}", file=sys.stderr)

        t = threading.Thread(target=run, name="crasher")
        t.start()
        return t

    def respawned(self) -> list[int]:
        """Wait for a worker that was not killed."""
        return self.gw.wait_for(lambda: [p for p in workers(self.topo) if p not in self.killed],
                                30, what="a new vtibgp worker")


def state(topo: harness.Topology, bird: harness.BirdPeer, sock: Path, want: Fib,
          med: int) -> list[str]:
    """What is still wrong (empty: converged)."""
    wrong: list[str] = []
    for n in (1, 2):
        if not bird.established(n):
            wrong.append(f"BGP session tun{n}: {bird.session_state(n)}")
    got = fib(topo)
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        moved = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        wrong.append(f"kernel: {len(got)} routes of ours, {len(want)} expected; missing "
                     f"{len(missing)} {missing[:3]}, extra {len(extra)} {extra[:3]}, moved "
                     f"{len(moved)} {moved[:3]}")
    try:
        status = request(str(sock), {"cmd": "status"}, timeout=10)
        routes = request(str(sock), {"cmd": "routes"}, timeout=10)
    except ControlError as e:
        return [*wrong, f"control socket: {e}"]
    if not status.get("synced"):
        wrong.append("the daemon is not synced")
    stale = [p["prefix"] for p in routes["prefixes"] if any(k["stale"] for k in p["kernel"])]
    if stale:
        wrong.append(f"{len(stale)} kernel routes unconfirmed (from an earlier run): "
                     f"{stale[:3]}")
    held: dict[str, set[Any]] = {}
    for p in routes["prefixes"]:
        for path in p["paths"]:
            held.setdefault(path["peer"], set()).add((p["prefix"], path["med"]))
    for peer in (P1, P2):
        paths = held.get(peer, set())
        old = sorted(x for x in paths if x[1] != med)
        if len(paths) != PREFIXES or old:
            wrong.append(f"peer {peer}: {len(paths)} paths held, {PREFIXES} expected, "
                         f"{len(old)} with an old MED {old[:3]}")
    return wrong


def test_worker_killed_under_load_keeps_sessions_and_routes(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    exabgp_binary: str, tmp_path: Path,
) -> None:
    seed = int(os.environ.get("VTIBGP_CRASH_SEED") or random.SystemRandom().randrange(10**6))
    print(f"crash under load: seed {seed} (VTIBGP_CRASH_SEED={seed} repeats it), "
          f"{PREFIXES} prefixes, {exabgp_binary}", file=sys.stderr)
    prefixes = table(PREFIXES)
    bird = bird_peer
    bird.set_prepend(2, 2)  # tunnel 2 is the backup, as AWS users set it up
    bird.announce(prefixes, med=10)
    cfg = write_config(tmp_path / "v.yaml")
    sock = tmp_path / "ctl.sock"
    want: Fib = {(p, 100 + i): (dev,) for p in prefixes for i, dev in enumerate(("vti01", "vti02"))}

    gw = exabgp_gateway([sys.executable, "-m", "vtibgp", "run", "--config", str(cfg)],
                        exabgp=exabgp_binary)
    crash = Crasher(topology, gw, seed)

    def converge(what: str, med: int, timeout: float) -> None:
        wrong: list[str] = []

        def converged() -> bool:
            wrong[:] = state(topology, bird, sock, want, med)
            return not wrong

        try:
            gw.wait_for(converged, timeout, what=what)
        except (TimeoutError, harness.HarnessError) as e:
            raise AssertionError(f"seed {seed}, kills {crash.done}: no {what}: {wrong}\n"
                                 f"{str(e)[-3000:]}") from None

    # 1. while the sessions deliver the initial table: once the first routes are in
    gw.wait_for(lambda: len(fib(topology)) > 0, 30, what="the first routes in the kernel")
    crash.kill_after("initial table", 0.0, 0.25).join()
    crash.respawned()
    converge("convergence after the first kill", 10, 30)

    # 2. while every prefix changes its MED on both sessions
    killer = crash.kill_after("MED change of every prefix", 0.05, 0.8)
    bird.announce(prefixes, med=20)
    killer.join()
    # 3. during the start-up of the worker that came next (kernel dump, resync answer)
    crash.respawned()
    crash.kill_after("start-up of the next worker", 0.0, 1.0).join()
    crash.respawned()

    # past the grace timer of the last worker's start, everything must hold
    time.sleep(max(0.0, crash.last_kill + GRACE + 1 - time.monotonic()))
    converge("convergence past the grace timer", 20, 30)
    log = gw.log_text()
    assert "lost the helper process" not in log, (seed, crash.done, harness.tail(log, 30))
    assert "Traceback" not in log, (seed, crash.done, harness.tail(log, 60))
