"""One pass of route ops over the socket: the writer's hot path.

Ops are packed in order (:class:`vtibgp.kernel.codec.RoutePacker`), up to `limit` requests
per ``send``, each with its own sequence number. Only a datagram's last request asks for an
ack; the kernel answers every refused one anyway (see :mod:`vtibgp.kernel.acks`), so a batch
that goes through costs the kernel one ack instead of one per route, and us one read.
rtnetlink handles a datagram synchronously inside ``send``: when it returns, every answer of
the batch is queued on the socket (or was dropped, see ENOBUFS in :mod:`vtibgp.kernel.acks`).
For more than one batch the sends run on a helper thread (the GIL is released in ``send``)
while this thread packs the next batch and reads the answers to the previous ones, so the
kernel's work overlaps Python's; at most one batch is in flight.

A device not in the link cache, or a nexthop object not made yet, stops packing: what is in
flight is finished, what is packed is sent, the name is looked up (or the object made) with
the socket quiet, and packing goes on in order.

Owns: packing, batching, the sender thread and its GIL switch interval. Must not know: why
the ops are wanted, how refusals are retried (the writer's), BGP.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from vtibgp.core.model import NextHop, OpKind, RouteOp
from vtibgp.kernel import codec as nc
from vtibgp.kernel.acks import LOCAL, PENDING, UNSENT, AckReader
from vtibgp.kernel.linkstate import LinkCache, Unresolved
from vtibgp.kernel.netlink import Rtnl
from vtibgp.kernel.nexthops import NexthopPool, NhKey, NotMade, ObjectRefused

log = logging.getLogger("vtibgp.kernel.sender")

# Python's GIL switch interval while batches are pipelined (default 5 ms): 100k routes here
# went from a median of 120,000 to 141,000 adds/s and 104,000 to 112,000 deletes/s at 0.1 ms
# (5 interleaved runs each)
PIPELINE_SWITCH = 0.0001
_DRAIN_EVERY = 127  # while a batch is in flight, answers are read every 128 ops packed


class BatchSender:
    """Sends ops over `nl` (one exchange at a time; the owner serialises calls).

    A REPLACE is a delete carrying our protocol id, then an exclusive add, in one datagram
    (the kernel's own replace matches prefix and metric only, whoever owns the route; the
    backup at the next metric covers the microseconds between): our route is replaced, another
    owner's at that key stays (our delete finds nothing, the add meets EEXIST and is
    reported). The add's ack is the op's result."""

    def __init__(self, nl: Rtnl, packer: nc.RoutePacker, links: LinkCache,
                 nexthops: NexthopPool, fallback_type: int | None) -> None:
        self._nl = nl
        self._sock = nl.sock
        self._packer = packer
        self._links = links
        self._nexthops = nexthops
        self._fallback = fallback_type is not None
        self._acks = AckReader(nl)
        self._executor: ThreadPoolExecutor | None = None
        self.missing: set[str] = set()  # devices found missing in the running apply
        # the running exchange
        self._ops: Sequence[RouteOp] = ()
        self._res: list[int] = []
        self._local: dict[int, int] = {}
        self._messages: dict[int, str] = {}
        self._base = 0
        self._limit = 1

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def exchange(self, ops: Sequence[RouteOp], local: dict[int, int],
                 messages: dict[int, str], limit: int, pipeline: bool) -> list[int]:
        """Send every op once; per op: 0 / errno from its ack, LOCAL (errno in `local`),
        or PENDING if no ack came (lost to an overflow, or its send failed). Error texts
        (extended ack, local validation) go to `messages`, by index."""
        n = len(ops)
        res = [UNSENT] * n
        base = self._nl.take_seqs(2 * n)  # base + i: op i; base + n + i: a REPLACE's delete
        self._ops, self._res, self._local, self._messages = ops, res, local, messages
        self._base, self._limit = base, limit
        self._acks.start(base, res, messages)
        self._nl.discard_pending()
        use_pool = pipeline and n > limit
        switch = sys.getswitchinterval()
        if use_pool:
            # The sender thread needs the GIL back the moment the kernel has taken a batch,
            # while this thread packs the next one; by default it waits up to 5 ms for it
            # (a quarter of a 2,000-route batch's kernel time). See PIPELINE_SWITCH.
            sys.setswitchinterval(min(switch, PIPELINE_SWITCH))
        try:
            self._pipeline(use_pool)
        finally:
            sys.setswitchinterval(switch)
            self._ops = ()
        if PENDING in res:
            self._acks.wait_stragglers()
        return res

    def _pipeline(self, use_pool: bool) -> None:
        """exchange's send loop: every op packed and sent once, acks read as they come."""
        n = len(self._ops)
        drain = self._acks.drain
        inflight: Future[int] | None = None
        inflight_range = (0, 0)
        start = 0
        while start < n:
            data, end, miss = self._pack_chunk(start, inflight is not None)
            if miss is not None:
                # finish what is in flight, send what is packed, then look the name up with
                # the socket quiet (its answer must not mix with acks), then go on in order
                if inflight is not None:
                    self._wait(inflight, inflight_range)
                    inflight = None
                    drain()
                if data:
                    self._send_sync(data, (start, end))
                if not isinstance(miss, str):
                    self._nexthops.make(miss)
                elif self._links.resolve(miss) is None:
                    self.missing.add(miss)
                start = end
                continue
            if data and use_pool:
                # hand the next batch to the kernel as soon as the previous one is through,
                # then read the previous batch's acks while the kernel works on this one
                if inflight is not None:
                    self._wait(inflight, inflight_range)
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="vtibgp-netlink")
                inflight = self._executor.submit(self._sock.send, data)
                inflight_range = (start, end)
                drain()
            elif data:
                self._send_sync(data, (start, end))
            start = end
        if inflight is not None:
            self._wait(inflight, inflight_range)
            drain()

    def _pack_chunk(self, start: int, drain: bool) -> tuple[bytes, int, str | NhKey | None]:
        """Pack ops[start:] until `limit` ops or the byte cap; returns (datagram, next index,
        what is missing: a device name not in the cache, or the key of a nexthop object not
        made yet; None). Reads acks now and then when a batch is in flight (`drain`)."""
        ops, res, base = self._ops, self._res, self._base
        pack, hops_for, missing = self._packer.pack, self._links.hops, self.missing
        object_for = self._nexthops.object_for if self._nexthops.enabled else None
        delete, replace, add = OpKind.DELETE, OpKind.REPLACE, OpKind.ADD
        fallback = self._fallback
        del_base = base + len(ops)
        parts: list[bytes] = []
        append = parts.append
        size, max_bytes = 0, self._nl.max_chunk_bytes
        stop = min(len(ops), start + self._limit)
        last_hops: tuple[NextHop, ...] | None = None  # an UPDATE's routes share one tuple
        last_v6, last_id = False, 0
        last = -1  # the last op packed: its request asks for the datagram's ack
        i = start
        while i < stop:
            op = ops[i]
            route = op.route
            kind = op.kind
            try:
                if kind is delete or not route.nexthops:
                    via: nc.Via = ()  # (no nexthop: the fallback route)
                elif object_for is not None:  # cached by the tuple's identity and family
                    nexthops = route.nexthops
                    v6 = ":" in route.prefix
                    if nexthops is last_hops and v6 is last_v6:
                        via = last_id
                    else:
                        via = last_id = object_for(nexthops, v6)
                        last_hops, last_v6 = nexthops, v6
                else:
                    via = hops_for(route.nexthops)
                if kind is replace:  # see the class docstring
                    msg = pack(delete, route.prefix, route.metric, (), del_base + i) + pack(
                        add, route.prefix, route.metric, via, base + i)
                elif kind is delete and fallback and not route.nexthops:
                    # the kernel matches the type on delete: the fallback's own
                    msg = self._packer.pack_fallback_delete(route.prefix, route.metric, base + i)
                else:
                    msg = pack(kind, route.prefix, route.metric, via, base + i)
            except (Unresolved, ValueError) as exc:
                if isinstance(exc, Unresolved) and exc.name not in missing:
                    # the caller looks it up, goes on
                    return self._close_datagram(parts, start, last), i, exc.name
                self._refuse(i, exc)
                i += 1
                continue
            except NotMade as exc:  # the caller makes it, then goes on from here
                return self._close_datagram(parts, start, last), i, exc.key
            append(msg)
            res[i] = PENDING
            last = i
            size += len(msg)
            i += 1
            if size >= max_bytes:
                break
            if drain and not i & _DRAIN_EVERY:
                self._acks.drain()
        return self._close_datagram(parts, start, last), i, None

    def _close_datagram(self, parts: list[bytes], first: int, last: int) -> bytes:
        """The datagram of `parts` (ops first..last), its last request asking for the ack
        that closes it (see :mod:`vtibgp.kernel.acks`)."""
        if not parts:
            return b""
        parts[-1] = nc.with_ack(parts[-1])
        self._acks.closes(first, last)
        return b"".join(parts)

    def _refuse(self, i: int, exc: Exception) -> None:
        """Op i is refused before sending: ENODEV (device unknown), the errno the kernel
        gave its nexthop object, or EINVAL (malformed; the reason kept as its message)."""
        self._res[i] = LOCAL
        if isinstance(exc, Unresolved):
            self._local[i] = errno.ENODEV
        elif isinstance(exc, ObjectRefused):
            self._local[i] = exc.err
        else:
            self._local[i] = errno.EINVAL
            self._messages[i] = str(exc)

    def _send_sync(self, data: bytes, rng: tuple[int, int]) -> None:
        try:
            self._sock.send(data)
        except OSError as exc:
            self._send_failed(exc, rng)
        self._acks.drain()

    def _wait(self, fut: Future[int], rng: tuple[int, int]) -> None:
        try:
            fut.result()
        except OSError as exc:
            self._send_failed(exc, rng)

    @staticmethod
    def _send_failed(exc: OSError, rng: tuple[int, int]) -> None:
        # the kernel saw none of it: its ops stay PENDING and are resent in smaller batches
        log.warning("kernel: sending %d route requests failed: %s", rng[1] - rng[0], exc)
