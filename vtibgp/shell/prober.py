"""The tunnel prober: ICMP echo requests through each tunnel device, replies reported.

One background thread (a selector loop: it sleeps until a socket is readable, a request is
due or a request's wait ends) sends, per target, an echo request every ``interval`` seconds
out of the target's device, and calls back:

* ``on_reply(device, rtt, at)`` for every reply that matches a request of that device (its
  identifier, sequence number and payload, from the target address) and came within
  ``loss_after`` seconds; ``at`` is ``time.monotonic()`` when it was read, ``rtt`` is ``at``
  minus the time the request was sent. Out-of-order replies are fine; duplicates and late
  replies (after ``loss_after``) are not reported;
* ``on_sent(device, at)`` for every request the kernel accepted;
* ``on_lost(device, at)`` for a request unanswered after ``loss_after`` seconds;
* ``on_error(device, message)`` when a socket cannot be opened or a send fails (device gone:
  ENODEV/ENXIO, network unreachable, ...). Reported once per run of the same error (again
  after a success or a different error). The socket is closed and opened again at the
  device's next interval, so a device deleted and re-created under the same name is probed
  again without a restart.

Callbacks run on the prober's thread: they must be quick and must not block. An exception
in one is logged, never raised out of the thread.

Sockets. One per device, bound to it with SO_BINDTODEVICE, so a request can only leave
through that device (never another route to the target) and only that device's replies are
received. Unprivileged ICMP "ping" sockets (SOCK_DGRAM + IPPROTO_ICMP / IPPROTO_ICMPV6) are
preferred: the kernel chooses the identifier (read back with getsockname), computes the
checksum and delivers only the replies to that identifier. They are allowed when the
process's effective group or one of its supplementary groups is inside
``net.ipv4.ping_group_range`` (which also governs IPv6 ping sockets); the default range,
"1 0", is empty and refuses every process, root included (EACCES). Otherwise raw sockets
(SOCK_RAW, CAP_NET_RAW, EPERM without it): each device gets its own random identifier, a
kernel ICMP filter passes only echo replies (our own requests and other ICMP types never
reach us), and the identifier, sequence number and a per-prober random payload filter out
other processes' pings.

SO_BINDTODEVICE, measured on Linux 6.18 as uid 65534 with no capabilities: binding a fresh
socket (ping, raw or UDP) to a device needs no privilege (since Linux 5.7; before it needed
CAP_NET_RAW); binding an already bound socket to another device needs CAP_NET_RAW (EPERM).
So a socket is never re-bound: a new one is opened instead. A daemon running unprivileged
thus needs either a ping_group_range that includes its group or CAP_NET_RAW
(``AmbientCapabilities=CAP_NET_RAW``); :meth:`Prober.check` says which is missing.

Namespaces. ``netns=`` (tests) opens every socket inside that named network namespace
(:func:`vtibgp.kernel.writer.in_netns`); a socket stays in the namespace it was made in.

Owns: the sockets, identifiers, sequence numbers, the send schedule, matching replies to
requests, the per-device counters. Must not know: whether a tunnel is up (the core decides
from the replies and the clock), metrics (callbacks only), configuration files, BGP.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from vtibgp.kernel.writer import in_netns

__all__ = ["Mode", "ProbeTarget", "Prober"]

log = logging.getLogger("vtibgp.shell.prober")

Mode = Literal["auto", "ping", "raw"]
Kind = Literal["ping", "raw"]

ICMP_ECHO_REPLY, ICMP_ECHO = 0, 8
ICMP6_ECHO, ICMP6_ECHO_REPLY = 128, 129
SOL_RAW = 255
ICMP_FILTER = 1  # SOL_RAW: u32 mask of the ICMP types to block (raw IPv4 sockets)
ICMP6_FILTER = 1  # IPPROTO_ICMPV6: 8 x u32 mask of the ICMPv6 types to block
PAYLOAD_SIZE = 16
READS_PER_WAKE = 64  # replies read from one socket before the others get their turn
SET_TARGETS_WAIT = 2.0  # seconds set_targets waits for the loop to take the new targets
_PERMISSION = (errno.EACCES, errno.EPERM)

ReplyCallback = Callable[[str, float, float], None]
EventCallback = Callable[[str, float], None]
ErrorCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class ProbeTarget:
    """Probe ``address`` (IPv4 or IPv6) out of ``device``, from ``source`` when given (else
    the kernel picks the device's address)."""

    device: str
    address: str
    source: str | None = None

    @property
    def family(self) -> int:
        return socket.AF_INET if ipaddress.ip_address(self.address).version == 4 \
            else socket.AF_INET6


# --------------------------------------------------------------------------- packets


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An echo request. The checksum is filled in for ICMPv4 (the kernel does it for
    ICMPv6 and for ping sockets, which also put their own identifier in)."""
    kind = ICMP_ECHO if family == socket.AF_INET else ICMP6_ECHO
    head = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if family == socket.AF_INET6:
        return head + payload
    csum = _checksum(head + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident, seq) + payload


def _parse_reply(data: bytes, family: int, kind: Kind) -> tuple[int, int, bytes] | None:
    """(identifier, sequence, payload) of an echo reply, or None for anything else. A raw
    IPv4 socket reads the IP header too; the others start at the ICMP header."""
    if family == socket.AF_INET and kind == "raw":
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        return None
    want = ICMP_ECHO_REPLY if family == socket.AF_INET else ICMP6_ECHO_REPLY
    typ, code, _csum, ident, seq = struct.unpack_from("!BBHHH", data)
    if typ != want or code != 0:
        return None
    return ident, seq, data[8:]


# --------------------------------------------------------------------------- sockets


def _new_socket(family: int, kind: Kind) -> socket.socket:
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    stype = socket.SOCK_DGRAM if kind == "ping" else socket.SOCK_RAW
    return socket.socket(family, stype, proto)


def _only_echo_replies(sock: socket.socket, family: int) -> None:
    """Kernel filter on a raw socket: every ICMP type but echo reply is dropped for us."""
    if family == socket.AF_INET:
        mask = ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF
        sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", mask))
        return
    words = [0xFFFFFFFF] * 8
    words[ICMP6_ECHO_REPLY >> 5] &= ~(1 << (ICMP6_ECHO_REPLY & 31)) & 0xFFFFFFFF
    sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *words))


def _setup(sock: socket.socket, target: ProbeTarget, kind: Kind) -> None:
    """Bind to the device (and the source address); filter a raw socket; non-blocking."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, target.device.encode())
    if kind == "raw":
        _only_echo_replies(sock, target.family)
    any_addr = "0.0.0.0" if target.family == socket.AF_INET else "::"
    if target.source is not None or kind == "ping":  # binding a ping socket picks its id
        sock.bind((target.source or any_addr, 0))
    sock.setblocking(False)


def _open_kind(target: ProbeTarget, kind: Kind) -> socket.socket:
    sock = _new_socket(target.family, kind)
    try:
        _setup(sock, target, kind)
    except BaseException:
        sock.close()
        raise
    return sock


def _open(target: ProbeTarget, mode: Mode, netns: str | None) -> tuple[socket.socket, Kind]:
    """A socket for ``target`` (ping first in mode auto, raw when ping sockets are refused),
    in ``netns`` when given. Raises OSError."""
    if mode != "auto":
        return _open_in(target, mode, netns), mode
    try:
        return _open_in(target, "ping", netns), "ping"
    except OSError as exc:
        if exc.errno not in _PERMISSION:
            raise
    return _open_in(target, "raw", netns), "raw"


def _open_in(target: ProbeTarget, kind: Kind, netns: str | None) -> socket.socket:
    if netns is None:
        return _open_kind(target, kind)
    return in_netns(netns, lambda: _open_kind(target, kind))


def _ping_range(netns: str | None) -> tuple[int, int] | None:
    def read() -> str:
        with open("/proc/sys/net/ipv4/ping_group_range") as f:
            return f.read()

    try:
        lo, hi = (in_netns(netns, read) if netns else read()).split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return None


def _no_socket_reason(family: int, netns: str | None, mode: Mode) -> str:
    """Why neither kind of ICMP socket can be had (both refused for want of privilege)."""
    groups = sorted({os.getegid(), *os.getgroups()})
    span = _ping_range(netns)
    shown = f"{span[0]} {span[1]}" if span else "unreadable"
    ping = (f"net.ipv4.ping_group_range {shown} excludes gid "
            f"{', '.join(map(str, groups))} (ping sockets refused)")
    raw = "no CAP_NET_RAW (raw ICMP sockets refused)"
    name = "IPv4" if family == socket.AF_INET else "IPv6"
    parts = {"auto": f"{raw} and {ping}", "ping": ping, "raw": raw}[mode]
    fix = {"auto": "grant CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW) or widen "
                   f"the range (sysctl -w net.ipv4.ping_group_range='{groups[0]} {groups[0]}')",
           "ping": f"sysctl -w net.ipv4.ping_group_range='{groups[0]} {groups[0]}'",
           "raw": "grant CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW)"}[mode]
    return f"cannot probe over {name}: {parts}; {fix}"


# --------------------------------------------------------------------------- per device


@dataclass
class _Probe:
    """One device's socket, schedule, requests in flight and counters (loop thread only;
    the counters are also read under the prober's lock)."""

    target: ProbeTarget
    next_send: float
    sock: socket.socket | None = None
    kind: Kind | None = None
    ident: int = 0
    seq: int = 0
    pending: dict[int, float] = field(default_factory=dict)  # seq -> sent at, oldest first
    sent: int = 0
    replies: int = 0
    lost: int = 0
    last_error: str | None = None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.kind = None


# --------------------------------------------------------------------------- the prober


def _ignore(*_args: object) -> None:
    return None


class Prober:
    """ICMP echo probes through tunnel devices on a background thread (see module docstring).

    The thread starts with the object; :meth:`close` stops it. ``mode`` "auto" (ping
    sockets, raw ones when those are refused), "ping" or "raw" only."""

    def __init__(
        self,
        on_reply: ReplyCallback,
        *,
        on_sent: EventCallback = _ignore,
        on_lost: EventCallback = _ignore,
        on_error: ErrorCallback = _ignore,
        interval: float = 0.2,
        loss_after: float = 1.0,
        netns: str | None = None,
        mode: Mode = "auto",
    ) -> None:
        if interval <= 0 or loss_after <= 0:
            raise ValueError("interval and loss_after must be positive")
        self.interval = interval
        self.loss_after = loss_after
        self.netns = netns
        self.mode = mode
        self._on_reply, self._on_sent = on_reply, on_sent
        self._on_lost, self._on_error = on_lost, on_error
        self._payload = secrets.token_bytes(PAYLOAD_SIZE)
        self._lock = threading.Condition()
        self._wanted: dict[str, ProbeTarget] = {}
        self._asked = self._taken = 0  # generations of _wanted: set, applied by the loop
        self._stopping = False
        self._probes: dict[str, _Probe] = {}
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="vtibgp-prober", daemon=True)
        self._thread.start()

    # -- the API (any thread)

    def set_targets(self, targets: Mapping[str, ProbeTarget]) -> None:
        """Probe exactly ``targets`` (device -> target) from now on. A device no longer
        listed stops at once: when this returns (called from another thread than the
        prober's own), no callback about it will come. A changed target gets a new socket."""
        for device, target in targets.items():
            if device != target.device:
                raise ValueError(f"target for {device!r} names device {target.device!r}")
            ipaddress.ip_address(target.address)  # ValueError for a bad address
        with self._lock:
            self._wanted = dict(targets)
            self._asked += 1
            gen = self._asked
        self._wake()
        if threading.current_thread() is self._thread:
            return  # from a callback: taken before the loop's next step
        with self._lock:
            self._lock.wait_for(lambda: self._taken >= gen or not self._thread.is_alive(),
                                SET_TARGETS_WAIT)

    def counters(self) -> dict[str, tuple[int, int, int]]:
        """Device -> (requests sent, replies, requests lost), for the devices probed now."""
        with self._lock:
            return {d: (p.sent, p.replies, p.lost) for d, p in self._probes.items()}

    def kind(self, device: str) -> Kind | None:
        """The kind of socket probing ``device`` now ("ping", "raw"), None when none is open."""
        with self._lock:
            probe = self._probes.get(device)
            return probe.kind if probe is not None else None

    @staticmethod
    def check(family: int, *, netns: str | None = None, mode: Mode = "auto") -> str | None:
        """None when ICMP echo probes of ``family`` (AF_INET, AF_INET6) can be sent from
        here (a socket of the kind ``mode`` allows opens and binds to a device), else a
        human reason what is missing. Never raises."""
        kinds: tuple[Kind, ...] = ("ping", "raw") if mode == "auto" else (mode,)
        name = "IPv4" if family == socket.AF_INET else "IPv6"
        for kind in kinds:
            try:
                _try_socket(family, kind, netns)
                return None
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:
                    return f"cannot probe over {name}: the kernel has no {name} ({exc})"
                if exc.errno not in _PERMISSION:
                    return f"cannot probe over {name}: {kind} ICMP socket: {exc}"
        return _no_socket_reason(family, netns, mode)

    def close(self) -> None:
        """Stop the thread and close every socket. Idempotent."""
        with self._lock:
            self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            self._wake_w.send(b"\0")

    # -- the loop (the prober's thread)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        break
                    if self._taken != self._asked:
                        self._apply(self._wanted)
                        self._taken = self._asked
                        self._lock.notify_all()
                now = time.monotonic()
                self._send_due(now)
                self._expire(now)
                self._wait(self._timeout(time.monotonic()))
        except BaseException:  # a bug: say so loudly; the daemon's probes then stop
            log.exception("the prober's thread failed")
            raise
        finally:
            self._shutdown()

    def _apply(self, wanted: Mapping[str, ProbeTarget]) -> None:
        """Make the probes those of ``wanted`` (lock held)."""
        now = time.monotonic()
        for device in list(self._probes):
            probe = self._probes[device]
            if wanted.get(device) != probe.target:
                self._drop(probe)
                del self._probes[device]
        for device, target in wanted.items():
            if device not in self._probes:
                self._probes[device] = _Probe(target, next_send=now)

    def _drop(self, probe: _Probe) -> None:
        """Forget the probe's socket and its requests in flight (lock held)."""
        self._close_socket(probe)
        probe.pending.clear()

    def _close_socket(self, probe: _Probe) -> None:
        if probe.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(probe.sock)
        probe.close()

    def _timeout(self, now: float) -> float:
        """Seconds until the next request is due or the oldest one's wait ends."""
        due = [p.next_send for p in self._probes.values()]
        due += [next(iter(p.pending.values())) + self.loss_after
                for p in self._probes.values() if p.pending]
        return max(0.0, min(due) - now) if due else 3600.0

    def _wait(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
                continue
            probe = key.data
            assert isinstance(probe, _Probe)
            self._read(probe)

    def _shutdown(self) -> None:
        with self._lock:
            for probe in self._probes.values():
                self._drop(probe)
            self._probes.clear()
            self._lock.notify_all()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- sending

    def _send_due(self, now: float) -> None:
        for probe in list(self._probes.values()):
            if now < probe.next_send:
                continue
            # keep the phase; after a stall (the host froze) start again from now
            probe.next_send += self.interval
            if probe.next_send <= now:
                probe.next_send = now + self.interval
            self._send(probe)

    def _send(self, probe: _Probe) -> None:
        if probe.sock is None and not self._reopen(probe):
            return
        assert probe.sock is not None
        seq = probe.seq = (probe.seq + 1) & 0xFFFF
        packet = _echo(probe.target.family, probe.ident, seq, self._payload)
        try:
            probe.sock.sendto(packet, (probe.target.address, 0))
        except OSError as exc:
            self._error(probe, f"sending to {probe.target.address}: {exc.strerror or exc}")
            with self._lock:  # opened again at the next interval; requests in flight
                self._close_socket(probe)  # can no longer be answered: they will be lost
            return
        at = time.monotonic()
        probe.pending.pop(seq, None)  # 65,536 requests ago: long lost
        probe.pending[seq] = at
        probe.last_error = None
        with self._lock:
            probe.sent += 1
        self._call(self._on_sent, probe.target.device, at)

    def _reopen(self, probe: _Probe) -> bool:
        """Open (again) the device's socket; False, with the error reported, when it fails."""
        try:
            sock, kind = _open(probe.target, self.mode, self.netns)
        except OSError as exc:
            self._error(probe, self._open_error(probe.target, exc))
            return False
        ident = sock.getsockname()[1] if kind == "ping" else self._free_ident()
        with self._lock:
            probe.sock, probe.kind, probe.ident = sock, kind, ident & 0xFFFF
        self._sel.register(sock, selectors.EVENT_READ, probe)
        return True

    def _open_error(self, target: ProbeTarget, exc: OSError) -> str:
        if exc.errno in _PERMISSION:
            return _no_socket_reason(target.family, self.netns, self.mode)
        if exc.errno == errno.ENODEV:
            return f"no device {target.device} (ENODEV)"
        return f"opening an ICMP socket on {target.device}: {exc.strerror or exc}"

    def _free_ident(self) -> int:
        """A random identifier no raw-socket probe of ours uses."""
        used = {p.ident for p in self._probes.values() if p.kind == "raw"}
        while True:
            ident = secrets.randbelow(0xFFFF) + 1
            if ident not in used:
                return ident

    # -- receiving

    def _read(self, probe: _Probe) -> None:
        sock = probe.sock
        if sock is None:
            return
        for _ in range(READS_PER_WAKE):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket, say
                self._error(probe, f"receiving: {exc.strerror or exc}")
                return
            self._match(probe, data, addr[0], time.monotonic())

    def _match(self, probe: _Probe, data: bytes, source: str, at: float) -> None:
        assert probe.kind is not None
        parsed = _parse_reply(data, probe.target.family, probe.kind)
        if parsed is None or not _same_address(source, probe.target.address):
            return
        ident, seq, payload = parsed
        if ident != probe.ident or payload != self._payload:
            return
        sent = probe.pending.pop(seq, None)
        if sent is None:  # late (already counted lost), a duplicate, or not ours
            return
        with self._lock:
            probe.replies += 1
        self._call(self._on_reply, probe.target.device, at - sent, at)

    def _expire(self, now: float) -> None:
        for probe in list(self._probes.values()):
            while probe.pending:
                seq, sent = next(iter(probe.pending.items()))
                if now - sent < self.loss_after:
                    break
                del probe.pending[seq]
                with self._lock:
                    probe.lost += 1
                self._call(self._on_lost, probe.target.device, now)

    # -- callbacks

    def _error(self, probe: _Probe, message: str) -> None:
        if message == probe.last_error:
            return
        probe.last_error = message
        self._call(self._on_error, probe.target.device, message)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("prober callback %s failed", getattr(callback, "__name__", callback))


def _same_address(got: str, want: str) -> bool:
    try:
        return ipaddress.ip_address(got.split("%", 1)[0]) == ipaddress.ip_address(want)
    except ValueError:
        return False


def _try_socket(family: int, kind: Kind, netns: str | None) -> None:
    """Open a socket of ``kind`` and bind it to the loopback device, then close it."""
    def make() -> None:
        with _new_socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")

    if netns is None:
        make()
    else:
        in_netns(netns, make)
