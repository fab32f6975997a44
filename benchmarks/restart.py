#!/usr/bin/env python3
"""Restart with N routes in the kernel (issue 7, target 6): a restarted plugin reconciles
without deleting or re-adding any of its routes, in under 5 s.

Builds the benchmark namespaces (``vtibgp-bench-<pid>x<hex>-gw`` / ``-aws``, the veth "tunnel"
vti01 <-> tun1), has BIRD 2 announce N /24s to the real ExaBGP (the venv's 5.0) running
``vtibgp run`` (on_exit: retain, the setting a restartable gateway uses), and waits until all
N routes are in the kernel and vtibgp has logged its sync. Then, for each way of stopping it

  kill   SIGKILL: a crash
  term   SIGTERM: a clean stop that leaves the routes (on_exit: retain)

it stops the daemon and follows the new one through ExaBGP's log (polled every 10 ms; each
line carries the daemon's pid). ExaBGP's process is `vtibgp run`'s relay
(vtibgp.shell.supervisor); the daemon is its child, and the relay starts the next one
(0.25 s after the first death, doubling for each daemon that dies within 60 s of its start:
a repeated run shows it in "respawn"). With --no-relay (and --profile) the daemon is ExaBGP's
process and ExaBGP respawns it. Stages: respawned (its pid appears), kernel read ("N routes of ours
already in the kernel"), ExaBGP's adj-rib-in loaded (the resync), and reconciled ("sync
complete": from then on a route nobody confirmed would be removed). A netlink listener in the
gateway namespace, subscribed to route notifications, counts every add/replace and delete of
a proto-186 route from just before the stop until --settle seconds after the sync; a dump
before and after compares the routes (prefix, length, metric). Target: reconciled < 5 s after
the stop, 0 adds, 0 deletes.

ExaBGP respawns a process at most 5 times in 64 s (then it exits): the script waits when
needed. Root only; everything made is removed at the end, also on error or Ctrl-C.

    .venv/bin/python benchmarks/restart.py                      # 100,000 routes, kill and term
    .venv/bin/python benchmarks/restart.py --quick              # 10,000 routes
    .venv/bin/python benchmarks/restart.py --prefixes 200000 --how kill --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
import yaml

from vtibgp.lab import parts as lab
from vtibgp.shell.supervisor import Backoff

HOW = {"kill": signal.SIGKILL, "term": signal.SIGTERM}
TARGET_S = 5.0
PROBE_SRC = """\
import os, sys, time
# Waits for the N prefixes, then asks ExaBGP for its adj-rib-in as vtibgp does at start and
# stamps (CLOCK_MONOTONIC) the question and the `done`, with its own CPU seconds and those of
# ExaBGP (its parent) in between; keeps reading until EOF.
want, out, settle = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
base = (0.0, 0.0)
seen, pending, asked, lines = 0, b"", None, 0
while chunk := os.read(0, 1 << 20):
    pending += chunk
    end = pending.rfind(b"\\n") + 1
    if not end:
        continue
    block, pending = pending[:end], pending[end:]
    if asked is None:
        seen += block.count(b'"nlri"')
        if seen >= want:
            time.sleep(settle)
            base = (cpu(os.getppid()), time.process_time())
            asked = time.monotonic()
            sys.stdout.write("show adj-rib in extensive\\n")
            sys.stdout.flush()
        continue
    for line in block.splitlines():
        if line.strip() in (b"done", b"error"):
            with open(out + ".tmp", "w") as f:
                f.write(f"asked {asked}\\nanswered {time.monotonic()}\\nlines {lines}\\n"
                        f"exabgp_cpu {cpu(os.getppid()) - base[0]}\\n"
                        f"probe_cpu {time.process_time() - base[1]}\\n")
            os.replace(out + ".tmp", out)
            asked = float("inf")
        else:
            lines += 1
