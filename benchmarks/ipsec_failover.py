#!/usr/bin/env python3
"""IPsec failover benchmark: the strongSwan lab (vtibgp.lab.ipsec: charon with kernel-libipsec
on both ends of both tunnels, BIRD as the VGW, ExaBGP + vtibgp), tunnel 1 failed silently.

* `dpd` (probe off): tunnel 1's UDP 500/4500 dropped on the outer link. charon's DPD gives
  up, runs down-client, vtibgp moves the routes. Printed: drop -> hook start (the IPsec
  daemon's detection), hook start -> routes via ipsec1 at the best metric (vtibgp), and drop
  -> routes moved.
* `probe` (probe on, vtibgp's defaults: 0.2 s x 3): tunnel 1's ESP dropped, IKE alive (no
  updown ever comes). Printed: drop -> routes moved.

Times are wall-clock (the hook logs `date +%s.%N`), routes polled every 20 ms. DPD's timing
is the config's: dpd_delay from aws-import (2 s for the lab's XML) plus the retransmission
schedule that gives up after --give-up seconds (aws-import derives 15 s from a 30 s hold
time; the lab uses 6 s).

  flock /tmp/vtibgp-bench.lock python benchmarks/ipsec_failover.py --repeat 5
Run as root.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vtibgp.lab import ipsec
from vtibgp.lab import parts as lab

PREFIXES = ["10.60.0.0/16", "10.61.0.0/24"]
SETTLE = 15.0  # seconds after a run before the next (see one())


def one(stack: ipsec.Stack, how: str) -> tuple[float, float | None]:
    """Fail tunnel 1 (`how`: ipsec / blackhole), wait for the routes on ipsec1; restore.
    Returns (seconds drop -> routes moved, wall-clock of the down-client hook or None)."""
    conn = ipsec.aws.connection_name(stack.ipsec.vpn, stack.ipsec.vpn.tunnels[0])
    t0 = time.time()
    stack.ipsec.drop(1, how)
    try:
        moved = ipsec.wait_routes_via(stack.topology, PREFIXES, "ipsec1", 100, timeout=60)
    finally:
        stack.ipsec.drop(1, None)
    hooks = [t for t, verb, c, _ in stack.ipsec.updown_calls()
             if verb == "down-client" and c == conn and t >= t0]
    stack.ipsec.wait_established(60)
    ipsec.wait_routes_via(stack.topology, PREFIXES, "ipsec0", 100, timeout=90)
    # TCP's retransmissions backed off during the outage: give BGP time to hear keepalives
    # again, or the next run's hold timer runs out early and moves the routes itself
    time.sleep(SETTLE)
    return moved - t0, (hooks[0] - t0 if hooks else None)


def run(probe: bool, how: str, repeat: int, give_up: float) -> list[tuple[float, float | None]]:
    work = Path(tempfile.mkdtemp(prefix="vtb-bench-ipsec-"))
    stack = ipsec.build(work, PREFIXES, give_up=give_up, tunnel={"hold_down": 1.0},
                        probe={"enabled": probe})
    try:
        ipsec.wait_routes_via(stack.topology, PREFIXES, "ipsec0", 100, timeout=60)
        time.sleep(2.0)
        return [one(stack, how) for _ in range(repeat)]
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--give-up", type=float, default=ipsec.LAB_GIVE_UP,
                    help="DPD gives up this many seconds after its request (default: %(default)s)")
    args = ap.parse_args()
    why = ipsec.available() or lab.netns_usable()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    lab.cleanup_stale()
    delay, _ = ipsec.aws.dpd_timers(ipsec.lab_vpn(ipsec.IpsecTopology("x")).tunnels[0])
    print(f"DPD: dpd_delay {delay} s, gives up {args.give_up} s after a request; "
          f"{args.repeat} runs each")
    dpd = run(False, "ipsec", args.repeat, args.give_up)
    total = [d for d, _ in dpd]
    hook = [h for d, h in dpd if h is not None and h <= d]
    vtibgp = [d - h for d, h in dpd if h is not None and h <= d]
    if len(hook) < len(dpd):
        print(f"      {len(dpd) - len(hook)} run(s) moved before any down-client (not DPD: "
              f"BGP's hold timer?)")
    print(f"dpd   (UDP 500/4500 dropped, probe off): drop -> routes moved "
          f"{', '.join(f'{d:.2f}' for d in total)} s (median {statistics.median(total):.2f})")
    if hook:
        print(f"      drop -> down-client hook start: median {statistics.median(hook):.2f} s; "
              f"hook start -> routes moved: median {statistics.median(vtibgp) * 1000:.0f} ms "
              f"(max {max(vtibgp) * 1000:.0f})")
    prb = [d for d, _ in run(True, "blackhole", args.repeat, args.give_up)]
    print(f"probe (ESP dropped, IKE alive, probe 0.2 s x 3): drop -> routes moved "
          f"{', '.join(f'{d:.2f}' for d in prb)} s (median {statistics.median(prb):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
