"""`vtibgp lab demo`: the whole thing on a machine with no AWS.

A customer gateway and a simulated AWS VGW in network namespaces, joined by two "tunnels"
(veth pairs vti01/vti02 with AWS-style inside addresses); BIRD 2 as the VGW announcing a VPC
CIDR and a few more prefixes on both tunnels, tunnel 2 made less preferred by AS-path
prepending; the real ExaBGP with vtibgp on the gateway. The demo shows the routes, fails tunnel
1, shows the failover, restores it, and removes everything it made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import lab

VPC = ["10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/24", "fd10:100::/56"]
METRICS = "127.0.0.1:10179"


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _show_routes(topo: lab.Topology) -> None:
    for fam in ("-4", "-6"):
        out = topo.ip("gw", fam, "route", "show", "proto", "bgp")
        print(out.rstrip() or "(none)")


def _write_config(path: Path, sock: Path) -> None:
    peers = [
        {"address": t.aws_v4, "interface": t.gw_dev, "families": ["ipv4", "ipv6"],
         "description": f"lab VGW tunnel {n}"}
        for n, t in lab.TUNNELS.items()
    ]
    path.write_text(yaml.safe_dump({
        "peers": peers,
        "metrics": {"listen": METRICS},
        "control": {"socket": str(sock)},
        "startup": {"grace_time": 10},
    }, sort_keys=False))


def _routes_via(topo: lab.Topology, dev: str, metric: int) -> bool:
    """Every lab prefix (IPv4 and IPv6) has a route via `dev` at `metric`."""
    got = {
        r["dst"] for fam in (4, 6) for r in topo.routes("gw", proto="bgp", family=fam)
        if r.get("dev") == dev and int(r.get("metric", 0)) == metric
    }
    return set(VPC) <= got


def demo(pause: float) -> int:
    if os.geteuid() != 0:
        print("vtibgp lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("bird") is None:
        print("vtibgp lab: BIRD 2 not found (apt-get install bird2)", file=sys.stderr)
        return 2
    lab.cleanup_stale()
    work = Path(tempfile.mkdtemp(prefix="vtibgp-lab-"))
    topo = lab.Topology()
    bird: lab.BirdPeer | None = None
    gw: lab.ExaBGPGateway | None = None
    try:
        _say(f"building namespaces {topo.gw} (gateway) and {topo.aws} (AWS VGW)")
        topo.up()
        bird = lab.BirdPeer(topo, work / "bird", prepend={2: 2}).start()
        bird.announce(VPC)
        sock = work / "vtibgp.sock"
        cfg = work / "vtibgp.yaml"
        _write_config(cfg, sock)
        cmd = [sys.executable, "-m", "vtibgp", "run", "--config", str(cfg)]
        gw = lab.ExaBGPGateway(topo, cmd, work / "exabgp").start()
        print(f"ExaBGP log: {gw.log_path}   vtibgp config: {cfg}")
        print(f"metrics while it runs: ip netns exec {topo.gw} curl -s http://{METRICS}/metrics")
        gw.wait_for(lambda: _routes_via(topo, "vti01", 100) and _routes_via(topo, "vti02", 101),
                    30, what="routes via vti01 (best) and vti02 (backup)")
        _say("BGP up on both tunnels: best via vti01 (metric 100), backup via vti02 (101)")
        _show_routes(topo)
        _say("vtibgp status")
        subprocess.run([sys.executable, "-m", "vtibgp", "status", "--socket", str(sock)],
                       check=False)
        time.sleep(pause)

        _say("tunnel 1 fails (the VGW endpoint drops the BGP session)")
        bird.disable_session(1)
        gw.wait_for(lambda: _routes_via(topo, "vti02", 100), 30, what="failover to vti02")
        _show_routes(topo)
        time.sleep(pause)

        _say("tunnel 1 restored")
        bird.enable_session(1)
        gw.wait_for(lambda: _routes_via(topo, "vti01", 100), 60, what="return to vti01")
        _show_routes(topo)
        _say("done; removing the lab")
        return 0
    except (lab.HarnessError, TimeoutError) as e:
        print(f"vtibgp lab: {e}", file=sys.stderr)
        return 1
    finally:
        if gw is not None:
            gw.stop()
        if bird is not None:
            bird.stop()
        topo.down()
        shutil.rmtree(work, ignore_errors=True)
