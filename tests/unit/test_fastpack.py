"""The compiled packer (vtibgp.kernel._fastpack) against its Python versions, byte for byte:
codec.RoutePacker (as the sender uses it) and writer._send_order. No root, no kernel.

The compiled packer may leave any op to Python (it stops there), but what it packs must be
exactly what Python packs, and the usual ops it must pack all."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtibgp.core.model import KernelRoute, NextHop, OpKind, RouteOp
from vtibgp.kernel import codec as nc
from vtibgp.kernel import compiled as cc
from vtibgp.kernel.writer import _SORT_RUN, _SPREAD, _order_and_work, _send_order

if cc.pack_run is None or cc.send_order is None:  # pragma: no cover - depends on the build
    if os.environ.get("CI"):
        raise RuntimeError("vtibgp.kernel._fastpack was not built (setup.py, a C compiler)")
    pytest.skip("the compiled packer is not built here", allow_module_level=True)

pack_run = cc.pack_run
send_order = cc.send_order
ADD, REPLACE, DELETE = OpKind.ADD, OpKind.REPLACE, OpKind.DELETE
HOPS = [(NextHop("vti01"),), (NextHop("vti02"),), (NextHop("vti01"), NextHop("vti02")), ()]
VIA = {0: 11, 1: 12, 2: 13}  # object id of each HOPS entry
BASE, DEL_BASE = 1000, 900_000

v4 = st.builds(lambda a, b, c, n: f"{a}.{b}.{c}.0/{n}", st.integers(0, 255),
               st.integers(0, 255), st.integers(0, 255), st.integers(8, 32))
v6 = st.builds(lambda a, b, n: f"2001:db8:{a:x}:{b:x}::/{n}", st.integers(0, 0xFFFF),
               st.integers(0, 0xFFFF), st.integers(64, 128))
odd = st.sampled_from(["10.0.0.0/024", "10.0.0.0/33", "10.0.0.0", "10.0.0.0/-1",
                       "2001:db8::1/64", "2001:db8::/129", "10.0.0.0/8 ", "1.2.3.4.5/32",
                       "10.0.0.0/ 8", "ǅ.0.0.0/8", "::/0", "0.0.0.0/0", "10.0.0.1/8"])
metric = st.one_of(st.integers(0, 2000), st.sampled_from([0xFFFFFFFF, 1 << 32, -1]))


def ops_strategy(prefixes: st.SearchStrategy[str]) -> st.SearchStrategy[list[RouteOp]]:
    op = st.builds(lambda k, p, m, h: RouteOp(k, KernelRoute(p, m, HOPS[h])),
                   st.sampled_from([ADD, REPLACE, DELETE]), prefixes, metric,
                   st.integers(0, len(HOPS) - 1))
    return st.lists(op, max_size=80)


def python_bytes(packer: nc.RoutePacker, op: RouteOp, i: int) -> bytes | None:
    """What the sender's Python path sends for op i (None: it refuses the op)."""
    route = op.route
    try:
        if op.kind is DELETE:
            return packer.pack(DELETE, route.prefix, route.metric, (), BASE + i)
        via = VIA[HOPS.index(route.nexthops)]
        add = packer.pack(ADD, route.prefix, route.metric, via, BASE + i)
        if op.kind is REPLACE:
            return packer.pack(DELETE, route.prefix, route.metric, (), DEL_BASE + i) + add
        return add
    except (ValueError, KeyError):
        return None


Vias = dict[int, tuple[object, list[bytes | None]]]


def vias_for(packer: nc.RoutePacker, known: set[int]) -> Vias:
    vias: Vias = {}
    for h in known:
        t = [packer.template(ADD, v6, VIA[h]) for v6 in (False, True)]
        vias[id(HOPS[h])] = (HOPS[h], [t[0], t[1]])
    return vias


def run(packer: nc.RoutePacker, ops: list[RouteOp], start: int, vias: Vias,
        budget: int = 1 << 30, fallback: bool = False) -> tuple[bytes, int]:
    """pack_run's bytes and end; checks the offset it gives of the last request."""
    assert pack_run is not None
    data, end, last = pack_run(ops, start, len(ops), BASE, DEL_BASE, budget, ADD, REPLACE,
                               DELETE, fallback, vias, packer.template(DELETE, False, ()),
                               packer.template(DELETE, True, ()))
    if data:
        assert nc.with_ack(data, last) == nc.with_ack(data)
    else:
        assert last == -1
    return data, end


