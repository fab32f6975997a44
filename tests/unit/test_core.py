"""The decision core, without root: best-path order, backups, ECMP, withdraw, peer down,
device state, start-up adoption and sweep, kernel refusals, and a property test that the
incremental state always equals a from-scratch computation."""

from __future__ import annotations

import ipaddress
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_model import flush_device

from vtibgp.core.decision import Decision, HeldBack, TunnelChange
from vtibgp.core.engine import REPAIR_KINDS, Core, coalesce
from vtibgp.core.model import (
    Announce,
    DeviceState,
    EndOfRib,
    Event,
    GraceExpired,
    IpsecState,
    KernelFlushed,
    KernelRoute,
    KernelRoutesFound,
    NextHop,
    OpKind,
    OutsideLearned,
    PathAttrs,
    PeerDevice,
    PeerState,
    Reconcile,
    Reconfigure,
    ResyncDone,
    RouteFailed,
    RouteOp,
    Stopping,
    Tick,
    Withdraw,
)
from vtibgp.core.policy import MaxPrefixSettings, PeerPolicySettings, PolicySettings
from vtibgp.core.settings import CoreSettings, PeerSettings

P1, P2, P3 = "169.254.10.1", "169.254.11.1", "169.254.12.1"
V4 = "ipv4 unicast"


def make_core(ecmp: bool = False, max_paths: int = 4, **peers: PeerSettings) -> Core:
    pols = peers or {
        P1: PeerSettings(device="vti01"),
        P2: PeerSettings(device="vti02"),
    }
    return Core(CoreSettings(metric=100, max_paths=max_paths, ecmp=ecmp, peers=pols))


def attrs(nh: str, path: tuple[int, ...] = (64512,), med: int | None = 0,
          **kw: object) -> PathAttrs:
    return PathAttrs(next_hop=nh, as_path=path, med=med, **kw)  # type: ignore[arg-type]


def ann(peer: str, *prefixes: str, **kw: object) -> Announce:
    return Announce(peer, V4, attrs(peer, **kw), tuple(prefixes))  # type: ignore[arg-type]


class Kernel:
    """A stand-in FIB that enforces the op contract: ADD only where nothing is, REPLACE and
    DELETE only where our route is."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, int], KernelRoute] = {}

    def apply(self, ops: list[RouteOp]) -> None:
        for op in ops:
            key = op.route.key
            if op.kind is OpKind.ADD:
                assert key not in self.routes, f"ADD over existing {op}"
                self.routes[key] = op.route
            elif op.kind is OpKind.REPLACE:
                assert key in self.routes, f"REPLACE of missing {op}"
                self.routes[key] = op.route
            else:  # the kernel deletes by key (prefix, metric, table, protocol)
                assert key in self.routes, f"DELETE of missing {op}"
                del self.routes[key]


def feed(core: Core, kernel: Kernel, *events: Event) -> list[RouteOp]:
    out: list[RouteOp] = []
    for ev in events:
        ops = core.handle(ev).ops
        kernel.apply(ops)
        out.extend(ops)
    return out


def decide(core: Core, kernel: Kernel, *events: Event) -> Decision:
    """The events' decisions, merged, with their ops applied to `kernel`."""
    out = Decision()
    for ev in events:
        d = core.handle(ev)
        kernel.apply(d.ops)
        out.merge(d)
    return out


def reconcile(core: Core, kernel: Kernel) -> Decision:
    """The periodic scan against what `kernel` holds (its ops not applied)."""
    return core.handle(Reconcile(tuple(kernel.routes.values())))


def installed(core: Core) -> dict[tuple[str, int], KernelRoute]:
    return {r.key: r for r in core.routes()}


def test_primary_and_backup_metrics() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", path=(64512, 64512)))
    assert k.routes == {
        ("10.0.0.0/16", 100): KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),)),
        ("10.0.0.0/16", 101): KernelRoute("10.0.0.0/16", 101, (NextHop("vti02"),)),
    }
    assert k.routes == installed(core)


def test_order_preference_localpref_aspath_origin_med_address() -> None:
    def best(a1: dict[str, object], a2: dict[str, object], pol1: int = 100) -> str:
        core = make_core(**{P1: PeerSettings("vti01", preference=pol1), P2: PeerSettings("vti02")})
        core.handle(ann(P1, "10.1.0.0/24", **a1))
        core.handle(ann(P2, "10.1.0.0/24", **a2))
        return core.ranked("10.1.0.0/24")[0][0]

    assert best({}, {}) == P1  # tie: lower address
    assert best({"med": 10}, {}) == P2
    assert best({"origin": 2}, {"med": 50}) == P2  # origin before MED
    assert best({"path": (1, 2)}, {"origin": 2}) == P2  # AS path before origin
    assert best({"path": (1,), "as_set": (5, 6)}, {"path": (1, 2, 3)}) == P1  # AS_SET = 1 hop
    assert best({"local_pref": 50}, {"path": (1, 2, 3, 4)}) == P2  # local-pref before path
    assert best({"local_pref": 200}, {}, pol1=50) == P2  # preference before local-pref
    assert best({"local_pref": 99}, {}) == P2  # absent local-pref is 100


def test_withdraw_promotes_backup_with_replace_and_delete() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=5))
    ops = feed(core, k, Withdraw(P1, V4, ("10.0.0.0/16",)))
    assert {(o.kind, o.route.metric) for o in ops} == {(OpKind.REPLACE, 100), (OpKind.DELETE, 101)}
    assert k.routes == {("10.0.0.0/16", 100): KernelRoute("10.0.0.0/16", 100, (NextHop("vti02"),))}


def test_implicit_replace_changes_order() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=5))
    feed(core, k, ann(P1, "10.0.0.0/16", med=9))  # P1 re-announces worse: swap
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti02"),)
    assert k.routes[("10.0.0.0/16", 101)].nexthops == (NextHop("vti01"),)


def test_peer_down_flushes_only_that_peer() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16", "10.9.0.0/16"), ann(P2, "10.0.0.0/16"))
    feed(core, k, PeerState(P1, "down", "notification received (6,2)"))
    assert k.routes == {("10.0.0.0/16", 100): KernelRoute("10.0.0.0/16", 100, (NextHop("vti02"),))}
    assert core.rib.get(P1) is None


