#!/usr/bin/env python3
"""End to end with real daemons (issue 7, target 3): N prefixes announced by BIRD 2 over the
veth "tunnel" vti01 to the real ExaBGP running vtibgp, until the last route is in the kernel,
against ExaBGP alone delivering the same prefixes to a process that only reads its stdin;
BIRD 2 and FRR installing the same prefixes in the same setup, beside it.

For each receiver, in a fresh pair of namespaces (``vtibgp-bench-<pid>x<hex>-gw`` / ``-aws``,
joined by vti01 <-> tun1 with the lab's addresses):

  reader  ExaBGP (the venv's 5.0) with a tiny API process that counts the "nlri" it reads and
          stamps the time the N-th arrives (CLOCK_MONOTONIC, shared by every process)
  vtibgp  ExaBGP running ``vtibgp run`` (one peer, vti01, defaults but on_exit: retain)
  bird    BIRD 2: BGP into master4, its kernel protocol exporting to the main table
  frr     FRR: bgpd + zebra (skipped with a message if FRR is not installed)

The announcer is BIRD 2 in the aws namespace: N blackhole /24s from 20.0.0.0 with the same
attributes (about 1,000 per UPDATE) in a static protocol that starts disabled. Once the
session is Established and the receiver has settled, ``birdc enable feed``: the clock starts
just before it (the peer starts sending) and stops when the receiver's N-th route appears in
the gateway namespace's main table, as seen by a netlink listener subscribed to route
notifications (its own thread in this process; a kernel-filtered dump confirms the count
afterwards). The reader's clock stops at its own stamp. The vtibgp ratio (target <= 1.10) is
its median divided by the reader's median.

Root only. Everything made is removed at the end, also on error or Ctrl-C.

    .venv/bin/python benchmarks/end_to_end.py                    # 100,000 prefixes, 5 runs each
    .venv/bin/python benchmarks/end_to_end.py --quick            # 10,000 prefixes, 1 run each
    .venv/bin/python benchmarks/end_to_end.py --prefixes 50000 --repeat 5 --receivers reader,vtibgp
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
import yaml

from vtibgp.lab import parts as lab

KINDS = ("reader", "vtibgp", "bird", "frr")
TARGET_RATIO = 1.10

READER_SRC = """\
import os, sys, time
# Counts the prefixes ExaBGP delivers; stamps (CLOCK_MONOTONIC) the session's "up", the first
# prefix and the N-th. Reads until EOF, as an API process must.
want, out = int(sys.argv[1]), sys.argv[2]
seen, pending, stamps = 0, b"", {}

def stamp(key, now):
    if key not in stamps:
        stamps[key] = now
        with open(out + ".tmp", "w") as f:
            f.write("".join(f"{k} {v:.6f}\\n" for k, v in stamps.items()))
        os.replace(out + ".tmp", out)

while chunk := os.read(0, 1 << 20):
    now = time.monotonic()
    pending += chunk
    end = pending.rfind(b"\\n") + 1
    if not end:
        continue
    lines, pending = pending[:end], pending[end:]
    if b'"state": "up"' in lines:
        stamp("up", now)
    got = lines.count(b'"nlri"')
    if got:
        seen += got
        stamp("first", now)
        if seen >= want:
            stamp("last", now)