@settings(max_examples=300, deadline=None)
@given(ops_strategy(st.one_of(v4, v6, odd)), st.sets(st.integers(0, 2)), st.integers(0, 5))
def test_what_it_packs_is_what_python_packs(ops: list[RouteOp], known: set[int],
                                            start: int) -> None:
    packer = nc.RoutePacker(table=1000, protocol=186, ack=False)
    vias = vias_for(packer, known)
    start = min(start, len(ops))
    data, end = run(packer, ops, start, vias)
    assert start <= end <= len(ops)
    expected = [python_bytes(packer, ops[i], i) for i in range(start, end)]
    assert None not in expected  # it never packs an op Python refuses
    assert data == b"".join(b for b in expected if b is not None)


@settings(max_examples=200, deadline=None)
@given(ops_strategy(st.one_of(v4, v6)))
def test_it_packs_every_usual_op(ops: list[RouteOp]) -> None:
    """Well-formed prefixes, metrics in range, every nexthops tuple known: all packed."""
    usual = [op for op in ops if 0 <= op.route.metric <= 0xFFFFFFFF
             and (op.route.nexthops or op.kind is DELETE)
             and (":" not in op.route.prefix or python_bytes(
                 nc.RoutePacker(), op, 0) is not None)]
    packer = nc.RoutePacker(table=254, protocol=186, ack=False)
    data, end = run(packer, usual, 0, vias_for(packer, {0, 1, 2}))
    assert end == len(usual)
    assert data == b"".join(python_bytes(packer, op, i) or b"" for i, op in enumerate(usual))


def test_it_stops_at_what_python_must_decide() -> None:
    packer = nc.RoutePacker(ack=False)
    vias = vias_for(packer, {0})
    r = KernelRoute("10.1.0.0/16", 100, HOPS[0])
    cases = [
        RouteOp(ADD, KernelRoute("10.1.0.0/16", 100, HOPS[1])),  # nexthops not learnt
        RouteOp(ADD, KernelRoute("2001:db8::1/64", 100, HOPS[0])),  # IPv6 host bits
        RouteOp(ADD, KernelRoute("10.1.0.0/16", 1 << 32, HOPS[0])),  # metric too large
        RouteOp(ADD, KernelRoute("10.1.0.0/016", 100, HOPS[0])),  # leading zero
        RouteOp(ADD, KernelRoute("10.1.0.0/16", 100, ())),  # the fallback route
    ]
    for bad in cases:
        data, end = run(packer, [RouteOp(ADD, r), bad, RouteOp(ADD, r)], 0, vias)
        assert end == 1, bad
        assert data == python_bytes(packer, RouteOp(ADD, r), 0)
    # the fallback route's delete has a type of its own: Python's, if there is a fallback
    gone = RouteOp(DELETE, KernelRoute("10.1.0.0/16", 100, ()))
    assert run(packer, [gone], 0, vias, fallback=True)[1] == 0
    assert run(packer, [gone], 0, vias, fallback=False)[1] == 1
    # a template learnt for another tuple with the same id is not used
    other = (NextHop("vti01"),)
    stale = {id(other): (HOPS[0], vias[id(HOPS[0])][1])}
    assert run(packer, [RouteOp(ADD, KernelRoute("10.1.0.0/16", 1, other))], 0, stale)[1] == 0


def test_the_byte_budget_stops_it_after_the_op_that_reaches_it() -> None:
    packer = nc.RoutePacker(ack=False)
    ops = [RouteOp(DELETE, KernelRoute(f"10.{i}.0.0/16", 1, ())) for i in range(10)]
    one = len(python_bytes(packer, ops[0], 0) or b"")
    data, end = run(packer, ops, 0, {}, budget=3 * one + 1)
    assert end == 4 and len(data) == 4 * one


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(lambda k, p: RouteOp(k, KernelRoute(p, 1, HOPS[0])),
                          st.sampled_from([ADD, DELETE]), st.one_of(v4, v6)),
                min_size=0, max_size=3 * _SORT_RUN))
def test_send_order_is_the_python_one(ops: list[RouteOp]) -> None:
    # long runs of one kind, so that the spreading happens
    ops = sorted(ops, key=lambda op: op.kind.value) if len(ops) > _SORT_RUN else ops
    assert send_order is not None
    got = send_order(list(ops), _SORT_RUN, _SPREAD)
    expected = _send_order(ops)
    if expected is None:
        assert got is None
    else:
        assert got not in (None, False, True) and isinstance(got, tuple)
        assert memoryview(got[0]).cast("q").tolist() == expected
        assert got[1] == [ops[i] for i in expected]
    fast, slow = _order_and_work(ops, True), _order_and_work(ops, False)
    assert (fast[0] is None) is (slow[0] is None)
    assert list(fast[0] or ()) == list(slow[0] or ()) and list(fast[1]) == list(slow[1])


def test_send_order_leaves_odd_ops_to_python() -> None:
    assert send_order is not None
    assert send_order([("add", "not a route")], _SORT_RUN, _SPREAD) is False