def test_session_flush_only_for_a_peer_alone_on_a_usable_device() -> None:
    core, k = make_core(), Kernel()
    assert core.session_flush(P1) is None  # nothing held
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=5))
    assert (core.session_flush(P1), core.session_flush(P2)) == ("vti01", "vti02")
    feed(core, k, DeviceState("vti01", False, "admin down"))
    assert core.session_flush(P1) is None  # its routes already left the device
    shared = make_core(**{P1: PeerSettings("vti01"), P3: PeerSettings("vti01", gateway=True)})
    feed(shared, Kernel(), ann(P1, "10.0.0.0/16"), ann(P3, "10.1.0.0/16"))
    assert shared.session_flush(P1) is None and shared.session_flush(P3) is None


def test_down_without_up_and_repeated_withdraw_are_harmless() -> None:
    core, k = make_core(), Kernel()
    assert feed(core, k, PeerState(P1, "connected"), PeerState(P1, "down", "x")) == []
    assert feed(core, k, Withdraw(P1, V4, ("10.0.0.0/8",)), Withdraw(P1, V4, ("10.0.0.0/8",))) == []


def test_ecmp_groups_equal_paths() -> None:
    core, k = make_core(ecmp=True), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16"))
    assert k.routes == {
        ("10.0.0.0/16", 100): KernelRoute(
            "10.0.0.0/16", 100, (NextHop("vti01"), NextHop("vti02"))
        )
    }
    feed(core, k, ann(P2, "10.0.0.0/16", med=1))  # no longer equal: primary + backup
    assert len(k.routes) == 2 and k.routes[("10.0.0.0/16", 101)].nexthops == (NextHop("vti02"),)


def test_max_paths_caps_backups() -> None:
    pols = {P1: PeerSettings("vti01"), P2: PeerSettings("vti02"), P3: PeerSettings("vti03")}
    core, k = make_core(max_paths=2, **pols), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16"), ann(P3, "10.0.0.0/16"))
    assert sorted(m for _, m in k.routes) == [100, 101]
    feed(core, k, PeerState(P1, "down"))
    assert [k.routes[("10.0.0.0/16", m)].nexthops[0].device for m in (100, 101)] == [
        "vti02",
        "vti03",
    ]


def test_shared_device_uses_next_hop_as_gateway() -> None:
    pols = {
        P1: PeerSettings("vti01", gateway=True, families=(V4, "ipv6 unicast")),
        P2: PeerSettings("vti01", gateway=True),
    }
    core, k = make_core(**pols), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    feed(core, k, Announce(P1, "ipv6 unicast", attrs("fd00:10::1"), ("2001:db8::/32",)))
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti01", P1),)
    assert k.routes[("10.0.0.0/16", 101)].nexthops == (NextHop("vti01", P2),)
    assert k.routes[("2001:db8::/32", 100)].nexthops == (NextHop("vti01", "fd00:10::1"),)


def test_device_down_and_up_moves_routes() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    feed(core, k, DeviceState("vti01", usable=False, reason="admin down"))
    assert list(k.routes.values()) == [KernelRoute("10.0.0.0/16", 100, (NextHop("vti02"),))]
    assert core.rib[P1]  # paths are kept while the device is down
    feed(core, k, DeviceState("vti01", usable=True))
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti01"),)


def test_unknown_peer_is_ignored_and_counted() -> None:
    core, k = make_core(), Kernel()
    assert feed(core, k, ann("192.0.2.9", "10.0.0.0/16", "10.1.0.0/16")) == []
    assert core.stats["prefixes_unknown_peer"] == 2


def test_discovered_device() -> None:
    core, k = make_core(**{P1: PeerSettings(None)}), Kernel()
    assert feed(core, k, ann(P1, "10.0.0.0/16")) == []  # device not known yet
    feed(core, k, PeerDevice(P1, "ipsec0"))
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("ipsec0"),)
    feed(core, k, PeerDevice(P1, None))
    assert k.routes == {}


def test_restart_adopts_without_churn_and_sweeps_unconfirmed() -> None:
    core, k = make_core(), Kernel()
    kept = KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),))
    changed = KernelRoute("10.1.0.0/16", 100, (NextHop("vti02"),))
    gone = KernelRoute("10.2.0.0/16", 100, (NextHop("vti01"),))
    for r in (kept, changed, gone):
        k.routes[r.key] = r
    assert feed(core, k, KernelRoutesFound((kept, changed, gone))) == []
    ops = feed(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16"), EndOfRib(P1, V4))
    # kept: nothing; changed and gone: untouched until every peer is synced (while the
    # tables come back the best path may flip and flip back: no churn meanwhile)
    assert ops == []
    ops = feed(core, k, ResyncDone(frozenset({P2})))
    assert [(o.kind, o.route.prefix) for o in ops] == [(OpKind.DELETE, "10.2.0.0/16"),
                                                       (OpKind.REPLACE, "10.1.0.0/16")]
    assert k.routes == installed(core) and core.synced


def test_restart_does_not_flip_adopted_routes_while_the_tables_come_back() -> None:
    """Peer 2 re-sends its table before peer 1: its path looks best for a moment, but the
    route the earlier run left through vti01 stays; once both are back nothing changed."""
    core, k = make_core(), Kernel()
    best = KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),))
    backup = KernelRoute("10.0.0.0/16", 101, (NextHop("vti02"),))
    for r in (best, backup):
        k.routes[r.key] = r
    feed(core, k, KernelRoutesFound((best, backup)))
    ops = feed(core, k, ann(P2, "10.0.0.0/16", path=(64512, 64512)), EndOfRib(P2, V4),
               ann(P1, "10.0.0.0/16"), EndOfRib(P1, V4))
    assert ops == [] and core.synced
    assert k.routes == installed(core) == {best.key: best, backup.key: backup}