"""


@dataclass
class Run:
    kind: str
    total: float | None  # from the feed's enable to the N-th route (reader: N-th prefix)
    first: float | None
    cpu: dict[str, float]  # CPU seconds per process (kind) in the gateway namespace meanwhile
    notes: list[str] = field(default_factory=list)
    profile: Path | None = None


def exabgp_version(exabgp: str) -> str:
    res = subprocess.run([exabgp, "version"], capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    m = re.search(r"ExaBGP\s*:\s*(\S+)", res.stdout)
    return m.group(1) if m else "?"


def bird_version() -> str:
    res = subprocess.run(["bird", "--version"], capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    m = re.search(r"version\s+(\S+)", res.stdout + res.stderr)
    return m.group(1) if m else "?"


def read_stamps(path: Path) -> dict[str, float]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out[key] = float(value)
    return out


class Receiver:
    """One receiver in the gateway namespace: started, then asked whether it is alive."""

    def __init__(self, kind: str, topo: c.BenchTopology, work: Path, n: int,
                 args: argparse.Namespace) -> None:
        self.kind = kind
        self.stamps = work / "reader.stamps"
        self.gateway: lab.ExaBGPGateway | None = None
        self.daemon: c.BirdReceiver | c.FrrReceiver | None = None
        self.proto = c.PROTO_BGP
        self.profile: Path | None = None
        if kind == "reader":
            script = work / "reader.py"
            script.write_text(READER_SRC)
            cmd = [sys.executable, str(script), str(n), str(self.stamps)]
            self.gateway = lab.ExaBGPGateway(topo, cmd, work / "exabgp", exabgp=args.exabgp,
                                             hold_time=args.hold_time, tunnels=(1,),
                                             process_name="reader",
                                             env=dict(args.exabgp_env))
        elif kind == "vtibgp":
            cfg = work / "vtibgp.yaml"
            cfg.write_text(yaml.safe_dump({
                "peers": [{"address": c.T1.aws_v4, "interface": c.T1.gw_dev}],
                "on_exit": "retain",  # the namespace goes anyway: no withdraw at the end
                "control": {"socket": str(work / "vtibgp.sock")},
            }, sort_keys=False))
            cmd = [sys.executable, "-m", "vtibgp", "run", "--config", str(cfg)]
            if args.profile:
                self.profile = work / "vtibgp.prof"
                cmd[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
            env = dict(args.exabgp_env)
            if args.vtibgp_path:
                env["PYTHONPATH"] = args.vtibgp_path
            self.gateway = lab.ExaBGPGateway(topo, cmd, work / "exabgp", exabgp=args.exabgp,
                                             hold_time=args.hold_time, tunnels=(1,), env=env)
        elif kind == "bird":
            self.daemon = c.BirdReceiver(topo, work / "bird", args.hold_time)
            self.proto = self.daemon.proto
        else:
            self.daemon = c.FrrReceiver(topo, work / "frr", args.hold_time)
            self.proto = self.daemon.proto
        if self.gateway is not None:
            self.gateway.start()

    def alive(self) -> bool:
        if self.gateway is not None:
            if not self.gateway.running():
                raise lab.HarnessError(f"ExaBGP exited:\n{lab.tail(self.gateway.log_text())}")
            return True
        assert self.daemon is not None
        return self.daemon.ready()

    def log_tail(self) -> str:
        if self.gateway is not None:
            return lab.tail(self.gateway.log_text())
        assert self.daemon is not None
        return self.daemon.log_tail()

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.daemon is not None:
            self.daemon.stop()


def run_once(kind: str, nets: list[str], args: argparse.Namespace, work: Path) -> Run:
    n = len(nets)
    work.mkdir(parents=True)
    topo = c.BenchTopology()
    with contextlib.ExitStack() as stack:
        topo.up()
        stack.callback(topo.down)
        announcer = c.BirdAnnouncer(topo, nets, work / "announcer", hold_time=args.hold_time)
        stack.callback(announcer.stop)
        recv = Receiver(kind, topo, work, n, args)
        stack.callback(recv.stop)
        c.wait_for(lambda: recv.alive() and announcer.established(), 60,
                   f"the BGP session of {kind}")
        if kind == "reader":
            c.wait_for(lambda: "up" in read_stamps(recv.stamps), 10, "the reader's 'up'")
        time.sleep(args.settle)
        recv.alive()
        watch = None if kind == "reader" else c.RouteWatch(topo.gw, recv.proto, target=n)
        deadline = args.timeout
        cpu0 = c.ns_cpu(topo.gw)
        t0 = time.monotonic()
        announcer.send()
        notes: list[str] = []
        try:
            while True:
                if watch is None:
                    stamps = read_stamps(recv.stamps)
                    if "last" in stamps:
                        end, first = stamps["last"], stamps.get("first")
                        break
                    time.sleep(0.02)
                elif watch.overflowed or (watch.reached.wait(0.25)
                                          and c.count_routes(topo.gw, recv.proto) < n):
                    # events were lost, or some were replaces of routes already there: the
                    # kernel's own count decides from here on
                    notes.append("finish seen by dump polling (the listener "
                                 + ("overflowed)" if watch.overflowed else "saw replaces)"))
                    c.wait_for(lambda: c.count_routes(topo.gw, recv.proto) >= n,
                               deadline - (time.monotonic() - t0), "every route (dump poll)",
                               interval=0.05)
                    end, first = time.monotonic(), watch.first
                    break
                elif watch.reached.is_set():
                    assert watch.reached_at is not None
                    end, first = watch.reached_at, watch.first
                    break
                recv.alive()
                if time.monotonic() - t0 > deadline:
                    have = watch.count() if watch else read_stamps(recv.stamps)
                    raise TimeoutError(f"{kind}: not done after {deadline:g} s ({have})\n"
                                       f"{recv.log_tail()}")
            cpu = c.cpu_delta(cpu0, c.ns_cpu(topo.gw))
        finally:
            if watch is not None:
                watch.stop()
        if watch is not None:
            kernel = c.count_routes(topo.gw, recv.proto)
            if kernel != n:
                notes.append(f"kernel holds {kernel:,} routes, not {n:,}")
            if watch.deletes:
                notes.append(f"{watch.deletes} route deletions seen during the install")
        if recv.profile is not None:
            notes.append("vtibgp ran under cProfile: its times are not representative")
    return Run(kind, end - t0, None if first is None else first - t0, cpu, notes, recv.profile)


def show_profile(path: Path) -> None:
    import pstats

    if not path.exists():
        c.say(f"(no profile written at {path})")
        return
    c.say(f"\nvtibgp's profile ({path}), top functions by own time:")
    pstats.Stats(str(path), stream=sys.stdout).sort_stats("tottime").print_stats(25)


def fmt(value: float | None, spec: str = "7.2f") -> str:
    return "-" if value is None else format(value, spec)


def report(runs: list[Run], n: int, labels: dict[str, str], args: argparse.Namespace) -> None:
    c.say(f"\nend to end, {n:,} prefixes announced by BIRD {bird_version()} over vti01; "
          f"seconds from `birdc enable feed` (the peer starts sending); median of "
          f"{args.repeat} run(s); load average now {c.load_text()}")
    head = (f"{'receiver':44s} {'first':>7s} {'all in':>7s} {'prefixes/s':>11s} "
            f"{'vs alone':>8s}  {'runs':17s}  CPU s (medians)")
    c.say(head)
    c.say("-" * len(head))
    med: dict[str, float | None] = {}
    for kind in KINDS:
        mine = [r for r in runs if r.kind == kind]
        if not mine:
            continue
        totals = [r.total for r in mine if r.total is not None]
        med[kind] = c.median(totals)
    base = med.get("reader")
    for kind in KINDS:
        mine = [r for r in runs if r.kind == kind]
        if not mine:
            continue
        total = med[kind]
        first = c.median([r.first for r in mine if r.first is not None])
        roles = sorted({k for r in mine for k in r.cpu})
        split = {k: c.median([r.cpu.get(k, 0.0) for r in mine]) or 0.0 for k in roles}
        cpu = ", ".join(f"{k} {v:.1f}" for k, v in split.items() if v >= 0.05) or "-"
        rate = f"{n / total:11,.0f}" if total else f"{'-':>11s}"
        ratio = f"{total / base:8.2f}" if total and base else f"{'-':>8s}"
        each = " ".join(fmt(r.total, ".2f") for r in mine)
        c.say(f"{labels[kind]:44s} {fmt(first)} {fmt(total)} {rate} {ratio}  {each:17s}  {cpu}")
        for note in sorted({note for r in mine for note in r.notes}):
            c.say(f"    note: {note}")
    vt = med.get("vtibgp")
    if vt and base:
        paired = [v.total / r.total for r, v in zip(
            [r for r in runs if r.kind == "reader"], [r for r in runs if r.kind == "vtibgp"],
            strict=False) if v.total and r.total]
        verdict = "met" if vt / base <= TARGET_RATIO else "MISSED"
        if n != 100_000:
            verdict += f" at {n:,}; the target is set at 100,000"
        pm = c.median(paired)
        c.say(f"\nvtibgp / ExaBGP alone = {vt / base:.3f} (target <= {TARGET_RATIO:.2f}: "
              f"{verdict}); per run (vtibgp run k / reader run k): "
              f"{' '.join(f'{p:.3f}' for p in paired)}, median {fmt(pm, '.3f')}")
    c.say("first / all in: first and last route in the gateway's kernel (the reader: first and "
          "N-th prefix read from ExaBGP);\nCPU s: every process in the gateway namespace "
          "(ExaBGP and its API process; bird; bgpd + zebra) from the enable to the last route")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    c.daemon_options(ap, timeout_help="per run (s)", profile_help="run vtibgp under "
                     "cProfile and print where its time goes (slows it)")
    ap.add_argument("--quick", action="store_true", help="10,000 prefixes, one run each")
    ap.add_argument("--repeat", type=int, default=None, help="runs per receiver (default 5)")
    ap.add_argument("--receivers", default=",".join(KINDS), help="comma list of: "
                    + ", ".join(KINDS))
    ap.add_argument("--exabgp-env", metavar="KEY=VALUE", action="append", default=[],
                    type=lambda kv: tuple(kv.split("=", 1)) if "=" in kv else
                    ap.error(f"--exabgp-env: KEY=VALUE, not {kv!r}"),
                    help="an ExaBGP setting for the reader's and vtibgp's ExaBGP, e.g. "
                    "exabgp.log.enable=false (repeatable; on top of the lab's)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between session up and the feed (default 1)")
    args = ap.parse_args()
    n = args.prefixes or (10_000 if args.quick else 100_000)
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.timeout = args.timeout or max(60.0, n / 1000)
    kinds = [k.strip() for k in args.receivers.split(",") if k.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        ap.error(f"unknown receiver(s): {', '.join(sorted(unknown))}")
    problem = c.daemons_missing(args.exabgp)
    if problem:
        print(f"end_to_end.py: {problem}", file=sys.stderr)
        return 2
    frr = c.frr_version()
    if "frr" in kinds and frr is None:
        c.say("FRR: skipped: bgpd/zebra not found in /usr/lib/frr (apt-get install frr)")
        kinds.remove("frr")
    exa = exabgp_version(args.exabgp)
    labels = {"reader": f"ExaBGP {exa} -> stdin reader (no kernel)",
              "vtibgp": f"ExaBGP {exa} + vtibgp",
              "bird": f"BIRD {bird_version()} (bgp + kernel protocol)",
              "frr": f"FRR {frr} (bgpd + zebra)"}
    c.sigterm_as_interrupt()
    for ns in c.cleanup_stale():
        c.say(f"removed stale namespace {ns}")
    nets = c.prefixes(n)
    work = Path(tempfile.mkdtemp(prefix="vtibgp-bench-e2e-"))
    c.say(f"end_to_end: {n:,} prefixes, receivers {', '.join(kinds)}, {args.repeat} run(s) each; "
          f"{os.cpu_count()} CPUs, load average {c.load_text()}; work dir {work}")
    runs: list[Run] = []
    rc = 0
    try:
        for rep in range(args.repeat):
            for kind in kinds:
                run = run_once(kind, nets, args, work / f"{rep + 1}-{kind}")
                runs.append(run)
                cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(run.cpu.items()) if v >= 0.05)
                c.say(f"run {rep + 1} {kind:7s} first {fmt(run.first)} s  all {fmt(run.total)} s"
                      f"  CPU s: {cpu or '-'}  load {c.load_text()}"
                      + "".join(f"  [{note}]" for note in run.notes))
                if run.profile is not None:
                    show_profile(run.profile)
    except (lab.HarnessError, TimeoutError) as exc:
        print(f"end_to_end.py: {exc}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt as exc:
        print(f"{Path(__file__).name}: interrupted ({exc}); cleaned up", file=sys.stderr)
        rc = 130
    finally:
        if args.keep_logs:
            c.say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if runs:
        report(runs, n, labels, args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
