"""The lab: network namespaces, a BIRD peer playing the AWS side and a real ExaBGP.

Plain Python (no pytest): the integration tests, the benchmarks and the ``vtibgp lab`` command
all use it (helpers only the tests need are in tests/integration/lab_support.py).
Everything here must be run as root.

Layout (one :class:`Topology`)::

      netns vtb-<tag>-gw  (our gateway)              netns vtb-<tag>-aws  (the "VGW")
      ExaBGP AS 65000 + plugin                        BIRD AS 64512
      vti01 169.254.10.2/30 fd00:10::2/64  <-veth->  tun1 169.254.10.1/30 fd00:10::1/64
      vti02 169.254.11.2/30 fd00:11::2/64  <-veth->  tun2 169.254.11.1/30 fd00:11::1/64

Optionally (``Topology(tunnels=(1, 2, 3))``, and ``tunnels=(1, 2, 3)`` for :class:`BirdPeer` and
:class:`ExaBGPGateway`) a third BGP session shares tunnel 1's veth pair, the way several
IPsec tunnels share one device with libreswan's ``vti-shared=yes`` (road warriors)::

      vti01 += 169.254.12.2/30 fd00:12::2/64        tun1 += 169.254.12.1/30 fd00:12::1/64

``Topology(tunnels=(6, 7))`` (with ``tunnels=(6, 7)`` for the daemons) is a transit gateway
VPN with IPv6 inside addresses only: the BGP sessions run over IPv6 and carry ipv6 unicast::

      vti06 fd00:0:0:60::2/126  <-veth->  tun6 fd00:0:0:60::1/126
      vti07 fd00:0:0:70::2/126  <-veth->  tun7 fd00:0:0:70::1/126

Every instance gets a random tag, so parallel or aborted runs never collide. Before creating
anything, a marker naming the owning process is written to ``/run/vtibgp-harness/<tag>``;
:func:`cleanup_stale` deletes the namespaces (and kills the processes inside them) whose owner
is gone. All objects are also registered for an ``atexit`` clean-up.

Objects meant to outlive the process that made them (``vtibgp lab up``) opt out of both:
a :class:`Topology` given explicit ``names`` (outside the ``vtb-`` prefix) writes no marker,
:func:`detach` takes objects off the ``atexit`` list, and a later process takes the daemons
over again with :meth:`_Daemon.adopt` from the record :meth:`_Daemon.record` gave.

BGP session set-up: BIRD is *passive* by default (it only listens; ExaBGP connects). ExaBGP
connects as soon as it starts, so a session is up ~0.2 s after ExaBGP has loaded, and
there is no connection collision to resolve. BIRD's own timers that would otherwise add long
waits after an error (``error wait time`` 60 s, ``connect retry time`` 120 s) are shortened.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vtibgp import defaults
from vtibgp.exabgp.render import render_neighbor, render_process

T = TypeVar("T")

MARKER_DIR = Path("/run/vtibgp-harness")
NS_PREFIX = "vtb"
_NS_RE = re.compile(rf"^{NS_PREFIX}-([0-9a-z]+)-[a-z0-9]+$")

GW_ASN = 65000
AWS_ASN = defaults.AWS_ASN
DEFAULT_HOLD_TIME = 30


def _ensure_sbin_on_path() -> None:
    # ip, sysctl and bird live in sbin directories, which a non-login root shell (or CI's
    # environment) may not have on PATH
    parts = os.environ.get("PATH", "").split(os.pathsep)
    extra = [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in parts]
    if extra:
        os.environ["PATH"] = os.pathsep.join([p for p in parts if p] + extra)


_ensure_sbin_on_path()


class HarnessError(RuntimeError):
    """A lab command failed; the message carries the command and its output."""


@dataclass(frozen=True)
class Tunnel:
    """Addressing of one tunnel: gateway end (our side) and peer end (the aws namespace)."""

    n: int
    gw_dev: str
    aws_dev: str
    gw_v4: str
    aws_v4: str
    gw_v6: str
    aws_v6: str
    plen_v4: int = 30
    plen_v6: int = 64
    # the tunnel whose veth pair this one rides on (its addresses are extra ones on those
    # devices: libreswan's vti-shared=yes); None: it owns its pair
    shares: int | None = None
    # IPv6 inside addresses only (an AWS transit gateway VPN with TunnelInsideIpVersion
    # ipv6): no IPv4 address on the pair, and the BGP session runs over IPv6
    v6_only: bool = False

    @property
    def owner(self) -> int:
        """The tunnel that owns the devices (``n`` itself unless this one is shared)."""
        return self.n if self.shares is None else self.shares

    @property
    def session(self) -> tuple[str, str]:
        """(gateway, aws) addresses of the BGP session over this tunnel."""
        return (self.gw_v6, self.aws_v6) if self.v6_only else (self.gw_v4, self.aws_v4)


# the two tunnels of an AWS Site-to-Site VPN connection, each with its own device
TUNNELS: Mapping[int, Tunnel] = {
    1: Tunnel(1, "vti01", "tun1", "169.254.10.2", "169.254.10.1", "fd00:10::2", "fd00:10::1"),
    2: Tunnel(2, "vti02", "tun2", "169.254.11.2", "169.254.11.1", "fd00:11::2", "fd00:11::1"),
}
# sessions over a device of TUNNELS, only in a topology that asks for them
SHARED_TUNNELS: Mapping[int, Tunnel] = {
    3: Tunnel(3, "vti01", "tun1", "169.254.12.2", "169.254.12.1", "fd00:12::2", "fd00:12::1",
              shares=1),
}
# the two tunnels of a transit gateway VPN with IPv6 inside /126s from fd00::/8 (the VGW end
# the first usable address, ours the second), only in a topology that asks for them
V6_TUNNELS: Mapping[int, Tunnel] = {
    n: Tunnel(n, f"vti0{n}", f"tun{n}", "", "", f"fd00:0:0:{n}0::2", f"fd00:0:0:{n}0::1",
              plen_v6=126, v6_only=True) for n in (6, 7)
}
ALL_TUNNELS: Mapping[int, Tunnel] = {**TUNNELS, **SHARED_TUNNELS, **V6_TUNNELS}
DEFAULT_TUNNELS = (1, 2)


# --------------------------------------------------------------------------- small helpers


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy and return that value.

    Raises :class:`TimeoutError` (naming ``what``, or the predicate) after ``timeout`` seconds.
    The predicate is always called at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
        time.sleep(interval)


def _cmd(argv: Sequence[str], check: bool = True, timeout: float = 30.0) -> str:
    """Run a command, return its stdout; raise HarnessError with stderr on failure."""
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and res.returncode != 0:
        raise HarnessError(
            f"command failed (rc={res.returncode}): {shlex.join(argv)}\n"
            f"{res.stderr.strip()}\n{res.stdout.strip()}".rstrip()
        )
    return res.stdout


def _ip(ns: str, *args: str, check: bool = True) -> str:
    return _cmd(["ip", "-n", ns, *args], check=check)


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = _cmd(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def routes(
    ns: str,
    table: int | str = 254,
    proto: int | str | None = None,
    family: int = 4,
) -> list[dict[str, Any]]:
    """Kernel routes of one table in namespace ``ns``, as parsed ``ip -j route`` objects.

    ``proto`` filters on the route protocol (number or name from rt_protos, e.g. 186/"bgp").
    Each object has at least ``dst`` ("default" or "a.b.c.d/nn"; iproute2 omits "/32" and
    "/128" for host routes), and ``dev``/``gateway``/``metric``/``nexthops``/``flags`` as set.
    """
    if family not in (4, 6):
        raise ValueError("family must be 4 or 6")
    argv = ["-j", f"-{family}", "route", "show", "table", str(table)]
    if proto is not None:
        argv += ["proto", str(proto)]
    res = subprocess.run(
        ["ip", "-n", ns, *argv], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if res.returncode != 0:
        if "table does not exist" in res.stderr:  # nothing was ever put in that table
            return []
        raise HarnessError(f"ip -n {ns} {' '.join(argv)}: {res.stderr.strip()}")
    out = res.stdout.strip()
    if not out:
        return []
    parsed: list[dict[str, Any]] = json.loads(out)
    return parsed


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (a zombie too: see _is_zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_pids(pids: Iterable[int], timeout: float = 3.0) -> None:
    """SIGTERM the pids, wait up to ``timeout``, then SIGKILL what is left."""
    pids = [p for p in set(pids) if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # reap our own children so they do not linger as zombies (which look alive)
            for pid in pids:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
            pids = [p for p in pids if pid_alive(p) and not _is_zombie(p)]
            if not pids:
                return
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def netns_pids(ns: str) -> list[int]:
    """PIDs of the processes living in namespace ``ns`` (``ip netns pids``)."""
    out = _cmd(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in out.split() if x.isdigit()]


def _delete_netns(ns: str) -> bool:
    """Kill everything inside ``ns``, then delete it. Missing namespaces are fine.
    Returns whether this call deleted it."""
    if ns not in list_namespaces():
        return False
    _kill_pids(netns_pids(ns))
    res = subprocess.run(["ip", "netns", "del", ns], capture_output=True, stdin=subprocess.DEVNULL)
    return res.returncode == 0


# --------------------------------------------------------------------------- clean-up registry

_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def _register(obj: Any) -> None:
    with _LIVE_LOCK:
        _LIVE.add(obj)


def _unregister(obj: Any) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(obj)


def detach(*objs: object) -> None:
    """Take ``objs`` (topologies, daemons) off the ``atexit`` clean-up: they outlive this
    process, and whoever takes them over later (see :meth:`_Daemon.adopt`) removes them."""
    for obj in objs:
        _unregister(obj)


@atexit.register
def _cleanup_at_exit() -> None:
    with _LIVE_LOCK:
        objs = list(_LIVE)
    # daemons before the topology they run in
    objs.sort(key=lambda o: isinstance(o, Topology))
    for obj in objs:
        with contextlib.suppress(Exception):
            obj.close()


def _write_marker(tag: str) -> Path:
    MARKER_DIR.mkdir(parents=True, exist_ok=True)
    marker = MARKER_DIR / tag
    pid = os.getpid()
    # atomic: a concurrent cleanup_stale() must never read a half-written marker
    tmp = MARKER_DIR / f".{tag}.{pid}.tmp"
    tmp.write_text(json.dumps({"pid": pid, "starttime": _proc_starttime(pid)}))
    tmp.replace(marker)
    return marker


def _owner_alive(tag: str) -> bool:
    try:
        info = json.loads((MARKER_DIR / tag).read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return pid_alive(pid) and _proc_starttime(pid) == info.get("starttime")


def cleanup_stale() -> list[str]:
    """Delete ``vtb-*`` namespaces (and their processes, markers and temp dirs) that an
    earlier, dead run left behind. Namespaces of a live process (a parallel run) are kept.
    Returns the names of the deleted namespaces."""
    deleted: list[str] = []
    stale_tags: set[str] = set()
    for ns in list_namespaces():
        m = _NS_RE.match(ns)
        if not m:
            continue
        tag = m.group(1)
        if _owner_alive(tag):
            continue
        stale_tags.add(tag)
        if _delete_netns(ns):
            deleted.append(ns)
    if MARKER_DIR.is_dir():
        for marker in MARKER_DIR.iterdir():
            if marker.name.startswith("."):  # being written (or left by a crash: ignore)
                continue
            if not _owner_alive(marker.name):
                stale_tags.add(marker.name)
                marker.unlink(missing_ok=True)
    tmp = Path(tempfile.gettempdir())
    for tag in stale_tags:
        for d in tmp.glob(f"{NS_PREFIX}-{tag}-*"):
            shutil.rmtree(d, ignore_errors=True)
    return deleted


def netns_usable() -> str | None:
    """None if this process can create network namespaces, else the reason why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) not found"
    tag = "p" + secrets.token_hex(3)
    ns = f"{NS_PREFIX}-{tag}-probe"
    try:
        marker = _write_marker(tag)
    except OSError as exc:
        return f"cannot write {MARKER_DIR}: {exc}"
    try:
        _cmd(["ip", "netns", "add", ns])
        _ip(ns, "link", "set", "lo", "up")
    except HarnessError as exc:
        return f"`ip netns add` does not work: {exc}"
    finally:
        _cmd(["ip", "netns", "del", ns], check=False)
        marker.unlink(missing_ok=True)
    return None