def test_restart_does_not_keep_an_adopted_route_into_a_tunnel_that_is_down() -> None:
    core, k = make_core(), Kernel()
    old = KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),))
    k.routes[old.key] = old
    feed(core, k, KernelRoutesFound((old,)), DeviceState("vti01", False, "carrier lost"))
    assert k.routes == {}  # no path held yet: it goes with its tunnel, as any route does
    ops = feed(core, k, ann(P2, "10.0.0.0/16"))
    assert [(o.kind, o.route.nexthops) for o in ops] == [(OpKind.ADD, (NextHop("vti02"),))]


def test_grace_timer_sweeps() -> None:
    core, k = make_core(), Kernel()
    r = KernelRoute("10.2.0.0/16", 100, (NextHop("vti01"),))
    k.routes[r.key] = r
    feed(core, k, KernelRoutesFound((r,)), EndOfRib(P1, V4))
    assert r.key in k.routes  # P2 not synced yet
    feed(core, k, GraceExpired())
    assert k.routes == {}


def test_stale_backup_survives_a_partial_rib_until_sweep() -> None:
    core, k = make_core(), Kernel()
    prim = KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),))
    backup = KernelRoute("10.0.0.0/16", 101, (NextHop("vti02"),))
    for r in (prim, backup):
        k.routes[r.key] = r
    feed(core, k, KernelRoutesFound((prim, backup)))
    assert feed(core, k, ann(P1, "10.0.0.0/16")) == []  # P2 not re-learned yet: keep backup
    assert feed(core, k, ann(P2, "10.0.0.0/16")) == []  # confirmed: still nothing to do
    assert feed(core, k, GraceExpired()) == []


def test_conflict_with_foreign_route_is_left_alone() -> None:
    core, k = make_core(), Kernel()
    ops = feed(core, k, ann(P1, "10.0.0.0/16"))
    del k.routes[ops[0].route.key]  # pretend the kernel refused it
    assert core.handle(RouteFailed(ops[0], 17)) == Decision()
    assert core.stats["route_conflicts"] == 1 and installed(core) == {}


def test_replace_of_vanished_route_becomes_add() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"))
    ops = feed(core, k, ann(P1, "10.0.0.0/16"), PeerDevice(P1, "x"))  # no-op, then nothing
    assert ops == []
    rep = RouteOp(OpKind.REPLACE, KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),)))
    assert core.handle(RouteFailed(rep, 3)).ops == [RouteOp(OpKind.ADD, rep.route)]


def test_withdraw_all() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16"), ann(P2, "10.0.0.0/16"))
    assert core.handle(Stopping(withdraw=False)) == Decision()  # on_exit: retain
    assert installed(core) == k.routes != {}
    k.apply(core.handle(Stopping(withdraw=True)).ops)
    assert k.routes == {} and installed(core) == {}


# ------------------------------------------------------------------ property test

PEERS = [P1, P2, P3, "fd00:12::1"]
DEVICES = ["vti01", "vti02", "ipsec0"]
PREFIXES = [f"10.{i}.0.0/16" for i in range(5)] + ["2001:db8::/32", "0.0.0.0/0"]


def reference(core: Core) -> dict[tuple[str, int], KernelRoute]:
    """An independent, naive statement of the documented order."""
    s = core.settings
    out: dict[tuple[str, int], KernelRoute] = {}
    prefixes = {p for paths in core.rib.values() for p in paths}
    for prefix in prefixes:
        rows = []
        for peer, paths in core.rib.items():
            if prefix not in paths:
                continue
            pol = s.peers.get(peer)
            dev = pol.device if pol and pol.device else core.discovered.get(peer)
            if pol is None or dev is None or dev in core.unusable_devices:
                continue
            if not core.scope_usable(("peer", peer)):
                continue
            a = paths[prefix]
            lp = 100 if a.local_pref is None else a.local_pref
            plen = len(a.as_path) + (1 if a.as_set else 0)
            ip = ipaddress.ip_address(peer)
            tie = (-pol.preference, -lp, plen, a.origin, a.med)
            gw = a.next_hop if (":" in a.next_hop) == (":" in prefix) else None
            if gw is None and (":" in peer) == (":" in prefix):
                gw = peer
            rows.append((tie, (ip.version, int(ip)), NextHop(dev, gw if pol.gateway else None),
                         NextHop(dev, gw)))
        rows.sort(key=lambda r: (r[0], r[1]))
        groups: list[tuple[object, set[NextHop], set[NextHop]]] = []
        for tie, _, hop, via in rows:
            if s.ecmp and groups and groups[-1][0] == tie:
                groups[-1][1].add(hop)
                groups[-1][2].add(via)
            else:
                groups.append((tie, {hop}, {via}))
        for i, (_, hops, vias) in enumerate(groups[: s.max_paths]):
            if len(hops) > 1 and ":" in prefix:
                hops = vias  # IPv6 multipath: always via the next-hops
            key = NextHop.sort_key
            out[(prefix, s.metric + i)] = KernelRoute(prefix, s.metric + i,
                                                      tuple(sorted(hops, key=key)))
        if s.fallback:  # behind every prefix held, usable or not
            fb = s.metric + s.max_paths
            out[(prefix, fb)] = KernelRoute(prefix, fb, ())
    return out


path_attrs = st.builds(
    PathAttrs,
    next_hop=st.sampled_from(["169.254.10.1", "fd00:10::1"]),
    origin=st.integers(0, 2),
    as_path=st.lists(st.integers(1, 5), max_size=3).map(tuple),
    as_set=st.lists(st.integers(1, 5), max_size=2).map(tuple),
    med=st.integers(0, 2),
    local_pref=st.none() | st.sampled_from([50, 100, 200]),
)
peers_st = st.sampled_from(PEERS)
prefix_lists = st.lists(st.sampled_from(PREFIXES), min_size=1, max_size=4).map(tuple)
events = st.one_of(
    st.builds(Announce, peers_st, st.just(V4), path_attrs, prefix_lists),
    st.builds(Withdraw, peers_st, st.just(V4), prefix_lists),
    st.builds(PeerState, peers_st, st.sampled_from(["connected", "up", "down"])),
    st.builds(DeviceState, st.sampled_from(DEVICES), st.booleans(),
              at=st.sampled_from([0.0, 1.0, 2.0])),
    st.builds(IpsecState, st.none() | st.sampled_from(DEVICES),
              st.sampled_from([(), (P1,), (P2, P3)]), st.booleans(),
              at=st.sampled_from([0.0, 1.0, 2.0])),
    st.builds(Tick, st.sampled_from([0.5, 1.5, 3.0, 9.0])),
    st.builds(PeerDevice, peers_st, st.none() | st.sampled_from(DEVICES)),
    st.builds(EndOfRib, peers_st, st.just(V4)),
)
policies = st.fixed_dictionaries(
    {
        p: st.builds(
            PeerSettings,
            device=st.none() | st.sampled_from(DEVICES),
            preference=st.sampled_from([50, 100]),
            gateway=st.booleans(),
        )
        for p in PEERS[:3]
    }
)


