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
  blackhole       nftables at the VGW end drops ALL traffic of tunnel 1 (``Topology.blackhole``:
                  carrier, device and BGP untouched, as when an IPsec tunnel silently stops
                  passing traffic); only vtibgp's probe (ICMP echo through each tunnel every
                  --probe-interval, down after --probe-multiplier intervals without a reply)
                  sees it
  blackhole-no-probe  the same with probe.enabled: false (vtibgp restarted for it, after the
                  other signals): routes move only when BGP's hold timer (--hold-time) runs
                  out. Opt-in (not in the default --signals): it lasts a hold time per run;
                  --no-probe-repeat runs

it measures, from just before the signalling command is started (for the blackholes: just
before the process committing the nft transaction is started, a lower bound of the first
dropped packet; "cmd" is then that process, inside which the rule went in):

  all->vti02   until EVERY prefix resolves via vti02 (whatever route the kernel picks: for
               admin down and delete that is at once the old backup at metric 101)
  vtibgp@100   until every prefix resolves via vtibgp's own replacement route: proto 186,
               metric 100, dev vti02

and restores the tunnel (up / carrier on / device re-created / blackhole off), waiting until
everything is back (hold-down, BGP sessions, every route) before the next signal.

For the blackholes a packet socket on the gateway's vti01 (kernel time stamps) records the
probe's echo requests and replies and the BGP messages: the last reply before the drop, the
first request that went unanswered, and when the probe's rule (or the hold timer) was due to
say down. The blackhole table then gives, beside the medians, the detect time (interval x
multiplier; without the probe: the hold time), the ratio measured / detect time, and where
the time went: waiting out the detect time (due), the loop's timer (saw - due), vtibgp's
core and kernel work (done - saw).

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
    .venv/bin/python benchmarks/failover.py --signals blackhole --repeat 5 --probe-interval 0.1
    .venv/bin/python benchmarks/failover.py --signals blackhole,blackhole-no-probe --hold-time 9
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import os
import random
import re
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


# --------------------------------------------------------------------------- packet capture

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("=qq")
SILENCE_RE = re.compile(r"no echo reply from \S+ for ([0-9.]+) s")


@dataclass
class Packets:
    """What crossed a gateway device, CLOCK_MONOTONIC: echo requests sent, echo replies
    received, and BGP segments (TCP port 179 with a payload) received and sent."""

    requests: list[float] = field(default_factory=list)
    replies: list[float] = field(default_factory=list)
    bgp_in: list[float] = field(default_factory=list)
    bgp_out: list[float] = field(default_factory=list)