# --------------------------------------------------------------------------- topology


class Topology:
    """Two namespaces (gateway and aws) joined by two veth pairs (see module docstring)."""

    def __init__(
        self,
        tag: str | None = None,
        *,
        link_local: bool = True,
        tunnels: Iterable[int] = DEFAULT_TUNNELS,
        names: tuple[str, str] | None = None,
    ) -> None:
        """``link_local=False`` gives the aws ends no IPv6 link-local address, so BIRD sends
        only the global IPv6 next hop (16 bytes). With it (the default, like a real router
        on a direct link) BIRD sends global + link-local (32 bytes), which ExaBGP (4.2 and 5.0)
        prints as two next-hop keys, global first, each listing the same prefixes.

        ``tunnels`` picks from :data:`ALL_TUNNELS`; a shared one (3) needs its owner (1).

        ``names`` (gateway, aws) names the namespaces instead of ``vtb-<tag>-gw/aws``; such a
        topology writes no marker, so :func:`cleanup_stale` never considers it (the names must
        then not start with ``vtb-``)."""
        self.tag = tag or secrets.token_hex(3)
        self.link_local = link_local
        if names is None:
            self.gw = f"{NS_PREFIX}-{self.tag}-gw"
            self.aws = f"{NS_PREFIX}-{self.tag}-aws"
        else:
            if any(n.startswith(f"{NS_PREFIX}-") for n in names) or names[0] == names[1]:
                raise ValueError(f"names must be two different names outside the "
                                 f"{NS_PREFIX}- prefix (that one is the harness'): {names}")
            self.gw, self.aws = names
        self._use_marker = names is None
        wanted = sorted(set(tunnels))
        unknown = [n for n in wanted if n not in ALL_TUNNELS]
        if unknown or not wanted:
            raise ValueError(f"tunnels must be a non-empty subset of {sorted(ALL_TUNNELS)}")
        for n in wanted:
            if ALL_TUNNELS[n].owner not in wanted:
                raise ValueError(f"tunnel {n} shares tunnel {ALL_TUNNELS[n].owner}'s devices: "
                                 f"include it too")
        self.tunnels: Mapping[int, Tunnel] = {n: ALL_TUNNELS[n] for n in wanted}
        self._marker: Path | None = None

    def __repr__(self) -> str:
        return f"Topology(gw={self.gw!r}, aws={self.aws!r})"

    # -- lifecycle
    def up(self) -> Topology:
        """Create namespaces, links and addresses. On any error everything is removed again."""
        _register(self)
        try:
            if self._use_marker:
                self._marker = _write_marker(self.tag)
            for ns in (self.gw, self.aws):
                _cmd(["ip", "netns", "add", ns])
                # keep IPv6 addresses across admin down/up, and no DAD delay
                self.run(
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.keep_addr_on_down=1",
                    "net.ipv6.conf.default.keep_addr_on_down=1",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                )
                _ip(ns, "link", "set", "lo", "up")
            for n, t in self.tunnels.items():
                if t.shares is None:  # a shared tunnel's addresses come with its owner's pair
                    self.recreate_link(n)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Kill processes inside the namespaces, delete them (and so the links). Idempotent."""
        for ns in (self.gw, self.aws):
            _delete_netns(ns)
        if self._marker is not None:
            self._marker.unlink(missing_ok=True)
        elif self._use_marker:
            (MARKER_DIR / self.tag).unlink(missing_ok=True)
        _unregister(self)

    close = down

    def __enter__(self) -> Topology:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def exists(self) -> bool:
        names = list_namespaces()
        return self.gw in names or self.aws in names

    # -- commands
    def _ns(self, ns: str) -> str:
        return {"gw": self.gw, "aws": self.aws}.get(ns, ns)

    def run(
        self, ns: str, *argv: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` ("gw", "aws" or a full name)."""
        full = ["ip", "netns", "exec", self._ns(ns), *argv]
        try:
            res = subprocess.run(
                full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"timed out after {timeout}s: {shlex.join(full)}") from exc
        if check and res.returncode != 0:
            raise HarnessError(
                f"command failed (rc={res.returncode}): {shlex.join(full)}\n{res.stderr.strip()}"
            )
        return res

    def ip(self, ns: str, *args: str, check: bool = True) -> str:
        """``ip -n NS ARGS…``; returns stdout."""
        return _ip(self._ns(ns), *args, check=check)

    # -- links
    def set_link(self, ns: str, dev: str, up: bool) -> None:
        """Administratively set ``dev`` in ``ns`` up or down."""
        self.ip(ns, "link", "set", "dev", dev, "up" if up else "down")

    def link(self, ns: str, dev: str) -> dict[str, Any] | None:
        """``ip -j addr show dev`` of one device (flags, operstate, addr_info), or None."""
        out = self.ip(ns, "-j", "addr", "show", "dev", dev, check=False).strip()
        if not out:
            return None
        data: list[dict[str, Any]] = json.loads(out)
        return data[0] if data else None

    def delete_link(self, dev: str) -> None:
        """Delete a gateway-side device (e.g. "vti01"); its veth peer goes with it."""
        self.ip("gw", "link", "del", "dev", dev)

    def riders(self, n: int) -> list[Tunnel]:
        """The tunnels of this topology whose addresses live on tunnel ``n``'s veth pair:
        its owner first, then the ones sharing it (``n`` may be either)."""
        owner = self.tunnels[n].owner
        return [t for t in self.tunnels.values() if t.owner == owner]

    def recreate_link(self, n: int, wait: bool = True) -> None:
        """(Re)create veth pair ``n`` with its addresses, both ends up (and, with ``wait``,
        operational). An existing pair is deleted first. The pair carries the addresses of
        every tunnel riding on it: for a shared tunnel this recreates its owner's pair."""
        riders = self.riders(n)
        t = riders[0]
        if self.link("gw", t.gw_dev) is not None:
            self.delete_link(t.gw_dev)
        if self.link("aws", t.aws_dev) is not None:
            self.ip("aws", "link", "del", "dev", t.aws_dev)
        # create both ends directly inside their namespaces: no name is ever used in the
        # root namespace, so parallel topologies cannot clash
        peer = ["peer", "name", t.aws_dev, "netns", self.aws]
        self.ip("gw", "link", "add", t.gw_dev, "type", "veth", *peer)
        for r in riders:
            for ns, dev, v4, v6 in (
                ("gw", r.gw_dev, r.gw_v4, r.gw_v6),
                ("aws", r.aws_dev, r.aws_v4, r.aws_v6),
            ):
                if not r.v6_only:
                    self.ip(ns, "addr", "add", f"{v4}/{r.plen_v4}", "dev", dev)
                self.ip(ns, "-6", "addr", "add", f"{v6}/{r.plen_v6}", "dev", dev, "nodad")
        if not self.link_local:
            self.ip("aws", "link", "set", "dev", t.aws_dev, "addrgenmode", "none")
        for ns, dev in (("gw", t.gw_dev), ("aws", t.aws_dev)):
            self.set_link(ns, dev, True)
        if wait:
            self.wait_link_ready(n)

    def link_ready(self, n: int) -> bool:
        """Both ends of pair ``n`` are operationally up and have their link-local address
        (when enabled): BIRD then sees the same interface state on every run."""
        t = self.tunnels[n]
        for ns, dev in (("gw", t.gw_dev), ("aws", t.aws_dev)):
            info = self.link(ns, dev)
            if info is None or info.get("operstate") != "UP":
                return False
            if self.link_local or ns == "gw":
                scopes = {a.get("scope") for a in info.get("addr_info", [])}
                if "link" not in scopes:
                    return False
        return True

    def wait_link_ready(self, n: int, timeout: float = 5.0) -> None:
        wait_until(lambda: self.link_ready(n), timeout, interval=0.02, what=f"tunnel {n} up")

    def carrier_off(self, n: int) -> None:
        """Take the peer end of tunnel ``n`` down: the gateway device loses carrier (stays
        admin-up, like an IPsec tunnel whose far end vanished)."""
        self.set_link("aws", self.tunnels[n].aws_dev, False)

    def carrier_on(self, n: int) -> None:
        self.set_link("aws", self.tunnels[n].aws_dev, True)

    # -- blackhole (nftables)
    def blackhole(self, n: int, on: bool) -> None:
        """Drop (``on``) or pass again all IP traffic of tunnel ``n`` at the VGW end of its
        veth pair, in and out, with nftables: the device keeps its carrier and BGP is not
        told (the session dies when its hold time runs out), as when an IPsec tunnel stops
        passing traffic. ARP is left alone (a route-based IPsec tunnel has none; the
        gateway's neighbour entry stays valid). For a shared tunnel (3) that is the whole
        device, so its owner's traffic too. Idempotent both ways; with nothing blackholed the
        table is removed, so no nft state is left."""
        dev = self.tunnels[n].aws_dev
        if not on and shutil.which("nft") is None:
            return  # nothing can have been put there
        current = self._blackholed_devices()
        want = current | {dev} if on else current - {dev}
        if want == current and (want or not self._has_blackhole_table()):
            return
        # one transaction replaces the whole table (add first, so the delete cannot fail):
        # whatever a crash left there, the result is exactly `want`
        script = f"add table inet {BLACKHOLE_TABLE}\ndelete table inet {BLACKHOLE_TABLE}\n"
        if want:
            script += _blackhole_table(sorted(want))
        self._nft(script)

    def blackholed(self) -> set[int]:
        """The tunnels whose VGW device nftables blackholes now (shared ones included)."""
        devs = self._blackholed_devices()
        return {n for n, t in self.tunnels.items() if t.aws_dev in devs}

    def _nft(self, script: str) -> None:
        full = ["ip", "netns", "exec", self.aws, "nft", "-f", "-"]
        res = subprocess.run(full, input=script, capture_output=True, text=True, timeout=30,
                             check=False)
        if res.returncode != 0:
            raise HarnessError(f"command failed (rc={res.returncode}): {shlex.join(full)}\n"
                               f"{res.stderr.strip()}\n--- script:\n{script}")

    def _has_blackhole_table(self) -> bool:
        if shutil.which("nft") is None:
            return False
        res = self.run("aws", "nft", "list", "table", "inet", BLACKHOLE_TABLE, check=False)
        return res.returncode == 0

    def _blackholed_devices(self) -> set[str]:
        """The devices in the blackhole table's set (empty without nft or the table)."""
        if shutil.which("nft") is None:
            return set()
        res = self.run("aws", "nft", "-j", "list", "set", "inet", BLACKHOLE_TABLE,
                       BLACKHOLE_SET, check=False)
        if res.returncode != 0:
            return set()
        found: set[str] = set()
        for item in json.loads(res.stdout).get("nftables", []):
            elems = item.get("set", {}).get("elem", [])
            found |= {e for e in elems if isinstance(e, str)}
        return found

    def add_host_link(self, host_dev: str, ns_dev: str, host_cidr: str, ns_cidr: str) -> None:
        """A veth pair from the root namespace (``host_dev``, ``host_cidr``) into the gateway
        namespace (``ns_dev``, ``ns_cidr``), both ends up: a management link, so that the
        host can reach what the gateway serves. It goes away with the gateway namespace."""
        _cmd(["ip", "link", "add", host_dev, "type", "veth",
              "peer", "name", ns_dev, "netns", self.gw])
        try:
            _cmd(["ip", "addr", "add", host_cidr, "dev", host_dev])
            self.ip("gw", "addr", "add", ns_cidr, "dev", ns_dev)
            _cmd(["ip", "link", "set", "dev", host_dev, "up"])
            self.set_link("gw", ns_dev, True)
        except BaseException:
            _cmd(["ip", "link", "del", "dev", host_dev], check=False)
            raise

    def sysctl(self, ns: str, key: str, value: str | int) -> None:
        self.run(ns, "sysctl", "-qw", f"{key}={value}")

    def routes(
        self,
        ns: str = "gw",
        table: int | str = 254,
        proto: int | str | None = None,
        family: int = 4,
    ) -> list[dict[str, Any]]:
        return routes(self._ns(ns), table=table, proto=proto, family=family)