@settings(max_examples=500, deadline=None)
@given(
    pols=policies,
    ecmp=st.booleans(),
    max_paths=st.integers(1, 4),
    hold_down=st.sampled_from([0.0, 1.0]),
    fallback=st.booleans(),
    kernel_flushes=st.booleans(),
    evs=st.lists(events, max_size=40),
)
def test_incremental_equals_from_scratch(
    pols: dict[str, PeerSettings], ecmp: bool, max_paths: int, hold_down: float,
    fallback: bool, kernel_flushes: bool, evs: list[Event],
) -> None:
    """The ops always fit the kernel and the core ends where it would from scratch. With
    `kernel_flushes` (nexthop objects) the kernel drops the routes through a device on its
    own whenever it goes down, and the shell does the same first for a device-wide IPsec
    down and for the end of a session that is alone on its device (Core.session_flush); the
    core is told (KernelFlushed). A session flush never takes a route that must come back."""
    core = Core(CoreSettings(metric=100, max_paths=max_paths, ecmp=ecmp, peers=pols,
                             hold_down=hold_down, fallback=fallback))
    kernel = Kernel()
    for ev in evs:
        step(core, kernel, ev, kernel_flushes)
    expected = reference(core)
    assert installed(core) == expected
    assert {r.key: r for d in core.desired_all().values() for r in d.values()} == expected
    kernel.apply(core.handle(Stopping(withdraw=True)).ops)
    assert kernel.routes == {}


@settings(max_examples=300, deadline=None)
@given(
    pols=policies,
    ecmp=st.booleans(),
    max_paths=st.integers(1, 3),
    fallback=st.booleans(),
    anns=st.lists(st.builds(Announce, peers_st, st.just(V4), path_attrs, prefix_lists),
                  min_size=1, max_size=12),
    evs=st.lists(events, max_size=8),
    downs=st.lists(peers_st, min_size=1, max_size=4),
)
def test_session_flush_takes_only_what_goes(
    pols: dict[str, PeerSettings], ecmp: bool, max_paths: int, fallback: bool,
    anns: list[Announce], evs: list[Event], downs: list[str],
) -> None:
    """Sessions ending after the tables are in (what the general property above rarely
    reaches): each flush that Core.session_flush allows takes out only routes that are gone
    after the session's end, and the core still ends where it would from scratch."""
    core = Core(CoreSettings(metric=100, max_paths=max_paths, ecmp=ecmp, peers=pols,
                             fallback=fallback))
    kernel = Kernel()
    for ev in [*anns, *evs, *(PeerState(p, "down", "hold timer expired") for p in downs)]:
        step(core, kernel, ev, True)
    assert installed(core) == reference(core)


def step(core: Core, kernel: Kernel, ev: Event, kernel_flushes: bool) -> None:
    """One event, with the kernel flushes of nexthop objects when `kernel_flushes`."""
    device: str | None = None
    if (isinstance(ev, DeviceState) and not ev.usable) or (
            isinstance(ev, IpsecState) and not ev.peers and not ev.up):
        device = ev.device
    session = isinstance(ev, PeerState) and ev.state == "down"
    if session:
        device = core.session_flush(ev.peer)  # type: ignore[union-attr]
    if kernel_flushes and device is not None:
        flush(kernel, device)
        kernel.apply(core.handle(KernelFlushed(device)).ops)
        assert kernel.routes == installed(core)
    ops = core.handle(ev).ops
    kernel.apply(ops)
    assert kernel.routes == installed(core)
    if kernel_flushes and session and device is not None:
        assert not [op for op in ops if op.kind is not OpKind.DELETE
                    and any(h.device == device for h in op.route.nexthops)], (
            f"the flush of {device} took routes that come back")


def flush(kernel: Kernel, device: str) -> None:
    """What Linux does to routes using nexthop objects when `device` goes down or away."""
    flush_device(kernel.routes, device)


def test_fallback_stays_while_every_tunnel_is_down() -> None:
    """Both tunnels down, sessions not yet timed out: only the fallback (no nexthop) is left
    for the prefix, so its traffic is refused instead of following a less specific route;
    it is there all along behind the real routes, and goes with the last path."""
    pols = {P1: PeerSettings(device="vti01"), P2: PeerSettings(device="vti02")}
    core = Core(CoreSettings(metric=100, max_paths=2, peers=pols, fallback=True))
    k = Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", path=(64512, 64512)))
    fb = KernelRoute("10.0.0.0/16", 102, ())
    assert k.routes[("10.0.0.0/16", 102)] == fb and len(k.routes) == 3
    feed(core, k, DeviceState("vti01", False, "admin down"),
         IpsecState("vti02", (), False, "down-client"))
    assert k.routes == {fb.key: fb} == installed(core)
    feed(core, k, DeviceState("vti01", True, "up"))
    assert set(k.routes) == {("10.0.0.0/16", 100), ("10.0.0.0/16", 102)}
    feed(core, k, PeerState(P1, "down"), PeerState(P2, "down"))
    assert k.routes == {} == installed(core)
    assert str(RouteOp(OpKind.ADD, fb)) == "add 10.0.0.0/16 metric 102 fallback"


