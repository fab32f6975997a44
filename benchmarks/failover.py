#!/usr/bin/env python3
"""Failover time at scale: from a tunnel-down signal to every prefix routed via the other tunnel.

Builds the lab of ``vtibgp.lab.parts`` (namespaces gw/aws joined by the veth "tunnels" vti01 and
vti02, BIRD 2 as the AWS VGW, the real ExaBGP running ``vtibgp run``), has BIRD announce N
prefixes on both tunnels with tunnel 2 prepended, and waits until the gateway's kernel holds
every prefix at metric 100 via vti01 and 101 via vti02. Then, for each signal

  updown          the updown hook (`vtibgp install-hook`; --hook: another) run with libreswan's
                  environment (PLUTO_VERB=down-client, ...)
  bgp             BIRD (the VGW) ends tunnel 1's session with a Cease; the tunnel stays up
  admin           ``ip link set vti01 down``
  carrier         the peer end of the veth goes down: vti01 loses carrier (stays admin up)
  carrier-ignore  the same with net.ipv4.conf.all.ignore_routes_with_linkdown=1
  delete          ``ip link del vti01``

it measures, from just before the signalling command is started:

  all->vti02   until EVERY prefix resolves via vti02 (whatever route the kernel picks: for
               admin down and delete that is at once the old backup at metric 101)
  vtibgp@100   until every prefix resolves via vtibgp's own replacement route: proto 186,
               metric 100, dev vti02

and restores the tunnel (up / carrier on / device re-created), waiting until everything is
back (hold-down, BGP sessions, every route) before the next signal.

How resolution is observed. A thread with a netlink socket inside the gateway namespace sends
RTM_GETROUTE requests with RTM_F_FIB_MATCH (``ip route get fibmatch``: the same FIB lookup as
a forwarded packet, answered with the FIB entry it chose: device, metric, protocol), 256 per
datagram, one address inside each prefix. The kernel answers a datagram synchronously inside
send(2), so every answer is bracketed by the clock read before and after that send. For each
figure in turn it polls a sample of 32 prefixes spread over the table every 2 ms until
all of the sample are there (``--poll sample``; ``--poll full`` skips this), then sweeps every
prefix not yet there, again and again, until none is left. Each figure is reported as an
upper bound (the latest "first seen good", read after the send that saw it) and a lower bound
(the latest "still bad", read before the send that saw it): the truth lies between, and their
difference is the polling granularity: up to one sweep of the prefixes still pending (10,000
cost ~35 ms on an idle core here, ~23 ms of it the kernel's own lookups) plus, with the
sample, up to its 2 ms period. Medians of --repeat runs are printed per column.

vtibgp's side is timed from its own log: its stderr is piped through a tiny stamping relay
(this script, re-executed with --stamp-stderr) that prefixes each line with CLOCK_MONOTONIC,
so "saw" is when vtibgp logged the signal and "done" when it logged the routes moved (after
its kernel batch was acknowledged). The profile (default; --no-profile skips it) then replays
the change on vtibgp's own Daemon and kernel writer, offline, in a scratch namespace, to split
"done - saw" into decision core, coalescing, kernel apply and the rest, and times the
alternative of sending the metric-100 operations before the deletes.

Root only; no traffic leaves the namespaces; everything made is removed at the end, also on
error or Ctrl-C.

    .venv/bin/python benchmarks/failover.py                 # 10,000 prefixes
    .venv/bin/python benchmarks/failover.py --quick         # 1,000 prefixes
    .venv/bin/python benchmarks/failover.py --prefixes 50000 --repeat 3 --signals admin,delete
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

STAMP_FLAG = "--stamp-stderr"


# --------------------------------------------------------------------------- stderr stamping


def stamp_relay(path: str, argv: list[str]) -> int:
    """Run `argv` with our stdin/stdout (ExaBGP's pipes), and copy each line it writes to
    stderr both to our stderr (ExaBGP's log) and, prefixed with CLOCK_MONOTONIC, to `path`."""
    child = subprocess.Popen(argv, stderr=subprocess.PIPE)

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    assert child.stderr is not None
    with open(path, "ab", buffering=0) as out:
        for line in iter(child.stderr.readline, b""):
            out.write(b"%.6f " % time.monotonic() + line)
            with contextlib.suppress(OSError):
                sys.stderr.buffer.write(line)
                sys.stderr.buffer.flush()
    return child.wait()


if __name__ == "__main__" and len(sys.argv) > 3 and sys.argv[1] == STAMP_FLAG:
    # the relay must not pay for the imports below: it sits between ExaBGP and vtibgp
    sys.exit(stamp_relay(sys.argv[2], sys.argv[sys.argv.index("--") + 1:]))


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from vtibgp.control.client import ControlError, request  # noqa: E402
from vtibgp.kernel.writer import MultiRecv, in_netns  # noqa: E402
from vtibgp.lab import parts as lab  # noqa: E402

T1, T2 = lab.TUNNELS[1], lab.TUNNELS[2]
PROTO, METRIC = 186, 100
AIM_MS = 100.0
SAMPLE, SAMPLE_PERIOD = 32, 0.002  # the light poll before full sweeps (--poll sample)
CONNECTION = "aws-vpn-1-tunnel-1"
LIBRESWAN_ENV = {
    "PLUTO_VERB": "down-client", "PLUTO_CONNECTION": CONNECTION, "PLUTO_CONN_KIND": "CK_PERMANENT",
    "VTI_IFACE": T1.gw_dev, "VTI_ROUTING": "no", "VTI_SHARED": "no",
    "PLUTO_PEER": "203.0.113.10", "PLUTO_ME": "192.0.2.7", "PLUTO_UNIQUEID": "41",
    "PLUTO_MY_CLIENT": "0.0.0.0/0", "PLUTO_PEER_CLIENT": "0.0.0.0/0",
    "CONNMARK_IN": "100/0xffffffff", "CONNMARK_OUT": "100/0xffffffff",
}


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- prefixes


def prefixes(n: int) -> tuple[list[str], list[bytes]]:
    """N distinct prefixes inside 10.0.0.0/8 (/24s up to 65,536, else /28s) and, for each, one
    address inside it (network + 1) to look up."""
    if n > 1 << 20:
        raise SystemExit("--prefixes: at most 1,048,576")
    shift = 8 if n <= 1 << 16 else 4
    nets, probes = [], []
    for i in range(n):
        base = (10 << 24) | (i << shift)
        nets.append(f"{socket.inet_ntoa(base.to_bytes(4, 'big'))}/{32 - shift}")
        probes.append((base + 1).to_bytes(4, "big"))
    return nets, probes


# --------------------------------------------------------------------------- netlink prober

_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
RTM_NEWROUTE, RTM_GETROUTE, NLMSG_ERROR = 24, 26, 2
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_MULTIPATH = 1, 4, 6, 9
RTM_F_FIB_MATCH = 0x2000
NLM_F_REQUEST = 1
SO_RCVBUFFORCE = 33
CHUNK = 256  # lookups per datagram
SLOT = 512  # bytes per answer in the receive area
# an answer to a fib-match lookup of a single-path route, in the order the kernel writes it:
# header, rtmsg, RTA_TABLE, RTA_DST, RTA_PRIORITY, RTA_OIF
_FAST = struct.Struct("=IHHI4x 5xBxxI 4x4x HHI HHI")
_FAST_LEN = 60
Answer = tuple[int, int, int] | None  # (oif, metric, protocol); None: no route
MISSING = (-1, -1, -1)  # no answer read (never expected; counted as not observed)


def socket_in(ns: str) -> socket.socket:
    """A NETLINK_ROUTE socket living in namespace `ns` (the rest of this process does not
    move)."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                          socket.NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        s.bind((0, 0))
        return s

    return in_netns(ns, make)


class Prober:
    """Route lookups for a fixed list of addresses, by index, in batches of CHUNK."""

    def __init__(self, ns: str, addrs: Sequence[bytes]) -> None:
        self.sock = socket_in(ns)
        self.fd = self.sock.fileno()
        head = _RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, RTM_F_FIB_MATCH)
        size = _NLMSG.size + _RTMSG.size + _RTA.size + 4
        self.msgs = [_NLMSG.pack(size, RTM_GETROUTE, NLM_F_REQUEST, i, 0) + head
                     + _RTA.pack(8, RTA_DST) + a for i, a in enumerate(addrs)]
        self.batch = MultiRecv(self.fd, CHUNK, SLOT)
        self.view = self.batch.bytes
        self.overruns = 0

    def close(self) -> None:
        self.sock.close()

    def lookup(self, idx: Sequence[int]) -> tuple[float, float, dict[int, Answer]]:
        """Look up `idx` (at most CHUNK): (clock before the send, clock after it, answers).
        The kernel answers inside send(), so every lookup happened between the two, and once
        send() has returned every answer is queued: read until the queue is empty."""
        while self._read():  # answers left over from an overrun: not ours any more
            self.overruns += 1
        payload = b"".join([self.msgs[i] for i in idx])
        t1 = time.monotonic()
        self.sock.send(payload)
        t2 = time.monotonic()
        out: dict[int, Answer] = {}
        while True:
            got = self._read()
            if got == 0:
                break
            for k in range(got):
                seq, ans = self._parse(k * SLOT)
                out[seq] = ans
        if len(out) < len(idx):
            self.overruns += 1
        return t1, t2, out

    def count_not(self, n: int, want: tuple[int, int, int]) -> int:
        """How many of the first `n` prefixes do NOT resolve to `want` (oif, metric, proto)."""
        wrong = 0
        for c in range(0, n, CHUNK):
            idx = range(c, min(n, c + CHUNK))
            answers = self.lookup(idx)[2]
            wrong += sum(1 for i in idx if answers.get(i) != want)
        return wrong

    def _read(self) -> int:
        """Read what is queued, up to CHUNK answers; how many."""
        while True:
            try:
                return self.batch.recv()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1  # an overrun lost answers: those count as not observed

    def _parse(self, off: int) -> tuple[int, Answer]:
        v = self.view
        length, kind, _flags, seq = _NLMSG.unpack_from(v, off)[:4]
        if kind != RTM_NEWROUTE:
            return seq, None  # NLMSG_ERROR: no route (ENETUNREACH)
        if length == _FAST_LEN:
            _l, _k, _f, _s, proto, _tab, la, ta, metric, lb, tb, oif = _FAST.unpack_from(v, off)
            if ta == RTA_PRIORITY and tb == RTA_OIF and la == lb == 8:
                return seq, (oif, metric, proto)
        proto = v[off + _NLMSG.size + 5]
        oif = metric = 0
        pos, end = off + _NLMSG.size + _RTMSG.size, off + min(length, SLOT)
        while pos + 4 <= end:
            alen, atype = _RTA.unpack_from(v, pos)
            if alen < 4:
                break
            if atype == RTA_OIF:
                oif = struct.unpack_from("=I", v, pos + 4)[0]
            elif atype == RTA_PRIORITY:
                metric = struct.unpack_from("=I", v, pos + 4)[0]
            elif atype == RTA_MULTIPATH:
                oif = -2  # a multipath route: not "via vti02" alone
            pos += (alen + 3) & ~3
        return seq, (oif, metric, proto)


class Watch(threading.Thread):
    """Polls until every prefix resolves via the backup device (criterion A) and via
    vtibgp's metric-100 route on it (criterion B), recording for each prefix the first time
    it was seen good and the last time it was seen bad."""

    def __init__(self, prober: Prober, n: int, oif: int, *, sample_first: bool,
                 timeout: float) -> None:
        super().__init__(name="failover-watch", daemon=True)
        self.prober, self.n, self.oif = prober, n, oif
        self.sample_first, self.timeout = sample_first, timeout
        self.first: list[list[float | None]] = [[None] * n, [None] * n]  # [A, B]
        self.bad: list[list[float]] = [[-1.0] * n, [-1.0] * n]
        self.regressions = 0
        self.sweeps = 0
        self.primed = threading.Event()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def observe(self, idx: Sequence[int]) -> int:
        t1, t2, answers = self.prober.lookup(idx)
        first_a, first_b = self.first
        bad_a, bad_b = self.bad
        oif = self.oif
        changed = 0
        for i in idx:
            ans = answers.get(i, MISSING)
            if ans == MISSING:
                continue
            ok_a = ans is not None and ans[0] == oif
            ok_b = ok_a and ans is not None and ans[1] == METRIC and ans[2] == PROTO
            if ok_a:
                if first_a[i] is None:
                    first_a[i] = t2
                    changed += 1
            else:
                if first_a[i] is not None:  # good, then bad again: only the last flip counts
                    self.regressions += 1
                    first_a[i] = None
                bad_a[i] = t1
            if ok_b:
                if first_b[i] is None:
                    first_b[i] = t2
                    changed += 1
            else:
                bad_b[i] = t1
        return changed

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            sample = list(range(0, self.n, max(1, self.n // SAMPLE)))
            for which in (0, 1):  # every prefix via the backup device, then via our route
                first = self.first[which]
                if self.sample_first:
                    while any(first[i] is None for i in sample):
                        self.observe(sample)
                        self.primed.set()
                        if self.halt.is_set() or time.monotonic() > deadline:
                            return
                        time.sleep(SAMPLE_PERIOD)
                pending = [i for i in range(self.n) if first[i] is None]
                while pending:
                    for c in range(0, len(pending), CHUNK):
                        self.observe(pending[c:c + CHUNK])
                    self.sweeps += 1
                    self.primed.set()
                    if self.halt.is_set() or time.monotonic() > deadline:
                        return
                    pending = [i for i in pending if first[i] is None]
        except BaseException as exc:  # reported by the caller
            self.error = exc
            self.primed.set()

    def bounds(self, which: int, t0: float) -> tuple[float | None, float]:
        """(upper, lower) in ms after t0 for "every prefix good" by criterion `which` (0 = A,
        1 = B); upper is None if some prefix never got there."""
        firsts = self.first[which]
        if any(f is None for f in firsts):
            return None, 0.0
        upper = max(f for f in firsts if f is not None)
        lower = max(self.bad[which])
        return (upper - t0) * 1e3, max(0.0, (lower - t0) * 1e3)


# --------------------------------------------------------------------------- the lab


@dataclass
class Run:
    signal: str
    cmd_ms: float
    a: tuple[float | None, float]
    b: tuple[float | None, float]
    saw_ms: float | None
    done_ms: float | None
    sweeps: int
    regressions: int
    disturbed: list[str] = field(default_factory=list)


@dataclass
class Signal:
    name: str
    label: str
    fire: Callable[[Bench], None]
    restore: Callable[[Bench], None]
    sysctl: dict[str, int] = field(default_factory=dict)
    # vtibgp logs this once the routes moved (its batch acknowledged); None: nothing is logged
    done_log: str | None = f"tunnel {T1.gw_dev} down: routes moved off it"
    # judged from vtibgp's intake of the signal ("saw"), not from the command: the command
    # (birdc) is the peer's own work, which a real VGW does without us
    from_saw: bool = False


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n: int = args.prefixes
        self.nets, self.addrs = prefixes(self.n)
        self.work = Path(tempfile.mkdtemp(prefix="vtibgp-failover-"))
        self.sock = self.work / "ctl.sock"
        self.stamps = self.work / "vtibgp.stamped.log"
        self.topo = lab.Topology()
        self.bird: lab.BirdPeer | None = None
        self.gw: lab.ExaBGPGateway | None = None
        self.prober: Prober | None = None
        self.vtibgp = shutil.which("vtibgp", path=str(Path(sys.executable).parent)) or "vtibgp"
        # the updown hook as the IPsec daemon would run it: by default the lean script of
        # `vtibgp install-hook`, written into the work directory; --hook: another command
        self.hook: str = args.hook or str(self.work / "updown-hook")
        if not args.hook:
            subprocess.run([self.vtibgp, "install-hook", self.hook], check=True,
                           capture_output=True)

    # -- build and tear down
    def build(self) -> None:
        t = time.monotonic()
        self.topo.up()
        self._distinct_ifindex()
        self.bird = lab.BirdPeer(self.topo, self.work / "bird", hold_time=self.args.hold_time,
                                 prepend={2: 2}).start()
        self._announce()
        cfg = self.work / "vtibgp.yaml"
        cfg.write_text(yaml.safe_dump({
            "log_level": self.args.log_level,
            "peers": [{"address": T1.aws_v4, "interface": T1.gw_dev},
                      {"address": T2.aws_v4, "interface": T2.gw_dev}],
            "tunnels": [{"connection": CONNECTION, "device": T1.gw_dev}],
            "tunnel": {"hold_down": self.args.hold_down},
            "kernel": {"nexthop_objects": "auto" if self.args.nexthop_objects == "auto"
                       else False},
            "metrics": {"listen": None},
            "control": {"socket": str(self.sock)},
        }, sort_keys=False))
        command = [sys.executable, str(Path(__file__).resolve()), STAMP_FLAG, str(self.stamps),
                   "--", self.vtibgp, "run", "--config", str(cfg)]
        self.gw = lab.ExaBGPGateway(self.topo, command, self.work / "exabgp",
                                    hold_time=self.args.hold_time, tunnels=(1, 2)).start()
        self.prober = Prober(self.topo.gw, self.addrs)
        self.wait_ready(f"{self.n} prefixes at 100 via vti01 and 101 via vti02, both sessions "
                        "up")
        # vtibgp asks ExaBGP for its adj-rib-in at start and replays it (every path again, one
        # line each): a signal sent before that is over would queue behind it
        self.gw.wait_for(lambda: any("adj-rib-in loaded" in ln for _, ln in self.stamped(0)),
                         60, what="vtibgp's start-up resync")
        say(f"lab ready in {time.monotonic() - t:.1f} s: {self.n:,} prefixes, "
            f"namespaces {self.topo.gw} / {self.topo.aws}, logs in {self.work}")

    def _distinct_ifindex(self) -> None:
        """Give each gateway veth an ifindex different from its peer's. Both namespaces are
        fresh, so vti01 and tun1 would both be index 2; a veth whose index equals its peer's
        (its iflink) is not an "urgent" device for the kernel's link watcher, whose carrier
        changes are then applied (route linkdown flags and the RTM_NEWLINK to listeners) at
        most once a second: a carrier loss within a second of the previous link event waits
        for up to that second. A real VTI or XFRM device's iflink is its underlying device
        (or 0), never itself, so its carrier changes are urgent. A bridge in the aws
        namespace moves that namespace's index counter on by one."""
        self.topo.ip("aws", "link", "add", "name", "pad0", "type", "bridge")
        for n in (1, 2):
            self.topo.recreate_link(n)
        self._check_ifindex()

    def _check_ifindex(self) -> None:
        for t in (T1, T2):
            gw, aws = self.topo.link("gw", t.gw_dev), self.topo.link("aws", t.aws_dev)
            if gw and aws and gw["ifindex"] == aws["ifindex"]:
                say(f"warning: {t.gw_dev} and its peer share ifindex {gw['ifindex']}: its "
                    "carrier changes are rate-limited by the kernel (up to 1 s)")

    def _announce(self) -> None:
        """BIRD originates every prefix on both tunnels. BirdPeer.announce validates each
        prefix with ipaddress and then waits on `birdc show route` dumps; for 10,000+ routes
        it is quicker to fill its state, let it write routes.conf and reconfigure once."""
        assert self.bird is not None
        if self.n <= 2000:
            self.bird.announce(self.nets)
            return
        for n in (1, 2):
            self.bird.announced[n] = dict.fromkeys(self.nets, (None, ()))
        self.bird.configure()
        lab.wait_until(lambda: all(self._bird_count(n) == self.n for n in (1, 2)),
                       60, interval=0.2, what="BIRD to originate every prefix")

    def _bird_count(self, n: int) -> int:
        assert self.bird is not None
        out = self.bird.birdc("show", "route", "table", f"t{n}v4", "count")
        for line in out.splitlines():
            words = line.split()
            if "routes" in words:
                return int(words[words.index("routes") - 1])
        return -1

    def close(self) -> None:
        if self.prober is not None:
            self.prober.close()
        if self.gw is not None:
            self.gw.stop()
        if self.bird is not None:
            self.bird.stop()
        self.topo.down()
        if not self.args.keep_logs:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- state
    def kernel_counts(self) -> Counter[tuple[str, int]]:
        out = self.topo.ip("gw", "-4", "-o", "route", "show", "table", "main", "proto",
                           str(PROTO))
        counts: Counter[tuple[str, int]] = Counter()
        for line in out.splitlines():
            w = line.split()
            dev = w[w.index("dev") + 1] if "dev" in w else "?"
            metric = int(w[w.index("metric") + 1]) if "metric" in w else 0
            counts[(dev, metric)] += 1
        return counts

    def status(self) -> dict[str, Any]:
        try:
            return request(str(self.sock), {"cmd": "status"})
        except ControlError:
            return {}

    def sessions_agree(self) -> bool:
        """Each tunnel has exactly one established BGP connection and both ends see the same
        one (after a carrier loss or a deleted device ExaBGP may hold a connection BIRD has
        dropped; it learns that only when its next keepalive meets a reset)."""
        def conns(ns: str) -> set[tuple[str, str]]:
            out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htn", "state",
                                  "established"], capture_output=True, text=True, check=False)
            return {(w[-2], w[-1]) for w in map(str.split, out.stdout.splitlines()) if
                    len(w) >= 2}

        gw, aws = conns(self.topo.gw), conns(self.topo.aws)
        for t in (T1, T2):
            mine = {c for c in gw if c[1] == f"{t.aws_v4}:179"}
            theirs = {(p, loc) for loc, p in aws if loc == f"{t.aws_v4}:179"}
            if len(mine) != 1 or mine != theirs:
                return False
        return True

    def ready(self) -> bool:
        """Everything as before any signal: hold-down over, sessions up on both ends (BIRD
        drops a direct session when its link goes, and the Cease it queues reaches ExaBGP by
        TCP retransmission only after the link returns: ExaBGP then reconnects), every route
        back. The cheap checks go first; the last one looks up every prefix."""
        st = self.status()
        devs = {d["device"]: d for d in st.get("devices", [])}
        dev = devs.get(T1.gw_dev)
        if not dev or not dev["usable"] or dev["holding"]:
            return False
        if not st.get("peers") or any(p["state"] != "up" for p in st["peers"]):
            return False
        assert self.bird is not None and self.prober is not None
        if not (self.bird.established(1) and self.bird.established(2)
                and self.sessions_agree()):
            return False
        want = Counter({(T1.gw_dev, METRIC): self.n, (T2.gw_dev, METRIC + 1): self.n})
        if self.kernel_counts() != want:
            return False
        return self.prober.count_not(self.n, (self.ifindex(T1.gw_dev), METRIC, PROTO)) == 0

    def wait_ready(self, what: str) -> None:
        assert self.gw is not None
        deadline = time.monotonic() + 120 + self.n / 500
        while not (self.quiet(1.0) and self.ready() and self.quiet(1.0)):
            if not self.gw.running():
                raise lab.HarnessError(f"ExaBGP exited while waiting for {what}\n"
                                       f"{lab.tail(self.gw.log_text())}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.25)

    def quiet(self, seconds: float) -> bool:
        """vtibgp has logged nothing for `seconds`: its loop has no backlog (at debug level
        every UPDATE it takes in is logged; ExaBGP's re-sent table after a session flap can
        keep it busy for seconds after the kernel already looks right)."""
        try:
            with open(self.stamps, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                last = f.read().splitlines()[-1]
            return time.monotonic() - float(last.split(b" ", 1)[0]) >= seconds
        except (OSError, IndexError, ValueError):
            return False

    def ifindex(self, dev: str) -> int:
        info = self.topo.link("gw", dev)
        if info is None:
            raise lab.HarnessError(f"no device {dev}")
        return int(info["ifindex"])

    def stamped(self, since: float) -> list[tuple[float, str]]:
        try:
            text = self.stamps.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            stamp, _, rest = line.partition(" ")
            with contextlib.suppress(ValueError):
                if float(stamp) >= since:
                    out.append((float(stamp), rest))
        return out

    # -- one measurement
    def measure(self, sig: Signal) -> Run:
        assert self.prober is not None and self.gw is not None
        for key, value in sig.sysctl.items():
            self.topo.sysctl("gw", key, value)
        if self.prober.count_not(self.n, (self.ifindex(T1.gw_dev), METRIC, PROTO)):
            self.wait_ready(f"the routes before {sig.name}")
        watch = Watch(self.prober, self.n, self.ifindex(T2.gw_dev),
                      sample_first=self.args.poll == "sample", timeout=self.args.timeout)
        watch.start()
        watch.primed.wait(5)
        t0 = time.monotonic()
        sig.fire(self)
        cmd_ms = (time.monotonic() - t0) * 1e3
        watch.join(self.args.timeout + 5)
        watch.halt.set()
        watch.join(5)
        if watch.error is not None:
            raise watch.error
        # vtibgp logs "routes moved off it" once its whole batch (the deletes of the old
        # backups included) is acknowledged
        moved = sig.done_log
        if moved is not None:
            with contextlib.suppress(TimeoutError):
                lab.wait_until(lambda: any(moved in ln for _, ln in self.stamped(t0)),
                               self.args.timeout, interval=0.1, what="vtibgp's log")
        saw = done = None
        disturbed = []
        for ts, line in self.stamped(t0):
            if saw is None and (f"device {T1.gw_dev} unusable" in line
                                or f"ipsec {CONNECTION}:" in line
                                or (sig.name == "bgp" and "session down" in line)):
                saw = (ts - t0) * 1e3
            if done is None and moved is not None and moved in line:
                done = (ts - t0) * 1e3
            if done is None and sig.name != "bgp" and ("session" in line
                                                       or "NOTIFICATION" in line):
                disturbed.append(line.split(" ", 2)[-1])
        final = self.kernel_counts()
        if final != Counter({(T2.gw_dev, METRIC): self.n}):
            say(f"  note: after {sig.name} the kernel holds {dict(final)}")
        return Run(sig.name, cmd_ms, watch.bounds(0, t0), watch.bounds(1, t0), saw, done,
                   watch.sweeps, watch.regressions, disturbed)

    def restore(self, sig: Signal) -> float:
        assert self.gw is not None
        t = time.monotonic()
        sig.restore(self)
        self.wait_ready(f"return after {sig.name}")
        for key in sig.sysctl:
            self.topo.sysctl("gw", key, 0)
        self._check_ifindex()
        return time.monotonic() - t


def _updown(verb: str) -> Callable[[Bench], None]:
    def go(b: Bench) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLUTO_", "VTI_"))}
        env.update(LIBRESWAN_ENV, PLUTO_VERB=verb)
        res = subprocess.run([b.hook, "updown", "--socket", str(b.sock), "--strict"],
                             env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise lab.HarnessError(f"vtibgp updown {verb}: rc={res.returncode} {res.stderr}")
    return go


def _bgp(up: bool) -> Callable[[Bench], None]:
    """The VGW ends (or restores) tunnel 1's session: BIRD sends a Cease; the tunnel stays up."""
    def go(b: Bench) -> None:
        assert b.bird is not None
        if up:
            b.bird.enable_session(1)
        else:
            b.bird.disable_session(1)
    return go


SIGNALS = [
    Signal("updown", "updown (libreswan down-client)", _updown("down-client"),
           _updown("up-client")),
    Signal("bgp", "BGP session down (peer's Cease)", _bgp(False), _bgp(True), done_log=None,
           from_saw=True),
    Signal("admin", "admin down (ip link set down)",
           lambda b: b.topo.set_link("gw", T1.gw_dev, False),
           lambda b: b.topo.set_link("gw", T1.gw_dev, True)),
    Signal("carrier", "carrier loss (linkdown used)", lambda b: b.topo.carrier_off(1),
           lambda b: b.topo.carrier_on(1)),
    Signal("carrier-ignore", "carrier loss, ignore_linkdown=1", lambda b: b.topo.carrier_off(1),
           lambda b: b.topo.carrier_on(1),
           {"net.ipv4.conf.all.ignore_routes_with_linkdown": 1}),
    Signal("delete", "device delete (ip link del)", lambda b: b.topo.delete_link(T1.gw_dev),
           lambda b: b.topo.recreate_link(1)),
]


# --------------------------------------------------------------------------- offline profile


class _Timed:
    """Wraps a callable and adds up the time spent in it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.total = fn, 0.0

    def __call__(self, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.total += time.perf_counter() - t


def profile(n: int, nets: list[str], nexthop_objects: bool) -> None:
    """Split vtibgp's "saw -> done" offline: vtibgp's own Daemon (its event path, decision
    core, coalescing, kernel writer and metrics, without ExaBGP, threads or other load) on the
    same N prefixes and paths, in a scratch namespace with the same devices, its writer using
    nexthop objects or not as the lab run did. Also times the alternative of sending the
    operations that carry traffic ahead of the deletes of the old backups."""
    import logging

    from vtibgp.config.schema import parse
    from vtibgp.core.decision import Decision
    from vtibgp.core.model import (
        Announce,
        DeviceState,
        Event,
        IpsecState,
        OpKind,
        PathAttrs,
        Stopping,
    )
    from vtibgp.kernel.writer import KernelWriter
    from vtibgp.shell import daemon as daemon_mod

    logging.getLogger("vtibgp").addHandler(logging.NullHandler())
    logging.getLogger("vtibgp").propagate = False
    cfg = parse({"peers": [{"address": T1.aws_v4, "interface": T1.gw_dev},
                           {"address": T2.aws_v4, "interface": T2.gw_dev}],
                 "tunnels": [{"connection": CONNECTION, "device": T1.gw_dev}],
                 "tunnel": {"hold_down": 0.5}, "metrics": {"listen": None},
                 "control": {"socket": None}}, "<failover profile>")
    updown = {"cmd": "tunnel", "state": "down", "connection": CONNECTION,
              "device": T1.gw_dev, "verb": "down-client"}
    cases: list[tuple[str, Event | None, bool]] = [
        ("updown", None, False),
        ("admin", DeviceState(T1.gw_dev, False, "admin down", 0.0), True),
        ("carrier", DeviceState(T1.gw_dev, False, "carrier lost", 0.0), False),
    ]
    say(f"\nwhere vtibgp's time goes, {n:,} prefixes (offline: vtibgp's Daemon with its "
        "kernel writer in a scratch namespace, nothing else running in it; best of 3, ms).\n"
        "'attrs shared': every prefix of a peer has the same PathAttrs object (big UPDATEs); "
        "'one attrs per prefix': as after vtibgp's start-up resync, which the lab run had")
    topo = lab.Topology()
    real_coalesce = getattr(daemon_mod, "coalesce")  # noqa: B009
    try:
        topo.up()
        with KernelWriter(netns=topo.gw) as writer:
            if nexthop_objects:
                writer.enable_nexthop_objects()
            for (case, event, admin), resynced in itertools.product(cases, (False, True)):
                best: dict[str, float] = {}
                for rep in range(6):
                    split = rep % 2 == 1
                    d = daemon_mod.Daemon(cfg, writer, None)
                    decided = Decision()
                    for peer, path in ((T1.aws_v4, (64512,)), (T2.aws_v4, (64512,) * 3)):
                        if resynced:  # one Announce (and PathAttrs) per prefix, as the
                            for p in nets:  # start-up resync from ExaBGP's adj-rib-in gives
                                d._event(Announce(peer, "ipv4 unicast",
                                                  PathAttrs(peer, as_path=path), (p,)),
                                         decided)
                        else:  # one PathAttrs for the whole table, like a few big UPDATEs
                            d._event(Announce(peer, "ipv4 unicast",
                                              PathAttrs(peer, as_path=path), tuple(nets)),
                                     decided)
                    d._perform(decided)
                    if admin:
                        topo.set_link("gw", T1.gw_dev, False)
                    handle = _Timed(d.core.handle)
                    coal = _Timed(real_coalesce)
                    d.core.handle = handle  # type: ignore[method-assign]
                    setattr(daemon_mod, "coalesce", coal)  # noqa: B010
                    if split:  # the alternatives, on the writer alone
                        ops = real_coalesce(d.core.handle(event or IpsecState(
                            T1.gw_dev, (), False, "profile", time.monotonic())).ops)
                        first = [op for op in ops if op.kind is not OpKind.DELETE]
                        t = time.perf_counter()
                        writer.apply(first)
                        times = {"traffic ops first": time.perf_counter() - t}
                        t = time.perf_counter()
                        writer.apply([op for op in ops if op.kind is OpKind.DELETE])
                        times["then the deletes"] = time.perf_counter() - t
                    else:
                        apply = _Timed(writer.apply)
                        writer.apply = apply  # type: ignore[method-assign]
                        t = time.perf_counter()
                        if event is None:  # as the loop does: answer, then the batch
                            d._process([("request", time.monotonic(),
                                         daemon_mod._Request(dict(updown)))])
                        else:
                            d._process([("event", time.monotonic(), event)])
                        total = time.perf_counter() - t
                        del writer.apply
                        times = {"total": total, "core": handle.total,
                                 "coalesce": coal.total, "kernel apply": apply.total,
                                 "other": total - handle.total - coal.total - apply.total}
                    setattr(daemon_mod, "coalesce", real_coalesce)  # noqa: B010
                    del d.core.handle
                    writer.apply(d.core.handle(Stopping(withdraw=True)).ops)
                    if admin:
                        topo.set_link("gw", T1.gw_dev, True)
                    for k, v in times.items():
                        best[k] = min(best.get(k, v), v)
                how = "one attrs per prefix" if resynced else "attrs shared"
                say(f"  {case:8s} {how:20s} " + ", ".join(f"{k} {v * 1e3:.0f}"
                                                           for k, v in best.items()))
    finally:
        setattr(daemon_mod, "coalesce", real_coalesce)  # noqa: B010
        topo.down()


# --------------------------------------------------------------------------- report


def fmt(ms: float | None) -> str:
    return "timeout" if ms is None else f"{ms:7.1f}"


def median(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return statistics.median(v for v in values if v is not None)


def report(runs: list[Run], n: int, args: argparse.Namespace) -> None:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    say(f"\nfailover, {n:,} prefixes, median of {args.repeat} run(s); ms from just before the "
        f"signalling command (hold-down {args.hold_down:g} s, poll: {args.poll}; "
        f"{os.cpu_count()} CPUs, load average now {load})")
    head = (f"{'signal':32s} {'cmd':>7s} {'all->vti02':>10s} {'(>=)':>7s} {'vtibgp@100':>10s} "
            f"{'(>=)':>7s} {'saw':>7s} {'done':>7s}  aim")
    say(head)
    say("-" * len(head))
    for sig in SIGNALS:
        mine = [r for r in runs if r.signal == sig.name]
        if not mine:
            continue
        if sig.from_saw:
            mine = [Run(r.signal, r.cmd_ms, _since(r.a, r.saw_ms), _since(r.b, r.saw_ms), 0.0,
                        None if r.done_ms is None or r.saw_ms is None else r.done_ms - r.saw_ms,
                        r.sweeps, r.regressions) for r in mine]
        a_up, a_lo = median([r.a[0] for r in mine]), median([r.a[1] for r in mine])
        b_up, b_lo = median([r.b[0] for r in mine]), median([r.b[1] for r in mine])
        saw, done = median([r.saw_ms for r in mine]), median([r.done_ms for r in mine])
        cmd = median([r.cmd_ms for r in mine])
        if a_up is not None and a_up < AIM_MS:
            aim = "ok"
        elif a_up is None or (a_lo is not None and a_lo >= AIM_MS):
            aim = "MISSED"
        else:  # the truth lies between the bounds, which straddle the aim
            aim = "? (granularity)"
        say(f"{sig.label:32s} {fmt(cmd)} {fmt(a_up):>10s} {fmt(a_lo)} {fmt(b_up):>10s} "
            f"{fmt(b_lo)} {fmt(saw)} {fmt(done) if sig.done_log else '    n/a'}  {aim}")
    say("cmd: the signalling command itself (process start included); all->vti02 / vtibgp@100: "
        "upper bound, (>=) lower bound;\nsaw / done: vtibgp's log stamps (signal taken in / "
        "kernel batch acknowledged). Aim: all->vti02 < 100 ms; '?' = the bounds straddle it.")
    if any(s.from_saw for s in SIGNALS if any(r.signal == s.name for r in runs)):
        say("BGP session down: every figure but cmd is from saw (vtibgp reading ExaBGP's report "
            "of the Cease), since cmd is BIRD's own work.")


def _since(bounds: tuple[float | None, float], saw: float | None) -> tuple[float | None, float]:
    """Bounds taken from `saw` on (None when either is unknown)."""
    up, lo = bounds
    if saw is None:
        return None, lo
    return (None if up is None else up - saw), lo - saw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefixes", type=int, default=10_000, help="N (default 10,000)")
    ap.add_argument("--quick", action="store_true", help="1,000 prefixes")
    ap.add_argument("--repeat", type=int, default=1, help="runs per signal; medians reported")
    ap.add_argument("--signals", default=",".join(s.name for s in SIGNALS),
                    help="comma list of: " + ", ".join(s.name for s in SIGNALS))
    ap.add_argument("--nexthop-objects", choices=["auto", "false"], default="auto",
                    help="kernel.nexthop_objects for vtibgp (false: routes carry their "
                    "nexthops inline, as before nexthop objects)")
    ap.add_argument("--hold-down", type=float, default=0.5, help="tunnel.hold_down (s)")
    ap.add_argument("--hold-time", type=int, default=lab.DEFAULT_HOLD_TIME,
                    help="BGP hold time of both ends (s; AWS uses 30). It never runs out within a "
                    "measurement: ExaBGP is not involved in the link signals")
    ap.add_argument("--poll", choices=["sample", "full"], default="sample",
                    help=f"sample: poll {SAMPLE} prefixes until all have moved, then sweep all; "
                    "full: sweep all prefixes from the start (costs a CPU the whole time)")
    ap.add_argument("--timeout", type=float, default=30.0, help="per signal (s)")
    ap.add_argument("--log-level", default="debug", help="vtibgp's log level")
    ap.add_argument("--no-profile", dest="profile", action="store_false",
                    help="skip the offline split of vtibgp's time")
    ap.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    ap.add_argument("--hook", help="the command run as `HOOK updown ...` for the updown "
                    "signal (default: the lean hook of `vtibgp install-hook`; e.g. "
                    ".venv/bin/vtibgp for the plain command)")
    args = ap.parse_args()
    if args.quick:
        args.prefixes = 1000
    chosen = [s.strip() for s in args.signals.split(",") if s.strip()]
    unknown = set(chosen) - {s.name for s in SIGNALS}
    if unknown:
        ap.error(f"unknown signal(s): {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("failover.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("bird", "birdc", "ip", "ss"):
        if shutil.which(tool) is None:
            print(f"failover.py: {tool} not found", file=sys.stderr)
            return 2

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    lab.cleanup_stale()
    bench = Bench(args)
    runs: list[Run] = []
    try:
        bench.build()
        for rep in range(args.repeat):
            for sig in SIGNALS:
                if sig.name not in chosen:
                    continue
                run = bench.measure(sig)
                runs.append(run)
                back = bench.restore(sig)
                say(f"run {rep + 1} {sig.name:15s} cmd {run.cmd_ms:6.1f}  all->vti02 "
                    f"{fmt(run.a[0])} (>= {run.a[1]:.1f})  vtibgp@100 {fmt(run.b[0])} "
                    f"(>= {run.b[1]:.1f})  saw {fmt(run.saw_ms)} done {fmt(run.done_ms)}  "
                    f"[{run.sweeps} sweeps, {run.regressions} regressions, "
                    f"{bench.prober.overruns if bench.prober else 0} overruns; back in "
                    f"{back:.1f} s]")
                for line in run.disturbed:
                    say(f"  BGP activity inside the measurement: {line}")
        report(runs, args.prefixes, args)
    except (lab.HarnessError, TimeoutError) as exc:
        print(f"failover.py: {exc}", file=sys.stderr)
        if runs:
            report(runs, args.prefixes, args)
        return 1
    finally:
        bench.close()
    if args.profile:
        profile(args.prefixes, bench.nets, args.nexthop_objects == "auto")
    return 0


if __name__ == "__main__":
    sys.exit(main())