# nftables table of Topology.blackhole: a set of devices, and drop rules in the input,
# forward and output hooks (before the filter priority, so no other rule can accept first)
BLACKHOLE_TABLE = "vtibgp-lab-blackhole"
BLACKHOLE_SET = "blackholed"


def _blackhole_table(devices: Sequence[str]) -> str:
    """The blackhole table, dropping all IP traffic in and out of ``devices``."""
    elems = ", ".join(json.dumps(d) for d in devices)

    def chain(hook: str, rules: Sequence[str]) -> str:
        body = "".join(f"    {r} @{BLACKHOLE_SET} counter drop\n" for r in rules)
        return (f"  chain {hook} {{\n    type filter hook {hook} priority -200; "
                f"policy accept;\n{body}  }}\n")

    return (f"table inet {BLACKHOLE_TABLE} {{\n"
            f"  set {BLACKHOLE_SET} {{ type ifname; elements = {{ {elems} }}; }}\n"
            + chain("input", ["iifname"])
            + chain("forward", ["iifname", "oifname"])
            + chain("output", ["oifname"])
            + "}\n")


# --------------------------------------------------------------------------- processes


def _sessions(topology: Topology, tunnels: Iterable[int]) -> tuple[int, ...]:
    """``tunnels`` as a tuple, checked against what ``topology`` was built with (a session
    over tunnel 3 needs ``Topology(tunnels=(1, 2, 3))``: its addresses exist only there)."""
    out = tuple(tunnels)
    missing = [n for n in out if n not in topology.tunnels]
    if missing:
        raise ValueError(f"tunnel(s) {missing} not in {topology!r} (built with tunnels="
                         f"{tuple(topology.tunnels)})")
    return out


