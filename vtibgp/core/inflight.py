"""Late refusals: the kernel's answer to a batch that was in flight while later ops were
decided.

The shell may decide the next batch while the kernel applies the previous one (the kernel's
work runs in the writer's syscalls, with the GIL released). Those later ops were decided on
the belief that every op of the batch in flight succeeded. For a refused op whose key no
later op touches, nothing was decided on that belief: the refusal goes to the core
(`RouteFailed`) as it would have at once. For a key a later op touches, the later op already
says what the key should hold, and the core's belief is already that op's: the refusal is
not given to the core (its repair would be about a state the core has moved on from), and
the later op is made right for what the kernel holds after the refusal:

  refused    what the kernel holds of ours    first later op on the key
  ADD        nothing                          DELETE: finds nothing (ESRCH = done);
                                              REPLACE: our delete finds nothing, its
                                              exclusive add installs (or is refused itself)
  REPLACE    ESRCH/ENOENT: nothing;           as for ADD
             else: the old route
  DELETE     the old route                    ADD would be refused by our own route
                                              (EEXIST, taken for another owner's): it
                                              becomes a REPLACE

(no later op can be an ADD after an ADD or a REPLACE: the core believed the key installed,
so it decides a REPLACE or a DELETE). The later op's own answer then reaches the core as
usual. Pure: no I/O.

Owns: which late refusals reach the core, and the later ops' kinds. Must not know: threads,
the writer (the shell's).
"""

from __future__ import annotations

from collections.abc import Sequence

from vtibgp.core.model import OpKind, RouteOp

__all__ = ["late_refusals"]


def late_refusals(
    failed: Sequence[tuple[RouteOp, int]], later: list[RouteOp],
) -> list[tuple[RouteOp, int]]:
    """The refusals of `failed` (op, errno) that go to the core; `later` (the ops decided
    since, in order, not yet applied) is changed in place where a refusal makes its first op
    on that key wrong (see the module's table)."""
    if not failed:
        return []
    first: dict[tuple[str, int], int] = {}
    for i, op in enumerate(later):
        first.setdefault(op.route.key, i)
    out: list[tuple[RouteOp, int]] = []
    for op, errno in failed:
        at = first.get(op.route.key)
        if at is None:
            out.append((op, errno))
            continue
        nxt = later[at]
        if op.kind is OpKind.DELETE and nxt.kind is OpKind.ADD:
            later[at] = RouteOp(OpKind.REPLACE, nxt.route)
    return out