def test_kernel_flush_is_believed_and_what_follows_adds() -> None:
    core, k = make_core(ecmp=False), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16"),
         ann(P2, "10.0.0.0/16", path=(64512, 64512)))
    flush(k, "vti01")
    assert feed(core, k, KernelFlushed("vti01")) == []
    assert installed(core) == k.routes  # only the backup via vti02 is left
    ops = feed(core, k, DeviceState("vti01", False, "carrier lost"))
    assert sorted((op.kind.value, op.route.metric) for op in ops) == [
        ("add", 100), ("delete", 101)]
    assert k.routes == {("10.0.0.0/16", 100): KernelRoute("10.0.0.0/16", 100,
                                                          (NextHop("vti02"),))}
    assert core.stats["kernel_flushes"] == 1


@settings(max_examples=300, deadline=None)
@given(evs=st.lists(events, max_size=40), cut=st.integers(0, 40))
def test_coalesced_ops_have_the_same_effect(evs: list[Event], cut: int) -> None:
    """However a run of events is cut into batches, the coalesced ops of each batch leave the
    kernel as the op-by-op sequence does, with at most one op per key."""
    pols = {P1: PeerSettings("vti01"), P2: PeerSettings("vti02"), P3: PeerSettings("ipsec0")}
    core = Core(CoreSettings(metric=100, max_paths=3, peers=pols))
    kernel = Kernel()
    for batch in (evs[:cut], evs[cut:]):
        ops = [op for ev in batch for op in core.handle(ev).ops]
        folded = coalesce(ops)
        assert len({op.route.key for op in folded}) == len(folded)
        kernel.apply(folded)
        assert kernel.routes == installed(core)


def one_prefix_at_a_time(ev: Event) -> list[Event]:
    if isinstance(ev, Announce):
        return [Announce(ev.peer, ev.family, ev.attrs, (p,), ev.peer_as) for p in ev.prefixes]
    if isinstance(ev, Withdraw):
        return [Withdraw(ev.peer, ev.family, (p,)) for p in ev.prefixes]
    return [ev]


# Few peers, prefixes and attribute sets, so that the prefixes of an UPDATE often share
# their paths, or all but one of them.
big_prefix_lists = st.lists(st.sampled_from(PREFIXES[:3] + PREFIXES[-2:]),
                            min_size=1, max_size=8).map(tuple)
few_attrs = st.sampled_from([attrs("169.254.10.1"), attrs("169.254.10.1", med=1),
                             attrs("fd00:10::1", path=(1, 2)), attrs("169.254.10.1", path=())])
bulk_events = st.one_of(
    st.builds(Announce, st.sampled_from([P1, P2, P3]), st.just(V4), few_attrs,
              big_prefix_lists),
    st.builds(Withdraw, st.sampled_from([P1, P2, P3]), st.just(V4), big_prefix_lists),
    st.just(GraceExpired()),
    events,
)


@settings(max_examples=500, deadline=None)
@given(
    pols=policies | st.just({P1: PeerSettings("vti01"), P2: PeerSettings("vti02"),
                             P3: PeerSettings("ipsec0")}),
    ecmp=st.booleans(),
    max_paths=st.integers(1, 4),
    evs=st.lists(bulk_events, max_size=30),
    leftovers=st.lists(
        st.builds(KernelRoute, st.sampled_from(PREFIXES), st.integers(100, 103),
                  st.sampled_from(DEVICES).map(lambda d: (NextHop(d),))),
        max_size=4, unique_by=lambda r: r.key),
    policy=st.none() | st.just(PolicySettings(max_as_path_length=1, protected=("10.1.0.0/16",),
                                              first_as_must_be_peer=False)),
)
def test_an_update_decides_as_its_prefixes_one_by_one(
    pols: dict[str, PeerSettings], ecmp: bool, max_paths: int, evs: list[Event],
    leftovers: list[KernelRoute], policy: PolicySettings | None,
) -> None:
    """The core works out an UPDATE's prefixes together (shared shapes, ops between shapes
    computed once): it returns the same ops, in the same order, as for one prefix at a time,
    also while routes of an earlier run are still unconfirmed. With an import policy, the
    prefixes it refuses come first (a refused re-announcement withdraws the held path)."""
    cores = [Core(CoreSettings(metric=100, max_paths=max_paths, ecmp=ecmp, peers=pols,
                               policy=policy)) for _ in range(2)]
    for core in cores:
        core.handle(KernelRoutesFound(tuple(leftovers)))
    whole, split = cores
    for ev in evs:
        decided = whole.handle(ev)
        together = decided.ops
        parts = [split.handle(e) for e in one_prefix_at_a_time(ev)]
        one_by_one = [op for d in parts for op in d.ops]
        if policy is None:
            assert together == one_by_one
        else:
            assert Counter(together) == Counter(one_by_one)
        assert installed(whole) == installed(split)
        assert whole.stale == split.stale
        assert decided.refused == sum((d.refused for d in parts), Counter())
    assert whole.handle(GraceExpired()) == split.handle(GraceExpired())
    assert installed(whole) == reference(whole)


def test_prefixes_wanting_the_same_routes_from_different_ones() -> None:
    """Two prefixes of one UPDATE end with the same routes from different ones: each gets
    the ops for its own routes."""
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16"), ann(P2, "10.1.0.0/16", path=()))
    ops = feed(core, k, ann(P2, "10.0.0.0/16", "10.1.0.0/16", med=5))
    assert [(o.kind, o.route.prefix, o.route.metric) for o in ops] == [
        (OpKind.ADD, "10.0.0.0/16", 101),
        (OpKind.REPLACE, "10.1.0.0/16", 100), (OpKind.REPLACE, "10.1.0.0/16", 101)]
    assert k.routes == installed(core) == reference(core)


def test_refused_reannouncement_withdraws_the_held_path() -> None:
    pols = {P1: PeerSettings("vti01"), P2: PeerSettings("vti02")}
    core = Core(CoreSettings(metric=100, peers=pols, policy=PolicySettings(
        max_as_path_length=1, first_as_must_be_peer=False)))
    k = Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    # P1 again, 10.1 and 10.0 now with a path too long: both refused, both withdrawn
    d = decide(core, k, ann(P1, "10.2.0.0/16", "10.1.0.0/16", "10.0.0.0/16", path=(1, 2)),
               ann(P1, "10.3.0.0/16"))
    assert [(o.kind, o.route.prefix, o.route.metric) for o in d.ops] == [
        (OpKind.DELETE, "10.1.0.0/16", 100),
        (OpKind.REPLACE, "10.0.0.0/16", 100), (OpKind.DELETE, "10.0.0.0/16", 101),
        (OpKind.ADD, "10.3.0.0/16", 100)]
    assert d.refused == {(P1, "as_path_length"): 3}
    assert [sample[1] for sample in d.refused_samples] == [
        "10.2.0.0/16", "10.1.0.0/16", "10.0.0.0/16"]
    assert k.routes == installed(core) == reference(core)


