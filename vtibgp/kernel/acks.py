"""Reading the answers of a batch exchange. Each route request carries its own sequence number
(base + its position), so an answer names its op. The kernel answers a refused request always
and a successful one only if it asked for an ack (NLM_F_ACK): the sender asks it of the last
request of each datagram only (:func:`vtibgp.kernel.codec.with_ack`). rtnetlink works through
a datagram in order inside the ``send`` and queues its answers in that order, so once the
last request's answer is read, every refusal before it in that datagram has been read too:
the ops of the datagram still waiting are applied ("closing" the datagram, see closes()).

Every answer is its own datagram on the socket; they are read with recvmmsg(2)
(:class:`vtibgp.kernel.netlink.MultiRecv`, up to 1,024 per system call) or, without it, one
``recv_into`` each. Reads never block.

Lost answers. If the receive queue overflows, the kernel drops an answer and the next read
reports ENOBUFS before anything queued after the drop. So the datagrams closed before that
report are sound; from then on no datagram of the exchange is closed by inference: their
unanswered ops stay PENDING and the writer resends them (it resolves what each resend meets).

The per-op results of an exchange are a list of ints: 0 or the errno of its answer, or one of
the markers below.

Owns: turning queued answers into per-op results, counting receive-queue overflows (ENOBUFS).
Must not know: what the ops were, how they are resent (the writer decides), what a route is.
"""

from __future__ import annotations

import errno
import logging
import socket

from vtibgp.kernel import codec as nc
from vtibgp.kernel.netlink import MultiRecv, Rtnl

log = logging.getLogger("vtibgp.kernel.acks")

PENDING = -1  # sent, no ack read yet
LOCAL = -2  # refused before sending (errno kept aside by the sender)
UNSENT = -3  # not packed yet

# a grace for acks still on their way once every send returned
STRAGGLER_WAIT = 0.05


class AckReader:
    """The acks of one exchange at a time (see start) on `nl`'s socket."""

    def __init__(self, nl: Rtnl) -> None:
        self._nl = nl
        self._sock = nl.sock
        self._mrecv = nl.mrecv
        self._abuf = bytearray(1 << 16)
        self._warned = False
        self.base = 0
        self.res: list[int] = []
        self.messages: dict[int, str] = {}
        self._closes: dict[int, int] = {}  # a datagram's last op -> its first
        self._lossy = False  # an answer of this exchange was lost: close nothing more

    def start(self, base: int, res: list[int], messages: dict[int, str]) -> None:
        """Answers of sequence base + i go to res[i] (if still PENDING); error texts
        (extended acks) to messages[i]."""
        self.base = base
        self.res = res
        self.messages = messages
        self._warned = False
        self._closes = {}
        self._lossy = False

    def closes(self, first: int, last: int) -> None:
        """A datagram carries ops first..last, and only op `last` asks for an ack: when its
        answer comes, the ops in between still PENDING were applied."""
        self._closes[last] = first

    def _close(self, last: int) -> None:
        first = self._closes.pop(last)
        if self._lossy:
            return
        res = self.res
        part = res[first:last]
        if part.count(PENDING) == len(part):
            res[first:last] = [0] * len(part)
        else:
            res[first:last] = [0 if r == PENDING else r for r in part]

    def drain(self) -> None:
        """Read every ack queued right now (never blocks)."""
        if self._mrecv is not None:
            self._drain_many(self._mrecv, self.base, self.res)
            return
        recv_into = self._sock.recv_into
        buf = self._abuf
        unpack = nc.ACK.unpack_from
        base, res = self.base, self.res
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
                    if 0 <= i < n and res[i] == PENDING:
                        res[i] = -err
                    if i in self._closes:
                        self._close(i)
                    continue
            for ack in nc.parse_acks(buf, k):
                self._take(ack.seq, ack.error, ack.message)

    def _drain_many(self, mr: MultiRecv, base: int, res: list[int]) -> None:
        """drain with recvmmsg: one system call per up to mr.vlen answers."""
        ints, uints, step, slot = mr.ints, mr.uints, mr.step, mr.slot
        n = len(res)
        ack_size = nc.ACK_SIZE
        error_type = nc.NLMSG_ERROR
        closes = self._closes
        while True:
            try:
                got = mr.recv()
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._overflowed()
                continue
            o = 0
            for _ in range(got):
                length = uints[o]
                if length == ack_size and uints[o + 1] & 0xFFFF == error_type:
                    i = uints[o + 2] - base
                    if 0 <= i < n and res[i] == PENDING:
                        res[i] = -ints[o + 4]
                    if i in closes:
                        self._close(i)
                elif length > slot:  # cut to the slot: header and errno survive, text not
                    if length >= ack_size and uints[o + 1] & 0xFFFF == error_type:
                        self._take(uints[o + 2], -ints[o + 4])
                else:
                    for ack in nc.parse_acks(mr.datagram(o, length)):
                        self._take(ack.seq, ack.error, ack.message)
                o += step
            if got < mr.vlen:
                return

    def _take(self, seq: int, error: int, message: str | None = None) -> None:
        i = seq - self.base
        if 0 <= i < len(self.res) and self.res[i] == PENDING:
            self.res[i] = error
            if message:
                self.messages[i] = message
        if i in self._closes:
            self._close(i)

    def _overflowed(self) -> None:
        self._nl.overruns += 1
        self._lossy = True
        if not self._warned:
            self._warned = True
            log.warning("kernel: netlink receive queue overflowed (ENOBUFS); the ops whose "
                        "answers may be lost are resolved by resending them")

    def wait_stragglers(self, quiet: float = STRAGGLER_WAIT) -> None:
        """Answers should all be queued once send() returned; give late ones a short grace."""
        while PENDING in self.res and self._nl.wait_readable(quiet):
            self.drain()
