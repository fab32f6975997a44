"""Pieces shared by benchmarks/end_to_end.py and benchmarks/restart.py.

* namespaces named ``vtibgp-bench-<pid>x<hex>-gw`` / ``-aws`` (never ``vtb-…``, which the test
  harness owns), built with :class:`vtibgp.lab.parts.Topology`'s code, and a clean-up of the ones a
  killed run left behind (the owner's pid is in the name);
* BIRD 2 as the announcer of N prefixes in the aws namespace (its static protocol can be held
  back until the session is up, so "the peer starts sending" is one ``birdc enable``);
* BIRD 2 (BGP + kernel protocol) and FRR (bgpd + zebra) as the other receivers;
* :class:`RouteWatch`, a netlink listener counting one protocol's route notifications in a
  namespace (the time the N-th route arrived; every add and delete), and :func:`count_routes`,
  a kernel-filtered netlink dump that only counts.

Everything here must run as root.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import re
import secrets
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
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vtibgp.kernel.writer import MultiRecv, in_netns
from vtibgp.lab import parts as lab

NS_PREFIX = "vtibgp-bench"
_NS_RE = re.compile(rf"^{NS_PREFIX}-(\d+)x[0-9a-f]+-(gw|aws)$")
FIRST_PREFIX = int(ipaddress.IPv4Address("20.0.0.0"))
PROTO_BGP = 186  # vtibgp's and FRR's routes (rt_protos "bgp")
PROTO_BIRD = 12  # BIRD's kernel protocol
T1 = lab.TUNNELS[1]
REPO = Path(__file__).resolve().parent.parent
FRR_DIR = Path("/usr/lib/frr")


def say(text: str = "") -> None:
    print(text, flush=True)


def load_text() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def sigterm_as_interrupt() -> None:
    """SIGINT, SIGTERM and SIGHUP (unless ignored, as under nohup) raise KeyboardInterrupt,
    so the ``finally`` blocks clean up. SIGINT too: a shell starting us in the background
    without job control leaves it ignored, and Python then keeps it so."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, interrupt)


def missing_prerequisite(tools: Sequence[str]) -> str | None:
    """Why this benchmark cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


def daemon_options(ap: argparse.ArgumentParser, *, timeout_help: str,
                   profile_help: str) -> None:
    """The options of the benchmarks that run the real daemons (end_to_end.py, restart.py)."""
    ap.add_argument("--prefixes", type=int, default=None, help="N (default 100,000)")
    ap.add_argument("--exabgp", default=lab.default_exabgp(), help="ExaBGP binary (5.0 venv)")
    ap.add_argument("--hold-time", type=int, default=90, help="BGP hold time (s)")
    ap.add_argument("--timeout", type=float, default=None, help=timeout_help)
    ap.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    ap.add_argument("--profile", action="store_true", help=profile_help)
    ap.add_argument("--vtibgp-path", metavar="DIR",
                    help="import vtibgp from DIR (PYTHONPATH), e.g. a `git archive` of a commit")


def daemons_missing(exabgp: str) -> str | None:
    """Why the real daemons cannot run here (root, ip, BIRD, that ExaBGP), or None."""
    problem = missing_prerequisite(["ip", "bird", "birdc"])
    if problem is None and not os.access(exabgp, os.X_OK):
        problem = f"ExaBGP not found at {exabgp}"
    return problem


def prefixes(n: int) -> list[str]:
    """``n`` distinct /24s from 20.0.0.0 upwards (no martian among the first 16 million)."""
    if not 1 <= n <= 1 << 22:
        raise SystemExit("--prefixes: 1 to 4,194,304")
    return [f"{ipaddress.IPv4Address(FIRST_PREFIX + (i << 8))}/24" for i in range(n)]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- namespaces


def cleanup_stale() -> list[str]:
    """Delete the ``vtibgp-bench-<pid>x…`` namespaces whose owning process is gone (a run
    that was SIGKILLed), with every process inside them."""
    gone: list[str] = []
    for ns in lab.list_namespaces():
        m = _NS_RE.match(ns)
        if m and not lab.pid_alive(int(m.group(1))):
            for pid in lab.netns_pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False,
                           stdin=subprocess.DEVNULL)
            gone.append(ns)
    return gone


class BenchTopology(lab.Topology):
    """The lab's gateway and aws namespaces joined by the veth "tunnel" vti01 <-> tun1, under
    benchmark names (``vtibgp-bench-<pid>x<hex>-gw`` / ``-aws``)."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}x{secrets.token_hex(3)}"
        # named: no harness marker, and the test harness' clean-up never looks at them
        super().__init__(tag=tag, tunnels=(1,),
                         names=(f"{NS_PREFIX}-{tag}-gw", f"{NS_PREFIX}-{tag}-aws"))


