"""The kernel writer: applies RouteOps to the Linux FIB over rtnetlink and dumps our routes back.

Socket. A plain stdlib ``socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)``, not pyroute2's.
pyroute2 0.9's NetlinkSocket is built on an asyncio transport with its own reader, message
queue and request objects; the hot path needs nothing but ``send`` of a prepared buffer and
reads of 36-byte acks, which the bare socket gives with no overhead and no hidden reader
competing for the datagrams. Links are looked up with raw RTM_GETLINK over the same socket
(so always in the socket's namespace). Messages are packed by :mod:`vtibgp.kernel.codec`
(byte-for-byte what pyroute2's ``rtmsg`` encodes; see its unit tests). Socket options:

* SO_SNDBUFFORCE / SO_RCVBUFFORCE (CAP_NET_ADMIN; falls back to the rmem/wmem-capped plain
  options): a batch of 2,000 requests is one ~130 kB datagram, and the acks of up to two
  batches may wait in the receive queue (each ack is its own skb, ~1 kB of truesize);
* NETLINK_CAP_ACK: error acks do not echo the request back (the sequence number is enough);
* NETLINK_EXT_ACK: the kernel's error text ("Nexthop has invalid gateway") is logged (debug);
* NETLINK_GET_STRICT_CHK: route dumps are filtered by table and protocol in the kernel.

apply(). Ops are packed in order, ``batch`` requests per ``send``, every request with NLM_F_ACK
and its own sequence number (base + position), so each ack names its op. rtnetlink handles a
datagram synchronously inside ``send``: when it returns, every ack of the batch is queued on
the socket (or was dropped, see ENOBUFS). Every ack is its own datagram; they are read with
recvmmsg(2) (through ctypes; plain recv_into as a fallback), up to 1,024 per system call.
For more than one batch the sends run on a helper thread (the GIL is released in ``send``)
while this thread packs the next batch and reads the acks of the previous ones, so the
kernel's work, the bulk of the cost, overlaps Python's; at most one batch is in flight.
A REPLACE goes out as a delete carrying our protocol id followed by an exclusive add, in the
same datagram (see _pack_chunk): the kernel's own replace matches prefix and metric only, and
would overwrite a route of another owner that took one of our keys. In long runs of ops of
one kind the IPv4 prefixes go out spread over the address space (see _send_order: the
kernel's FIB trie takes them much faster that way); no op crosses an op of another kind.

Failures. Each refused op is reported with the kernel's errno, in the order of `ops`. Found
without sending: ENODEV (device unknown; nothing is sent for that op), EINVAL (malformed
prefix, IPv6 host bits, gateway of the other family, metric out of range, no nexthop). A
DELETE answered ESRCH counts as applied. If the receive queue overflowed (ENOBUFS) the ops
whose acks were lost are sent again in ever smaller batches; an ADD that then meets EEXIST
counts as applied only if a dump shows our route at that key with exactly the wanted
nexthops; an op followed in the same call by another op on its key is not resent (the later
op decides). A kernel ENODEV (cached ifindex went stale: device deleted and re-created)
refreshes the link cache once and resends those ops. EPERM on every request sent raises
KernelPermissionError.

dump(). RTM_GETROUTE per family with the table/protocol filter; every datagram is filtered on
raw bytes (protocol byte, type byte, table byte, then RTA_TABLE) before anything is decoded.
A route whose oif has no known name even after refreshing the link cache is reported with the
device name ``"#<ifindex>"`` (so it can still be deleted: deletes match on the key only).
Only unicast routes are reported; a dump the kernel flags as interrupted is taken again.

Namespaces. ``netns=`` opens the socket inside a named network namespace (``/run/netns/NAME``
or a path) from a short-lived helper thread that calls setns(2) and exits; a socket stays in
the namespace it was created in, and every lookup (links included) goes over that socket, so
the rest of the process is untouched.

Calls are serialised by an internal lock; the writer is meant for one caller at a time.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

from vtibgp import defaults
from vtibgp.core.model import KernelRoute, NextHop, OpKind, OpResult, RouteOp
from vtibgp.kernel import codec as nc
from vtibgp.kernel import nexthop_codec as nhc

log = logging.getLogger("vtibgp.kernel.writer")

_T = TypeVar("_T")
COMPAT_MODE = "/proc/sys/net/ipv4/nexthop_compat_mode"

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000

_PENDING = -1  # sent, no ack read yet
_LOCAL = -2  # refused before sending (errno in `local`)
_UNSENT = -3  # not packed yet

# Our nexthop object ids start here ("VT"), well above the small ids `ip nexthop` users and
# routing daemons tend to pick; any id another owner holds is skipped (read at start).
NHID_BASE = 0x56540000

_RETRY_BATCHES = (256, 64, 16, 4, 1, 1)
# Python's GIL switch interval while batches are pipelined (default 5 ms): 100k routes here
# went from a median of 120,000 to 141,000 adds/s and 104,000 to 112,000 deletes/s at 0.1 ms
# (5 interleaved runs each)
PIPELINE_SWITCH = 0.0001
_SORT_RUN = 64
_SPREAD = 64  # the IPv4 ops of a long run are spread over this many hash buckets
_DUMP_TIMEOUT = 30.0


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


class MultiRecv:
    """recvmmsg(2) through ctypes (the socket module has no binding): one system call takes
    up to `vlen` queued datagrams, each into its own `slot`-byte part of one buffer. Every ack
    is its own datagram, so this replaces thousands of recv calls per batch; the GIL is
    released during the call. A datagram longer than a slot is cut (its netlink header, which
    tells its real length, and the errno survive)."""

    def __init__(self, fd: int, vlen: int = 1024, slot: int = 256) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.recvmmsg
        fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                       ctypes.c_void_p)
        fn.restype = ctypes.c_int
        self._fn = fn
        self._fd = fd
        self.vlen = vlen
        self.slot = slot
        self.step = slot // 4  # slot size in 32-bit words
        self._buf = ctypes.create_string_buffer(vlen * slot)
        self._iov = (_IOVec * vlen)()
        self._hdrs = (_MMsgHdr * vlen)()
        base = ctypes.addressof(self._buf)
        iov_base = ctypes.addressof(self._iov)
        for k in range(vlen):
            self._iov[k].iov_base = base + k * slot
            self._iov[k].iov_len = slot
            self._hdrs[k].msg_hdr.msg_iov = iov_base + k * ctypes.sizeof(_IOVec)
            self._hdrs[k].msg_hdr.msg_iovlen = 1
        self._hdrs_addr = ctypes.addressof(self._hdrs)
        raw = memoryview(self._buf).cast("B")
        self.bytes = raw
        self.ints = raw.cast("i")
        self.uints = raw.cast("I")

    def recv(self) -> int:
        """How many datagrams were read (0: none queued). Raises OSError (ENOBUFS...)."""
        got: int = self._fn(self._fd, self._hdrs_addr, self.vlen, socket.MSG_DONTWAIT, None)
        if got >= 0:
            return got
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EWOULDBLOCK):
            return 0
        if err == errno.EINTR:
            return self.recv()
        raise OSError(err, os.strerror(err))

    def length(self, k: int) -> int:
        """The length of the k-th datagram of the last recv (as received: at most a slot)."""
        return int(self._hdrs[k].msg_len)

    def datagram(self, word: int, length: int) -> bytes:
        start = word * 4
        return bytes(self.bytes[start : start + length])


def _send_order(ops: Sequence[RouteOp]) -> list[int] | None:
    """The order to send `ops` in, as indices, or None for "as given".

    In a run of consecutive ops of one kind (at least _SORT_RUN long) the IPv4 ones go out
    with their prefixes spread over the address space (dealt into _SPREAD buckets by the
    prefix's hash, each bucket keeping the given order; O(n)), then the IPv6 ones as given.
    The kernel's IPv4 FIB trie adds and removes leaves with far less work when consecutive
    changes fall into different nodes; its IPv6 tree prefers them in order. Measured here
    through the writer, 100,000 sequential prefixes, median of 4 interleaved runs:

      IPv4 adds     139,000/s as given (ascending)   171,000/s spread
      IPv4 deletes   85,000/s ascending, 123,000/s descending, 138,000-149,000/s spread
                    (a full sort on the hash, strides and these buckets alike)
      IPv6 adds     205,000/s as given               177,000/s spread
      IPv6 deletes  177,000/s ascending, 135,000/s descending, 110,000/s spread

    Ops on different keys commute (the families live in separate tables), and one key's
    ops share its prefix, so they keep their order (same bucket); no op crosses an op of
    another kind, so a batch's adds still go before its deletes (make before break)."""
    n = len(ops)
    order: list[int] | None = None
    i = 0
    while i < n:
        kind = ops[i].kind
        j = i + 1
        while j < n and ops[j].kind is kind:
            j += 1
        if j - i >= _SORT_RUN:
            if order is None:
                order = list(range(n))
            buckets: list[list[int]] = [[] for _ in range(_SPREAD)]
            v6: list[int] = []
            for k in range(i, j):
                prefix = ops[k].route.prefix
                if ":" in prefix:
                    v6.append(k)
                else:
                    buckets[hash(prefix) % _SPREAD].append(k)
            order[i:j] = [k for bucket in buckets for k in bucket] + v6
        i = j
    return order


class KernelPermissionError(PermissionError):
    """The kernel refused our route changes with EPERM: CAP_NET_ADMIN is missing."""

    def __init__(self, detail: str = "") -> None:
        text = "the kernel refused a route change with EPERM: CAP_NET_ADMIN is missing"
        super().__init__(errno.EPERM, text + (f" ({detail})" if detail else ""))


class _Unresolved(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


# A nexthop object as the pool keys it: (for IPv6 routes?, hops); one hop = a single
# nexthop, several = a group of the single ones.
NhKey = tuple[bool, tuple[nc.Hop, ...]]


def _setns(fd: int) -> None:
    native = getattr(os, "setns", None)  # Python >= 3.12
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(netns: str, make: Callable[[], _T]) -> _T:
    """Run `make` on a throw-away thread that first joins network namespace `netns` (a name
    under /run/netns or a path), and return what it made (a socket stays in the namespace
    it was made in; a file under /proc/sys/net opened there shows that namespace's
    settings; threads it starts are created there too); the rest of the process never
    moves."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    box: list[_T | BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box.append(make())
        except BaseException as exc:  # handed to the caller below
            box.append(exc)

    thread = threading.Thread(target=run, name="vtibgp-netns", daemon=True)
    thread.start()
    thread.join()
    if not box:
        raise RuntimeError(f"could not enter network namespace {path}")
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


class KernelWriter:
    """Installs, replaces and deletes our routes (one table, one protocol id) in the kernel."""

    def __init__(
        self,
        table: int = defaults.TABLE,
        proto: int = defaults.PROTOCOL,
        batch: int = defaults.BATCH,
        *,
        netns: str | None = None,
        rcvbuf: int = 32 << 20,
        sndbuf: int = 8 << 20,
        pipeline: bool = True,
        multi_recv: bool = True,
        fallback: str | None = None,
    ) -> None:
        """`table` and `proto` identify our routes; `batch` is the number of requests per
        datagram. Keyword-only knobs: `netns` (open the socket in that network namespace),
        `rcvbuf`/`sndbuf` (socket buffer sizes), `pipeline` (send on a helper thread when
        there is more than one batch), `multi_recv` (read acks with recvmmsg) and `fallback`
        ("unreachable" or "blackhole": the type of a route given without nexthops)."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.table = table
        self.proto = proto
        self.batch = batch
        self.pipeline = pipeline
        # routes without nexthops (the core's fallback) get this type: unreachable/blackhole
        self.fallback_type = None if fallback is None else nc.FALLBACK_TYPES[fallback]
        self._types = (nc.RTN_UNICAST,) if self.fallback_type is None else (
            nc.RTN_UNICAST, self.fallback_type)
        self._packer = nc.RoutePacker(table, proto, self.fallback_type)
        self._lock = threading.RLock()
        self._by_name: dict[str, int] = {}
        self._by_index: dict[int, str] = {}
        self._hop_cache: dict[int, tuple[tuple[NextHop, ...], tuple[nc.Hop, ...]]] = {}
        self._missing: set[str] = set()
        # nexthop objects (enable_nexthop_objects): ours by key, their contents, every id
        # taken by anyone, objects the kernel refused in the running call, and groups the
        # kernel cut down (a member's device went) that routes may still use
        self.nexthop_objects = False
        self._nh_key: dict[NhKey, int] = {}
        self._nh_single: dict[int, tuple[bool, nc.Hop]] = {}
        self._nh_group: dict[int, tuple[bool, tuple[int, ...]]] = {}
        self._nh_taken: set[int] = set()
        self._nh_next = NHID_BASE
        self._nh_failed: dict[NhKey, int] = {}
        self._orphans: set[int] = set()
        # (id of a NextHop tuple, IPv6?) -> (the tuple, its object id); see _pack_chunk
        self._nh_cache: dict[tuple[int, bool], tuple[tuple[NextHop, ...], int]] = {}
        self._messages: dict[int, str] = {}  # the running exchange's error texts
        self._seq = 1
        self._overruns = 0
        self._pool: ThreadPoolExecutor | None = None
        self._rbuf = bytearray(1 << 20)
        self._abuf = bytearray(1 << 16)
        self.strict_dump = False
        self.ext_ack = False

        def make() -> socket.socket:
            return self._open(rcvbuf, sndbuf)

        self._netns = netns
        self.nexthop_refusal = ""  # why enable_nexthop_objects said no
        self._sock = in_netns(netns, make) if netns else make()
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN)
        self._warned = False
        self._mrecv: MultiRecv | None = None
        if multi_recv:
            try:
                self._mrecv = MultiRecv(self._sock.fileno())
            except (OSError, AttributeError) as exc:  # no recvmmsg in this libc
                log.info("kernel: recvmmsg unavailable (%s); reading acks one by one", exc)
        sndbuf_real = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        # netlink refuses a datagram longer than sk_sndbuf - 32
        self._max_chunk_bytes = max(4096, min(sndbuf_real - 1024, 4 << 20))

    def _open(self, rcvbuf: int, sndbuf: int) -> socket.socket:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            for force, plain, size in (
                (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf),
                (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
            ):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, size)
                except OSError:  # no CAP_NET_ADMIN: capped by net.core.[rw]mem_max
                    sock.setsockopt(socket.SOL_SOCKET, plain, size)
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
                self.ext_ack = True
            except OSError:
                pass
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
                self.strict_dump = True
            except OSError:
                pass
            sock.bind((0, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if self._sock.fileno() >= 0:
                self._poller.unregister(self._sock.fileno())
            self._sock.close()

    def __enter__(self) -> KernelWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def overruns(self) -> int:
        """How many times the receive queue overflowed (ENOBUFS) since the writer opened."""
        return self._overruns

    # ------------------------------------------------------------------ low-level I/O

    def _take_seqs(self, n: int) -> int:
        if self._seq + n >= 0xFFFFFFFF:
            self._seq = 1
        base = self._seq
        self._seq += n
        return base

    def _wait_readable(self, timeout: float) -> bool:
        return bool(self._poller.poll(max(0, int(timeout * 1000))))

    def _discard_pending(self) -> None:
        """Drop whatever is queued from earlier calls (stale acks, an abandoned dump)."""
        while True:
            try:
                self._sock.recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def _read_reply(self, deadline: float, what: str) -> int | None:
        """Wait for one datagram (into self._rbuf) and return its length; None if the receive
        queue overflowed meanwhile, so that a unicast reply may have been dropped (dump parts
        are flow-controlled by the kernel and never are)."""
        while True:
            if not self._wait_readable(deadline - time.monotonic()):
                raise TimeoutError(f"{what}: no answer from the kernel over netlink")
            try:
                return self._sock.recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._overruns += 1
                return None

    def _request(self, data: bytes, seq: int, what: str) -> list[nc.Ack] | None:
        """Send one acked, idempotent request; the acks carrying `seq`, or None if the
        answer was lost to an overflow three times."""
        for _attempt in range(3):
            self._discard_pending()
            self._sock.send(data)
            deadline = time.monotonic() + 5.0
            while True:
                n = self._read_reply(deadline, what)
                if n is None:
                    break  # the answer may be lost: ask again
                acks = [a for a in nc.parse_acks(self._rbuf, n) if a.seq == seq]
                if acks:
                    return acks
        return None

    # ------------------------------------------------------------------ links

    def resolve(self, name: str) -> int | None:
        """ifindex of device `name` (cached), None if there is no such device."""
        with self._lock:
            index = self._by_name.get(name)
            if index is None:
                index = self._query_link(name)
                if index is not None:
                    self._remember(index, name)
            return index

    def forget(self, name: str) -> None:
        """Drop `name` from the cache (the link monitor saw it change)."""
        with self._lock:
            index = self._by_name.pop(name, None)
            if index is not None and self._by_index.get(index) == name:
                del self._by_index[index]
            self._hop_cache.clear()
            self._nh_cache.clear()

    def refresh_links(self) -> None:
        """Rebuild the name <-> ifindex cache from a link dump."""
        with self._lock:
            by_name: dict[str, int] = {}

            def take(n: int, seq: int) -> tuple[bool, int]:
                chunk = nc.parse_links(self._rbuf, n, seq=seq)
                for index, name in chunk.links:
                    by_name[name] = index
                return chunk.done or bool(chunk.error), chunk.error

            self._dump(nc.pack_link_dump_request, take, "link dump")
            self._by_name = by_name
            self._by_index = {i: n for n, i in by_name.items()}
            self._hop_cache.clear()
            self._nh_cache.clear()

    def _remember(self, index: int, name: str) -> None:
        old = self._by_index.get(index)
        if old is not None and old != name:
            self._by_name.pop(old, None)
        previous = self._by_name.get(name)
        if previous is not None and previous != index:
            self._by_index.pop(previous, None)
        self._by_name[name] = index
        self._by_index[index] = name
        self._hop_cache.clear()
        self._nh_cache.clear()

    def _query_link(self, name: str) -> int | None:
        seq = self._take_seqs(1)
        try:
            request = nc.pack_link_request(name, seq)
        except ValueError:  # not a possible interface name
            return None
        for _attempt in range(3):
            self._discard_pending()
            self._sock.send(request)
            deadline = time.monotonic() + 5.0
            found: int | None = None
            while True:
                n = self._read_reply(deadline, "link lookup")
                if n is None:
                    break  # the reply may be lost: ask again
                chunk = nc.parse_links(self._rbuf, n, seq=seq)
                for index, link_name in chunk.links:
                    if link_name == name:
                        found = index
                if chunk.done:
                    if chunk.error not in (0, errno.ENODEV):
                        raise OSError(chunk.error, f"link lookup: {os.strerror(chunk.error)}")
                    return found
        # replies keep getting lost (tiny receive buffer): a dump is flow-controlled
        self.refresh_links()
        return self._by_name.get(name)

    def _hops_for(self, nexthops: tuple[NextHop, ...]) -> tuple[nc.Hop, ...]:
        """NextHops -> (ifindex, gateway) from the cache only; raises _Unresolved on a miss.
        Cached by the identity of the tuple (the core shares one per path)."""
        hit = self._hop_cache.get(id(nexthops))
        if hit is not None and hit[0] is nexthops:
            return hit[1]
        by_name = self._by_name
        hops = []
        for nh in nexthops:
            index = by_name.get(nh.device)
            if index is None:
                raise _Unresolved(nh.device)
            hops.append(nc.Hop(index, nh.gateway))
        out = tuple(hops)
        if len(self._hop_cache) >= 65536:
            self._hop_cache.clear()
        self._hop_cache[id(nexthops)] = (nexthops, out)
        return out

    # ------------------------------------------------------------------ nexthop objects

    def enable_nexthop_objects(self) -> bool:
        """Route through kernel nexthop objects from now on, if the kernel has them: read
        every object (ours are reused, everyone's ids avoided). False (and inline nexthops
        stay) if the kernel does not know RTM_GETNEXTHOP."""
        with self._lock:
            self.nexthop_refusal = ""
            try:
                found = self._dump_nexthops()
            except OSError as exc:
                self.nexthop_refusal = f"this kernel has no nexthop objects ({exc})"
                log.info("kernel: no nexthop objects (%s); routes carry their nexthops inline",
                         exc)
                return False
            if self._compat_mode() == "0":
                # route dumps would then show a route's nexthop object id but not its device
                # or gateway: our start-up adoption and the periodic repair need those
                self.nexthop_refusal = ("net.ipv4.nexthop_compat_mode is 0 (route dumps "
                                        "would not show the nexthops of routes using objects)")
                log.warning("kernel: %s; routes carry their nexthops inline. Set it to 1 for "
                            "nexthop objects (one-step failover on carrier loss)",
                            self.nexthop_refusal)
                return False
            self._load_nexthops(found)
            self.nexthop_objects = True
            log.info("kernel: routes use nexthop objects (%d of ours found)",
                     len(self._nh_single) + len(self._nh_group))
            return True

    def _compat_mode(self) -> str | None:
        """net.ipv4.nexthop_compat_mode in our namespace; None where the kernel predates it
        (and always dumps the nexthops)."""
        def read() -> str:
            with open(COMPAT_MODE, encoding="ascii") as f:
                return f.read().strip()

        try:
            return in_netns(self._netns, read) if self._netns else read()
        except OSError:
            return None

    def _load_nexthops(self, found: list[nhc.Nexthop]) -> None:
        """Rebuild the pool from a dump of every nexthop object."""
        self._nh_cache.clear()
        self._nh_key.clear()
        self._nh_single.clear()
        self._nh_group.clear()
        self._nh_taken = {nh.id for nh in found}
        for nh in found:
            if nh.protocol != self.proto or nh.blackhole:
                continue
            if nh.group:
                self._nh_group[nh.id] = (False, nh.group)  # family fixed below
            elif nh.ifindex:
                v6 = nh.family == nc.AF_INET6
                hop = nc.Hop(nh.ifindex, nh.gateway)
                self._nh_single[nh.id] = (v6, hop)
                self._nh_key.setdefault((v6, (hop,)), nh.id)
        for gid, (_v6, members) in list(self._nh_group.items()):
            parts = [self._nh_single.get(m) for m in members]
            if any(p is None for p in parts):
                continue  # not made of ours alone: never reused
            v6 = all(p[0] for p in parts if p is not None)
            self._nh_group[gid] = (v6, members)
            hops = tuple(p[1] for p in parts if p is not None)
            self._nh_key.setdefault((v6, hops), gid)
        # groups not reused (duplicates, cut down, foreign members) go once no route uses them
        self._orphans = set(self._nh_group) - set(self._nh_key.values())

    def _dump_nexthops(self) -> list[nhc.Nexthop]:
        out: list[nhc.Nexthop] = []

        def take(n: int, seq: int) -> tuple[bool, int]:
            chunk = nhc.parse_nexthops(self._rbuf, n, seq=seq)
            out.extend(chunk.nexthops)
            return chunk.done, chunk.error

        self._dump(nhc.pack_nexthop_dump_request, take, "nexthop dump")
        return out

    def nexthop_count(self) -> int:
        """Nexthop objects of ours the writer knows."""
        return len(self._nh_single) + len(self._nh_group)

    def _new_id(self) -> int:
        nhid = self._nh_next
        while nhid in self._nh_taken:
            nhid += 1
        if nhid > 0xFFFFFFFF:
            raise OSError(errno.ENOSPC, "no free nexthop id")
        self._nh_next = nhid + 1
        self._nh_taken.add(nhid)
        return nhid

    def _create(self, build: Callable[[int, int], bytes], what: str) -> tuple[int, int]:
        """Create one object with a fresh id: (id, 0) or (0, errno)."""
        for _attempt in range(8):
            nhid = self._new_id()
            seq = self._take_seqs(1)
            acks = self._request(build(seq, nhid), seq, what)
            if acks is None:
                return 0, errno.ENOBUFS
            err = acks[0].error
            if err == errno.EEXIST:
                continue  # someone took this id meanwhile: the next one
            if err:
                if acks[0].message:
                    log.info("kernel: %s refused: %s (%s)", what, os.strerror(err),
                             acks[0].message)
                return 0, err
            return nhid, 0
        return 0, errno.EEXIST

    def _make_nexthop(self, key: NhKey) -> None:
        """Create the object for `key` (and its members): recorded in the pool, or its errno
        in _nh_failed so that the routes needing it are refused with it."""
        v6, hops = key
        if any(h.gateway and (":" in h.gateway) != v6 for h in hops):
            self._nh_failed[key] = errno.EINVAL  # as inline: no gateway of the other family
            return
        members: list[int] = []
        for hop in hops:
            single = (v6, (hop,))
            nhid = self._nh_key.get(single)
            if nhid is None:
                gw = hop.gateway
                family = (nc.AF_INET6 if ":" in gw else nc.AF_INET) if gw else (
                    nc.AF_INET6 if v6 else nc.AF_INET)

                def build(seq: int, new: int, hop: nc.Hop = hop, family: int = family) -> bytes:
                    return nhc.pack_nexthop(seq, new, family, hop.ifindex, hop.gateway,
                                            self.proto)

                nhid, err = self._create(build, f"nexthop via ifindex {hop.ifindex}")
                if err:
                    self._nh_failed[key] = err
                    return
                self._nh_key[single] = nhid
                self._nh_single[nhid] = (v6, hop)
            members.append(nhid)
        if len(hops) == 1:
            return

        def build_group(seq: int, new: int) -> bytes:
            return nhc.pack_group(seq, new, members, self.proto)

        gid, err = self._create(build_group, "nexthop group")
        if err:
            self._nh_failed[key] = err
            return
        self._nh_key[key] = gid
        self._nh_group[gid] = (v6, tuple(members))

    def flush_device(self, name: str) -> bool:
        """Take every route through device `name` out of the kernel now, the way the kernel
        does when the device goes down: delete our nexthop objects on it (routes using one
        go with it; groups lose it as a member). False if routes carry their nexthops inline,
        or if the kernel refused a delete (some routes may be left: the caller's ops remove
        them one by one, and the pool is read again)."""
        with self._lock:
            if not self.nexthop_objects:
                return False
            index = self._by_name.get(name)
            if index is None:
                return True  # no cached device: no object of ours was made on it
            doomed = [i for i, (_v6, hop) in self._nh_single.items() if hop.ifindex == index]
            failed = 0
            for nhid in doomed:
                seq = self._take_seqs(1)
                acks = self._request(nhc.pack_nexthop_delete(seq, nhid), seq,
                                     "nexthop delete")
                err = acks[0].error if acks else errno.ENOBUFS
                if err not in (0, errno.ENOENT):
                    failed += 1
                    log.warning("kernel: deleting nexthop %d on %s: %s", nhid, name,
                                os.strerror(err))
            if failed:
                self._load_nexthops(self._dump_nexthops())
                return False
            self._drop_objects(index)
            return True

    def note_device_gone(self, name: str) -> bool:
        """Device `name` went down or away, and the kernel deleted the nexthop objects on it
        with their routes: forget them. True if routes use nexthop objects."""
        with self._lock:
            if not self.nexthop_objects:
                return False
            index = self._by_name.get(name)
            if index is not None:
                self._drop_objects(index)
            return True

    def _drop_objects(self, index: int) -> None:
        gone = {i for i, (_v6, hop) in self._nh_single.items() if hop.ifindex == index}
        if not gone:
            return
        self._nh_cache.clear()
        for nhid in gone:
            del self._nh_single[nhid]
        for gid, (v6, members) in list(self._nh_group.items()):
            if not gone.intersection(members):
                continue
            left = tuple(m for m in members if m not in gone)
            if not left:
                del self._nh_group[gid]  # the kernel removed the emptied group too
                self._orphans.discard(gid)
                continue
            # the kernel kept the group with the members left; routes may still use it
            self._nh_group[gid] = (v6, left)
            self._orphans.add(gid)
        self._nh_key = {k: i for k, i in self._nh_key.items()
                        if i not in gone and i not in self._orphans}
        self._nh_taken -= gone

    def collect_garbage(self) -> int:
        """Delete the cut-down groups (see _drop_objects) that no route uses any more; how
        many went. Cheap when there are none (the usual case)."""
        with self._lock:
            if not self._orphans:
                return 0
            used = self._route_nhids()
            removed = 0
            for gid in sorted(self._orphans - used):
                seq = self._take_seqs(1)
                acks = self._request(nhc.pack_nexthop_delete(seq, gid), seq, "nexthop delete")
                if acks is not None and acks[0].error in (0, errno.ENOENT):
                    self._orphans.discard(gid)
                    self._nh_group.pop(gid, None)
                    self._nh_taken.discard(gid)
                    removed += 1
            return removed

    def release_nexthops(self) -> int:
        """Delete every nexthop object of ours that no route uses (at exit, after our routes
        were withdrawn). Returns how many went."""
        with self._lock:
            if not self.nexthop_objects:
                return 0
            used = self._route_nhids()
            if used & set(self._nh_single):
                # a route still uses one of our single nexthops: keep those and their groups
                log.info("kernel: %d of our nexthop objects still in use; kept",
                         len(used & set(self._nh_single)))
            removed = 0
            groups = [g for g in self._nh_group if g not in used]
            singles = [i for i in self._nh_single if i not in used and not any(
                i in members for g, (_v6, members) in self._nh_group.items() if g in used)]
            for nhid in groups + singles:
                seq = self._take_seqs(1)
                acks = self._request(nhc.pack_nexthop_delete(seq, nhid), seq, "nexthop delete")
                if acks is not None and acks[0].error in (0, errno.ENOENT):
                    removed += 1
            return removed

    def _route_nhids(self) -> set[int]:
        """The nexthop ids our routes use, from a route dump."""
        used: set[int] = set()

        def take(n: int, seq: int) -> tuple[bool, int]:
            ids, done, error = nhc.parse_route_nhids(self._rbuf, n, seq=seq)
            used.update(ids)
            return done, error

        self._dump_routes(take)
        return used

    # ------------------------------------------------------------------ apply

    def check_permission(self) -> None:
        """Probe for CAP_NET_ADMIN with a route delete that cannot match anything (an IPv4
        /33, see netlink_codec.pack_permission_probe). Raises KernelPermissionError on EPERM;
        any other answer (EINVAL, ESRCH) proves the kernel let us through its capability
        check, which rtnetlink makes before it looks at the request."""
        with self._lock:
            seq = self._take_seqs(1)
            acks = self._request(nc.pack_permission_probe(seq, self.table), seq,
                                 "permission probe")
            if acks is None:
                raise OSError(errno.ENOBUFS, "permission probe: the answer was lost")
            if any(a.error == errno.EPERM for a in acks):
                raise KernelPermissionError("probe: RTM_DELROUTE answered EPERM")

    def apply(self, ops: Sequence[RouteOp]) -> OpResult:
        """Apply `ops` in order. Returns how many were applied and the refused ones with
        their errno. Raises KernelPermissionError if every request sent met EPERM."""
        with self._lock:
            return self._apply(ops)

    def _apply(self, ops: Sequence[RouteOp]) -> OpResult:
        result = OpResult()
        n = len(ops)
        if n == 0:
            return result
        order = _send_order(ops)
        work = ops if order is None else [ops[i] for i in order]
        self._missing = set()
        self._nh_failed = {}
        local: dict[int, int] = {}
        messages: dict[int, str] = {}
        res = self._exchange(work, local, messages, self.batch, self.pipeline)
        if res.count(0) == n:  # every op acknowledged as done: the usual case
            result.applied = n
            return result
        sent = [r for r in res if r != _LOCAL]
        if sent and all(r == errno.EPERM for r in sent):
            raise KernelPermissionError(f"{len(sent)} route requests answered EPERM")
        self._retry(work, res, local, messages)
        failed: list[tuple[int, int]] = []
        for p, r in enumerate(res):
            op = work[p]
            if r == 0 or (r == errno.ESRCH and op.kind is OpKind.DELETE):
                result.applied += 1
                continue
            if r == _LOCAL:
                r = local[p]
            elif r in (_PENDING, _UNSENT):
                r = errno.ENOBUFS
            failed.append((p if order is None else order[p], r))
            if log.isEnabledFor(logging.DEBUG):
                extra = messages.get(p)
                log.debug("kernel refused %s: %s%s", op, os.strerror(r),
                          f" ({extra})" if extra else "")
        failed.sort()
        result.failed = [(ops[i], r) for i, r in failed]
        return result

    def _retry(
        self, ops: Sequence[RouteOp], res: list[int], local: dict[int, int],
        messages: dict[int, str],
    ) -> None:
        """Second chances, in order-preserving small batches: ops whose ack was lost
        (receive-queue overflow, failed send) and, once, ops the kernel answered ENODEV
        (a cached ifindex gone stale; the link cache is refreshed first) or, with nexthop
        objects, EINVAL (an object of ours gone; the pool is read again first). An op followed in
        this batch by another op on the same key is not resent: the later op decides the
        key's final state (a lost one counts as applied, a stale-ENODEV one stays refused)."""
        lost: set[int] = set()
        refreshed = False
        last: dict[tuple[str, int], int] | None = None
        for limit in _RETRY_BATCHES:
            redo = [i for i, r in enumerate(res) if r == _PENDING]
            stale: list[int] = []
            if not refreshed:
                objects = self.nexthop_objects
                stale = [i for i, r in enumerate(res) if r == errno.ENODEV or (objects and (
                    (r == errno.EINVAL and ops[i].kind is not OpKind.DELETE)
                    or (r == _LOCAL and local[i] in (errno.ENODEV, errno.EINVAL))))]
                if stale:
                    # a device re-created (its ifindex went stale), or a nexthop object of
                    # ours gone behind our back (EINVAL for an unknown id): look both up again
                    refreshed = True
                    self.refresh_links()
                    if objects:
                        self._load_nexthops(self._dump_nexthops())
                        self._nh_failed = {}
            if not redo and not stale:
                return
            if last is None:
                last = {op.route.key: i for i, op in enumerate(ops)}
            for i in redo:
                if last[ops[i].route.key] != i:
                    res[i] = 0  # superseded by a later op on the same key
            redo = sorted(i for i in redo + stale if last[ops[i].route.key] == i)
            if not redo:
                return
            lost.update(i for i in redo if res[i] == _PENDING)
            log.info("kernel: resending %d route requests (%d receive-queue overruns so far, "
                     "%d stale ifindex)", len(redo), self._overruns, len(stale))
            sub = [ops[i] for i in redo]
            sub_local: dict[int, int] = {}
            sub_messages: dict[int, str] = {}
            sub_res = self._exchange(sub, sub_local, sub_messages, limit, False)
            verify: list[int] = []
            for j, i in enumerate(redo):
                r = sub_res[j]
                if j in sub_messages:
                    messages[i] = sub_messages[j]
                if r == _LOCAL:
                    local[i] = sub_local[j]
                elif r == errno.EEXIST and i in lost and ops[i].kind is OpKind.ADD:
                    verify.append(i)
                res[i] = r
            if verify:
                self._verify_adds(ops, verify, res)

    def _verify_adds(self, ops: Sequence[RouteOp], idxs: list[int], res: list[int]) -> None:
        """ADDs whose first ack was lost and whose resend met EEXIST: applied iff the kernel
        holds our route at that key with the wanted nexthops (else someone else's is there)."""
        held = {r.key: r for r in self.dump()}
        for i in idxs:
            route = ops[i].route
            mine = held.get(route.key)
            if mine is not None and set(mine.nexthops) == set(route.nexthops):
                res[i] = 0

    def _exchange(
        self,
        ops: Sequence[RouteOp],
        local: dict[int, int],
        messages: dict[int, str],
        limit: int,
        pipeline: bool,
    ) -> list[int]:
        """Send every op once; per op: 0 / errno from its ack, _LOCAL (errno in `local`),
        or _PENDING if no ack came (lost to an overflow, or its send failed). Error texts
        (extended ack, local validation) go to `messages`, by index."""
        self._messages = messages
        self._warned = False
        n = len(ops)
        res = [_UNSENT] * n
        base = self._take_seqs(2 * n)  # base + i: op i; base + n + i: a REPLACE's delete
        self._discard_pending()
        use_pool = pipeline and n > limit
        switch = sys.getswitchinterval()
        if use_pool:
            # The sender thread needs the GIL back the moment the kernel has taken a batch,
            # while this thread packs the next one; by default it waits up to 5 ms for it
            # (a quarter of a 2,000-route batch's kernel time). See PIPELINE_SWITCH.
            sys.setswitchinterval(min(switch, PIPELINE_SWITCH))
        try:
            self._pipeline(ops, res, local, base, limit, use_pool)
        finally:
            sys.setswitchinterval(switch)
        if _PENDING in res:
            self._wait_stragglers(base, res)
        return res

    def _pipeline(self, ops: Sequence[RouteOp], res: list[int], local: dict[int, int],
                  base: int, limit: int, use_pool: bool) -> None:
        """_exchange's send loop: every op packed and sent once, acks read as they come."""
        n = len(ops)
        inflight: Future[int] | None = None
        inflight_range = (0, 0)
        start = 0
        while start < n:
            data, end, miss = self._pack_chunk(ops, start, base, res, local, limit,
                                               inflight is not None)
            if miss is not None:
                # a device not in the cache: finish what is in flight, send what is packed,
                # then look the name up with the socket quiet (its answer must not mix with
                # acks), then go on in order
                if inflight is not None:
                    self._wait(inflight, inflight_range)
                    inflight = None
                    self._drain(base, res)
                if data:
                    self._send_sync(data, (start, end), base, res)
                if not isinstance(miss, str):
                    self._make_nexthop(miss)
                elif self.resolve(miss) is None:
                    self._missing.add(miss)
                start = end
                continue
            if data and use_pool:
                # hand the next batch to the kernel as soon as the previous one is through,
                # then read the previous batch's acks while the kernel works on this one
                if inflight is not None:
                    self._wait(inflight, inflight_range)
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="vtibgp-netlink")
                inflight = self._pool.submit(self._sock.send, data)
                inflight_range = (start, end)
                self._drain(base, res)
            elif data:
                self._send_sync(data, (start, end), base, res)
            start = end
        if inflight is not None:
            self._wait(inflight, inflight_range)
            self._drain(base, res)

    def _object_for(self, nexthops: tuple[NextHop, ...], v6: bool) -> int:
        """The id of our nexthop object for `nexthops` in that family; -1 if it is not made
        yet, 0 if the kernel refused to make it in this call. Cached by the tuple's identity
        (the core shares one tuple per path), so most look-ups skip building the key."""
        cache = self._nh_cache
        hit = cache.get((id(nexthops), v6))
        if hit is not None and hit[0] is nexthops:
            return hit[1]
        key = (v6, self._hops_for(nexthops))
        found = self._nh_key.get(key)
        if found is None:
            return 0 if key in self._nh_failed else -1
        if len(cache) >= 65536:
            cache.clear()
        cache[(id(nexthops), v6)] = (nexthops, found)
        return found

    def _pack_chunk(
        self,
        ops: Sequence[RouteOp],
        start: int,
        base: int,
        res: list[int],
        local: dict[int, int],
        limit: int,
        drain: bool,
    ) -> tuple[bytes, int, str | NhKey | None]:
        """Pack ops[start:] until `limit` ops or the byte cap; returns (datagram, next index,
        what is missing: a device name not in the cache, or the key of a nexthop object not
        made yet; None). Reads acks now and then when a batch is in flight."""
        pack = self._packer.pack
        hops_for = self._hops_for
        missing = self._missing
        objects = self.nexthop_objects
        nh_failed = self._nh_failed
        delete = OpKind.DELETE
        replace = OpKind.REPLACE
        add = OpKind.ADD
        del_base = base + len(ops)
        parts: list[bytes] = []
        append = parts.append
        size = 0
        max_bytes = self._max_chunk_bytes
        stop = min(len(ops), start + limit)
        # the last nexthops tuple looked up and its object id: the routes of an UPDATE come
        # in a row with the same tuple
        last_hops: tuple[NextHop, ...] | None = None
        last_v6 = False
        last_id = 0
        i = start
        while i < stop:
            op = ops[i]
            route = op.route
            kind = op.kind
            try:
                if kind is delete or not route.nexthops:
                    via: nc.Via = ()  # (no nexthop: the fallback route)
                elif objects:
                    # the core shares one nexthops tuple per path: its object id is cached by
                    # the tuple's identity (and the family), so most routes skip the lookup
                    nexthops = route.nexthops
                    v6 = ":" in route.prefix
                    if nexthops is last_hops and v6 is last_v6:
                        via = last_id
                    else:
                        via = self._object_for(nexthops, v6)
                        if via < 0:  # (-1: not made yet; the caller makes it, then goes on)
                            return b"".join(parts), i, (v6, hops_for(nexthops))
                        if via == 0:  # the kernel refused to make it
                            res[i] = _LOCAL
                            local[i] = nh_failed[(v6, hops_for(nexthops))]
                            i += 1
                            continue
                        last_hops, last_v6, last_id = nexthops, v6, via
                else:
                    via = hops_for(route.nexthops)
                if kind is replace:
                    # The kernel's replace matches prefix and metric only, whoever owns the
                    # route there. So: a delete carrying our protocol id, then an exclusive
                    # add, in one datagram (microseconds apart; the backup at the next metric
                    # covers the gap): our route is replaced, while a route of another owner
                    # that took this key stays (the delete finds nothing of ours, the add
                    # meets EEXIST and is reported). The add's ack is the op's result.
                    msg = pack(delete, route.prefix, route.metric, (), del_base + i) + pack(
                        add, route.prefix, route.metric, via, base + i)
                elif kind is delete:
                    if route.nexthops or self.fallback_type is None:
                        msg = pack(kind, route.prefix, route.metric, (), base + i)
                    else:  # the kernel matches the type on delete: the fallback's own
                        msg = self._packer.pack_fallback_delete(route.prefix, route.metric,
                                                                base + i)
                else:
                    msg = pack(kind, route.prefix, route.metric, via, base + i)
            except _Unresolved as miss:
                if miss.name not in missing:
                    return b"".join(parts), i, miss.name
                res[i] = _LOCAL
                local[i] = errno.ENODEV
                i += 1
                continue
            except ValueError as exc:
                res[i] = _LOCAL
                local[i] = errno.EINVAL
                self._messages[i] = str(exc)
                i += 1
                continue
            append(msg)
            res[i] = _PENDING
            size += len(msg)
            i += 1
            if size >= max_bytes:
                break
            if drain and not i & 127:
                self._drain(base, res)
        return b"".join(parts), i, None

    def _send_sync(self, data: bytes, rng: tuple[int, int], base: int, res: list[int]) -> None:
        try:
            self._sock.send(data)
        except OSError as exc:
            self._send_failed(exc, rng)
        self._drain(base, res)

    def _wait(self, fut: Future[int], rng: tuple[int, int]) -> None:
        try:
            fut.result()
        except OSError as exc:
            self._send_failed(exc, rng)

    def _send_failed(self, exc: OSError, rng: tuple[int, int]) -> None:
        # the kernel saw none of it: its ops stay _PENDING and are resent in smaller batches
        log.warning("kernel: sending %d route requests failed: %s", rng[1] - rng[0], exc)

    def _overflowed(self) -> None:
        self._overruns += 1
        if not self._warned:
            self._warned = True
            log.warning("kernel: netlink receive queue overflowed (ENOBUFS); the ops whose "
                        "acks were lost are resolved by resending them")

    def _take_ack(self, base: int, res: list[int], seq: int, error: int,
                  message: str | None = None) -> None:
        i = seq - base
        if 0 <= i < len(res) and res[i] == _PENDING:
            res[i] = error
            if message:
                self._messages[i] = message

    def _drain(self, base: int, res: list[int]) -> None:
        """Read every ack queued right now (never blocks)."""
        if self._mrecv is not None:
            self._drain_many(self._mrecv, base, res)
            return
        recv_into = self._sock.recv_into
        buf = self._abuf
        unpack = nc.ACK.unpack_from
        n = len(res)
        dontwait = socket.MSG_DONTWAIT
        ack_size = nc.ACK_SIZE
        error_type = nc.NLMSG_ERROR
        while True:
            try:
                k = recv_into(buf, 0, dontwait)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._overflowed()
                continue
            if k == ack_size:
                _len, mtype, _flags, seq, _pid, err = unpack(buf)
                if mtype == error_type:
                    i = seq - base
                    if 0 <= i < n and res[i] == _PENDING:
                        res[i] = -err
                    continue
            for ack in nc.parse_acks(buf, k):
                self._take_ack(base, res, ack.seq, ack.error, ack.message)

    def _drain_many(self, mr: MultiRecv, base: int, res: list[int]) -> None:
        """_drain with recvmmsg: one system call per up to mr.vlen acks."""
        ints, uints, step, slot = mr.ints, mr.uints, mr.step, mr.slot
        n = len(res)
        ack_size = nc.ACK_SIZE
        error_type = nc.NLMSG_ERROR
        while True:
            try:
                got = mr.recv()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._overflowed()
                continue
            if got and self._all_ok(mr, got, base, res):
                if got < mr.vlen:
                    return
                continue
            o = 0
            for _ in range(got):
                length = uints[o]
                if length == ack_size and uints[o + 1] & 0xFFFF == error_type:
                    i = uints[o + 2] - base
                    if 0 <= i < n and res[i] == _PENDING:
                        res[i] = -ints[o + 4]
                elif length > slot:  # cut to the slot: header and errno survive, text not
                    if length >= ack_size and uints[o + 1] & 0xFFFF == error_type:
                        self._take_ack(base, res, uints[o + 2], -ints[o + 4])
                else:
                    for ack in nc.parse_acks(mr.datagram(o, length)):
                        self._take_ack(base, res, ack.seq, ack.error, ack.message)
                o += step
            if got < mr.vlen:
                return

    @staticmethod
    def _all_ok(mr: MultiRecv, got: int, base: int, res: list[int]) -> bool:
        """The usual case, read in bulk: `got` success acks for consecutive requests that
        were all still waiting. Then they are marked applied in one slice and True is
        returned; anything else (an error, a gap, a longer message) leaves it to the loop."""
        words = got * mr.step
        step = mr.step
        uints = mr.uints
        if uints[0:words:step].tolist().count(nc.ACK_SIZE) != got:
            return False
        if mr.ints[4:words:step].tolist().count(0) != got:
            return False
        types = uints[1:words:step].tolist()
        if types.count(types[0]) != got or types[0] & 0xFFFF != nc.NLMSG_ERROR:
            return False
        seqs = uints[2:words:step].tolist()
        first = seqs[0] - base
        last = seqs[-1] - base
        if last - first != got - 1 or first < 0 or last >= len(res):
            return False
        if res[first:last + 1].count(_PENDING) != got or seqs != list(
                range(seqs[0], seqs[0] + got)):
            return False
        res[first:last + 1] = [0] * got
        return True

    def _wait_stragglers(self, base: int, res: list[int], quiet: float = 0.05) -> None:
        """Acks should all be queued once send() returned; give late ones a short grace."""
        while _PENDING in res and self._wait_readable(quiet):
            self._drain(base, res)

    # ------------------------------------------------------------------ dump

    def dump(self) -> list[KernelRoute]:
        """Our routes (our table, our protocol id, unicast) as KernelRoutes."""
        with self._lock:
            # a dump builds a few objects per route, none of them in a reference cycle: the
            # cyclic collector would only rescan the growing heap (a third of the time at 100k)
            collecting = gc.isenabled()
            gc.disable()
            try:
                for _attempt in range(3):
                    found, interrupted = self._dump_raw()
                    if not interrupted:
                        break
                    log.info("kernel: route dump interrupted by concurrent changes; again")
                return self._to_routes(found)
            finally:
                if collecting:
                    gc.enable()

    def _dump_raw(self) -> tuple[list[nc.DumpedRoute], bool]:
        out: list[nc.DumpedRoute] = []
        hop_cache: dict[tuple[int, str | None], tuple[nc.Hop, ...]] = {}
        interrupted = False

        def take(n: int, seq: int) -> tuple[bool, int]:
            nonlocal interrupted
            chunk = nc.parse_route_dump(self._rbuf, n, table=self.table, protocol=self.proto,
                                        seq=seq, hop_cache=hop_cache, types=self._types)
            out.extend(chunk.routes)
            interrupted = interrupted or chunk.interrupted
            return chunk.done, chunk.error

        self._dump_routes(take)
        return out, interrupted

    def _dump_routes(self, take: Callable[[int, int], tuple[bool, int]]) -> None:
        """Dump our routes (our table and protocol, both families) through `_dump`; a table
        that does not exist yet dumps as ENOENT: nothing of ours."""
        for family in (nc.AF_INET, nc.AF_INET6):

            def request(seq: int, family: int = family) -> bytes:
                return nc.pack_route_dump_request(family, seq, self.table, self.proto)

            self._dump(request, take, "route dump", ok=(0, errno.ENOENT))

    def _dump(self, request: Callable[[int], bytes], take: Callable[[int, int], tuple[bool, int]],
              what: str, ok: tuple[int, ...] = (0,)) -> None:
        """One dump: send `request(seq)`, hand each datagram of the answer (its length in
        self._rbuf, the sequence) to `take`, which returns whether the dump ended and its
        errno; an errno not in `ok` is raised."""
        self._discard_pending()
        seq = self._take_seqs(1)
        self._sock.send(request(seq))
        deadline = time.monotonic() + _DUMP_TIMEOUT
        while True:
            n = self._read_reply(deadline, what)
            if n is None:
                continue
            done, error = take(n, seq)
            if done:
                if error not in ok:
                    raise OSError(error, f"{what}: {os.strerror(error)}")
                return

    def _to_routes(self, found: list[nc.DumpedRoute]) -> list[KernelRoute]:
        # one NextHop tuple per distinct set of kernel nexthops, shared by its routes
        shared: dict[tuple[nc.Hop, ...], tuple[NextHop, ...]] = {}
        for _prefix, _table, _metric, hops in found:
            if hops not in shared:
                shared[hops] = ()
        if any(h.ifindex not in self._by_index for hops in shared for h in hops):
            self.refresh_links()
        names = self._by_index
        for hops in shared:
            made = [NextHop(names.get(h.ifindex) or f"#{h.ifindex}", h.gateway) for h in hops]
            made.sort(key=NextHop.sort_key)
            shared[hops] = tuple(made)
        return [KernelRoute(prefix, metric, shared[hops]) for prefix, _t, metric, hops in found]