class Capture:
    """A packet socket on one gateway device (IPv4, both directions: ETH_P_ALL, since a
    socket bound to one protocol sees only what comes in), time-stamped by the kernel as
    each packet passes (SO_TIMESTAMPNS, CLOCK_REALTIME, turned into CLOCK_MONOTONIC), read
    after the measurement: no thread competes with the poller."""

    def __init__(self, ns: str, dev: str) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                              socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
            s.bind((dev, ETH_P_ALL))
            return s

        self.sock = in_netns(ns, make)
        self.sock.setblocking(False)
        self.got = Packets()

    def close(self) -> None:
        self.sock.close()

    def drain(self) -> Packets:
        """Read every packet queued so far into `got` (and return it)."""
        offset = time.clock_gettime(time.CLOCK_REALTIME) - time.monotonic()
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(128, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return self.got
            at = None
            for level, kind, blob in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(blob) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(blob)
                    at = sec + nsec * 1e-9 - offset
            if addr[1] == ETH_P_IP:
                self._note(data, addr[2] == PACKET_OUTGOING,
                           time.monotonic() if at is None else at)

    def _note(self, ip: bytes, outgoing: bool, at: float) -> None:
        if len(ip) < 20 or ip[0] >> 4 != 4:
            return
        head = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ip[9] == socket.IPPROTO_ICMP and len(ip) > head:
            if ip[head] == 8 and outgoing:
                self.got.requests.append(at)
            elif ip[head] == 0 and not outgoing:
                self.got.replies.append(at)
        elif ip[9] == socket.IPPROTO_TCP and len(ip) >= head + 13:
            sport, dport = struct.unpack_from("!HH", ip, head)
            if total - head - (ip[head + 12] >> 4) * 4 <= 0:
                return  # a bare ACK
            if 179 in (sport, dport):  # (either end may have opened the connection)
                (self.got.bgp_out if outgoing else self.got.bgp_in).append(at)


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
    # the blackholes: ms from t0 (last_reply, first_lost, due, last_bgp_in, silence, ...)
    extra: dict[str, float | None] = field(default_factory=dict)


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
    # a log line that is "saw" (besides "device vti01 unusable" and the ipsec request's)
    saw_log: str | None = None
    # "command": t0 just before the command; "commit": just before the process committing
    # the nft transaction (a lower bound of the moment the rule is in place)
    origin: str = "command"
    probe: bool = True  # vtibgp runs with probe.enabled (False: a second phase, restarted)
    default: bool = True  # in the default --signals
    session_down: bool = False  # BGP's hold timer is what ends it: session lines expected


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n: int = args.prefixes
        self.nets, self.addrs = prefixes(self.n)
        self.work = Path(tempfile.mkdtemp(prefix="vtibgp-failover-"))
        self.sock = self.work / "ctl.sock"
        self.stamps = self.work / "vtibgp.stamped.log"
        self.topo = lab.Topology()
        # the nft transactions of Topology.blackhole, (clock before, after) the process that
        # commits each: the drop rule went in somewhere between the two
        self.commits: list[tuple[float, float]] = []
        real_nft = self.topo._nft

        def nft(script: str) -> None:
            t = time.monotonic()
            try:
                real_nft(script)
            finally:
                self.commits.append((t, time.monotonic()))

        setattr(self.topo, "_nft", nft)  # noqa: B010
        self.probe_on = True
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
    def build(self, probe: bool) -> None:
        t = time.monotonic()
        self.topo.up()
        self._distinct_ifindex()
        self.bird = lab.BirdPeer(self.topo, self.work / "bird", hold_time=self.args.hold_time,
                                 prepend={2: 2}).start()
        self._announce()
        self._start_gateway(probe)
        say(f"lab ready in {time.monotonic() - t:.1f} s: {self.n:,} prefixes, "
            f"namespaces {self.topo.gw} / {self.topo.aws}, logs in {self.work}; "
            f"{self._probe_text()}")

    def _probe_text(self) -> str:
        if not self.probe_on:
            return "vtibgp's probe off (probe.enabled: false)"
        return (f"vtibgp's probe every {self.args.probe_interval:g} s, down after "
                f"{self.args.probe_multiplier} without a reply (detect time "
                f"{self.detect * 1e3:.0f} ms)")

    @property
    def detect(self) -> float:
        return float(self.args.probe_interval * self.args.probe_multiplier)

    def switch_probe(self, probe: bool) -> None:
        """Restart ExaBGP and vtibgp with probe.enabled = `probe` (the probe's settings need
        a restart), and wait until everything is back."""
        assert self.gw is not None
        t = time.monotonic()
        self.gw.stop()
        self.gw = None
        self._start_gateway(probe)
        say(f"vtibgp restarted in {time.monotonic() - t:.1f} s: {self._probe_text()}")

    def _start_gateway(self, probe: bool) -> None:
        since = time.monotonic()
        self.probe_on = probe
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
            "probe": {"enabled": probe, "interval": self.args.probe_interval,
                      "multiplier": self.args.probe_multiplier},
        }, sort_keys=False))
        command = [sys.executable, str(Path(__file__).resolve()), STAMP_FLAG, str(self.stamps),
                   "--", self.vtibgp, "run", "--config", str(cfg)]
        self.gw = lab.ExaBGPGateway(self.topo, command, self.work / "exabgp",
                                    hold_time=self.args.hold_time, tunnels=(1, 2)).start()
        if self.prober is None:
            self.prober = Prober(self.topo.gw, self.addrs)
        self.wait_ready(f"{self.n} prefixes at 100 via vti01 and 101 via vti02, both sessions "
                        "up")
        # vtibgp asks ExaBGP for its adj-rib-in at start and replays it (every path again, one
        # line each): a signal sent before that is over would queue behind it
        self.gw.wait_for(lambda: any("adj-rib-in loaded" in ln for _, ln in
                                     self.stamped(since)),
                         60, what="vtibgp's start-up resync")

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
        if self.probe_on and dev.get("probe", {}).get("state") != "up":
            return False  # a probe that has not answered yet would decide nothing
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
        timeout = self.args.timeout
        if sig.session_down:  # the hold timer, then the session's end and vtibgp's work
            timeout = max(timeout, self.args.hold_time + 15.0)
        capture: Capture | None = None
        watch: Watch | None = None
        extra: dict[str, float | None] = {}
        moved = sig.done_log
        try:
            if sig.origin == "commit":
                capture = self._primed_capture()
            watch = Watch(self.prober, self.n, self.ifindex(T2.gw_dev),
                          sample_first=self.args.poll == "sample", timeout=timeout)
            watch.start()
            watch.primed.wait(5)
            self.commits.clear()
            t0 = time.monotonic()
            sig.fire(self)
            returned = time.monotonic()
            cmd_ms = (returned - t0) * 1e3
            if sig.origin == "commit":
                if not self.commits:
                    raise lab.HarnessError(f"{sig.name}: no nft transaction was committed")
                called, (t0, committed) = t0, self.commits[-1]
                cmd_ms = (committed - t0) * 1e3
                extra["call"] = (returned - called) * 1e3  # the whole Topology.blackhole
                extra["returned"] = (returned - t0) * 1e3
            watch.join(timeout + 5)
            watch.halt.set()
            watch.join(5)
            if watch.error is not None:
                raise watch.error
            # vtibgp logs "routes moved off it" once its whole batch (the deletes of the old
            # backups included) is acknowledged
            if moved is not None:
                with contextlib.suppress(TimeoutError):
                    lab.wait_until(lambda: any(moved in ln for _, ln in self.stamped(t0)),
                                   self.args.timeout, interval=0.1, what="vtibgp's log")
            if capture is not None:
                extra.update(self._phase(capture.drain(), t0))
        finally:
            if watch is not None:
                watch.halt.set()
            if capture is not None:
                capture.close()
        saw = done = None
        disturbed = []
        for ts, line in self.stamped(t0):
            if saw is None and (f"device {T1.gw_dev} unusable" in line
                                or f"ipsec {CONNECTION}:" in line
                                or (sig.saw_log is not None and sig.saw_log in line)):
                saw = (ts - t0) * 1e3
            if done is None and moved is not None and moved in line:
                done = (ts - t0) * 1e3
                if (m := SILENCE_RE.search(line)) is not None:
                    extra["silence"] = float(m.group(1)) * 1e3
            if done is None and sig.name != "bgp" and not sig.session_down and (
                    "session" in line or "NOTIFICATION" in line):
                disturbed.append(line.split(" ", 2)[-1])
        # (the probe logs nothing when it judges: no "saw"; its verdict is due at the last
        # reply + the detect time, and the silence it logs says how late its timer was)
        assert watch is not None
        final = self.kernel_counts()
        if final != Counter({(T2.gw_dev, METRIC): self.n}):
            say(f"  note: after {sig.name} the kernel holds {dict(final)}")
        return Run(sig.name, cmd_ms, watch.bounds(0, t0), watch.bounds(1, t0), saw, done,
                   watch.sweeps, watch.regressions, disturbed, extra)

    def _primed_capture(self) -> Capture:
        """A capture on vti01 that holds what preceded the signal: it has seen a probe
        reply (or, probe off, a BGP message from the VGW), then a random wait of up to one
        period, so that the signal falls at a random phase of the probe (of the keepalives),
        as a failure does."""
        capture = Capture(self.topo.gw, T1.gw_dev)
        period = self.args.probe_interval if self.probe_on else self.args.hold_time / 3
        deadline = time.monotonic() + 2 * period + 2
        got = capture.got
        while not (got.replies if self.probe_on else got.bgp_in):
            if time.monotonic() > deadline:
                capture.close()
                raise lab.HarnessError("no probe reply or BGP message seen on "
                                       f"{T1.gw_dev} in {2 * period + 2:g} s")
            time.sleep(0.02)
            capture.drain()
        time.sleep(random.uniform(0, period))
        return capture

    def _phase(self, got: Packets, t0: float) -> dict[str, float | None]:
        """Where the signal fell in the probe's (or BGP's) rhythm, ms from t0: the last echo
        reply through vti01, the first request left unanswered, the probe's verdict due at
        last reply + detect time; the last BGP message from the VGW, and the hold timer due
        at that + hold time."""
        def ms(t: float | None) -> float | None:
            return None if t is None else (t - t0) * 1e3

        out: dict[str, float | None] = {}
        last = max(got.replies, default=None)
        if last is not None:
            out["last_reply"] = ms(last)
            out["first_lost"] = ms(min((q for q in got.requests if q > last), default=None))
            if self.probe_on:
                out["due"] = ms(last + self.detect)
        last_bgp = max(got.bgp_in, default=None)
        out["last_bgp_in"] = ms(last_bgp)
        if not self.probe_on and last_bgp is not None:
            out["due"] = ms(last_bgp + self.args.hold_time)
        return out

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
           from_saw=True, saw_log="session down"),
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
    Signal("blackhole", "blackhole (nft drop), probe on", lambda b: b.topo.blackhole(1, True),
           lambda b: b.topo.blackhole(1, False), origin="commit"),
    Signal("blackhole-no-probe", "blackhole, probe off (hold time)",
           lambda b: b.topo.blackhole(1, True), lambda b: b.topo.blackhole(1, False),
           done_log=None, saw_log=f"peer {T1.aws_v4} session down", origin="commit",
           probe=False, default=False, session_down=True),
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
        ProbeReply,
        Stopping,
        Tick,
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
    def silent(d: daemon_mod.Daemon) -> Event:
        """The probe's verdict: a reply long ago, then the loop's timer pass (a Tick)."""
        now = time.monotonic()
        d.core.handle(ProbeReply(T1.gw_dev, 0.001, now - 10.0))
        return Tick(now)

    cases: list[tuple[str, Callable[[daemon_mod.Daemon], Event | None], bool]] = [
        ("updown", lambda d: None, False),
        ("admin", lambda d: DeviceState(T1.gw_dev, False, "admin down", 0.0), True),
        ("carrier", lambda d: DeviceState(T1.gw_dev, False, "carrier lost", 0.0), False),
        ("probe", silent, False),  # blackhole: no flush, a replace and a delete per prefix
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
            for (case, make_event, admin), resynced in itertools.product(cases, (False, True)):
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
                    event = make_event(d)
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


def fmt(ms: float | None, missing: str = "timeout") -> str:
    return f"{missing:>7s}" if ms is None else f"{ms:7.1f}"


def phase_text(run: Run) -> str:
    """A blackhole run's rhythm: what the capture on vti01 and vtibgp's log said."""
    x = run.extra

    def at(key: str) -> str:
        v = x.get(key)
        return "?" if v is None else f"{v:+.1f}"

    head = f"(origin: nft process start; the blackhole call took {x.get('call', 0.0):.1f} ms) "
    if run.signal == "blackhole-no-probe":
        saw = "?" if run.saw_ms is None else f"{run.saw_ms:+.1f}"
        return (head + f"last BGP message from the VGW {at('last_bgp_in')}, hold timer due "
                f"{at('due')}, vtibgp saw the session end {saw}")
    silence = x.get("silence")
    return (head + f"last echo reply {at('last_reply')}, first request unanswered "
            f"{at('first_lost')}, probe's verdict due {at('due')}; vtibgp logged "
            f"{'?' if silence is None else f'{silence:.0f}'} ms of silence")


def median(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return statistics.median(v for v in values if v is not None)


def report(runs: list[Run], n: int, args: argparse.Namespace) -> None:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    counts = Counter(r.signal for r in runs)
    say(f"\nfailover, {n:,} prefixes, median of "
        f"{'/'.join(str(c) for c in sorted(set(counts.values()), reverse=True))} run(s); "
        "ms from just before the "
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
        if sig.origin == "commit":
            aim = "(below)"
        elif a_up is not None and a_up < AIM_MS:
            aim = "ok"
        elif a_up is None or (a_lo is not None and a_lo >= AIM_MS):
            aim = "MISSED"
        else:  # the truth lies between the bounds, which straddle the aim
            aim = "? (granularity)"
        say(f"{sig.label:32s} {fmt(cmd)} {fmt(a_up):>10s} {fmt(a_lo)} {fmt(b_up):>10s} "
            f"{fmt(b_lo)} {fmt(saw, 'n/a')} {fmt(done) if sig.done_log else '    n/a'}  {aim}")
    say("cmd: the signalling command itself (process start included); all->vti02 / vtibgp@100: "
        "upper bound, (>=) lower bound;\nsaw / done: vtibgp's log stamps (signal taken in / "
        "kernel batch acknowledged). Aim: all->vti02 < 100 ms; '?' = the bounds straddle it.")
    if any(s.from_saw for s in SIGNALS if any(r.signal == s.name for r in runs)):
        say("BGP session down: every figure but cmd is from saw (vtibgp reading ExaBGP's report "
            "of the Cease), since cmd is BIRD's own work.")
    report_blackholes(runs, n, args)


def _med(runs: list[Run], get: Callable[[Run], float | None]) -> float | None:
    """Median over the runs that have the value (None if none has it)."""
    values = [v for v in map(get, runs) if v is not None]
    return statistics.median(values) if values else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def report_blackholes(runs: list[Run], n: int, args: argparse.Namespace) -> None:
    """The blackholes against their detect time: interval x multiplier with the probe, the
    hold time without it; where the time went."""
    rows = [(sig, [r for r in runs if r.signal == sig.name]) for sig in SIGNALS
            if sig.origin == "commit"]
    rows = [(sig, mine) for sig, mine in rows if mine]
    if not rows:
        return
    say(f"\nblackhole of tunnel 1 (nft at the VGW end drops all its traffic; carrier and BGP "
        f"untouched), {n:,} prefixes, ms from just\nbefore the process committing the nft "
        "transaction was started: a lower bound of the moment the rule is in place, hence of "
        "the\nfirst dropped packet; the rule went in within 'cmd' of it (every figure may "
        "thus be up to cmd too high)")
    for sig, mine in rows:
        if sig.probe:
            detect = args.probe_interval * args.probe_multiplier * 1e3
            what = (f"{sig.name}: probe every {args.probe_interval:g} s x "
                    f"{args.probe_multiplier}, detect time {detect:.0f} ms")
        else:
            detect = args.hold_time * 1e3
            what = f"{sig.name}: probe off, BGP hold time {args.hold_time} s ({detect:.0f} ms)"
        a_up, a_lo = _med(mine, lambda r: r.a[0]), _med(mine, lambda r: r.a[1])
        b_up, b_lo = _med(mine, lambda r: r.b[0]), _med(mine, lambda r: r.b[1])
        cmd = _med(mine, lambda r: r.cmd_ms)
        late = [r.b[0] for r in mine]  # (None: some prefix never got there)
        worst = None if any(v is None for v in late) else max(v for v in late if v is not None)
        say(f"  {what}, median of {len(mine)} run(s):")
        ratio = "?" if b_up is None else f"{b_up / detect:.2f}"
        say(f"    every prefix via vti02 at metric 100 (vtibgp@100) {fmt(b_up).strip()} "
            f"(>= {fmt(b_lo).strip()}) = {ratio} x the detect time (worst run "
            f"{fmt(worst).strip()}); all->vti02 {fmt(a_up).strip()} (>= {fmt(a_lo).strip()}); "
            f"cmd {fmt(cmd).strip()}")
        due = _med(mine, lambda r: r.extra.get("due"))
        last_key = "last_reply" if sig.probe else "last_bgp_in"
        last = _med(mine, lambda r: r.extra.get(last_key))  # noqa: B023 (called at once)
        returned = _med(mine, lambda r: _diff(r.b[0], r.extra.get("returned")))
        if sig.probe:
            lost = _med(mine, lambda r: _diff(r.b[0], r.extra.get("first_lost")))
            work = _med(mine, lambda r: _diff(r.done_ms, r.extra.get("due")))
            after = _med(mine, lambda r: _diff(r.b[0], r.done_ms))
            silence = _med(mine, lambda r: r.extra.get("silence"))
            say(f"    the same from the blackhole call's return {fmt(returned, '?').strip()}, "
                f"from the first echo request left unanswered {fmt(lost, '?').strip()}")
            say(f"    where it went: waiting out the detect time from the last echo reply "
                f"(at {fmt(last, '?').strip()}): the verdict was due at "
                f"{fmt(due, '?').strip()};\n    then vtibgp until its kernel batch was "
                f"acknowledged (done - due: the loop's timer, core, kernel) "
                f"{fmt(work, '?').strip()};\n    the poll's upper bound after done "
                f"{fmt(after, '?').strip()}. vtibgp logged {fmt(silence, '?').strip()} ms of "
                f"silence at its verdict (10 ms steps; {detect:.0f} = its timer on time)")
            if b_up is not None and b_up < detect:
                verdict = "met: every prefix moved within the detect time of the origin"
            elif b_lo is not None and b_lo >= detect:
                verdict = (f"MISSED: {fmt(_diff(b_lo, detect)).strip()} to "
                           f"{fmt(_diff(b_up, detect)).strip()} ms over it")
            else:
                verdict = "? (the bounds straddle the detect time)"
            allowed = None if work is None else detect + work
            extra = ("" if allowed is None or b_up is None else
                     f"; with vtibgp's own work (done - due) allowed on top: "
                     f"{'met' if b_up <= allowed else 'missed'} ({fmt(b_up).strip()} vs "
                     f"{fmt(allowed).strip()})")
            say(f"    target (every prefix moved < interval x multiplier after the first "
                f"dropped packet): {verdict}{extra}")
        else:
            timer = _med(mine, lambda r: _diff(r.saw_ms, r.extra.get("due")))
            after = _med(mine, lambda r: _diff(r.b[0], r.saw_ms))
            say(f"    where it went: the hold timer, from the last BGP message from the VGW "
                f"(at {fmt(last, '?').strip()}), was due {fmt(due, '?').strip()};\n    "
                f"ExaBGP's report of the session's end reaching vtibgp (saw - due) "
                f"{fmt(timer, '?').strip()}; then until every prefix was at 100 via vti02 "
                f"{fmt(after, '?').strip()}")


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
    ap.add_argument("--signals", default=",".join(s.name for s in SIGNALS if s.default),
                    help="comma list of: " + ", ".join(s.name for s in SIGNALS) + " (default: "
                    "all but " + ", ".join(s.name for s in SIGNALS if not s.default) + ")")
    ap.add_argument("--probe-interval", type=float, default=0.2,
                    help="probe.interval (s) of vtibgp (default 0.2)")
    ap.add_argument("--probe-multiplier", type=int, default=3,
                    help="probe.multiplier (default 3): the detect time is interval x this")
    ap.add_argument("--no-probe-repeat", type=int,
                    help="runs of blackhole-no-probe (each lasts up to a hold time; default: "
                    "--repeat, at most 2)")
    ap.add_argument("--nexthop-objects", choices=["auto", "false"], default="auto",
                    help="kernel.nexthop_objects for vtibgp (false: routes carry their "
                    "nexthops inline, as before nexthop objects)")
    ap.add_argument("--hold-down", type=float, default=0.5, help="tunnel.hold_down (s)")
    ap.add_argument("--hold-time", type=int, default=lab.DEFAULT_HOLD_TIME,
                    help="BGP hold time of both ends (s; AWS uses 30; e.g. 9 for a quicker "
                    "blackhole-no-probe). It runs out only in blackhole-no-probe: ExaBGP is not "
                    "involved in the link signals, and the blackhole with the probe ends well "
                    "within 2/3 of it")
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
    if args.no_probe_repeat is None:
        args.no_probe_repeat = min(args.repeat, 2)
    if args.probe_interval <= 0 or args.probe_multiplier < 2:
        ap.error("--probe-interval must be positive and --probe-multiplier at least 2")
    # the signals vtibgp takes with its probe on, then (restarted) those with it off
    phases = [(probe, [s for s in SIGNALS if s.name in chosen and s.probe == probe],
               args.repeat if probe else args.no_probe_repeat) for probe in (True, False)]
    phases = [ph for ph in phases if ph[1] and ph[2] > 0]
    if not phases:
        ap.error("nothing to run")
    lab.cleanup_stale()
    bench = Bench(args)
    runs: list[Run] = []
    try:
        bench.build(phases[0][0])
        for probe, sigs, repeat in phases:
            if probe != bench.probe_on:
                bench.switch_probe(probe)
            for rep, sig in itertools.product(range(repeat), sigs):
                run = bench.measure(sig)
                runs.append(run)
                back = bench.restore(sig)
                say(f"run {rep + 1} {sig.name:15s} cmd {run.cmd_ms:6.1f}  all->vti02 "
                    f"{fmt(run.a[0])} (>= {run.a[1]:.1f})  vtibgp@100 {fmt(run.b[0])} "
                    f"(>= {run.b[1]:.1f})  saw {fmt(run.saw_ms, 'n/a')} done "
                    f"{fmt(run.done_ms, 'n/a')}  [{run.sweeps} sweeps, {run.regressions} "
                    f"regressions, {bench.prober.overruns if bench.prober else 0} overruns; "
                    f"back in {back:.1f} s]")
                if run.extra:
                    say("  " + phase_text(run))
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
