#!/usr/bin/env python3
"""Return-path benchmark: after a tunnel failure, how soon does the VGW (BIRD) send its
traffic for the gateway's network back through the tunnel vtibgp moved to?

The lab's topology with BIRD as the VGW (tunnel 2 prepended, so vti01 is vtibgp's best),
N prefixes from the VGW, and `export.networks: [192.168.50.0/24]` steered symmetrically.
BIRD's best return route goes into the VGW namespace's kernel (vgw4). For each signal
(link: carrier lost; bgp: the VGW closes the session; blackhole: nftables drops everything,
only the probe sees it) and repeat, two threads poll the kernels: the gateway's route to a
sample prefix (vtibgp's own failover) and the VGW's route to our network (the return path).
Prints, per signal, the medians from the signal to each and the lag between them (the
issue's target: the return path within 200 ms of vtibgp's failover). With `link` and `bgp`
the VGW loses tunnel 1's session itself (its interface went down, or it closed it), so its
return path moves without our help; `blackhole` is the case our steering decides: the VGW's
session over the black tunnel stays up, and only the better announcement on tunnel 2 moves
it. Polling is with
`ip route get` (a few ms per look): the figures are upper bounds with that resolution.

  python benchmarks/return_path.py                      # 10,000 prefixes, 5 repeats
  python benchmarks/return_path.py --prefixes 1000 --repeat 3 --signals link,bgp
Run as root.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vtibgp.lab import parts as lab

OURS = "192.168.50.0/24"
SIGNALS = ("link", "bgp", "blackhole")


def route_dev(ns: str, dst: str) -> str | None:
    res = subprocess.run(["ip", "-n", ns, "-o", "route", "get", dst], capture_output=True,
                         text=True, timeout=10, check=False)
    words = res.stdout.split()
    return words[words.index("dev") + 1] if "dev" in words else None


def first_time(look: Callable[[], bool], start: float, timeout: float,
               out: dict[str, float], key: str) -> threading.Thread:
    """A thread noting in `out[key]` the seconds from `start` until `look()` holds."""
    def run() -> None:
        end = start + timeout
        while time.monotonic() < end:
            if look():
                out[key] = time.monotonic() - start
                return
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def config(path: Path, n_probe: float) -> Path:
    peers = [{"address": t.aws_v4, "interface": t.gw_dev, "vpn": "vpn-bench",
              "families": ["ipv4"]} for t in (lab.TUNNELS[1], lab.TUNNELS[2])]
    path.write_text(yaml.safe_dump({
        "log_level": "info", "peers": peers, "metrics": {"listen": None},
        "control": {"socket": str(path.parent / "ctl.sock")},
        "tunnel": {"hold_down": 0.5}, "probe": {"interval": n_probe, "multiplier": 3},
        "export": {"networks": [OURS]}, "policy": {"max_length": {"ipv4": 32}},
    }))
    return path


def fail(topo: lab.Topology, bird: lab.BirdPeer, signal: str, on: bool) -> None:
    if signal == "link":
        (topo.carrier_off if on else topo.carrier_on)(1)
    elif signal == "blackhole":
        topo.blackhole(1, on)
    elif on:
        bird.disable_session(1)
    else:
        bird.enable_session(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefixes", type=int, default=10_000, help="from the VGW (default 10,000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per signal; medians reported")
    ap.add_argument("--signals", default=",".join(SIGNALS),
                    help=f"comma list of: {', '.join(SIGNALS)}")
    ap.add_argument("--probe-interval", type=float, default=0.2, help="probe.interval (s)")
    args = ap.parse_args()
    signals = [s for s in args.signals.split(",") if s]
    if any(s not in SIGNALS for s in signals):
        ap.error(f"--signals: expected some of {', '.join(SIGNALS)}")
    nets = [f"10.{64 + i // 256}.{i % 256}.0/24" for i in range(args.prefixes)]
    work = Path(tempfile.mkdtemp(prefix="vtibgp-return-"))
    topo = lab.Topology()
    bird = gw = None
    results: dict[str, dict[str, list[float]]] = {s: {"vtibgp": [], "vgw": []} for s in signals}
    try:
        topo.up()
        bird = lab.BirdPeer(topo)
        bird.start()
        bird.set_prepend(2, 2)
        bird.announce(nets)
        cmd = [sys.executable, "-m", "vtibgp", "run", "--config",
               str(config(work / "v.yaml", args.probe_interval))]
        gw = lab.ExaBGPGateway(topo, cmd)
        gw.start()
        sample = nets[-1].split("/")[0]

        def ready() -> bool:
            return (route_dev(topo.gw, sample) == "vti01"
                    and route_dev(topo.aws, "192.168.50.1") == topo.tunnels[1].aws_dev)

        gw.wait_for(ready, 120, what="routes via vti01 both ways")
        for signal in signals:
            for _ in range(args.repeat):
                time.sleep(1.0)  # a few probe replies after the last restore
                got: dict[str, float] = {}
                start = time.monotonic()
                threads = [
                    first_time(lambda: route_dev(topo.gw, sample) == "vti02", start, 60, got,
                               "vtibgp"),
                    first_time(lambda: route_dev(topo.aws, "192.168.50.1")
                               == topo.tunnels[2].aws_dev, start, 60, got, "vgw"),
                ]
                fail(topo, bird, signal, True)
                for t in threads:
                    t.join()
                fail(topo, bird, signal, False)
                gw.wait_for(ready, 60, what="routes back via vti01 both ways")
                for key, value in got.items():
                    results[signal][key].append(value)
                print(f"{signal:9s} vtibgp {got.get('vtibgp', float('nan')) * 1e3:7.1f} ms  "
                      f"VGW return {got.get('vgw', float('nan')) * 1e3:7.1f} ms", flush=True)
    finally:
        if gw is not None:
            gw.stop()
        if bird is not None:
            bird.stop()
        topo.down()
    print(f"\n{args.prefixes:,} prefixes, median of {args.repeat}; ms from the signal "
          "(upper bounds: `ip route get` polling)")
    print(f"{'signal':10s} {'vtibgp':>8s} {'VGW return':>11s} {'lag':>7s}  target lag < 200")
    for signal, r in results.items():
        if len(r["vtibgp"]) != args.repeat or len(r["vgw"]) != args.repeat:
            print(f"{signal:10s} incomplete: {r}")
            continue
        a, b = statistics.median(r["vtibgp"]), statistics.median(r["vgw"])
        lags = [y - x for x, y in zip(r["vtibgp"], r["vgw"], strict=True)]
        lag = statistics.median(lags)
        print(f"{signal:10s} {a * 1e3:8.1f} {b * 1e3:11.1f} {lag * 1e3:7.1f}  "
              f"{'met' if max(lags) < 0.2 else 'missed'} (worst lag {max(lags) * 1e3:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
