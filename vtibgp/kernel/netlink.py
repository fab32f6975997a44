"""The rtnetlink socket: opening it, entering a network namespace, and the request/reply
exchanges every other kernel module is built on.

Socket. A plain stdlib ``socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)``, not pyroute2's.
pyroute2 0.9's NetlinkSocket is built on an asyncio transport with its own reader, message
queue and request objects; the writer's hot path needs nothing but ``send`` of a prepared
buffer and reads of 36-byte acks, which the bare socket gives with no overhead and no hidden
reader competing for the datagrams. Socket options:

* SO_SNDBUFFORCE / SO_RCVBUFFORCE (CAP_NET_ADMIN; falls back to the rmem/wmem-capped plain
  options): a batch of 2,000 requests is one ~130 kB datagram, and the acks of up to two
  batches may wait in the receive queue (each ack is its own skb, ~1 kB of truesize);
* NETLINK_CAP_ACK: error acks do not echo the request back (the sequence number is enough);
* NETLINK_EXT_ACK: the kernel's error text ("Nexthop has invalid gateway") is logged (debug);
* NETLINK_GET_STRICT_CHK: route dumps are filtered by table and protocol in the kernel.

Namespaces. ``netns=`` opens the socket inside a named network namespace (``/run/netns/NAME``
or a path) from a short-lived helper thread that calls setns(2) and exits (:func:`in_netns`);
a socket stays in the namespace it was created in, so the rest of the process is untouched.

Acks are read with recvmmsg(2) where libc has it (:class:`MultiRecv`), up to 1,024 datagrams
per system call.

Owns: the socket, its buffers and options, sequence numbers, one acked request, one dump,
the count of receive-queue overruns. Must not know: what a route, a link or a nexthop object
is (the codecs pack and parse; links, nexthops and writer decide what to ask).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from vtibgp.kernel import codec as nc

log = logging.getLogger("vtibgp.kernel.netlink")

_T = TypeVar("_T")

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000

DUMP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 5.0

# a dump datagram's part: (its length in Rtnl.rbuf, the dump's sequence) -> (ended?, errno)
DumpTake = Callable[[int, int], tuple[bool, int]]


class KernelPermissionError(PermissionError):
    """The kernel refused our route changes with EPERM: CAP_NET_ADMIN is missing."""

    def __init__(self, detail: str = "") -> None:
        text = "the kernel refused a route change with EPERM: CAP_NET_ADMIN is missing"
        super().__init__(errno.EPERM, text + (f" ({detail})" if detail else ""))


# ------------------------------------------------------------------ network namespaces


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


# ------------------------------------------------------------------ recvmmsg


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


# ------------------------------------------------------------------ the socket


def open_socket(rcvbuf: int, sndbuf: int) -> tuple[socket.socket, bool, bool]:
    """A bound rtnetlink socket in the calling thread's namespace, with its buffers and
    options set; returns (socket, extended acks on?, strict dump checks on?)."""
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
    )
    ext_ack = strict = False
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
            ext_ack = True
        except OSError:
            pass
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            strict = True
        except OSError:
            pass
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock, ext_ack, strict


class Rtnl:
    """One rtnetlink socket (in namespace `netns` if given) and its exchanges: sequence
    numbers, one acked request, one dump. Not thread-safe: the owner serialises calls.

    `sock`, `rbuf` (replies land there), `mrecv` (None without recvmmsg) and `overruns` are
    public: the writer's ack reader works on them directly."""

    def __init__(self, *, netns: str | None = None, rcvbuf: int = 32 << 20,
                 sndbuf: int = 8 << 20, multi_recv: bool = True,
                 reply_buffer: int = 1 << 20) -> None:
        def make() -> tuple[socket.socket, bool, bool]:
            return open_socket(rcvbuf, sndbuf)

        self.netns = netns
        self.sock, self.ext_ack, self.strict_dump = in_netns(netns, make) if netns else make()
        self.rbuf = bytearray(reply_buffer)
        self.overruns = 0  # receive-queue overflows (ENOBUFS) seen
        self._seq = 1
        self._poller = select.poll()
        self._poller.register(self.sock.fileno(), select.POLLIN)
        self.mrecv: MultiRecv | None = None
        if multi_recv:
            try:
                self.mrecv = MultiRecv(self.sock.fileno())
            except (OSError, AttributeError) as exc:  # no recvmmsg in this libc
                log.info("kernel: recvmmsg unavailable (%s); reading acks one by one", exc)
        sndbuf_real = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        # netlink refuses a datagram longer than sk_sndbuf - 32
        self.max_chunk_bytes = max(4096, min(sndbuf_real - 1024, 4 << 20))

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._poller.unregister(self.sock.fileno())
        self.sock.close()

    def in_namespace(self, fn: Callable[[], _T]) -> _T:
        """`fn()` run in the socket's namespace (e.g. to read a file under /proc/sys/net)."""
        return in_netns(self.netns, fn) if self.netns else fn()

    def take_seqs(self, n: int) -> int:
        """The first of `n` fresh consecutive sequence numbers."""
        if self._seq + n >= 0xFFFFFFFF:
            self._seq = 1
        base = self._seq
        self._seq += n
        return base

    def wait_readable(self, timeout: float) -> bool:
        return bool(self._poller.poll(max(0, int(timeout * 1000))))

    def discard_pending(self) -> None:
        """Drop whatever is queued from earlier calls (stale acks, an abandoned dump)."""
        while True:
            try:
                self.sock.recv_into(self.rbuf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def read_reply(self, deadline: float, what: str) -> int | None:
        """Wait for one datagram (into rbuf) and return its length; None if the receive
        queue overflowed meanwhile, so that a unicast reply may have been dropped (dump parts
        are flow-controlled by the kernel and never are)."""
        while True:
            if not self.wait_readable(deadline - time.monotonic()):
                raise TimeoutError(f"{what}: no answer from the kernel over netlink")
            try:
                return self.sock.recv_into(self.rbuf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                return None

    def request(self, data: bytes, seq: int, what: str) -> list[nc.Ack] | None:
        """Send one acked, idempotent request; the acks carrying `seq`, or None if the
        answer was lost to an overflow three times."""
        for _attempt in range(3):
            self.discard_pending()
            self.sock.send(data)
            deadline = time.monotonic() + REQUEST_TIMEOUT
            while True:
                n = self.read_reply(deadline, what)
                if n is None:
                    break  # the answer may be lost: ask again
                acks = [a for a in nc.parse_acks(self.rbuf, n) if a.seq == seq]
                if acks:
                    return acks
        return None

    def dump(self, request: Callable[[int], bytes], take: DumpTake, what: str,
             ok: tuple[int, ...] = (0,)) -> None:
        """One dump: send `request(seq)`, hand each datagram of the answer (its length in
        rbuf, the sequence) to `take`, which returns whether the dump ended and its errno;
        an errno not in `ok` is raised."""
        self.discard_pending()
        seq = self.take_seqs(1)
        self.sock.send(request(seq))
        deadline = time.monotonic() + DUMP_TIMEOUT
        while True:
            n = self.read_reply(deadline, what)
            if n is None:
                continue
            done, error = take(n, seq)
            if done:
                if error not in ok:
                    raise OSError(error, f"{what}: {os.strerror(error)}")
                return

    def dump_routes(self, table: int, proto: int, take: DumpTake) -> None:
        """Dump the routes of `table` and `proto`, both families, through `dump`; a table
        that does not exist yet dumps as ENOENT: nothing there."""
        for family in (nc.AF_INET, nc.AF_INET6):

            def request(seq: int, family: int = family) -> bytes:
                return nc.pack_route_dump_request(family, seq, table, proto)

            self.dump(request, take, "route dump", ok=(0, errno.ENOENT))