class _Daemon:
    """A subprocess whose stdout+stderr go to a log file.

    Either started here (:meth:`_spawn`: ``proc`` is set) or adopted (:meth:`adopt`): a
    process an earlier run started and left running, known by its PID and start time (so
    a PID the kernel has since given to another process is never taken for it)."""

    proc: subprocess.Popen[bytes] | None = None
    adopted: tuple[int, str | None] | None = None
    log_path: Path

    def _spawn(
        self, argv: Sequence[str], out_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "ab") as log:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,  # a ^C at the terminal must not hit it before us
            )

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        return self.adopted[0] if self.adopted is not None else None

    def record(self) -> dict[str, Any]:
        """What :meth:`adopt` needs to take this process over from another process
        (JSON-able): ``{"pid": …, "starttime": …}``."""
        pid = self.pid
        if pid is None:
            raise HarnessError(f"{self!r} was never started")
        return {"pid": pid, "starttime": _proc_starttime(pid)}

    def adopt(self, record: Mapping[str, Any]) -> None:
        """Take over the process described by ``record`` (from :meth:`record`):
        :meth:`running` and the stop methods then work on it."""
        self.proc = None
        self.adopted = (int(record["pid"]), record.get("starttime"))

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self.adopted is None:
            return False
        pid, start = self.adopted
        return pid_alive(pid) and not _is_zombie(pid) and _proc_starttime(pid) == start

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _terminate(self, timeout: float) -> int | None:
        proc = self.proc
        if proc is None:
            # an adopted process: not our child, so no exit code to collect
            if self.adopted is not None and self.running():
                _kill_pids([self.adopted[0]], timeout)
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(10)
        return proc.returncode


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