def test_installed_reads_per_prefix_by_metric() -> None:
    core = make_core()
    core.handle(ann(P1, "10.0.0.0/16", "10.1.0.0/16"))
    core.handle(ann(P2, "10.0.0.0/16", med=5))
    assert len(core.installed) == 2 and "10.1.0.0/16" in core.installed
    assert set(core.installed) == {"10.0.0.0/16", "10.1.0.0/16"}
    assert core.installed["10.0.0.0/16"] == {
        100: KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),)),
        101: KernelRoute("10.0.0.0/16", 101, (NextHop("vti02"),)),
    }
    assert core.installed.get("10.9.0.0/16", {}) == {}
    assert core.route_count() == 3


@settings(max_examples=100, deadline=None)
@given(evs=st.lists(bulk_events, max_size=30),
       leftovers=st.lists(st.builds(KernelRoute, st.sampled_from(PREFIXES), st.integers(100, 103),
                                    st.sampled_from(DEVICES).map(lambda d: (NextHop(d),))),
                          max_size=4, unique_by=lambda r: r.key))
def test_hop_roles_counts_every_route(evs: list[Event], leftovers: list[KernelRoute]) -> None:
    pols = {P1: PeerSettings("vti01"), P2: PeerSettings("vti02", gateway=True),
            P3: PeerSettings("vti02", gateway=True)}
    core = Core(CoreSettings(metric=100, max_paths=3, ecmp=True, peers=pols))
    core.handle(KernelRoutesFound(tuple(leftovers)))
    for ev in evs:
        core.handle(ev)
    naive: dict[NextHop, list[int]] = {}
    for r in core.routes():
        for hop in r.nexthops:
            naive.setdefault(hop, [0, 0])[0 if r.metric == 100 else 1] += 1
    assert core.hop_roles(100) == naive


def test_ipv6_ecmp_goes_via_next_hops() -> None:
    """The kernel refuses IPv6 multipath without gateways (EINVAL)."""
    pols = {P1: PeerSettings("vti01", gateway=True), P2: PeerSettings("vti02")}
    core, k = make_core(ecmp=True, **pols), Kernel()
    six = "ipv6 unicast"
    feed(core, k, Announce(P1, six, attrs("fd00:10::1"), ("2001:db8::/32",)),
         Announce(P2, six, attrs("fd00:11::1"), ("2001:db8::/32",)))
    assert k.routes == {("2001:db8::/32", 100): KernelRoute(
        "2001:db8::/32", 100, (NextHop("vti01", "fd00:10::1"), NextHop("vti02", "fd00:11::1")))}


def test_tunnel_down_keeps_paths_and_hold_down_damps_the_return() -> None:
    core = Core(CoreSettings(metric=100, peers={P1: PeerSettings("vti01"),
                                                P2: PeerSettings("vti02")}, hold_down=2.0))
    k = Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    d = decide(core, k, IpsecState("vti01", (), up=False, reason="down-client", at=10.0))
    assert d.tunnels == [TunnelChange(("device", "vti01"), False, "ipsec: down-client")]
    assert list(k.routes.values()) == [KernelRoute("10.0.0.0/16", 100, (NextHop("vti02"),))]
    assert core.rib[P1]  # kept: a short outage returns without waiting for BGP
    assert feed(core, k, IpsecState("vti01", (), up=True, at=11.0)) == []  # held down
    assert feed(core, k, Tick(12.9)) == []
    # it flaps inside the hold-down: counted, and no route moves
    d = decide(core, k, IpsecState("vti01", (), up=False, at=12.95))
    assert d.ops == [] and [(c.up, c.flap) for c in d.tunnels] == [(False, True)]
    assert decide(core, k, IpsecState("vti01", (), up=True, at=13.0), Tick(14.9)) == Decision()
    d = decide(core, k, Tick(15.0))
    assert {(o.kind, o.route.metric) for o in d.ops} == {(OpKind.REPLACE, 100),
                                                         (OpKind.ADD, 101)}
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti01"),)
    assert d.tunnels == [TunnelChange(("device", "vti01"), True, "hold-down passed")]


def test_every_signal_must_be_up() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    feed(core, k, DeviceState("vti01", False, "carrier lost"),
         IpsecState("vti01", (), up=False))
    feed(core, k, DeviceState("vti01", True, "carrier"))  # IPsec still down
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti02"),)
    feed(core, k, IpsecState("vti01", (), up=True))
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti01"),)


def test_shared_device_peer_event_touches_only_that_peer() -> None:
    pols = {P1: PeerSettings("vti09", gateway=True), P2: PeerSettings("vti09", gateway=True),
            P3: PeerSettings("vti03")}
    core, k = make_core(**pols), Kernel()
    feed(core, k, ann(P1, "10.1.0.0/16"), ann(P2, "10.2.0.0/16"), ann(P3, "10.1.0.0/16", med=5))
    feed(core, k, IpsecState(None, (P1,), up=False, reason="down-client"))
    assert k.routes == {
        ("10.1.0.0/16", 100): KernelRoute("10.1.0.0/16", 100, (NextHop("vti03"),)),
        ("10.2.0.0/16", 100): KernelRoute("10.2.0.0/16", 100, (NextHop("vti09", P2),)),
    }


