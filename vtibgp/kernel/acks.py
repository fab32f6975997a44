"""Reading the acks of a batch exchange: every route request carries NLM_F_ACK and its own
sequence number (base + its position), so each ack names its op. Every ack is its own
datagram; they are read with recvmmsg(2) (:class:`vtibgp.kernel.netlink.MultiRecv`, up to
1,024 per system call, the usual all-success run marked in one slice) or, without it, one
``recv_into`` each. Reads never block.

The per-op results of an exchange are a list of ints: 0 or the errno of its ack, or one of
the markers below.

Owns: turning queued acks into per-op results, counting receive-queue overflows (ENOBUFS:
acks were lost; those ops stay PENDING). Must not know: what the ops were, how they are
resent (the writer decides), what a route is.
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

    def start(self, base: int, res: list[int], messages: dict[int, str]) -> None:
        """Acks of sequence base + i go to res[i] (if still PENDING); error texts (extended
        acks) to messages[i]."""
        self.base = base
        self.res = res
        self.messages = messages
        self._warned = False

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
                    continue
            for ack in nc.parse_acks(buf, k):
                self._take(ack.seq, ack.error, ack.message)

    def _drain_many(self, mr: MultiRecv, base: int, res: list[int]) -> None:
        """drain with recvmmsg: one system call per up to mr.vlen acks."""
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
                    if 0 <= i < n and res[i] == PENDING:
                        res[i] = -ints[o + 4]
                elif length > slot:  # cut to the slot: header and errno survive, text not
                    if length >= ack_size and uints[o + 1] & 0xFFFF == error_type:
                        self._take(uints[o + 2], -ints[o + 4])
                else:
                    for ack in nc.parse_acks(mr.datagram(o, length)):
                        self._take(ack.seq, ack.error, ack.message)
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
        if res[first:last + 1].count(PENDING) != got or seqs != list(
                range(seqs[0], seqs[0] + got)):
            return False
        res[first:last + 1] = [0] * got
        return True

    def _take(self, seq: int, error: int, message: str | None = None) -> None:
        i = seq - self.base
        if 0 <= i < len(self.res) and self.res[i] == PENDING:
            self.res[i] = error
            if message:
                self.messages[i] = message

    def _overflowed(self) -> None:
        self._nl.overruns += 1
        if not self._warned:
            self._warned = True
            log.warning("kernel: netlink receive queue overflowed (ENOBUFS); the ops whose "
                        "acks were lost are resolved by resending them")

    def wait_stragglers(self, quiet: float = STRAGGLER_WAIT) -> None:
        """Acks should all be queued once send() returned; give late ones a short grace."""
        while PENDING in self.res and self._nl.wait_readable(quiet):
            self.drain()