def birdc(program: str, socket: str | os.PathLike[str], *args: str,
          timeout: float = 10.0) -> str:
    """Run a birdc command on BIRD's control `socket`; raise HarnessError if BIRD answers
    with an error code."""
    out = _cmd([program, "-s", str(socket), *args], timeout=timeout)
    for line in out.splitlines():
        # birdc reply lines: "NNNN-text"/"NNNN text"; 8xxx/9xxx are errors
        m = re.match(r"^([89]\d{3})[ -](.*)", line)
        if m:
            raise HarnessError(f"birdc {' '.join(args)}: {m.group(2)}\n{out}")
        if line.startswith("syntax error") or "Parse error" in line:
            raise HarnessError(f"birdc {' '.join(args)}: {line}\n{out}")
    return out


class BirdPeer(_Daemon):
    """BIRD 2 in the aws namespace, AS 64512, one BGP session per tunnel to the gateway.
    ``tunnels`` picks the sessions (protocols ``tun1``, ``tun2``, and ``tun3`` over tunnel 1's
    device when asked for; the topology must have been built with them).

    Routes are originated by static ``blackhole`` routes, one static protocol and one table
    per tunnel and family, so each tunnel can announce a different set (and MED). The static
    routes live in an included file (``routes.conf``); announce/withdraw rewrite it and run
    ``birdc configure``. The main file is rewritten too, so BIRD's view of which sessions are
    disabled and how much tunnel 2 prepends always matches the harness state (a reconfigure
    otherwise re-enables a protocol disabled with ``birdc disable``).
    """

    def __init__(
        self,
        topology: Topology,
        workdir: str | os.PathLike[str] | None = None,
        *,
        hold_time: int = DEFAULT_HOLD_TIME,
        keepalive_time: int | None = None,
        passive: bool = True,
        prepend: Mapping[int, int] | None = None,
        tunnels: Sequence[int] = (1, 2),
        bird: str = "bird",
        birdc: str = "birdc",
        socket: str | os.PathLike[str] | None = None,
    ) -> None:
        """``socket``: BIRD's control socket (default: in a fresh temp directory, removed by
        :meth:`stop`); a path given here is left to its owner."""
        self.topology = topology
        self.tunnels = _sessions(topology, tunnels)  # before anything is created on disk
        self._own_workdir = workdir is None
        self.workdir = Path(
            workdir if workdir is not None else tempfile.mkdtemp(prefix=f"vtb-{topology.tag}-")
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        # unix socket paths are limited to 108 bytes: keep the socket in a short temp dir
        self.sockdir: Path | None = None
        if socket is None:
            self.sockdir = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}-{topology.tag}-bird-"))
            self.socket = self.sockdir / "bird.ctl"
        else:
            self.socket = Path(socket)
        self.conf_path = self.workdir / "bird.conf"
        self.routes_path = self.workdir / "routes.conf"
        self.log_path = self.workdir / "bird.log"
        self.stdout_path = self.workdir / "bird.stdout"
        self.hold_time = hold_time
        self.keepalive_time = keepalive_time
        self.passive = passive
        self.prepend: dict[int, int] = dict(prepend or {})
        self.disabled: set[int] = set()
        # tunnel -> prefix -> (med, communities)
        self.announced: dict[int, dict[str, tuple[int | None, tuple[tuple[int, int], ...]]]] = {
            n: {} for n in self.tunnels
        }
        self.bird = shutil.which(bird) or bird
        self.birdc_bin = shutil.which(birdc) or birdc

    def __repr__(self) -> str:
        return f"BirdPeer(ns={self.topology.aws!r}, socket={str(self.socket)!r})"

    # -- config generation
    def _main_conf(self) -> str:
        lines = [
            f'log "{self.log_path}" all;',
            f"router id {TUNNELS[1].aws_v4};",
            "timeformat protocol iso long;",
            "timeformat route iso long;",
            "protocol device { scan time 10; }",
        ]
        for n in self.tunnels:
            lines.append(f"ipv4 table t{n}v4; ipv6 table t{n}v6;")
        # what the gateway announces comes in per tunnel and meets in vgw4/vgw6, where BIRD
        # picks the best (AS path, then MED, as the VGW does): the VGW's return tunnel
        lines.append("ipv4 table vgw4; ipv6 table vgw6;")
        for n in self.tunnels:
            for fam in (4, 6):
                lines.append(
                    f"protocol pipe return_t{n}v{fam} {{ table t{n}v{fam}; peer table "
                    f"vgw{fam}; import none; export where source = RTS_BGP; }}")
        # ... and into the VGW namespace's kernel, so that its traffic to the gateway's
        # networks takes that tunnel (the return path of a data-plane test)
        lines.append("protocol kernel return_k4 { ipv4 { table vgw4; import none; "
                     "export all; }; }")
        lines.append("protocol kernel return_k6 { ipv6 { table vgw6; import none; "
                     "export all; }; }")
        lines.append(f'include "{self.routes_path}";')
        for n in self.tunnels:
            t = self.topology.tunnels[n]
            shared = f", shared with tunnel {t.shares}" if t.shares is not None else ""
            prep = "".join(f" bgp_path.prepend({AWS_ASN});" for _ in range(self.prepend.get(n, 0)))
            # MED from the static route is only sent to an eBGP peer if the export filter
            # sets it ("fresh" attribute), hence the self-assignment
            med = "if defined(bgp_med) then bgp_med = bgp_med;"
            lines.append(f"filter export_t{n} {{ {med}{prep} accept; }}")
            keep = f"keepalive time {self.keepalive_time};" if self.keepalive_time else ""
            gw_addr, aws_addr = t.session
            v4_channel = "" if t.v6_only else (
                f"ipv4 {{ table t{n}v4; import all; export filter export_t{n}; }};")
            lines.append(
                f"""protocol bgp tun{n} {{
  description "tunnel {n} ({t.aws_dev} -> {t.gw_dev}{shared})";
  disabled {"yes" if n in self.disabled else "no"};
  local {aws_addr} as {AWS_ASN};
  neighbor {gw_addr} as {GW_ASN};
  interface "{t.aws_dev}";
  direct;
  passive {"on" if self.passive else "off"};
  hold time {self.hold_time}; {keep}
  startup hold time {self.hold_time};
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 5;
  error forget time 10;
  graceful restart off;
  {v4_channel}
  ipv6 {{ table t{n}v6; import all; export filter export_t{n};
          next hop address {t.aws_v6}; }};
}}"""
            )
        return "\n".join(lines) + "\n"

    def _routes_conf(self) -> str:
        out: list[str] = []
        for n in self.tunnels:
            for fam in (4, 6):
                body: list[str] = []
                for prefix, (med, comms) in sorted(self.announced[n].items()):
                    if ipaddress.ip_network(prefix).version != fam:
                        continue
                    attrs = ""
                    if med is not None:
                        attrs += f" bgp_med = {med};"
                    for a, b in comms:
                        attrs += f" bgp_community.add(({a},{b}));"
                    block = f" {{{attrs} }}" if attrs else ""
                    body.append(f"  route {prefix} blackhole{block};")
                out.append(
                    f"protocol static s{n}v{fam} {{ ipv{fam} {{ table t{n}v{fam}; }};\n"
                    + "\n".join(body)
                    + "\n}"
                )
        return "\n".join(out) + "\n"

    def _write_conf(self) -> None:
        for path, text in (
            (self.routes_path, self._routes_conf()),
            (self.conf_path, self._main_conf()),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)

    # -- lifecycle
    def start(self, timeout: float = 10.0) -> BirdPeer:
        _register(self)
        self._write_conf()
        argv = [self.bird, "-f", "-c", str(self.conf_path), "-s", str(self.socket)]
        self._spawn(["ip", "netns", "exec", self.topology.aws, *argv], self.stdout_path)
        try:
            wait_until(self._ready, timeout, what="BIRD control socket")
        except TimeoutError as exc:
            self.stop()
            raise HarnessError(f"BIRD did not start: {exc}\n{self._diag()}") from exc
        return self

    def _ready(self) -> bool:
        if not self.running():
            raise HarnessError(
                f"BIRD exited (rc={self.proc and self.proc.returncode})\n{self._diag()}"
            )
        if not self.socket.exists():
            return False
        try:
            self.birdc("show", "status")
        except HarnessError:
            return False
        return True

    def _diag(self) -> str:
        out = ""
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                out += f"--- {p}\n{tail(p.read_text(errors='replace'))}\n"
        return out

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop BIRD (SIGTERM, SIGKILL after ``timeout``) and remove the socket dir."""
        rc = self._terminate(timeout)
        if self.sockdir is not None:
            shutil.rmtree(self.sockdir, ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        _unregister(self)
        return rc

    close = stop

    def __enter__(self) -> BirdPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        text = ""
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                text += p.read_text(errors="replace")
        return text

    def snapshot(self) -> dict[str, Any]:
        """The state the config is generated from (prepending, disabled sessions, announced
        routes), JSON-able: another process's BirdPeer, built with the same arguments, picks it
        up with :meth:`load_snapshot` and then changes BIRD the way this one would."""
        return {
            "prepend": {str(n): c for n, c in self.prepend.items()},
            "disabled": sorted(self.disabled),
            "announced": {
                str(n): {p: [med, [list(c) for c in comms]] for p, (med, comms) in rib.items()}
                for n, rib in self.announced.items()
            },
        }

    def load_snapshot(self, snap: Mapping[str, Any]) -> None:
        """Set the state :meth:`snapshot` gave, without touching BIRD or its files."""
        self.prepend = {int(n): int(c) for n, c in snap["prepend"].items()}
        self.disabled = {int(n) for n in snap["disabled"]}
        announced: dict[int, dict[str, tuple[int | None, tuple[tuple[int, int], ...]]]] = {
            n: {} for n in self.tunnels
        }
        for n, rib in snap["announced"].items():
            for prefix, (med, comms) in rib.items():
                announced[int(n)][prefix] = (med, tuple((int(a), int(b)) for a, b in comms))
        self.announced = announced

    # -- control
    def birdc(self, *args: str, timeout: float = 10.0) -> str:
        """Run a birdc command; raise HarnessError if BIRD answers with an error code."""
        return birdc(self.birdc_bin, self.socket, *args, timeout=timeout)

    def configure(self) -> None:
        """Write the config from the current state and make BIRD load it."""
        self._write_conf()
        out = self.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise HarnessError(f"birdc configure failed:\n{out}\n{self._diag()}")

    def announce(
        self,
        prefixes: Iterable[str],
        tunnels: Iterable[int] = (1, 2),
        med: int | None = None,
        communities: Iterable[tuple[int, int]] = (),
    ) -> None:
        """Originate ``prefixes`` on the given tunnels (replacing their MED/communities)."""
        comms = tuple(communities)
        plist = [str(ipaddress.ip_network(p)) for p in prefixes]
        for n in self._own(tunnels):
            for p in plist:
                self.announced[n][p] = (med, comms)
        self.configure()
        self.wait_originated()

    def withdraw(self, prefixes: Iterable[str], tunnels: Iterable[int] = (1, 2)) -> None:
        plist = [str(ipaddress.ip_network(p)) for p in prefixes]
        for n in self._own(tunnels):
            for p in plist:
                self.announced[n].pop(p, None)
        self.configure()
        self.wait_originated()

    def _own(self, tunnels: Iterable[int]) -> tuple[int, ...]:
        out = tuple(tunnels)
        missing = [n for n in out if n not in self.announced]
        if missing:
            raise ValueError(f"BIRD has no session for tunnel(s) {missing} (it was started "
                             f"with tunnels={self.tunnels})")
        return out

    def return_tunnel(self, prefix: str) -> int | None:
        """The tunnel the VGW would send traffic for `prefix` (one of the gateway's
        networks) back through: its best route among those the gateway announced on each
        tunnel (None: announced on none)."""
        fam = ipaddress.ip_network(prefix).version
        try:
            out = self.birdc("show", "route", "table", f"vgw{fam}", "primary", prefix)
        except HarnessError:
            return None  # "Network not found"
        for n in self.tunnels:
            if re.search(rf"\[tun{n}\b", out):
                return n
        return None

    def set_prepend(self, tunnel: int, count: int) -> None:
        """Prepend AS 64512 ``count`` extra times on ``tunnel`` (AWS-style backup tunnel).
        BIRD re-exports with the new policy; the session stays up."""
        self.prepend[tunnel] = count
        self.configure()

    def disable_session(self, tunnel: int, message: str | None = None) -> None:
        """``birdc disable tunN``: BIRD sends a Cease (6/2) and closes the session. With
        ``message`` the Cease carries an RFC 8203 shutdown communication (which ExaBGP
        4.2.21 fails to decode: it then resets with 1/0 and reports no notification)."""
        self.disabled.add(tunnel)
        self._write_conf()
        args = ["disable", f"tun{tunnel}"]
        if message is not None:
            args.append(json.dumps(message))  # birdc wants a double-quoted string
        self.birdc(*args)

    def enable_session(self, tunnel: int) -> None:
        self.disabled.discard(tunnel)
        self._write_conf()
        self.birdc("enable", f"tun{tunnel}")

    def restart_session(self, tunnel: int) -> None:
        self.birdc("restart", f"tun{tunnel}")

    def session_state(self, tunnel: int) -> str:
        """BGP state of tunnel ``tunnel``'s session as BIRD shows it: "Established",
        "Passive", "Active", "Connect", "OpenSent", "OpenConfirm", "Idle", or "down"
        when the protocol is disabled."""
        out = self.birdc("show", "protocols", f"tun{tunnel}")
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == f"tun{tunnel}":
                # name proto table state since(date time) info...
                info = parts[6:] if len(parts) > 6 else []
                return info[0] if info else parts[3]
        raise HarnessError(f"no protocol tun{tunnel} in:\n{out}")

    def established(self, tunnel: int) -> bool:
        return self.session_state(tunnel) == "Established"

    def _route_set(self, *args: str) -> set[str]:
        out = self.birdc("show", "route", *args)
        found: set[str] = set()
        for line in out.splitlines():
            m = re.match(r"^(?:\d{4}-)?\s*([0-9a-fA-F.:]+/\d+)\s", line)
            if m:
                found.add(str(ipaddress.ip_network(m.group(1))))
        return found

    def originated(self, tunnel: int, family: int = 4) -> set[str]:
        """Prefixes in tunnel ``tunnel``'s table (what it will export once established)."""
        return self._route_set("table", f"t{tunnel}v{family}")

    def exported(self, tunnel: int, family: int = 4) -> set[str]:
        """Prefixes BIRD currently exports on ``tunnel`` (empty unless established)."""
        return self._route_set("export", f"tun{tunnel}", "table", f"t{tunnel}v{family}")

    def wait_originated(self, timeout: float = 5.0) -> None:
        """Wait until every tunnel's tables hold exactly the announced prefixes.
        ``birdc configure`` answers before the static protocols have applied the change."""

        def synced() -> bool:
            for n in self.tunnels:
                want = set(self.announced[n])
                for fam in (4, 6):
                    fam_want = {p for p in want if ipaddress.ip_network(p).version == fam}
                    if self.originated(n, fam) != fam_want:
                        return False
            return True

        wait_until(synced, timeout, interval=0.02, what="BIRD tables to match announcements")