def test_reconcile_repairs_missing_changed_and_stray() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    assert reconcile(core, k) == Decision()  # in agreement: nothing to do
    del k.routes[("10.0.0.0/16", 101)]  # the kernel lost one
    k.routes[("10.1.0.0/16", 100)] = KernelRoute("10.1.0.0/16", 100, (NextHop("vti02"),))
    stray = KernelRoute("10.9.0.0/16", 100, (NextHop("vti01"),))
    k.routes[stray.key] = stray
    d = reconcile(core, k)
    assert d.repairs == {"missing": 1, "changed": 1, "stray": 1}
    assert set(d.repairs) <= set(REPAIR_KINDS)  # the metric's label values, created at start
    k.apply(d.ops)
    assert k.routes == installed(core)


# ---------------------------------------------------------------- issue 12: the rarely walked paths


def test_reconcile_retries_what_the_kernel_refused_for_a_transient_reason() -> None:
    """ENOBUFS/ENOMEM or a link race: the route is wanted still, so the next scan adds it
    (the comparison is with what the RIB wants, not with what was believed installed)."""
    core, k = make_core(), Kernel()
    ops = core.handle(ann(P1, "10.0.0.0/16")).ops
    assert [o.kind for o in ops] == [OpKind.ADD]
    assert core.handle(RouteFailed(ops[0], 105)) == Decision()  # ENOBUFS: nothing in kernel
    assert installed(core) == {}
    d = reconcile(core, k)
    assert d.repairs == {"retried": 1}
    assert set(d.repairs) <= set(REPAIR_KINDS)
    k.apply(d.ops)
    assert k.routes == installed(core) == {ops[0].route.key: ops[0].route}
    assert reconcile(core, k) == Decision()


def test_reconcile_retries_a_refused_replace_and_delete() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    ops = core.handle(Withdraw(P1, V4, ("10.0.0.0/16",))).ops  # REPLACE 100->vti02, DELETE 101
    for op in ops:
        core.handle(RouteFailed(op, 12))  # ENOMEM: the kernel still holds the old routes
    k.apply(coalesce(reconcile(core, k).ops))
    assert k.routes == installed(core) == {
        ("10.0.0.0/16", 100): KernelRoute("10.0.0.0/16", 100, (NextHop("vti02"),))}


def test_reconcile_leaves_a_foreign_owners_route_alone() -> None:
    core, k = make_core(), Kernel()
    ops = core.handle(ann(P1, "10.0.0.0/16")).ops
    core.handle(RouteFailed(ops[0], 17))  # EEXIST: another owner holds prefix+metric
    assert reconcile(core, k) == Decision()


def test_reload_keeps_the_outside_endpoints_learned_from_updown() -> None:
    """PLUTO_PEER told us the tunnel's outside address: after a reload (new settings, new
    policy object) a prefix covering it still may not go into that tunnel."""
    settings = CoreSettings(peers={P1: PeerSettings("vti01")}, policy=PolicySettings())
    core, k = Core(settings), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"))
    feed(core, k, OutsideLearned(P1, ("52.1.2.3",)), Reconfigure(settings))
    d = decide(core, k, ann(P1, "52.1.0.0/16"))
    assert d.ops == [] and d.refused == {(P1, "loop"): 1}
    assert ("52.1.0.0/16", 100) not in k.routes


def test_a_peer_removed_by_reload_leaves_nothing() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    feed(core, k, Reconfigure(CoreSettings(peers={P2: PeerSettings("vti02")}, fallback=True)))
    assert P1 not in core.rib
    # 10.1/16 was P1's alone: no route, not even the fallback; 10.0/16 via P2 only
    assert k.routes == installed(core) == {
        ("10.0.0.0/16", 100): KernelRoute("10.0.0.0/16", 100, (NextHop("vti02"),)),
        ("10.0.0.0/16", 104): KernelRoute("10.0.0.0/16", 104, ()),
    }


def test_adopted_route_kept_until_sync_leaves_a_tunnel_that_goes_down() -> None:
    """The earlier run left 10.0/16 via vti01; P2's path came back first (the adopted route
    is kept, no churn). vti01 then goes down: the route must move to vti02 at once, although
    P1 holds nothing of 10.0/16 (the down tunnel's own prefixes are not the only ones)."""
    core, k = make_core(), Kernel()
    old = KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),))
    k.routes[old.key] = old
    feed(core, k, KernelRoutesFound((old,)), ann(P2, "10.0.0.0/16"))
    assert k.routes[old.key] == old  # kept while the tables come back
    feed(core, k, DeviceState("vti01", False, "carrier lost"))
    assert k.routes == {old.key: KernelRoute("10.0.0.0/16", 100, (NextHop("vti02"),))}


def test_adopted_route_kept_until_sync_leaves_a_peer_tunnel_that_goes_down() -> None:
    """The same with one IPsec tunnel of a shared device (a peer scope)."""
    pols = {P1: PeerSettings("vti09", gateway=True), P2: PeerSettings("vti09", gateway=True)}
    core, k = make_core(**pols), Kernel()
    old = KernelRoute("10.0.0.0/16", 100, (NextHop("vti09", P1),))
    k.routes[old.key] = old
    feed(core, k, KernelRoutesFound((old,)), ann(P2, "10.0.0.0/16"))
    feed(core, k, IpsecState(None, (P1,), up=False, reason="down-client"))
    assert k.routes == {old.key: KernelRoute("10.0.0.0/16", 100, (NextHop("vti09", P2),))}


def test_adopted_route_without_a_path_goes_with_its_tunnel() -> None:
    core, k = make_core(), Kernel()
    old = KernelRoute("10.5.0.0/16", 100, (NextHop("vti01"),))
    k.routes[old.key] = old
    feed(core, k, KernelRoutesFound((old,)))
    feed(core, k, IpsecState("vti01", (), up=False, reason="down-client"))
    assert k.routes == installed(core) == {}


def test_flushed_adopted_route_is_replaced_by_the_usable_path_held() -> None:
    """With nexthop objects the kernel takes the adopted route away itself; the usable path
    held from P2 must be installed now, not at the sweep."""
    core, k = make_core(), Kernel()
    old = KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),))
    k.routes[old.key] = old
    feed(core, k, KernelRoutesFound((old,)), ann(P2, "10.0.0.0/16"))
    flush_device(k.routes, "vti01")
    feed(core, k, KernelFlushed("vti01"), DeviceState("vti01", False, "deleted"))
    assert k.routes == installed(core) == {
        old.key: KernelRoute("10.0.0.0/16", 100, (NextHop("vti02"),))}


