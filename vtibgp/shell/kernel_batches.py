"""Route ops into the kernel writer for the loop: in rounds with the core's answers to the
kernel's refusals, and one batch at a time on a helper thread while the loop decides on.

The kernel's work happens in the writer's syscalls, with the GIL released, so a full table's
batch can be applied while the loop decides the next prefixes (`start`); `settle` waits for
it, hands its refusals to the core (those on a key decided again meanwhile are that later
op's: vtibgp.core.inflight) and returns what is left to carry out. Which events may be
decided while a batch is in flight is the daemon's rule (`in_flight` tells it the prefixes).

Owns: the order ops go in (one per key, deletes last), the rounds of refusals and the core's
ops for them, the batch in flight, the counting and logging of the kernel's answers. Must not
know: what the ops mean (the core's), the rest of a decision (the daemon carries it out).
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol

from vtibgp.core.decision import Decision
from vtibgp.core.engine import coalesce
from vtibgp.core.inflight import late_refusals
from vtibgp.core.model import Event, OpKind, OpResult, RouteFailed, RouteOp
from vtibgp.shell import metrics as m

log = logging.getLogger("vtibgp")

ROUNDS = 4  # applies per batch at most: the ops, then the core's ops for their refusals
_KIND = attrgetter("kind")  # RouteOp -> OpKind


class Applies(Protocol):
    def apply(self, ops: Sequence[RouteOp]) -> OpResult: ...


@dataclass
class _Flight:
    """A batch the kernel thread applies while the loop decides on."""

    future: Future[tuple[OpResult, float]]
    ops: list[RouteOp]  # as applied (one per key, deletes last)
    prefixes: set[str]
    effects: Decision  # the rest of its decision, carried out once it is applied


def _tally(ops: list[RouteOp]) -> Counter[str]:
    """The ops by kind (`Counter(op.kind.value for op in ops)`, at C speed)."""
    kinds = list(map(_KIND, ops))
    return Counter({kind.value: n for kind in OpKind if (n := kinds.count(kind))})


def ordered(ops: list[RouteOp]) -> list[RouteOp]:
    """One op per key; within a batch, traffic moves first (adds and replaces), then the
    deletes of routes nothing uses any more."""
    ops = coalesce(ops)
    deletes = list(map(_KIND, ops)).count(OpKind.DELETE)
    if 0 < deletes < len(ops):  # (a stable sort on "is a delete")
        ops = ([op for op in ops if op.kind is not OpKind.DELETE]
               + [op for op in ops if op.kind is OpKind.DELETE])
    return ops


class KernelBatches:
    """The writer as the loop uses it; `handle` is the core's (RouteFailed in, ops out)."""

    def __init__(self, writer: Applies, handle: Callable[[Event], Decision]) -> None:
        self.writer = writer
        self.handle = handle
        self._flight: _Flight | None = None
        self._thread: ThreadPoolExecutor | None = None

    @property
    def in_flight(self) -> set[str] | None:
        """The prefixes of the batch in flight, None when there is none."""
        return None if self._flight is None else self._flight.prefixes

    def apply(self, ops: list[RouteOp]) -> Decision:
        """Apply ops now; the core's ops for their refusals too. Returns the other effects of
        those refusals' decisions. (No batch may be in flight: settle first.)"""
        later = Decision()
        self._rounds(ordered(ops), later, first=0)
        return later

    def start(self, ops: list[RouteOp], effects: Decision) -> None:
        """Apply ops on the kernel thread; `effects` (the rest of their decision) come back
        from settle. (No batch may be in flight: settle first.)"""
        assert self._flight is None, "one batch in flight at most"
        ops = ordered(ops)
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="vtibgp-kernel")
        self._flight = _Flight(self._thread.submit(self._timed_apply, ops), ops,
                               {op.route.prefix for op in ops}, effects)

    def settle(self, pending: Decision) -> tuple[Decision, Decision] | None:
        """Wait for the batch in flight; None if there is none. Its refusals go to the core,
        but those on a key `pending` (decided meanwhile, not applied yet) has an op on are
        that op's (core.inflight.late_refusals; `pending.ops` may be changed). Returns the
        batch's own effects and those of the core's answers to its refusals."""
        fl = self._flight
        if fl is None:
            return None
        self._flight = None
        res, seconds = fl.future.result()
        m.BATCH_SECONDS.observe(seconds)
        later = Decision()
        to_core = late_refusals(res.failed, pending.ops)
        if len(to_core) < len(res.failed):
            log.info("kernel: %d refusals of the batch applied while the next was decided "
                     "are left to the ops decided since for those routes",
                     len(res.failed) - len(to_core))
        self._rounds(self._answers(fl.ops, res, to_core, later), later, first=1)
        return fl.effects, later

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None

    def _timed_apply(self, ops: list[RouteOp]) -> tuple[OpResult, float]:
        t0 = time.perf_counter()
        res = self.writer.apply(ops)
        return res, time.perf_counter() - t0

    def _rounds(self, ops: list[RouteOp], later: Decision, first: int) -> None:
        """Apply ops, and the core's ops for their refusals, up to ROUNDS applies in all
        (`first`: those already done)."""
        for _round in range(first, ROUNDS):
            if not ops:
                break
            res, seconds = self._timed_apply(ops)
            m.BATCH_SECONDS.observe(seconds)
            ops = self._answers(ops, res, res.failed, later)

    def _answers(self, ops: list[RouteOp], res: OpResult,
                 to_core: Sequence[tuple[RouteOp, int]], later: Decision) -> list[RouteOp]:
        """Count and log the kernel's answer to `ops`; the refusals `to_core` go to the core.
        Returns the core's ops for them (their other effects merged into `later`)."""
        tally = _tally(ops)
        for op, e in res.failed:
            tally[op.kind.value] -= 1
            result = "conflict" if e == errno_mod.EEXIST else "error"
            m.ROUTE_OPS.labels(op.kind.value, result).inc()
            m.KERNEL_ERRORS.labels(errno_mod.errorcode.get(e, str(e))).inc()
            if e == errno_mod.EEXIST and op.kind is OpKind.ADD:
                log.warning("kernel: %s: a route of another owner holds %s metric %d; "
                            "leaving it alone", errno_mod.errorcode[e], op.route.prefix,
                            op.route.metric)
            else:
                log.error("kernel: %s failed: %s", op, os.strerror(e))
        for kind, n in tally.items():
            m.ROUTE_OPS.labels(kind, "ok").inc(n)
        out: list[RouteOp] = []
        for op, e in to_core:
            answer = self.handle(RouteFailed(op, e))
            out.extend(answer.ops)
            answer.ops = []
            later.merge(answer)
        return out