"""
STAGES = (
    ("kernel read", re.compile(r"start: (\d+) routes of ours already in the kernel")),
    ("asked", re.compile(r"resync: asking ExaBGP")),
    ("adj-rib-in loaded", re.compile(r"resync: ExaBGP's adj-rib-in loaded")),
    ("grace ran out", re.compile(r"start: grace timer \(.*\) ran out")),
    ("reconciled", re.compile(r"start: sync complete; (\d+) unconfirmed routes removed")),
)


@dataclass
class Restart:
    how: str
    respawned: float | None = None  # seconds after the stop signal
    stages: dict[str, float] = field(default_factory=dict)
    found: int | None = None  # routes the new plugin found in the kernel
    removed: int | None = None  # unconfirmed routes it removed at the sync
    adds: int = 0
    deletes: int = 0
    same: bool = False  # the routes after == the routes before
    overflowed: bool = False
    cpu: dict[str, float] = field(default_factory=dict)  # CPU s from the stop to the sync
    notes: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # the new plugin's lines, stamped


class LogTail:
    """New lines of a growing log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        return data[:cut].decode(errors="replace").splitlines()


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.n = args.prefixes
        self.work = work
        self.topo = c.BenchTopology()
        self.announcer: c.BirdAnnouncer | None = None
        self.gw: lab.ExaBGPGateway | None = None
        self.deaths: list[float] = []

    def build(self) -> None:
        self.topo.up()
        self.announcer = c.BirdAnnouncer(self.topo, c.prefixes(self.n), self.work / "announcer",
                                         hold=False, hold_time=self.args.hold_time)
        cfg = self.work / "vtibgp.yaml"
        cfg.write_text(yaml.safe_dump({
            "peers": [{"address": c.T1.aws_v4, "interface": c.T1.gw_dev}],
            "on_exit": "retain",
            "control": {"socket": str(self.work / "vtibgp.sock")},
        }, sort_keys=False))
        cmd = [sys.executable, "-m", "vtibgp", "run", "--config", str(cfg)]
        if not self.args.relay:
            cmd.append("--no-supervisor")
        if self.args.profile:  # every instance; the file holds the last one's (the restarted)
            cmd[1:1] = ["-m", "cProfile", "-o", str(self.work / "vtibgp.prof")]
        env = self.exabgp_env()
        if self.args.vtibgp_path:
            env["PYTHONPATH"] = self.args.vtibgp_path
        self.gw = lab.ExaBGPGateway(self.topo, cmd, self.work / "exabgp",
                                    exabgp=self.args.exabgp, hold_time=self.args.hold_time,
                                    tunnels=(1,), env=env)
        t = time.monotonic()
        self.gw.start()
        self.gw.wait_for(lambda: c.count_routes(self.topo.gw, c.PROTO_BGP) >= self.n,
                         self.args.timeout, what=f"{self.n:,} routes installed by vtibgp")
        self.gw.wait_for(lambda: "start: sync complete" in self.gw.log_text() if self.gw
                         else False, self.args.timeout, what="vtibgp's sync")
        c.say(f"{self.n:,} routes installed by vtibgp {time.monotonic() - t:.1f} s after "
              f"ExaBGP's start")

    def exabgp_env(self) -> dict[str, str]:
        """ExaBGP's settings: ``api.chunk`` as the lab sets it (1,000 lines per reactor turn
        when it answers `show adj-rib in`, as in vtibgp's systemd unit; ExaBGP's own default
        is 1) unless --chunk says otherwise."""
        return {"exabgp.api.chunk": str(self.args.chunk)} if self.args.chunk else {}

    def reference(self) -> float:
        """ExaBGP alone: a fresh ExaBGP (same settings) whose API process only waits for the N
        prefixes, then asks `show adj-rib in extensive` (what vtibgp asks at start) and reads
        the answer. Seconds from the question to ExaBGP's `done`."""
        assert self.gw is not None
        self.gw.stop()
        self.gw = None
        script = self.work / "probe.py"
        script.write_text(PROBE_SRC)
        stamps = self.work / "probe.stamps"
        cmd = [sys.executable, str(script), str(self.n), str(stamps), str(self.args.settle)]
        self.gw = lab.ExaBGPGateway(self.topo, cmd, self.work / "exabgp-probe",
                                    exabgp=self.args.exabgp, hold_time=self.args.hold_time,
                                    tunnels=(1,), process_name="probe", env=self.exabgp_env())
        self.gw.start()
        got: dict[str, float] = {}

        def answered() -> bool:
            with contextlib.suppress(FileNotFoundError):
                got.update((k, float(v)) for k, v in
                           (ln.split() for ln in stamps.read_text().splitlines()))
            return "answered" in got

        self.gw.wait_for(answered, self.args.timeout + 60, what="ExaBGP's answer to the probe")
        if got.get("lines", 0) < self.n:
            c.say(f"  note: the probe read {got.get('lines', 0):.0f} lines, not {self.n:,}")
        c.say(f"  reference CPU s during the answer: exabgp {got.get('exabgp_cpu', 0):.2f}, "
              f"the reading process {got.get('probe_cpu', 0):.2f}")
        return got["answered"] - got["asked"]

    def relays(self) -> list[int]:
        """The pids ExaBGP started (the wrapper writes each): the relays, or with
        ``--no-relay`` the daemons themselves."""
        assert self.gw is not None
        return self.gw.plugin_pids()

    def daemons(self) -> list[int]:
        """The live daemon processes, oldest first: each relay's children (``vtibgp run
        --no-supervisor``), or the processes ExaBGP started when there is no relay."""
        relays = [p for p in self.relays() if lab.pid_alive(p)]
        if not self.args.relay:
            return relays
        return sorted(p for r in relays for p in children(r))

    def plugin(self) -> int:
        """The daemon to stop: the newest one alive."""
        assert self.gw is not None
        pids = self.daemons()
        if not pids:
            raise lab.HarnessError(f"no running daemon (ExaBGP's processes {self.relays()})"
                                   f"\n{lab.tail(self.gw.log_text())}")
        return pids[-1]

    def respawn_budget(self) -> None:
        """ExaBGP gives up (and exits) after 5 process deaths within 64 s: stay below."""
        now = time.monotonic()
        recent = [t for t in self.deaths if now - t < 66]
        if len(recent) >= 4:
            wait = 66 - (now - recent[0])
            c.say(f"  (waiting {wait:.0f} s: ExaBGP respawns at most 5 times in 64 s)")
            time.sleep(wait)

    def relay_settle(self) -> None:
        """The relay waits 0.25 s before starting the next daemon, doubling for each one that
        died within Backoff.settled (60 s) of its start: each run waits until its daemon has
        lived that long, so that every run sees the first delay, as a lone crash does."""
        lived = time.monotonic() - self.deaths[-1]
        if lived < Backoff.settled + 1:
            wait = Backoff.settled + 1 - lived
            c.say(f"  (waiting {wait:.0f} s: the relay restarts a daemon that lived less than "
                  f"{Backoff.settled:g} s later each time; --no-relay-wait to skip)")
            time.sleep(wait)

    def measure(self, how: str) -> Restart:
        assert self.gw is not None
        gw_ns = self.topo.gw
        res = Restart(how)
        if not self.args.relay:  # the relay's own restarts are not ExaBGP's
            self.respawn_budget()
        elif self.deaths and self.args.relay_wait:
            self.relay_settle()
        # steady state: every route in, then the plugin left alone for a moment
        try:
            self.gw.wait_for(lambda: c.count_routes(gw_ns, c.PROTO_BGP) == self.n,
                             self.args.timeout, what=f"{self.n:,} routes before the stop")
        except TimeoutError:
            res.notes.append("not in steady state before the stop (timed out waiting for "
                             "every route)")
        time.sleep(self.args.settle)
        before = set(c.dump_routes(gw_ns, c.PROTO_BGP))
        if len(before) != self.n:
            res.notes.append(f"{len(before):,} routes before the stop, not {self.n:,}")
        old = self.plugin()
        relays = set(self.relays())  # the relays' own log lines are not the daemon's
        log = LogTail(self.gw.log_path)
        watch = c.RouteWatch(gw_ns, c.PROTO_BGP, base=len(before))
        exabgp, relay = self.gw.pid, (self.relays() or [0])[-1]
        cpu0 = {"exabgp": cpu_seconds(exabgp), "relay": cpu_seconds(relay)}
        try:
            t0 = time.monotonic()
            os.kill(old, HOW[how])
            self.deaths.append(t0)
            new: int | None = None
            synced: float | None = None
            while synced is None or time.monotonic() - synced < self.args.settle:
                now = time.monotonic()
                if now - t0 > self.args.timeout:
                    raise TimeoutError(f"{how}: not reconciled after {self.args.timeout:g} s\n"
                                       f"{lab.tail(self.gw.log_text())}")
                if not self.gw.running():
                    raise lab.HarnessError(f"ExaBGP exited\n{lab.tail(self.gw.log_text())}")
                if new is None:
                    pids = [p for p in self.daemons() if p != old]
                    if pids:
                        new, res.respawned = pids[-1], now - t0
                    if self.args.relay:
                        relays.update(self.relays())
                for line in log.lines():
                    if new is None:
                        m = re.match(r"vtibgp\[(\d+)\]", line)
                        if not m or int(m.group(1)) in (old, *relays):
                            continue
                        new, res.respawned = int(m.group(1)), now - t0
                    if not line.startswith(f"vtibgp[{new}]"):
                        continue
                    res.log.append(f"{now - t0:7.2f}  {line}")
                    for stage, pattern in STAGES:
                        m = pattern.search(line)
                        if m and stage not in res.stages:
                            res.stages[stage] = now - t0
                            if stage == "kernel read":
                                res.found = int(m.group(1))
                            elif stage == "reconciled":
                                res.removed = int(m.group(1))
                                synced = now
                                res.cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in
                                           (("exabgp", exabgp), ("relay", relay))}
                                res.cpu["daemon"] = cpu_seconds(new) if new else 0.0
                                if not self.args.relay:
                                    del res.cpu["relay"]
                time.sleep(0.01)
        finally:
            watch.stop()
        res.adds, res.deletes, res.overflowed = watch.adds, watch.deletes, watch.overflowed
        after = set(c.dump_routes(gw_ns, c.PROTO_BGP))
        res.same = after == before
        if not res.same:
            res.notes.append(f"routes differ: {len(before - after):,} gone, "
                             f"{len(after - before):,} new")
        if res.found is not None and res.found != len(before):
            res.notes.append(f"the new plugin found {res.found:,} of {len(before):,} routes")
        if "grace ran out" in res.stages:
            res.notes.append("startup.grace_time ran out before ExaBGP's adj-rib-in answer was "
                             "in: the routes not yet confirmed were removed")
        if res.adds or res.deletes or not res.same or "reconciled" not in res.stages:
            c.say(f"  the new plugin's log ({how}; seconds after the stop):")
            for line in res.log[:25]:
                c.say(f"  {line}")
        return res

    def close(self) -> None:
        with contextlib.ExitStack() as stack:
            stack.callback(self.topo.down)
            if self.announcer is not None:
                stack.callback(self.announcer.stop)
            if self.gw is not None:
                stack.callback(self.gw.stop)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (a scan of /proc: a few hundred reads)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:6.2f}"


