"""core.inflight.late_refusals: a refusal that comes back after later ops were decided, against
a model of one kernel key (nothing, our route, another owner's route) and the writer's op
semantics (exclusive ADD, REPLACE = delete ours + exclusive ADD, DELETE of ours only)."""

from __future__ import annotations

from errno import EEXIST, EINVAL, ENODEV, ESRCH

from hypothesis import given
from hypothesis import strategies as st

from vtibgp.core.engine import coalesce
from vtibgp.core.inflight import late_refusals
from vtibgp.core.model import KernelRoute, NextHop, OpKind, RouteOp

ADD, REPLACE, DELETE = OpKind.ADD, OpKind.REPLACE, OpKind.DELETE
P, Q = "10.1.0.0/16", "10.2.0.0/16"


def op(kind: OpKind, dev: str = "vti01", prefix: str = P, metric: int = 100) -> RouteOp:
    return RouteOp(kind, KernelRoute(prefix, metric, (NextHop(dev),)))


def test_a_refusal_no_later_op_touches_goes_to_the_core() -> None:
    later = [op(ADD, prefix=Q)]
    failed = [(op(ADD), EEXIST), (op(REPLACE, prefix=Q, metric=101), ESRCH)]
    assert late_refusals(failed, later) == failed
    assert later == [op(ADD, prefix=Q)]
    assert late_refusals([], later) == []


def test_a_later_op_on_the_key_settles_it() -> None:
    # REPLACE refused (our route vanished), then the prefix withdrawn: the core is not told
    # to re-add a route nobody wants any more; the DELETE finds nothing (done)
    later = [op(DELETE)]
    assert late_refusals([(op(REPLACE), ESRCH)], later) == []
    assert later == [op(DELETE)]
    # ADD refused by another owner's route, then the best path moved: the REPLACE is refused
    # by the kernel in turn (its answer reaches the core then)
    later = [op(REPLACE, "vti02")]
    assert late_refusals([(op(ADD), EEXIST)], later) == []
    assert later == [op(REPLACE, "vti02")]


def test_an_add_after_a_refused_delete_becomes_a_replace() -> None:
    """Our route is still there: an exclusive ADD would meet it (EEXIST, taken for another
    owner's); only the first later op on the key changes."""
    later = [op(ADD, prefix=Q), op(ADD, "vti02"), op(DELETE), op(ADD, "vti01")]
    assert late_refusals([(op(DELETE), EINVAL)], later) == []
    assert later == [op(ADD, prefix=Q), op(REPLACE, "vti02"), op(DELETE), op(ADD, "vti01")]


# ---------------------------------------------------------------- against a kernel model

State = tuple[str, str] | None  # ("ours", device), ("foreign", device) or nothing


def kernel_apply(state: State, o: RouteOp) -> tuple[State, int]:
    """The writer's semantics on one key: (the state after, errno or 0)."""
    dev = o.route.nexthops[0].device
    if o.kind is DELETE:
        return (None, 0) if state and state[0] == "ours" else (state, 0)  # ESRCH = done
    if o.kind is REPLACE and state and state[0] == "ours":
        state = None  # the delete of ours, then the exclusive add
    if state is not None:
        return state, EEXIST
    return ("ours", dev), 0


# what the key held before the refused op, the refused op and its errno, consistent with
# what the core believed when it decided it (ADD: nothing of ours; REPLACE, DELETE: ours)
refused = st.sampled_from([
    (None, ADD, ENODEV), (("foreign", "vti09"), ADD, EEXIST),
    (None, REPLACE, ESRCH), (("foreign", "vti09"), REPLACE, EEXIST),
    (("ours", "vti01"), REPLACE, ENODEV), (("ours", "vti01"), DELETE, EINVAL),
])
devices = st.sampled_from(["vti01", "vti02", "vti03"])


@given(refused, st.lists(devices | st.none(), min_size=1, max_size=5), devices)
def test_the_key_ends_as_the_last_later_op_wants(
        case: tuple[State, OpKind, int], wants: list[str | None], old: str) -> None:
    """The core decided the later ops believing the refused op had succeeded (each later
    op's kind follows from that belief: ADD where it believed nothing, REPLACE or DELETE
    where it believed a route). Whatever the refusal, after the later ops (adjusted, then
    coalesced as the shell does) the key holds what the last one wants, or another owner's
    route untouched."""
    before, kind, errno = case
    first = op(kind, "vti01" if kind is not DELETE else old)
    believed = kind is not DELETE
    later: list[RouteOp] = []
    for dev in wants:
        if dev is None:
            if believed:
                later.append(op(DELETE, old))
            believed = False
        else:
            later.append(op(REPLACE if believed else ADD, dev))
            believed = True
    to_core = late_refusals([(first, errno)], later)
    if not later:  # nothing decided on the key since: the core hears of it as at once
        assert to_core == [(first, errno)]
        return
    assert to_core == []
    state = before
    for o in coalesce(later):
        state, _err = kernel_apply(state, o)
    if before is not None and before[0] == "foreign":
        assert state == before  # never touched
    elif later[-1].kind is DELETE:
        assert state is None
    else:
        assert state == ("ours", later[-1].route.nexthops[0].device)