def default_exabgp() -> str:
    """The ``exabgp`` next to the running interpreter (the venv's 5.0.x)."""
    return str(Path(sys.executable).parent / "exabgp")


class ExaBGPGateway(_Daemon):
    """The real ExaBGP in the gateway namespace, running ``command`` as its API process.

    ``command`` is an argv list; it is started through a generated ``/bin/sh`` wrapper
    (ExaBGP wants one executable path) that also records the plugin's PID, so that
    :meth:`stop` can kill a plugin orphaned by an ExaBGP that had to be SIGKILLed.
    One neighbor per entry of ``tunnels``, each with its own local address (so two sessions
    can share one device, e.g. tunnels 1 and 3 over vti01). The config is written by
    :func:`vtibgp.exabgp.render.render_neighbor` and ``render_process``, the product's
    renderer; ``extra_api`` is more of the neighbors' ``api { }`` block, e.g.
    ``"send { parsed; update; }"``.
    """

    def __init__(
        self,
        topology: Topology,
        command: Sequence[str],
        workdir: str | os.PathLike[str] | None = None,
        *,
        exabgp: str | None = None,
        hold_time: int = DEFAULT_HOLD_TIME,
        tunnels: Sequence[int] = (1, 2),
        process_name: str = "vtibgp",
        env: Mapping[str, str] | None = None,
        extra_api: str = "",
        lan_peers: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        if not command:
            raise ValueError("command must be a non-empty argv list")
        self.lan_peers = list(lan_peers)  # export.lan_peers entries: neighbors too
        self.topology = topology
        self.tunnels = _sessions(topology, tunnels)  # before anything is created on disk
        self.command = list(command)
        self._own_workdir = workdir is None
        self.workdir = Path(
            workdir if workdir is not None else tempfile.mkdtemp(prefix=f"vtb-{topology.tag}-")
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.exabgp = exabgp or default_exabgp()
        self.hold_time = hold_time
        self.process_name = process_name
        self.extra_env = dict(env or {})
        self.extra_api = extra_api
        self.conf_path = self.workdir / "exabgp.conf"
        self.wrapper_path = self.workdir / "plugin.sh"
        self.pidfile = self.workdir / "plugin.pids"
        self.log_path = self.workdir / "exabgp.log"

    def __repr__(self) -> str:
        return f"ExaBGPGateway(ns={self.topology.gw!r}, exabgp={self.exabgp!r})"

    def config_text(self) -> str:
        """The exabgp.conf: stanzas from :mod:`vtibgp.exabgp.render`, as the product's."""
        parts = [render_process(str(self.wrapper_path), name=self.process_name)]
        for n in self.tunnels:
            t = self.topology.tunnels[n]
            gw_addr, aws_addr = t.session
            parts.append(
                render_neighbor(
                    aws_addr,
                    router_id=TUNNELS[1].gw_v4,
                    local_address=gw_addr,
                    local_as=GW_ASN,
                    peer_as=AWS_ASN,
                    hold_time=self.hold_time,
                    families=("ipv6 unicast",) if t.v6_only else ("ipv4 unicast",
                                                                  "ipv6 unicast"),
                    process=self.process_name,
                    extra_api=self.extra_api,
                )
            )
        for lp in self.lan_peers:  # the LAN side: told the cloud's prefixes, not read
            parts.append(render_neighbor(
                lp["address"], router_id=TUNNELS[1].gw_v4, local_address=lp["local_address"],
                local_as=GW_ASN, peer_as=lp["peer_as"], hold_time=lp.get("hold_time", 90),
                families=("ipv4 unicast",), process=self.process_name, receive=False))
        return "\n\n".join(parts) + "\n"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "exabgp.daemon.user": "root",
                "exabgp.daemon.daemonize": "false",
                "exabgp.api.cli": "false",
                "exabgp.log.destination": "stdout",
                # answers (the adj-rib-in resync) in chunks: with the default, 1, ExaBGP takes
                # a minute for 100,000 paths (docs/performance.md)
                "exabgp.api.chunk": "1000",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> ExaBGPGateway:
        """Write config and wrapper, start ExaBGP. Does not wait for sessions."""
        if not os.access(self.exabgp, os.X_OK):
            raise HarnessError(f"exabgp not executable: {self.exabgp}")
        _register(self)
        self.conf_path.write_text(self.config_text())
        self.wrapper_path.write_text(
            "#!/bin/sh\n"
            f"echo $$ >> {shlex.quote(str(self.pidfile))}\n"
            f"exec {shlex.join(self.command)}\n"
        )
        self.wrapper_path.chmod(0o755)
        # ExaBGP reads exabgp.* settings from the environment; `ip netns exec` keeps it
        self._spawn(
            ["ip", "netns", "exec", self.topology.gw, self.exabgp, str(self.conf_path)],
            self.log_path,
            env=self.env(),
        )
        return self

    def plugin_pids(self) -> list[int]:
        try:
            return [int(x) for x in self.pidfile.read_text().split() if x.isdigit()]
        except FileNotFoundError:
            return []

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM ExaBGP, SIGKILL after ``timeout`` (4.2 can hang on shutdown); then kill any
        plugin process it left behind. Returns ExaBGP's exit code (None if never started)."""
        rc = self._terminate(timeout)
        leftovers = [p for p in self.plugin_pids() if pid_alive(p) and not _is_zombie(p)]
        if leftovers:
            _kill_pids(leftovers, timeout=2.0)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        _unregister(self)
        return rc

    close = stop

    def __enter__(self) -> ExaBGPGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 15.0, what: str | None = None
    ) -> T:
        """:func:`wait_until`, but fail at once (with the log tail) if ExaBGP exits."""

        def check() -> T:
            value = predicate()
            if not value and not self.running():
                rc = self.proc.returncode if self.proc else None
                raise HarnessError(
                    f"ExaBGP exited (rc={rc}) while waiting for {what or predicate!r}\n"
                    f"{tail(self.log_text())}"
                )
            return value

        try:
            return wait_until(check, timeout, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- exabgp log tail:\n{tail(self.log_text())}") from exc

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        self.wait_for(lambda: text in self.log_text(), timeout, what=f"{text!r} in exabgp log")