def report(results: list[Restart], n: int, args: argparse.Namespace,
           reference: float | None) -> None:
    chunk = args.chunk or "1000 (the lab's and the systemd unit's setting)"
    c.say(f"\nrestart with {n:,} routes in the kernel; seconds from the stop signal, medians of "
          f"{args.repeat} run(s); churn over the whole restart + {args.settle:g} s; ExaBGP "
          f"api.chunk {chunk}; load average now {c.load_text()}")
    head = (f"{'stop':5s} {'respawn':>7s} {'kernel read':>11s} {'rib loaded':>10s} "
            f"{'(rib wait)':>10s} {'reconciled':>10s} {'adds':>6s} {'deletes':>7s} "
            f"{'same routes':>11s}  target")
    c.say(head)
    c.say("-" * len(head))
    for how in HOW:
        mine = [r for r in results if r.how == how]
        if not mine:
            continue

        def med(stage: str, rs: list[Restart] = mine) -> float | None:
            values = [r.stages[stage] for r in rs if stage in r.stages]
            return c.median(values) if len(values) == len(rs) else None

        respawn = c.median([r.respawned for r in mine if r.respawned is not None])
        waits = [r.stages["adj-rib-in loaded"] - r.stages.get("asked", r.stages["kernel read"])
                 for r in mine if "adj-rib-in loaded" in r.stages and "kernel read" in r.stages]
        done = med("reconciled")
        adds, deletes = sum(r.adds for r in mine), sum(r.deletes for r in mine)
        same = all(r.same for r in mine)
        ok = done is not None and done < TARGET_S and adds == deletes == 0 and same
        c.say(f"{how:5s} {fmt(respawn):>7s} {fmt(med('kernel read')):>11s} "
              f"{fmt(med('adj-rib-in loaded')):>10s} {fmt(c.median(waits)):>10s} "
              f"{fmt(done):>10s} {adds:6d} {deletes:7d} {'yes' if same else 'NO':>11s}  "
              f"{'met' if ok else 'MISSED'}{'' if n == 100_000 else ' (at this N)'}")
        for note in sorted({note for r in mine for note in r.notes}):
            c.say(f"    note: {note}")
        if any(r.overflowed for r in mine):
            c.say("    note: the netlink listener overflowed: the churn counts are a lower bound")
    if reference is not None:
        c.say(f"ExaBGP alone answering `show adj-rib in extensive` ({n:,} routes) to a process "
              f"that only reads: {reference:.2f} s (compare: rib wait, vtibgp's question to "
              f"the answer loaded)")
    c.say(f"target (at 100,000 routes): reconciled < {TARGET_S:g} s after the stop, 0 adds, "
          "0 deletes, same routes. adds count every RTM_NEWROUTE (a replace too)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    c.daemon_options(ap, timeout_help="per step (s)", profile_help="run vtibgp under "
                     "cProfile and print where the last restarted one spent its time (slows "
                     "it: the times are then not representative)")
    ap.add_argument("--quick", action="store_true", help="10,000 routes")
    ap.add_argument("--how", default=",".join(HOW), help="comma list of: " + ", ".join(HOW))
    ap.add_argument("--repeat", type=int, default=1, help="restarts per way of stopping")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="quiet seconds before each stop and watched after each sync (default 3)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="ExaBGP's exabgp.api.chunk: lines it writes per reactor turn when it "
                    "answers `show adj-rib in` (default: the lab's 1000; ExaBGP's own is 1)")
    ap.add_argument("--no-relay", dest="relay", action="store_false",
                    help="run the daemon as ExaBGP's process itself (`vtibgp run "
                    "--no-supervisor`): the stop goes to it and ExaBGP respawns it (default: "
                    "as deployed, ExaBGP runs the relay, the stop goes to the daemon below it "
                    "and the relay starts the next one); implied by --profile")
    ap.add_argument("--no-relay-wait", dest="relay_wait", action="store_false",
                    help="stop the next daemon at once, not after it lived the relay's 60 s "
                    "(its restart delay then doubles from run to run)")
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip timing ExaBGP alone answering the adj-rib-in question")
    args = ap.parse_args()
    args.prefixes = args.prefixes or (10_000 if args.quick else 100_000)
    if args.profile:  # the relay starts its daemon itself, out of cProfile's reach
        args.relay = False
    args.timeout = args.timeout or max(120.0, args.prefixes / 500)
    hows = [h.strip() for h in args.how.split(",") if h.strip()]
    if set(hows) - set(HOW):
        ap.error(f"--how: one or more of {', '.join(HOW)}")
    problem = c.daemons_missing(args.exabgp)
    if problem:
        print(f"restart.py: {problem}", file=sys.stderr)
        return 2
    c.sigterm_as_interrupt()
    for ns in c.cleanup_stale():
        c.say(f"removed stale namespace {ns}")
    work = Path(tempfile.mkdtemp(prefix="vtibgp-bench-restart-"))
    c.say(f"restart: {args.prefixes:,} routes, stops: {', '.join(hows)}, {args.repeat} run(s) "
          f"each; {os.cpu_count()} CPUs, load average {c.load_text()}; work dir {work}")
    bench = Bench(args, work)
    results: list[Restart] = []
    reference: float | None = None
    rc = 0
    try:
        bench.build()
        for rep in range(args.repeat):
            for how in hows:
                r = bench.measure(how)
                results.append(r)
                stages = "  ".join(f"{k} {v:.2f}" for k, v in r.stages.items())
                cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu.items())
                c.say(f"run {rep + 1} {how:4s} respawn {fmt(r.respawned)}  {stages}  adds "
                      f"{r.adds} deletes {r.deletes}  same routes {r.same}  CPU s to the sync: "
                      f"{cpu}  load "
                      f"{c.load_text()}" + "".join(f"  [{note}]" for note in r.notes))
        if args.reference:
            reference = bench.reference()
            c.say(f"reference: ExaBGP alone answers `show adj-rib in extensive` in "
                  f"{reference:.2f} s")
    except (lab.HarnessError, TimeoutError) as exc:
        print(f"restart.py: {exc}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt as exc:
        print(f"{Path(__file__).name}: interrupted ({exc}); cleaned up", file=sys.stderr)
        rc = 130
    finally:
        bench.close()
        prof = work / "vtibgp.prof"
        if args.profile and prof.exists():
            import pstats

            c.say(f"\nthe restarted vtibgp's profile ({prof}), top functions by own time:")
            pstats.Stats(str(prof), stream=sys.stdout).sort_stats("tottime").print_stats(25)
        if args.keep_logs:
            c.say(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if results:
        report(results, args.prefixes, args, reference)
    return rc


if __name__ == "__main__":
    sys.exit(main())