def addpath(peer: str, pid: int, *prefixes: str, **kw: object) -> Announce:
    return Announce(peer, V4, attrs(peer, **kw), tuple(prefixes),  # type: ignore[arg-type]
                    path_id=pid)


def test_addpath_withdraw_of_one_path_keeps_the_others() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, addpath(P1, 1, "10.0.0.0/16"), addpath(P1, 2, "10.0.0.0/16", med=5))
    assert k.routes == {("10.0.0.0/16", 100): KernelRoute("10.0.0.0/16", 100,
                                                           (NextHop("vti01"),))}
    feed(core, k, Withdraw(P1, V4, ("10.0.0.0/16",), path_id=1))
    assert core.rib[P1]["10.0.0.0/16"].med == 5  # path 2 stands
    assert ("10.0.0.0/16", 100) in k.routes
    feed(core, k, Withdraw(P1, V4, ("10.0.0.0/16",), path_id=2))
    assert k.routes == {} and not core.rib[P1]


def test_addpath_best_of_a_peers_paths_competes_with_other_peers() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, addpath(P1, 1, "10.0.0.0/16", med=9), ann(P2, "10.0.0.0/16", med=5))
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti02"),)
    feed(core, k, addpath(P1, 7, "10.0.0.0/16", med=1))  # a better second path from P1
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti01"),)
    feed(core, k, Withdraw(P1, V4, ("10.0.0.0/16",), path_id=7))
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti02"),)
    assert core.rib[P1]["10.0.0.0/16"].med == 9
    feed(core, k, PeerState(P1, "down", "hold timer expired"))
    feed(core, k, PeerState(P1, "up"), addpath(P1, 3, "10.0.0.0/16", med=7))
    feed(core, k, Withdraw(P1, V4, ("10.0.0.0/16",), path_id=1))  # from the old session: gone
    assert core.rib[P1]["10.0.0.0/16"].med == 7


# ---------------------------------------------------------------- issue 13: one Decision out


def test_max_prefix_teardown_is_decided_with_its_reset_and_hold_back() -> None:
    """The core decides the session reset (Cease 1) and, when the session comes back inside
    the restart delay, that it is held back until the delay ends: the shell only performs."""
    limit = MaxPrefixSettings(limit=2, action="teardown", restart_delay=30.0)
    core = Core(CoreSettings(peers={P1: PeerSettings("vti01")}, policy=PolicySettings(
        peers={P1: PeerPolicySettings(max_prefix=limit)})))
    k = Kernel()
    feed(core, k, Tick(100.0))
    d = decide(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16"))
    assert [(lc.event, lc.limit, lc.held, lc.action) for lc in d.limits] == [
        ("warn", 2, 1, "teardown"), ("teardown", 2, 2, "teardown")]
    assert d.resets == [(P1, 1)]
    assert d.refused == {(P1, "max_prefix"): 1}
    feed(core, k, PeerState(P1, "down"))
    d = decide(core, k, Tick(110.0), PeerState(P1, "up"))
    assert d.held_back == [HeldBack(P1, 130.0)] and d.resets == []
    assert decide(core, k, Tick(131.0), PeerState(P1, "down"),
                  PeerState(P1, "up")).held_back == []  # the delay is over


def test_an_outside_endpoint_that_is_no_address_is_refused_in_the_decision() -> None:
    core = Core(CoreSettings(peers={P1: PeerSettings("vti01")}, policy=PolicySettings()))
    k = Kernel()
    feed(core, k, ann(P1, "52.1.0.0/16"))
    d = decide(core, k, OutsideLearned(P1, ("not-an-address",)))
    assert d.ops == [] and len(d.warnings) == 1 and "not-an-address" in d.warnings[0]
    assert ("52.1.0.0/16", 100) in k.routes  # nothing held is lost
    d = decide(core, k, OutsideLearned(P1, ("52.1.2.3",)))
    assert d.warnings == [] and ("52.1.0.0/16", 100) not in k.routes  # a loop: it goes


def test_sync_completion_is_decided_once_with_the_routes_swept() -> None:
    core, k = make_core(), Kernel()
    old = KernelRoute("10.9.0.0/16", 100, (NextHop("vti01"),))
    kept = KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),))
    for r in (old, kept):
        k.routes[r.key] = r
    assert decide(core, k, KernelRoutesFound((old, kept))).synced is None  # to confirm
    assert decide(core, k, ann(P1, "10.0.0.0/16")).synced is None
    d = decide(core, k, GraceExpired())
    assert d.synced == 1 and list(k.routes) == [kept.key]
    assert decide(core, k, GraceExpired()).synced is None  # once
    fresh = make_core()
    assert fresh.handle(KernelRoutesFound(())).synced == 0  # nothing of an earlier run


def test_merged_decisions_keep_every_effect_in_order() -> None:
    core, k = make_core(), Kernel()
    feed(core, k, ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    one = core.handle(DeviceState("vti01", False, "carrier lost"))
    two = core.handle(DeviceState("vti02", False, "carrier lost"))
    merged = Decision().merge(one).merge(two)
    assert merged.ops == one.ops + two.ops
    assert [c.scope for c in merged.tunnels] == [("device", "vti01"), ("device", "vti02")]
    assert merged.effects() and not Decision(ops=one.ops).effects()


def test_a_missing_med_compares_as_zero_or_as_the_worst() -> None:
    """RFC 4271: a path without a MED compares as 0, so it beats one with MED 50; with
    policy.med_missing_as_worst (FRR's missing-as-worst) it loses to it."""
    from vtibgp.core.policy import PolicySettings

    for worst, best in ((False, "vti01"), (True, "vti02")):
        core = Core(CoreSettings(metric=100, policy=PolicySettings(med_missing_as_worst=worst),
                                 peers={P1: PeerSettings("vti01"), P2: PeerSettings("vti02")}))
        k = Kernel()
        feed(core, k, ann(P1, "10.0.0.0/16", med=None), ann(P2, "10.0.0.0/16", med=50))
        assert k.routes[("10.0.0.0/16", 100)].nexthops[0].device == best, worst
