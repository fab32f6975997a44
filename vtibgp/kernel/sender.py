"""One pass of route ops over the socket: the writer's hot path.

Ops are packed in order (:class:`vtibgp.kernel.codec.RoutePacker`), up to `limit` requests
per ``send``, each with its own sequence number. Only a datagram's last request asks for an
ack; the kernel answers every refused one anyway (see :mod:`vtibgp.kernel.acks`), so a batch
that goes through costs the kernel one ack instead of one per route, and us one read.
rtnetlink handles a datagram synchronously inside ``send``: when it returns, every answer of
the batch is queued on the socket (or was dropped, see ENOBUFS in :mod:`vtibgp.kernel.acks`).
For more than one batch the sends run on a helper thread (the GIL is released in ``send``)
while this thread packs the next batch and reads the answers to the previous ones, so the
kernel's work overlaps Python's; up to _QUEUED batches wait behind the one being sent.

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
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from vtibgp.core.model import NextHop, OpKind, RouteOp
from vtibgp.kernel import codec as nc
from vtibgp.kernel import compiled as cc
from vtibgp.kernel.acks import LOCAL, PENDING, UNSENT, AckReader
from vtibgp.kernel.linkstate import LinkCache, Unresolved
from vtibgp.kernel.netlink import Rtnl
from vtibgp.kernel.nexthops import NexthopPool, NhKey, NotMade, ObjectRefused

log = logging.getLogger("vtibgp.kernel.sender")

# Python's GIL switch interval while batches are pipelined (default 5 ms): 100k routes here
# went from a median of 120,000 to 141,000 adds/s and 104,000 to 112,000 deletes/s at 0.1 ms
# (5 interleaved runs each)
PIPELINE_SWITCH = 0.0001
# batches queued behind the one being sent: the kernel never waits for this thread to hand
# over the next one (with one ack per datagram, a few batches' answers are small)
_QUEUED = 2
# ops per call of the compiled packer: it holds the GIL for the whole call, and the sender
# thread needs the GIL back after each send; a whole batch per call (2,000 ops, ~1.6 ms at
# 1,000,000 routes) made each send wait for it
_FAST_RUN = 256
_DRAIN_EVERY = 127  # while a batch is in flight, answers are read every 128 ops packed


_ADD, _REPLACE, _DELETE = OpKind.ADD, OpKind.REPLACE, OpKind.DELETE


class BatchSender:
    """Sends ops over `nl` (one exchange at a time; the owner serialises calls).

    A REPLACE is a delete carrying our protocol id, then an exclusive add, in one datagram
    (the kernel's own replace matches prefix and metric only, whoever owns the route; the
    backup at the next metric covers the microseconds between): our route is replaced, another
    owner's at that key stays (our delete finds nothing, the add meets EEXIST and is
    reported). The add's ack is the op's result."""

    def __init__(self, nl: Rtnl, packer: nc.RoutePacker, links: LinkCache,
                 nexthops: NexthopPool, fallback_type: int | None,
                 compiled: bool = True) -> None:
        """`compiled`: pack the usual ops with the compiled packer where it was built (the
        same bytes as the Python path; see _fastpack.c)."""
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
        self._fast = cc.pack_run if compiled else None
        # the compiled packer's add templates, per nexthops tuple seen in the running
        # exchange: id -> (the tuple, [IPv4, IPv6]) (a REPLACE's add is the same); per exchange,
        # so that an object id or ifindex learnt earlier never outlives a refresh
        self._vias: dict[int, tuple[object, list[bytes | None]]] = {}
        self._last_hops: tuple[NextHop, ...] | None = None  # _pack_one's one-entry cache
        self._last_v6, self._last_id = False, 0
        self._del_templates = (packer.template(OpKind.DELETE, False, ()),
                               packer.template(OpKind.DELETE, True, ()))

    @property
    def compiled(self) -> bool:
        """The compiled packer is in use."""
        return self._fast is not None

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
        if self._fast is not None and not isinstance(ops, list):
            ops = list(ops)  # the compiled packer reads a list
        self._vias = {}
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
        """exchange's send loop: every op packed and sent once, answers read as they come.
        With the pool, up to _QUEUED batches wait behind the one the kernel works on, so
        the sender thread goes from one send to the next without waiting for this one."""
        n = len(self._ops)
        drain = self._acks.drain
        inflight: deque[tuple[Future[int], tuple[int, int]]] = deque()
        start = 0
        while start < n:
            data, end, miss = self._pack_chunk(start, bool(inflight))
            if miss is not None:
                # finish what is in flight, send what is packed, then look the name up with
                # the socket quiet (its answer must not mix with acks), then go on in order
                while inflight:
                    self._wait(*inflight.popleft())
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
                # queue the batch behind the one the kernel works on, then read answers
                # while the kernel works
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(1, thread_name_prefix="vtibgp-netlink")
                inflight.append((self._executor.submit(self._sock.send, data), (start, end)))
                while len(inflight) > _QUEUED:
                    self._wait(*inflight.popleft())
                drain()
            elif data:
                self._send_sync(data, (start, end))
            start = end
        while inflight:
            self._wait(*inflight.popleft())
        drain()

    def _pack_chunk(self, start: int, drain: bool) -> tuple[bytes, int, str | NhKey | None]:
        """Pack ops[start:] until `limit` ops or the byte cap; returns (datagram, next index,
        what is missing: a device name not in the cache, or the key of a nexthop object not
        made yet; None). Reads acks now and then when a batch is in flight (`drain`). The
        compiled packer takes the usual ops; each op it leaves goes through _pack_one."""
        ops, res, base = self._ops, self._res, self._base
        fast, vias = self._fast, self._vias
        del4, del6 = self._del_templates
        del_base = base + len(ops)
        parts: list[bytes] = []
        append = parts.append
        size, max_bytes = 0, self._nl.max_chunk_bytes
        stop = min(len(ops), start + self._limit)
        self._last_hops = None  # an UPDATE's routes share one tuple
        last = -1  # the last op packed: its request asks for the datagram's ack
        run_at = (-1, 0)  # (part, offset of its last request) of the last compiled run
        i = start
        while i < stop:
            if fast is not None:
                run_stop = min(stop, i + _FAST_RUN)
                data, j, last_at = fast(ops, i, run_stop, base, del_base, max_bytes - size,
                                        _ADD, _REPLACE, _DELETE, self._fallback, vias, del4,
                                        del6)
                if j > i:
                    append(data)
                    run_at = (len(parts) - 1, last_at)
                    res[i:j] = [PENDING] * (j - i)
                    last = j - 1
                    size += len(data)
                    i = j
                    if i >= stop or size >= max_bytes:
                        break
                    if drain:
                        self._acks.drain()
                    if j == run_stop:
                        continue  # (a short run: the GIL is handed over between them)
            try:
                msg = self._pack_one(i, base, del_base)
            except (Unresolved, ValueError) as exc:
                if isinstance(exc, Unresolved) and exc.name not in self.missing:
                    # the caller looks it up, goes on
                    return self._close_datagram(parts, start, last, run_at), i, exc.name
                self._refuse(i, exc)
                i += 1
                continue
            except NotMade as exc:  # the caller makes it, then goes on from here
                return self._close_datagram(parts, start, last, run_at), i, exc.key
            append(msg)
            res[i] = PENDING
            last = i
            size += len(msg)
            i += 1
            if size >= max_bytes:
                break
            if drain and not i & _DRAIN_EVERY:
                self._acks.drain()
        return self._close_datagram(parts, start, last, run_at), i, None

    def _pack_one(self, i: int, base: int, del_base: int) -> bytes:
        """The request(s) of op i, in Python; raises Unresolved, NotMade or ValueError. With
        the compiled packer, a route's template is learnt for the ops that follow."""
        op = self._ops[i]
        route = op.route
        kind = op.kind
        pack = self._packer.pack
        via: nc.Via
        if kind is _DELETE or not route.nexthops:
            via = ()  # (no nexthop: the fallback route)
        elif self._nexthops.enabled:  # cached by the tuple's identity and family
            nexthops = route.nexthops
            v6 = ":" in route.prefix
            if nexthops is self._last_hops and v6 is self._last_v6:
                via = self._last_id
            else:
                via = self._last_id = self._nexthops.object_for(nexthops, v6)
                self._last_hops, self._last_v6 = nexthops, v6
        else:
            via = self._links.hops(route.nexthops)
        if kind is _REPLACE:  # see the class docstring
            msg = pack(_DELETE, route.prefix, route.metric, (), del_base + i) + pack(
                _ADD, route.prefix, route.metric, via, base + i)
        elif kind is _DELETE and self._fallback and not route.nexthops:
            # the kernel matches the type on delete: the fallback's own
            return self._packer.pack_fallback_delete(route.prefix, route.metric, base + i)
        else:
            msg = pack(kind, route.prefix, route.metric, via, base + i)
        if self._fast is not None and kind is not _DELETE and route.nexthops:
            self._learn(route.nexthops, ":" in route.prefix, via)
        return msg

    def _learn(self, nexthops: tuple[NextHop, ...], v6: bool, via: nc.Via) -> None:
        """Give the compiled packer the add template of the family through `nexthops` (an
        ADD's, and a REPLACE's after its delete)."""
        entry = self._vias.get(id(nexthops))
        if entry is None or entry[0] is not nexthops:
            entry = self._vias[id(nexthops)] = (nexthops, [None, None])
        if entry[1][v6] is None:
            entry[1][v6] = self._packer.template(_ADD, v6, via)

    def _close_datagram(self, parts: list[bytes], first: int, last: int,
                        run_at: tuple[int, int]) -> bytes:
        """The datagram of `parts` (ops first..last), its last request asking for the ack
        that closes it (see :mod:`vtibgp.kernel.acks`). `run_at`: the compiled run among the
        parts that ends with its last request at that offset (no walk through it)."""
        if not parts:
            return b""
        tail = len(parts) - 1
        parts[-1] = nc.with_ack(parts[-1], run_at[1] if run_at[0] == tail else None)
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
