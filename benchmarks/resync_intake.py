#!/usr/bin/env python3
"""The daemon's own cost of taking in ExaBGP's `show adj-rib in extensive` answer, offline.

No ExaBGP, no kernel, no root: N answer lines of one established peer (the format of ExaBGP
5.0.15, alike but for the prefix, as a full table's UPDATEs give them) go

  daemon   through Daemon._process in DRAIN_MAX-line batches (session, core, a writer that
           accepts everything), as the loop takes them from the reader thread
  session  through ExabgpSession.receive alone (answer lines to paths, no core)
  feed     through AdjRibReader.feed alone (the parser)

and it prints µs per line for each (best of --repeat), and each layer's share of the
daemon's time. restart.py measures the same answer in situ, against ExaBGP alone; this
tells whether the daemon could be what the answer waits for.

    python benchmarks/resync_intake.py                  # 100,000 lines, best of 3
    python benchmarks/resync_intake.py --lines 1000000 --repeat 1
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # pipeline.py's NullWriter

from pipeline import NullWriter

from vtibgp.config.schema import parse
from vtibgp.exabgp.parse import AdjRibReader
from vtibgp.exabgp.session import ExabgpSession
from vtibgp.shell.daemon import DRAIN_MAX, Daemon

PEER, LOCAL = "169.254.10.1", "169.254.10.2"


def answer(n: int) -> list[bytes]:
    """The summary's answer (one established peer), then n adj-rib-in lines, each ended."""
    lines = [b"Peer            AS        up/down state       |     #sent     #recvd\n",
             f"{PEER:<15} 64512   0:01:00    established         2          7\n".encode(),
             b"done\n"]
    lines += [(f"neighbor {PEER} local-ip {LOCAL} local-as 65000 peer-as 64512 router-id "
               f"{LOCAL} family-allowed in-open ipv4 unicast {20 + (i >> 16)}.{i >> 8 & 255}."
               f"{i & 255}.0/24 next-hop {PEER} origin igp as-path ( 64512 )\n").encode()
              for i in range(n)]
    return [*lines, b"done\n"]


def asking_daemon() -> Daemon:
    cfg = parse({"peers": [{"address": PEER, "interface": "vti01"}],
                 "metrics": {"listen": None}, "control": {"socket": None},
                 "on_exit": "retain", "kernel": {"reconcile_interval": 0}}, "bench")
    daemon = Daemon(cfg, NullWriter(), None)  # type: ignore[arg-type]
    daemon.session.resync()  # asked: the answer's lines are taken as its answer
    daemon.session.take_commands()
    return daemon


def timed_daemon(lines: list[bytes]) -> tuple[float, int]:
    daemon = asking_daemon()
    items: list[tuple[str, float, object]] = [("line", 0.0, raw) for raw in lines]
    gc.collect()
    t0 = time.perf_counter()
    for i in range(0, len(items), DRAIN_MAX):
        daemon._process(items[i:i + DRAIN_MAX])
    took = time.perf_counter() - t0
    return took, daemon.core.path_count(PEER)


def timed_session(lines: list[bytes]) -> tuple[float, int]:
    session = ExabgpSession()
    session.resync()
    session.take_commands()
    paths = 0
    t0 = time.perf_counter()
    for raw in lines:
        got = session.receive(raw, 0.0)
        paths += sum(len(getattr(ev, "prefixes", ())) for ev in got.replayed)
    return time.perf_counter() - t0, paths


def timed_feed(lines: list[bytes]) -> tuple[float, int]:
    texts = [raw.decode().strip() for raw in lines[3:-1]]
    reader = AdjRibReader("5.0.0")
    paths = 0
    t0 = time.perf_counter()
    for text in texts:
        paths += sum(len(ann.prefixes) for ann in reader.feed(text))
    paths += sum(len(ann.prefixes) for ann in reader.flush())
    return time.perf_counter() - t0, paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.lines
    lines = answer(n)
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, fn in (("daemon", timed_daemon), ("session", timed_session),
                         ("feed", timed_feed)):
            took, paths = fn(lines)
            if paths != n:
                raise RuntimeError(f"{name}: {paths} paths taken in, {n} answered")
            best[name] = min(best.get(name, took), took)
    print(f"{n:,} `show adj-rib in extensive` lines of one peer, best of {args.repeat}:")
    for name, took in best.items():
        print(f"  {name:8s} {took:6.3f} s  {took / n * 1e6:5.2f} µs/line  "
              f"{took / best['daemon']:5.2f} of the daemon's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