# --------------------------------------------------------------------------- processes


class Proc:
    """A daemon started with ``ip netns exec``, its output appended to a log file."""

    def __init__(self, name: str, ns: str, argv: Sequence[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # a ^C at the terminal reaches us, we stop it
            )

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            return lab.tail(self.log.read_text(errors="replace"), lines)
        except OSError:
            return ""


def _birdc(sock: Path, *args: str) -> str:
    res = subprocess.run(["birdc", "-s", str(sock), *args], capture_output=True, text=True,
                         check=False, stdin=subprocess.DEVNULL, timeout=30)
    return res.stdout + res.stderr


def _bird_state(sock: Path, proto: str) -> str:
    """The BGP state of ``proto`` (Established, Active, ...) or its protocol state."""
    for line in _birdc(sock, "show", "protocols", proto).splitlines():
        cols = line.split()
        if cols and cols[0] == proto:
            # name proto table state since-date since-time info (timeformat iso long)
            return cols[6] if len(cols) > 6 else cols[3]
    return "?"


class BirdAnnouncer:
    """BIRD 2 in the aws namespace (AS 64512): one passive BGP session to the gateway over
    tunnel 1, exporting a static protocol ``feed`` of N blackhole /24s, all with the same
    attributes (so they travel packed, ~1,000 per UPDATE). With ``hold=True`` the feed starts
    disabled and :meth:`send` enables it: the moment the peer starts sending."""

    def __init__(self, topo: BenchTopology, nets: Sequence[str], work: Path,
                 hold: bool = True, hold_time: int = 90) -> None:
        self.topo = topo
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.sock = work / "bird.ctl"
        conf = work / "bird.conf"
        routes = "\n".join(f"  route {p} blackhole;" for p in nets)
        conf.write_text(f"""\
log "{work / 'bird.log'}" {{ info, warning, error, fatal }};
timeformat protocol iso long;
router id {T1.aws_v4};
protocol device {{ scan time 60; }}
ipv4 table feed4;
protocol static feed {{
  disabled {"yes" if hold else "no"};
  ipv4 {{ table feed4; }};
{routes}
}}
protocol bgp bench_gw {{
  local {T1.aws_v4} as {lab.AWS_ASN};
  neighbor {T1.gw_v4} as {lab.GW_ASN};
  interface "{T1.aws_dev}";
  direct;
  passive on;
  hold time {hold_time};
  startup hold time {hold_time};
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 5;
  graceful restart off;
  ipv4 {{ table feed4; import none; export all; }};
}}
""")
        self.proc = Proc("bird announcer", topo.aws,
                         ["bird", "-f", "-c", str(conf), "-s", str(self.sock)],
                         work / "bird.stdout")
        lab.wait_until(self._ready, 30, 0.05, "the announcing BIRD's control socket")

    def _ready(self) -> bool:
        if not self.proc.running():
            raise lab.HarnessError(f"BIRD (announcer) exited:\n{self.proc.tail()}")
        return self.sock.exists() and "BIRD" in _birdc(self.sock, "show", "status")

    def established(self) -> bool:
        return _bird_state(self.sock, "bench_gw") == "Established"

    def send(self) -> None:
        """Enable the feed: BIRD fills its table and starts exporting at once."""
        out = _birdc(self.sock, "enable", "feed")
        if "enabled" not in out:
            raise lab.HarnessError(f"birdc enable feed: {out.strip()}")

    def stop(self) -> None:
        self.proc.stop()


class BirdReceiver:
    """BIRD 2 in the gateway namespace: BGP from the announcer into master4, its kernel
    protocol exporting every route into the main table (proto bird, 12)."""

    proto = PROTO_BIRD
    label = "BIRD 2 (bgp + kernel)"

    def __init__(self, topo: BenchTopology, work: Path, hold_time: int = 90) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.sock = work / "bird.ctl"
        conf = work / "bird.conf"
        conf.write_text(f"""\
log "{work / 'bird.log'}" {{ info, warning, error, fatal }};
timeformat protocol iso long;
router id {T1.gw_v4};
protocol device {{ scan time 60; }}
protocol kernel {{
  ipv4 {{ import none; export all; }};
  learn off;
  scan time 3600;
}}
protocol bgp bench_aws {{
  local {T1.gw_v4} as {lab.GW_ASN};
  neighbor {T1.aws_v4} as {lab.AWS_ASN};
  interface "{T1.gw_dev}";
  direct;
  hold time {hold_time};
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 5;
  graceful restart off;
  ipv4 {{ import all; export none; }};
}}
""")
        self.proc = Proc("bird receiver", topo.gw,
                         ["bird", "-f", "-c", str(conf), "-s", str(self.sock)],
                         work / "bird.stdout")

    def ready(self) -> bool:
        if not self.proc.running():
            raise lab.HarnessError(f"BIRD (receiver) exited:\n{self.proc.tail()}")
        return True

    def stop(self) -> None:
        self.proc.stop()

    def log_tail(self) -> str:
        return self.proc.tail()


def frr_version() -> str | None:
    """FRR's version if bgpd and zebra are installed, else None."""
    bgpd = FRR_DIR / "bgpd"
    if not (os.access(bgpd, os.X_OK) and os.access(FRR_DIR / "zebra", os.X_OK)):
        return None
    res = subprocess.run([str(bgpd), "--version"], capture_output=True, text=True, check=False,
                         stdin=subprocess.DEVNULL)
    m = re.search(r"version\s+(\S+)", res.stdout + res.stderr)
    return m.group(1) if m else "?"


class FrrReceiver:
    """FRR zebra + bgpd in the gateway namespace, as the ``frr`` user (FRR refuses to run as
    root), with their sockets and pid files in a private directory. bgpd installs through
    zebra: proto bgp (186)."""

    proto = PROTO_BGP
    label = "FRR (bgpd + zebra)"

    def __init__(self, topo: BenchTopology, work: Path, hold_time: int = 90) -> None:
        work.mkdir(parents=True, exist_ok=True)
        # FRR drops to the frr user: it must reach its files and write its sockets
        shutil.chown(work, "frr", "frr")
        work.chmod(0o755)
        # ... through our private (0700) temp directories above it, which it may only cross
        stop = Path(tempfile.gettempdir())
        for d in work.parents:
            if d == stop or d == d.parent:
                break
            d.chmod(d.stat().st_mode | 0o011)
        zserv = work / "zserv.api"
        (work / "zebra.conf").write_text("hostname gw\n")
        (work / "bgpd.conf").write_text(f"""\
hostname gw
router bgp {lab.GW_ASN}
 bgp router-id {T1.gw_v4}
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor {T1.aws_v4} remote-as {lab.AWS_ASN}
 neighbor {T1.aws_v4} timers {hold_time // 3} {hold_time}
 neighbor {T1.aws_v4} timers connect 1
 address-family ipv4 unicast
  neighbor {T1.aws_v4} activate
 exit-address-family
""")
        for f in work.iterdir():
            shutil.chown(f, "frr", "frr")
        common = ["-z", str(zserv), "--vty_socket", str(work), "-P", "0", "--log", "stdout"]
        self.zebra = Proc("zebra", topo.gw,
                          [str(FRR_DIR / "zebra"), "-f", str(work / "zebra.conf"),
                           "-i", str(work / "zebra.pid"), *common], work / "zebra.log")
        lab.wait_until(lambda: zserv.exists() or self._died(), 15, 0.05, "zebra's socket")
        self.bgpd = Proc("bgpd", topo.gw,
                         [str(FRR_DIR / "bgpd"), "-f", str(work / "bgpd.conf"),
                          "-i", str(work / "bgpd.pid"), *common], work / "bgpd.log")

    def _died(self) -> bool:
        for p in (self.zebra, getattr(self, "bgpd", None)):
            if p is not None and not p.running():
                raise lab.HarnessError(f"FRR {p.name} exited:\n{p.tail()}")
        return False

    def ready(self) -> bool:
        self._died()
        return True

    def stop(self) -> None:
        self.bgpd.stop()
        self.zebra.stop()

    def log_tail(self) -> str:
        return f"--- zebra\n{self.zebra.tail()}\n--- bgpd\n{self.bgpd.tail()}"


def _role(pid: int) -> str:
    """A short name for a process: exabgp, vtibgp, reader, or its command name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    words = [Path(a.decode(errors="replace")).name for a in argv]
    for name in ("vtibgp", "exabgp", "reader.py"):
        if name in words:
            return name.removesuffix(".py")
    return comm


def ns_cpu(ns: str) -> dict[str, float]:
    """User + system CPU seconds so far of the processes in namespace ``ns`` (and of their
    reaped children), summed per :func:`_role`; ``ip`` and ``sh`` are left out."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in lab.netns_pids(ns):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        role = _role(pid)
        if role in ("ip", "sh", "?"):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        out[role] = out.get(role, 0.0) + ticks / tick
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


# --------------------------------------------------------------------------- netlink

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTA_DST, RTA_PRIORITY, RTA_TABLE = 1, 6, 15
RT_TABLE_MAIN = 254
_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")


def netlink_socket(ns: str, groups: int = 0, rcvbuf: int = 1 << 20) -> socket.socket:
    """A NETLINK_ROUTE socket living in namespace ``ns``, subscribed to ``groups``."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        s.bind((0, groups))
        return s

    return in_netns(ns, make)


def _route_key(data: bytes | memoryview, off: int, end: int) -> tuple[int, int, bytes, int]:
    """(protocol, table, dst_len + dst, metric) of the route message at ``off``."""
    family, dst_len, _s, _t, table, proto, _sc, _ty, _f = _RTMSG.unpack_from(data, off + 16)
    dst = b""
    metric = 0
    pos = off + 28
    while pos + 4 <= end:
        alen, atype = _RTA.unpack_from(data, pos)
        if alen < 4:
            break
        if atype == RTA_DST:
            dst = bytes(data[pos + 4:pos + alen])
        elif atype == RTA_TABLE:
            table = struct.unpack_from("=I", data, pos + 4)[0]
        elif atype == RTA_PRIORITY:
            metric = struct.unpack_from("=I", data, pos + 4)[0]
        pos += (alen + 3) & ~3
    return proto, table, bytes((family, dst_len)) + dst, metric


def count_routes(ns: str, proto: int, table: int = RT_TABLE_MAIN) -> int:
    """IPv4 routes of ``proto`` in ``table`` of namespace ``ns``: one netlink dump, filtered by
    the kernel (strict checking), counted without parsing more than each header."""
    return len(dump_routes(ns, proto, table, keys=False))


def dump_routes(ns: str, proto: int, table: int = RT_TABLE_MAIN,
                keys: bool = True) -> list[tuple[bytes, int]]:
    """(dst_len + dst, metric) of each IPv4 route of ``proto`` in ``table`` (with ``keys``;
    else empty tuples' worth of placeholders, for counting)."""
    s = netlink_socket(ns, rcvbuf=8 << 20)
    try:
        s.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        req = _RTMSG.pack(socket.AF_INET, 0, 0, 0, table, proto, 0, 0, 0)
        s.send(_NLMSG.pack(16 + len(req), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        out: list[tuple[bytes, int]] = []
        buf = bytearray(1 << 20)
        while True:
            n = s.recv_into(buf)
            view = memoryview(buf)[:n]
            off = 0
            while off + 16 <= n:
                length, mtype, _fl, _seq, _pid = _NLMSG.unpack_from(view, off)
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", view, off + 16)[0]
                    if code == errno.ENOENT:  # the table does not exist yet
                        return out
                    raise OSError(code, f"route dump in {ns}: {os.strerror(code)}")
                if mtype == RTM_NEWROUTE:
                    if keys:
                        p, t, dst, metric = _route_key(view, off, off + length)
                        if p == proto and t == table:
                            out.append((dst, metric))
                    elif view[off + 21] == proto:
                        out.append((b"", 0))
                off += (length + 3) & ~3
    finally:
        s.close()


class RouteWatch:
    """Listens to IPv4 route notifications in a namespace and counts, for one protocol in the
    main table, every add (RTM_NEWROUTE: a replace too) and delete, the time of the first add,
    and when the number of routes present (``base`` + adds - deletes) first reached
    ``target``. With ``keys`` it also keeps the set of routes (prefix, metric) added and not
    deleted since; without, each notification costs only a few byte compares (this runs in
    our process, on the same two cores as the daemons it measures). A big receive buffer
    keeps it from overflowing during a bulk install; if it does overflow anyway (ENOBUFS)
    ``overflowed`` is set and its counts are incomplete."""

    PERIOD = 0.005

    def __init__(self, ns: str, proto: int, target: int = 0, base: int = 0,
                 keys: bool = False) -> None:
        self.ns = ns
        self.proto = proto
        self.target = target
        self.base = base
        self.keys = keys
        self.present: set[tuple[bytes, int]] = set()
        self.adds = 0
        self.deletes = 0
        self.first: float | None = None  # first add
        self.reached_at: float | None = None
        self.reached = threading.Event()
        self.overflowed = False
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._sock = netlink_socket(ns, RTMGRP_IPV4_ROUTE, rcvbuf=512 << 20)
        self._sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"watch-{ns}", daemon=True)
        self._thread.start()

    def count(self) -> int:
        return self.base + self.adds - self.deletes

    def _run(self) -> None:
        slot = 512 if self.keys else 64  # (a notification cut short is flagged, not lost)
        batch = MultiRecv(self._sock.fileno(), 1024, slot)
        buf, length = batch.bytes, batch.length
        proto, want = self.proto, self.target
        try:
            while not self._halt.is_set():
                try:
                    got = batch.recv()
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.overflowed = True
                    got = 0
                if not got:
                    # nothing queued: look again in a moment rather than wake up for every
                    # single notification (the times read are up to one PERIOD late)
                    time.sleep(self.PERIOD)
                    continue
                lengths = [length(i) for i in range(got)]
                now = time.monotonic()
                # route notifications come one message per datagram: look at that one
                # (nlmsg_type's low byte at 4, rtm_table at byte 20, rtm_protocol at 21)
                for i in range(got):
                    at = i * slot
                    if lengths[i] < 28 or buf[at + 21] != proto or buf[at + 20] != RT_TABLE_MAIN:
                        continue
                    kind = buf[at + 4]
                    if kind == RTM_NEWROUTE:
                        self.adds += 1
                        if self.first is None:
                            self.first = now
                    elif kind == RTM_DELROUTE:
                        self.deletes += 1
                    else:
                        continue
                    if self.keys:
                        msg = bytes(buf[at:at + min(lengths[i], slot)])
                        _p, _t, dst, metric = _route_key(msg, 0, len(msg))
                        if kind == RTM_NEWROUTE:
                            self.present.add((dst, metric))
                        else:
                            self.present.discard((dst, metric))
                    if want and self.reached_at is None and self.count() >= want:
                        self.reached_at = now
                        self.reached.set()
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(5)
        self._sock.close()
        if self.error is not None:
            raise self.error


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> None:
    lab.wait_until(predicate, timeout, interval, what)
