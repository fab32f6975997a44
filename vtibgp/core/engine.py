"""The decision core: Adj-RIB-In per peer, best path per prefix, kernel routes out.

Pure and I/O-free: `Core.handle(event)` is the one way in. It updates the state and returns
one `Decision`: the kernel route operations that bring the kernel from what the core
believes is installed to what it wants, and every other effect (tunnel changes, refusals,
max-prefix events, session resets, repairs, the sync completing). The shell performs them
and reports the kernel's refusals back as `RouteFailed` events. Time comes in events (`Tick`).

Path order, best first (documented in README "How the best path is chosen"):
  1. usable: the peer's tunnel device is known and usable
  2. higher configured peer `preference`
  3. higher LOCAL_PREF (absent = 100)
  4. shorter AS path (an AS_SET counts as one hop; confederation segments not at all)
  5. lower origin (igp < egp < incomplete)
  6. lower MED (absent = 0), compared across peers (in maintenance AWS lowers the other's MED)
  7. lower peer address (IPv4 before IPv6, then numerically)
Rank i is installed at metric `metric + i` through its own peer's device, for at most
`max_paths` routes, so the kernel falls back by itself when a device goes down. With `ecmp`,
paths equal on 2-6 form one multipath route at a single metric.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from operator import attrgetter

from vtibgp.core.decision import Decision, HeldBack, LimitCrossed, Scope, TunnelChange
from vtibgp.core.model import (
    Announce,
    DeviceState,
    EndOfRib,
    Event,
    ExabgpShutdown,
    Family,
    GraceExpired,
    IpsecState,
    KernelFlushed,
    KernelRoute,
    KernelRoutesFound,
    NextHop,
    NotificationReceived,
    OpKind,
    OutsideLearned,
    PathAttrs,
    PeerAddr,
    PeerDevice,
    PeerState,
    Prefix,
    Reconcile,
    Reconfigure,
    ResyncDone,
    RouteFailed,
    RouteOp,
    Stopping,
    Tick,
    Withdraw,
    kernel_route,
    route_op,
)
from vtibgp.core.policy import MaxPrefix, MaxPrefixEvent, Policy, PolicySettings
from vtibgp.core.settings import CoreSettings, PeerSettings

DEFAULT_LOCAL_PREF = 100
SHAPE_CACHE = 4096  # distinct (family, candidate paths) combinations remembered
INTERN_CACHE = 4096  # distinct shapes and nexthop sets shared between prefixes
REJECT_SAMPLES = 100  # refused prefixes kept for the shell to log, per event
ATTRS_INTERN = 65536  # distinct attribute sets shared between prefixes
ESRCH, ENOENT, EEXIST = 3, 2, 17
CEASE_MAX_PREFIX = 1  # Cease subcode: maximum number of prefixes reached (RFC 4486)
# what `reconcile` counts, by kind (vtibgp_kernel_repairs_total's label values)
REPAIR_KINDS = ("missing", "changed", "stray", "retried")
_NO_PATHS: dict[Prefix, PathAttrs] = {}


# The routes of one prefix, as (metric, nexthops) pairs: the kernel routes without the prefix.
# What the core installs for a prefix depends on it only through its family, so prefixes with
# the same candidate paths share one shape object (and one nexthops tuple per route).
Shape = tuple[tuple[int, tuple[NextHop, ...]], ...]
Steps = list[tuple[OpKind, int, tuple[NextHop, ...]]]  # route ops of one prefix, without it


class Installed(Mapping[Prefix, dict[int, KernelRoute]]):
    """What the core believes the kernel holds, per prefix keyed by metric: a read-only view
    of its compact store (one shared shape per prefix). Each look-up builds the routes."""

    __slots__ = ("_shapes",)

    def __init__(self, shapes: dict[Prefix, Shape]) -> None:
        self._shapes = shapes

    def __getitem__(self, prefix: Prefix) -> dict[int, KernelRoute]:
        return {metric: kernel_route(prefix, metric, hops)
                for metric, hops in self._shapes[prefix]}

    def __contains__(self, prefix: object) -> bool:
        return prefix in self._shapes

    def __iter__(self) -> Iterator[Prefix]:
        return iter(self._shapes)

    def __len__(self) -> int:
        return len(self._shapes)


def _peer_order(peer: PeerAddr) -> tuple[int, int]:
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return (2, 0)
    return (ip.version, int(ip))


class Core:
    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        self.rib: dict[PeerAddr, dict[Prefix, PathAttrs]] = {}
        # ADD-PATH: every path a peer holds per prefix, by path identifier; `rib` holds the
        # best of them (several paths of one peer go through the same tunnel).
        self.path_ids: dict[PeerAddr, dict[Prefix, dict[int, PathAttrs]]] = {}
        # Outside endpoints the IPsec daemon told us (PLUTO_PEER), kept across reloads.
        self.outside: dict[PeerAddr, tuple[str, ...]] = {}
        self.peers: dict[PeerAddr, PeerSettings] = dict(settings.peers)
        self.discovered: dict[PeerAddr, str | None] = {}
        # Tunnel signals that say down, per scope (signal -> reason), and scopes that came up
        # but are held down until the time given (flap damping).
        self.down: dict[Scope, dict[str, str]] = {}
        self.holding: dict[Scope, float] = {}
        self.sessions: dict[PeerAddr, str] = {}
        # What we believe the kernel holds: per prefix, its routes in metric order (read
        # through `installed`). Most prefixes share their shape with many others.
        self._inst: dict[Prefix, Shape] = {}
        # Routes found in the kernel at start that nothing has confirmed yet.
        self.stale: set[tuple[Prefix, int]] = set()
        # Adopted routes (prefix, metric) the RIB would change before the sync is complete:
        # left as the earlier run left them until the sweep, which recomputes their prefixes
        # (see _steps), unless their tunnel goes down.
        self.deferred: set[tuple[Prefix, int]] = set()
        # Prefixes whose routes the kernel took away by itself (KernelFlushed): decided
        # again once the event that caused the flush is in.
        self._lost: set[Prefix] = set()
        self._dead_gateways_seen: set[str] = set()  # next-hops of down peers checked (above)
        # (prefix, metric) an ADD of ours found another owner's route at: left alone (never
        # overwritten) until the prefix's routes change; the periodic scan does not retry it.
        self.conflicts: set[tuple[Prefix, int]] = set()
        self.synced = True  # becomes False when there is something to reconcile
        self.pending_sync: set[PeerAddr] = set(settings.peers)
        self.eor_seen: dict[PeerAddr, set[Family]] = {}
        self.stats: Counter[str] = Counter()
        self._order_cache: dict[PeerAddr, tuple[int, int]] = {}
        self._usable_memo: frozenset[PeerAddr] | None = None
        self.now = 0.0  # the shell's monotonic clock, from the last Tick
        self._attrs: dict[PathAttrs, PathAttrs] = {}
        self._set_policy(settings.policy)
        # what the event being handled decided besides its route ops (returned by handle)
        self._out = Decision()
        self._shapes: dict[tuple[object, ...], tuple[tuple[PathAttrs, ...], Shape]] = {}
        # One object per distinct shape and nexthops value, so that comparing what is
        # installed with what is wanted is mostly an identity test.
        self._interned: dict[Shape, Shape] = {}
        self._interned_hops: dict[tuple[NextHop, ...], tuple[NextHop, ...]] = {}

    # ---------------------------------------------------------------- queries

    def device_of(self, peer: PeerAddr) -> str | None:
        pol = self.peers.get(peer)
        if pol is not None and pol.device is not None:
            return pol.device
        return self.discovered.get(peer)

    def known(self, peer: PeerAddr) -> bool:
        return peer in self.peers or self.settings.accept_unconfigured_peers

    def scope_usable(self, scope: Scope) -> bool:
        return scope not in self.down and scope not in self.holding

    @property
    def unusable_devices(self) -> set[str]:
        return {name for kind, name in (*self.down, *self.holding) if kind == "device"}

    def usable(self, peer: PeerAddr) -> bool:
        dev = self.device_of(peer)
        return (
            dev is not None
            and self.known(peer)
            and self.scope_usable(("device", dev))
            and self.scope_usable(("peer", peer))
        )

    def session_flush(self, peer: PeerAddr) -> str | None:
        """The device to flush (KernelFlushed) before `peer`'s session ends, or None. When
        the peer is the only one whose routes go through its device, the session's end
        leaves no route there, so the shell may take them all out in one kernel step (its
        nexthop objects) before the core moves the prefixes: traffic falls to the backups at
        once instead of route by route. Not when another peer maps to the device (a shared
        device), nor when the peer holds nothing or its tunnel is already down."""
        if not self.rib.get(peer) or not self.usable(peer):
            return None
        dev = self.device_of(peer)
        for other in {*self.peers, *self.discovered, *self.rib}:
            if other != peer and self.device_of(other) == dev:
                return None
        return dev

    def session(self, peer: PeerAddr) -> str | None:
        """The peer's session state as its last state message told it, None if none came."""
        return self.sessions.get(peer)

    def path_count(self, peer: PeerAddr) -> int:
        """Prefixes held from `peer` (after policy)."""
        return len(self.rib.get(peer, ()))

    def prefix_limit(self, peer: PeerAddr) -> int:
        """The peer's max-prefix limit, 0 if it has none."""
        limit = self.max_prefix.get(peer)
        return limit.settings.limit if limit is not None else 0

    def signals_down(self, scope: Scope) -> list[str]:
        """The tunnel signals (link, ipsec, bgp…) that say `scope` is down, sorted."""
        return sorted(self.down.get(scope, ()))

    def held_down(self, scope: Scope) -> bool:
        """Whether `scope` came up and waits out its hold-down."""
        return scope in self.holding

    @property
    def installed(self) -> Installed:
        """What we believe the kernel holds, per prefix, keyed by metric."""
        return Installed(self._inst)

    def routes(self) -> Iterator[KernelRoute]:
        for prefix, shape in self._inst.items():
            for metric, hops in shape:
                yield kernel_route(prefix, metric, hops)

    def route_count(self) -> int:
        return sum(map(len, self._inst.values()))

    def hop_roles(self, best: int) -> dict[NextHop, list[int]]:
        """For every nexthop in use: [routes at metric `best`, routes at other metrics]
        through it. Counted per shape, not per route: a million prefixes share a few."""
        shapes = list(self._inst.values())
        uses = Counter(map(id, shapes))
        by_id = dict(zip(map(id, shapes), shapes, strict=True))
        counts: dict[NextHop, list[int]] = {}
        for key, n in uses.items():
            for metric, hops in by_id[key]:
                role = 0 if metric == best else 1
                for hop in hops:
                    counts.setdefault(hop, [0, 0])[role] += n
        return counts

    def _set_policy(self, settings: PolicySettings | None) -> None:
        self.import_policy = Policy(settings) if settings is not None else None
        self.max_prefix: dict[PeerAddr, MaxPrefix] = {}
        if self.import_policy is not None:
            for peer in self.peers:
                mp = self.import_policy.max_prefix(peer)
                if mp is not None:
                    self.max_prefix[peer] = MaxPrefix(mp)

    def _usable_peers(self) -> frozenset[PeerAddr]:
        if self._usable_memo is None:
            self._usable_memo = frozenset(p for p in self.rib if self.usable(p))
        return self._usable_memo

    def _invalidate(self) -> None:
        """Usability or policy changed: forget what was derived from it."""
        self._usable_memo = None
        self._shapes.clear()

    def _candidates(self, prefix: Prefix) -> list[tuple[PeerAddr, PathAttrs]]:
        usable = self._usable_peers()
        return [(peer, paths[prefix]) for peer, paths in self.rib.items()
                if peer in usable and prefix in paths]

    def ranked(self, prefix: Prefix) -> list[tuple[PeerAddr, PathAttrs]]:
        """Every usable path for a prefix, best first."""
        cands = self._candidates(prefix)
        if len(cands) > 1:
            cands.sort(key=self._rank_key)
        return cands

    def desired(self, prefix: Prefix) -> dict[int, KernelRoute]:
        """The kernel routes this prefix should have, keyed by metric."""
        shape = self._want(prefix, self._candidates(prefix))
        if not shape and self.settings.fallback:
            shape = self._fallback_only(prefix)
        return {metric: kernel_route(prefix, metric, hops) for metric, hops in shape}

    def _want(self, prefix: Prefix, cands: list[tuple[PeerAddr, PathAttrs]]) -> Shape:
        """The shape of the routes `prefix` should have, given its usable paths.

        The routes depend on the prefix only through its family, and one PathAttrs object is
        shared by every prefix of an UPDATE, so the ranking and nexthops are computed once
        per (family, candidate paths) and reused ("shapes"; dropped when usability changes).
        """
        if not cands:
            return ()
        key = (":" in prefix, *[(peer, id(attrs)) for peer, attrs in cands])
        hit = self._shapes.get(key)
        if hit is not None and all(a is b for (_, a), b in zip(cands, hit[0], strict=True)):
            return hit[1]
        if len(self._shapes) >= SHAPE_CACHE:
            self._shapes.clear()
        shape = self._intern(self._shape(prefix, cands))
        # the attrs objects are kept alive with the entry, so their ids stay theirs
        self._shapes[key] = (tuple(a for _, a in cands), shape)
        return shape

    def _intern(self, value: Shape) -> Shape:
        """The one object kept for this shape, its nexthops tuples shared too."""
        interned, hops_of = self._interned, self._interned_hops
        found = interned.get(value)
        if found is not None:
            return found
        if len(interned) >= INTERN_CACHE:
            interned.clear()
        if len(hops_of) >= INTERN_CACHE:
            hops_of.clear()
        shape = tuple((metric, hops_of.setdefault(hops, hops)) for metric, hops in value)
        interned[shape] = shape
        return shape

    def _shape(self, prefix: Prefix, cands: list[tuple[PeerAddr, PathAttrs]]) -> Shape:
        if len(cands) > 1:
            cands = sorted(cands, key=self._rank_key)
        groups: list[list[tuple[PeerAddr, PathAttrs]]] = []
        last = None
        for cand in cands:
            key = self._rank_key(cand)[:-1]
            if self.settings.ecmp and groups and key == last:
                groups[-1].append(cand)
            else:
                groups.append([cand])
            last = key
        out: list[tuple[int, tuple[NextHop, ...]]] = []
        metric = self.settings.metric
        for group in groups[: self.settings.max_paths]:
            hopset = {self._nexthop(prefix, peer, attrs) for peer, attrs in group}
            if len(hopset) > 1 and ":" in prefix:
                # The kernel refuses IPv6 multipath without gateways: every path of the
                # group goes via its next-hop (onlink).
                hopset = {self._nexthop(prefix, peer, attrs, True) for peer, attrs in group}
            out.append((metric, tuple(sorted(hopset, key=NextHop.sort_key))))
            metric += 1
        if self.settings.fallback:
            out.append(self._fallback_route)
        return tuple(out)

    @property
    def _fallback_route(self) -> tuple[int, tuple[NextHop, ...]]:
        """The fallback: no nexthop (the kernel writer gives it its type, unreachable or
        blackhole), behind every path's route."""
        return (self.settings.metric + self.settings.max_paths, ())

    def _fallback_only(self, prefix: Prefix) -> Shape:
        """With `fallback`: what a prefix with no usable path keeps while any path of it is
        held (its tunnels are down, its sessions not yet): the fallback route alone."""
        if any(prefix in paths for paths in self.rib.values()):
            return self._intern((self._fallback_route,))
        return ()

    def desired_all(self) -> dict[Prefix, dict[int, KernelRoute]]:
        """From scratch, over every path held: what `installed` must equal once synced."""
        prefixes = {p for paths in self.rib.values() for p in paths}
        return {p: d for p in prefixes if (d := self.desired(p))}

    # ---------------------------------------------------------------- events

    def handle(self, event: Event) -> Decision:
        """The one way in: `event` changes the state; the result is everything decided."""
        out = self._out = Decision()
        ops = self._handle(event)
        if self._lost and not isinstance(event, KernelFlushed):
            # the event behind the kernel's flush is in: what the flush took away that is
            # still wanted (adopted routes kept until sync, a prefix whose path is held
            # elsewhere) goes back now rather than at the sweep
            lost, self._lost = self._lost, set()
            ops += self._recompute(sorted(lost))
        out.ops = ops
        return out

    def _handle(self, event: Event) -> list[RouteOp]:
        match event:
            case Announce():
                ops: list[RouteOp] = self._announce(event)
                if (self.stale or self.deferred) and not self.synced and \
                        not self.scope_usable(("peer", event.peer)) and \
                        event.attrs.next_hop not in self._dead_gateways_seen:
                    # a next-hop of a peer whose tunnel is down, not seen before: an adopted
                    # route via it as gateway is now known to go into that dead tunnel
                    self._dead_gateways_seen.add(event.attrs.next_hop)
                    ops += self._recompute(self._adopted_dead())
                return ops
            case Withdraw():
                return self._withdraw(event)
            case PeerState():
                return self._peer_state(event)
            case EndOfRib():
                self.eor_seen.setdefault(event.peer, set()).add(event.family)
                fams = self._families(event.peer)
                if self.eor_seen[event.peer] >= set(fams):
                    return self._peer_synced([event.peer])
                return []
            case DeviceState():
                return self._signal(("device", event.device), "link", event.usable,
                                    event.reason, event.at)
            case IpsecState():
                scopes = [("peer", p) for p in event.peers] if event.peers else (
                    [("device", event.device)] if event.device else [])
                ops = []
                for scope in scopes:
                    ops += self._signal(scope, "ipsec", event.up, event.reason, event.at)
                return ops
            case Tick():
                return self._tick(event.now)
            case KernelFlushed():
                self._flushed(event.device)
                return []
            case PeerDevice():
                before = self.device_of(event.peer)
                self.discovered[event.peer] = event.device
                self._invalidate()
                if self.device_of(event.peer) == before:
                    return []
                return self._recompute(self.rib.get(event.peer, {}))
            case KernelRoutesFound():
                return self._adopt(event.routes)
            case ResyncDone():
                return self._peer_synced(event.peers)
            case GraceExpired():
                return self._sweep()
            case RouteFailed():
                return self._failed(event)
            case Reconcile():
                return self._reconcile(event.kernel)
            case Reconfigure():
                return self._reconfigure(event.settings)
            case OutsideLearned():
                return self._learn_outside(event.peer, event.addresses)
            case Stopping():
                return self._withdraw_all() if event.withdraw else []
            case NotificationReceived() | ExabgpShutdown():
                return []
        raise TypeError(f"not an event: {event!r}")  # pragma: no cover

    def _learn_outside(self, peer: PeerAddr, found: tuple[str, ...]) -> list[RouteOp]:
        """The IPsec daemon told us the tunnel's outside endpoint (PLUTO_PEER): from now on
        no prefix covering it may go into that tunnel; held ones that do are dropped. Kept
        across reloads (`Reconfigure`). An endpoint that is not an address is refused."""
        if self.import_policy is None:
            self.outside[peer] = found
            return []
        try:
            changed = self.import_policy.set_outside(peer, found)
        except ValueError:
            self._out.invalid.append(f"outside endpoint {', '.join(found)!r} of peer {peer}: "
                                     "not an address")
            return []
        self.outside[peer] = found
        if not changed:
            return []
        paths = self.rib.get(peer, {})
        gone = []
        for prefix, attrs in list(paths.items()):
            if self.import_policy.check(peer, None, _family_of(prefix), prefix,
                                        attrs) == "loop":
                del paths[prefix]
                self._refuse(peer, prefix, "loop")
                gone.append(prefix)
        return self._recompute(gone)

    def _reconfigure(self, settings: CoreSettings) -> list[RouteOp]:
        """New settings (a config reload): every held path is judged again under them, and
        what a peer no longer configured held is forgotten."""
        self.settings = settings
        self.peers = dict(settings.peers)
        self._set_policy(settings.policy)
        if self.import_policy is not None:
            for peer, found in self.outside.items():
                self.import_policy.set_outside(peer, found)
        self._invalidate()
        prefixes = set(self._inst)
        for peer in [p for p in self.rib if not self.known(p)]:
            prefixes.update(self.rib.pop(peer))
            self.path_ids.pop(peer, None)
            self.eor_seen.pop(peer, None)
        self.pending_sync = {p for p in self.pending_sync if self.known(p)}
        if self.import_policy is not None:
            check = self.import_policy.check
            for peer, paths in self.rib.items():
                ids = self.path_ids.get(peer, {})
                for prefix in list(paths):
                    held: list[tuple[int | None, PathAttrs]] = [
                        *ids.get(prefix, {}).items()] or [(None, paths[prefix])]
                    for pid, path in held:
                        # a held path no longer allowed goes; peer AS is not kept per path,
                        # so the first-AS rule is left to the next announcement
                        reason = check(peer, None, _family_of(prefix), prefix, path)
                        if reason is not None:
                            self._drop_path(peer, prefix, pid)
                            self._refuse(peer, prefix, reason)
        prefixes.update(p for paths in self.rib.values() for p in paths)
        return self._recompute(prefixes)

    def _reconcile(self, kernel: Iterable[KernelRoute]) -> list[RouteOp]:
        """Compare what the kernel holds of ours with what the RIB wants (like BIRD's periodic
        scan, which compares with its table): routes the kernel lost are added back
        ("missing"), changed ones replaced ("changed"), ones we do not hold removed
        ("stray"), and what the kernel refused earlier for a transient reason (ENOBUFS,
        ENOMEM, a link race) is tried again ("retried"). A route refused because another
        owner holds its place (EEXIST) is not retried here: it is never overwritten, and is
        tried again when its prefix next changes. The repairs' count by kind goes into the
        Decision."""
        seen = {r.key: r for r in kernel}
        # an EEXIST whose place the dump shows as ours was our own route, not another owner's
        self.conflicts.difference_update(seen)
        ops: list[RouteOp] = []
        kinds = self._out.repairs
        for route in self.routes():
            found = seen.pop(route.key, None)
            if found is None:
                ops.append(RouteOp(OpKind.ADD, route))
                kinds["missing"] += 1
            elif found.nexthops != route.nexthops:
                ops.append(RouteOp(OpKind.REPLACE, route))
                kinds["changed"] += 1
        for route in seen.values():
            ops.append(RouteOp(OpKind.DELETE, route))
            kinds["stray"] += 1
        if not self.synced:
            return ops  # adopted routes are judged at the sweep
        prefixes = {p for paths in self.rib.values() for p in paths}
        self.conflicts = {key for key in self.conflicts if key[0] in prefixes}
        prefixes.update(self._inst)
        # (these ops start from what we believed installed, the repairs above from the
        # kernel: folded into one op per route, they take the kernel to what is wanted)
        retry = self._recompute(prefixes)
        if self.conflicts:
            # not over another owner's route: left out, and not believed installed
            kept = []
            for op in retry:
                if op.kind is OpKind.ADD and op.route.key in self.conflicts:
                    self._forget(op.route)
                else:
                    kept.append(op)
            retry = kept
        if retry:
            kinds["retried"] += len(retry)
            ops = coalesce(ops + retry)
        return ops

    def _withdraw_all(self) -> list[RouteOp]:
        """Every route we hold, as deletes (for `on_exit: withdraw`)."""
        ops = [RouteOp(OpKind.DELETE, r) for r in self.routes()]
        self._inst.clear()
        self.stale.clear()
        return ops

    # ---------------------------------------------------------------- internals

    def _families(self, peer: PeerAddr) -> tuple[Family, ...]:
        pol = self.peers.get(peer)
        return pol.families if pol else ("ipv4 unicast",)

    def _rank_key(self, cand: tuple[PeerAddr, PathAttrs]) -> tuple[object, ...]:
        peer, a = cand
        pol = self.peers.get(peer)
        order = self._order_cache.get(peer)
        if order is None:
            order = self._order_cache[peer] = _peer_order(peer)
        return (
            -(pol.preference if pol else 100),
            -(a.local_pref if a.local_pref is not None else DEFAULT_LOCAL_PREF),
            a.as_path_len,
            a.origin,
            a.med,
            order,
        )

    def _nexthop(self, prefix: Prefix, peer: PeerAddr, attrs: PathAttrs,
                 gateway: bool = False) -> NextHop:
        dev = self.device_of(peer)
        assert dev is not None
        pol = self.peers.get(peer)
        if gateway or (pol is not None and pol.gateway):
            v6 = ":" in prefix
            for gw in (attrs.next_hop, peer):
                if (":" in gw) == v6:
                    return NextHop(dev, gw)
        return NextHop(dev)

    def _announce(self, ev: Announce) -> list[RouteOp]:
        if not self.known(ev.peer):
            self.stats["prefixes_unknown_peer"] += len(ev.prefixes)
            return []
        paths = self.rib.get(ev.peer)
        if paths is None:
            paths = self.rib[ev.peer] = {}
            self._usable_memo = None  # a peer the usable set has not seen yet
        self.stats["prefixes_announced"] += len(ev.prefixes)
        # One object per distinct attribute set: the resync gives every prefix its own, and
        # shared objects are what the shape cache and memory use rely on.
        attrs = self._attrs.get(ev.attrs)
        if attrs is None:
            if len(self._attrs) >= ATTRS_INTERN:
                self._attrs.clear()
            attrs = self._attrs[ev.attrs] = ev.attrs
        accepted: Sequence[Prefix] = ev.prefixes
        touched: list[Prefix] = []
        if self.import_policy is not None:
            accepted, refused = self.import_policy.partition(
                ev.peer, ev.peer_as, ev.family, ev.prefixes, attrs)
            for prefix, reason in refused:
                self._refuse(ev.peer, prefix, reason)
                # a refused replacement: implicit withdraw
                if self._drop_path(ev.peer, prefix, ev.path_id):
                    touched.append(prefix)
        limit = self.max_prefix.get(ev.peer)
        pid = ev.path_id
        if limit is None and pid is None and not self.path_ids.get(ev.peer):
            paths.update(zip(accepted, repeat(attrs)))
            ops = self._recompute(touched) if touched else []
            ops += self._recompute(accepted, (ev.peer, attrs))
            return ops
        # a max-prefix limit, or ADD-PATH (the peer's best path of each prefix competes)
        for prefix in accepted:
            if limit is not None:
                admission = limit.admit(len(paths), prefix not in paths, self.now)
                if admission.event is not None:
                    self._limit_crossed(ev.peer, admission.event, limit, len(paths))
                if not admission.accept:
                    self._refuse(ev.peer, prefix, "max_prefix")
                    continue
            self._store_path(ev.peer, paths, prefix, attrs, pid)
            touched.append(prefix)
        return self._recompute(touched)

    def _refuse(self, peer: PeerAddr, prefix: Prefix, reason: str) -> None:
        out = self._out
        out.refused[(peer, reason)] += 1
        if len(out.refused_samples) < REJECT_SAMPLES:
            out.refused_samples.append((peer, prefix, reason))

    def _limit_crossed(self, peer: PeerAddr, event: MaxPrefixEvent, limit: MaxPrefix,
                       held: int) -> None:
        s = limit.settings
        self._out.limits.append(LimitCrossed(peer, event, s.limit, held, s.action))
        if event == "teardown":
            self._out.resets.append((peer, CEASE_MAX_PREFIX))

    def _withdraw(self, ev: Withdraw) -> list[RouteOp]:
        paths = self.rib.get(ev.peer)
        if not paths:
            return []
        if ev.path_id is None and not self.path_ids.get(ev.peer):
            gone = [p for p in ev.prefixes if paths.pop(p, None) is not None]
        else:
            gone = [p for p in ev.prefixes if self._drop_path(ev.peer, p, ev.path_id)]
        self.stats["prefixes_withdrawn"] += len(gone)
        return self._recompute(gone)

    def _store_path(self, peer: PeerAddr, paths: dict[Prefix, PathAttrs], prefix: Prefix,
                    attrs: PathAttrs, pid: int | None) -> None:
        """Hold `attrs` as `peer`'s path of `prefix` with ADD-PATH identifier `pid` (None: the
        only path, replacing all); the RIB entry becomes the best of the peer's paths."""
        if pid is None:
            paths[prefix] = attrs
            ids = self.path_ids.get(peer)
            if ids:
                ids.pop(prefix, None)
            return
        per = self.path_ids.setdefault(peer, {}).setdefault(prefix, {})
        per[pid] = attrs
        paths[prefix] = _best_own(per)

    def _drop_path(self, peer: PeerAddr, prefix: Prefix, pid: int | None) -> bool:
        """Forget `peer`'s path `pid` of `prefix` (None: all of them). True if the peer's
        RIB entry for the prefix changed (another of its paths is now its best) or went."""
        paths = self.rib.get(peer)
        if paths is None:
            return False
        ids = self.path_ids.get(peer, {})
        per = ids.get(prefix)
        if pid is None or per is None:
            ids.pop(prefix, None)
            return paths.pop(prefix, None) is not None
        before = paths.get(prefix)
        if per.pop(pid, None) is None:
            return False
        if per:
            paths[prefix] = _best_own(per)
            return paths[prefix] is not before
        del ids[prefix]
        paths.pop(prefix, None)
        return True

    def _peer_state(self, ev: PeerState) -> list[RouteOp]:
        self.sessions[ev.peer] = ev.state
        if ev.state == "connected":
            return []
        limit = self.max_prefix.get(ev.peer)
        if ev.state == "up" and limit is not None and limit.suppressed(self.now):
            # ExaBGP cannot be told to keep a session down, and reconnects at once: resetting
            # each time would only make a storm of Ceases. The session stays; what it sends
            # is refused until the delay is over, then read again from ExaBGP's adj-rib-in.
            self._out.held_back.append(HeldBack(ev.peer, limit.suppressed_until or self.now))
        # down: ExaBGP sends no withdraws, so the peer's paths go now. up: a new session
        # re-sends everything, so anything still held from before is stale.
        self.eor_seen.pop(ev.peer, None)
        if ev.peer in self.max_prefix:
            self.max_prefix[ev.peer].reset()
        self.path_ids.pop(ev.peer, None)
        paths = self.rib.pop(ev.peer, None)
        return self._recompute(paths) if paths else []

    def _affected(self, scope: Scope) -> set[Prefix]:
        kind, name = scope
        touched: set[Prefix] = set()
        for peer, paths in self.rib.items():
            if (peer if kind == "peer" else self.device_of(peer)) == name:
                touched.update(paths)
        return touched

    def _signal(self, scope: Scope, signal: str, up: bool, reason: str,
                at: float) -> list[RouteOp]:
        """One signal about a tunnel. Down takes its routes away at once (their paths stay
        held); up returns them when every signal is up and the hold-down has passed."""
        before = self.scope_usable(scope)
        sigs = self.down.get(scope, {})
        flap = False
        if up:
            if signal not in sigs:
                return []
            del sigs[signal]
            if sigs:
                return []
            del self.down[scope]
            if self.settings.hold_down > 0:
                self.holding[scope] = at + self.settings.hold_down
        else:
            if scope in self.holding:
                del self.holding[scope]
                flap = True
            already = signal in sigs
            sigs[signal] = reason
            self.down[scope] = sigs
            if already:
                return []
        after = self.scope_usable(scope)
        if before != after:
            self._invalidate()
        if before != after or flap:
            self._out.tunnels.append(TunnelChange(scope, after, f"{signal}: {reason}", flap))
        if before == after:
            return []
        touched = self._affected(scope)
        if not after and (self.stale or self.deferred):
            # adopted routes kept until sync that go into this tunnel, whoever's paths the
            # prefixes hold now: they leave it too
            touched |= self._adopted_dead()
        return self._recompute(touched)

    def _adopted_dead(self) -> set[Prefix]:
        """Prefixes with an adopted route kept until sync (unconfirmed, or deferred: one the
        RIB would change) into a tunnel that is not usable."""
        inst = self._inst
        dead = {prefix for prefix, metric in self.stale
                if any(m == metric and not self._live(hops)
                       for m, hops in inst.get(prefix, ()))}
        dead.update(prefix for prefix, metric in self.deferred
                    if any(m == metric and not self._live(hops)
                           for m, hops in inst.get(prefix, ())))
        return dead

    def _flushed(self, device: str) -> None:
        """Believe what the kernel did: routes through `device` are gone, multipath ones
        lost that nexthop. The signal that follows decides what to install instead."""
        inst = self._inst
        # what becomes of each shape (shared by many prefixes), computed once per shape
        done: dict[int, tuple[Shape, Shape, list[int]]] = {}
        for prefix, shape in list(inst.items()):
            hit = done.get(id(shape))
            if hit is None:
                kept: list[tuple[int, tuple[NextHop, ...]]] = []
                gone: list[int] = []
                for metric, hops in shape:
                    left = tuple(h for h in hops if h.device != device)
                    if len(left) == len(hops):  # not through it (the fallback: no device)
                        kept.append((metric, hops))
                    elif left:
                        kept.append((metric, left))
                    else:
                        gone.append(metric)
                after = tuple(kept)
                # the old shape is held by the entry, so its id is not reused meanwhile
                hit = done[id(shape)] = (shape, shape if after == shape else after, gone)
            _, after, gone = hit
            if after is shape:
                continue
            if self.stale or self.deferred:
                for metric in gone:
                    self.stale.discard((prefix, metric))
                    self.deferred.discard((prefix, metric))
            if not self.synced:
                # an adopted route kept until sync may have gone while the RIB holds a usable
                # path elsewhere: decided again after the signal (once synced, every route
                # through the device is its peers', which the signal recomputes anyway)
                self._lost.add(prefix)
            if after:
                inst[prefix] = after
            else:
                del inst[prefix]
        self.stats["kernel_flushes"] += 1

    def _tick(self, now: float) -> list[RouteOp]:
        self.now = now
        ops: list[RouteOp] = []
        for scope in [sc for sc, until in self.holding.items() if until <= now]:
            del self.holding[scope]
            self._invalidate()
            self._out.tunnels.append(TunnelChange(scope, True, "hold-down passed"))
            ops += self._recompute(self._affected(scope))
        return ops

    def _recompute(self, prefixes: Iterable[Prefix],
                   held: tuple[PeerAddr, PathAttrs] | None = None) -> list[RouteOp]:
        """Bring the routes of `prefixes` to what their paths say, returning the ops.

        This is the hot loop of a full table. Nothing changes the RIB while it runs, so the
        usable peers' tables are looked up once; prefixes whose paths are the same objects
        (the prefixes of one UPDATE, and their backups) share one shape, found by the
        identities of their paths; and the ops between two shapes are worked out once.
        `held`: a (peer, path) that every one of `prefixes` holds (just announced), so that
        the peer's table is not looked up again."""
        ops: list[RouteOp] = []
        add = ops.append
        inst = self._inst
        stale = self.stale
        deferred = self.deferred
        usable = self._usable_peers()
        tables = [(peer, paths) for peer, paths in self.rib.items() if peer in usable]
        gets = [paths.get for _, paths in tables]
        few = len(gets) <= 2
        g0 = gets[0] if gets else _NO_PATHS.get
        g1 = gets[1] if len(gets) > 1 else _NO_PATHS.get
        known: PathAttrs | None = None
        if held is not None and few and held[0] in usable:
            # every prefix holds this path from this peer (just announced): not looked up
            known = held[1]
            if tables[0][0] == held[0]:
                g0 = g1
        # (v6, id of each table's path or of None) -> shape, and (id(have), id(want)) ->
        # (have, want, steps): the RIB holds every path seen here while this runs, and the
        # entries hold their shapes, so no id is reused meanwhile
        seen: dict[tuple[object, ...], Shape] = {}
        moves: dict[tuple[int, int], tuple[Shape, Shape, Steps]] = {}
        # the previous prefix's paths and shape: an UPDATE's prefixes mostly repeat them
        last0: object = _NO_PATHS
        last1: object = _NO_PATHS
        last6 = False
        want: Shape = ()
        fallback = self.settings.fallback
        ADD = OpKind.ADD
        for prefix in prefixes:
            v6 = ":" in prefix
            if few:
                a0 = g0(prefix)
                a1 = known if known is not None else g1(prefix)
                if a0 is not last0 or a1 is not last1 or v6 is not last6:
                    last0, last1, last6 = a0, a1, v6
                    want = self._look(prefix, tables, seen, (v6, id(a0), id(a1)))
            else:
                want = self._look(prefix, tables, seen, (v6, *[id(get(prefix)) for get in gets]))
            # (`want` may be reused for the next prefix: the fallback, which depends on this
            # prefix's unusable paths, goes into `shape`)
            shape = want if want or not fallback else self._fallback_only(prefix)
            if not shape:
                have = inst.get(prefix)
                if have is None:
                    continue
            else:
                size = len(inst)
                have = inst.setdefault(prefix, shape)
                if len(inst) != size:  # nothing was held: add what is wanted
                    for metric, hops in shape:
                        add(route_op(ADD, prefix, metric, hops))
                    continue
            if stale or deferred:
                steps, after = self._steps(prefix, have, shape)
            elif have is shape:
                continue
            else:
                # the steps depend on the prefix only through what is stale
                move = moves.get((id(have), id(shape)))
                if move is None:
                    move = moves[(id(have), id(shape))] = (
                        have, shape, self._steps(prefix, have, shape)[0])
                steps, after = move[2], shape
            for kind, metric, hops in steps:
                add(route_op(kind, prefix, metric, hops))
            if after:
                inst[prefix] = after
            else:
                del inst[prefix]
        return ops

    def _look(self, prefix: Prefix, tables: list[tuple[PeerAddr, dict[Prefix, PathAttrs]]],
              seen: dict[tuple[object, ...], Shape], key: tuple[object, ...]) -> Shape:
        """The shape for `prefix` from its paths in `tables`, remembered in `seen` by `key`
        (its family and the identities of its paths)."""
        want = seen.get(key)
        if want is None:
            cands = [(peer, a) for peer, paths in tables
                     if (a := paths.get(prefix)) is not None]
            want = seen[key] = self._want(prefix, cands)
        return want

    def _steps(self, prefix: Prefix, have: Shape, want: Shape) -> tuple[Steps, Shape]:
        """The ops from the routes `have` to the routes `want` of `prefix` (as kind, metric,
        nexthops), and the routes held after them: `want`, and the unconfirmed leftovers of
        an earlier run, which are kept until the sweep."""
        stale, deferred = self.stale, self.deferred
        steps: Steps = []
        held = dict(have)
        kept_old: dict[int, tuple[NextHop, ...]] = {}
        for metric, hops in want:
            old = held.get(metric)
            if old is None:
                steps.append((OpKind.ADD, metric, hops))
            elif old is not hops and old != hops:
                key = (prefix, metric)
                if not self.synced and (key in stale or key in deferred) and self._live(old):
                    # An adopted route that the RIB, still filling, would change: while the
                    # peers re-send their tables the best path may flip and flip back, so the
                    # route stays as the earlier run left it, and is judged at the sweep.
                    kept_old[metric] = old
                    deferred.add(key)
                else:
                    steps.append((OpKind.REPLACE, metric, hops))
                    deferred.discard(key)
            elif deferred:
                deferred.discard((prefix, metric))
            if stale:
                stale.discard((prefix, metric))
        if kept_old:
            want = tuple((m, kept_old.get(m, h)) for m, h in want)
        wanted = {metric for metric, _ in want}
        kept: list[tuple[int, tuple[NextHop, ...]]] = []
        for metric, hops in have:
            if metric in wanted:
                continue
            key = (prefix, metric)
            if not self.synced and (key in stale or key in deferred) and self._live(hops):
                kept.append((metric, hops))
                continue
            if stale:
                stale.discard(key)
            deferred.discard(key)
            steps.append((OpKind.DELETE, metric, hops))
        return steps, want + tuple(kept) if kept else want

    def _adopt(self, routes: Iterable[KernelRoute]) -> list[RouteOp]:
        """Take over our routes left in the kernel by an earlier run. They stay as they are
        until the RIB confirms them, and the unconfirmed ones go at the sweep."""
        found: dict[Prefix, dict[int, tuple[NextHop, ...]]] = {}
        for r in routes:
            per_metric = found.get(r.prefix)
            if per_metric is None:
                per_metric = found[r.prefix] = dict(self._inst.get(r.prefix, ()))
            per_metric[r.metric] = r.nexthops
            self.stale.add(r.key)
        shapes: dict[Shape, Shape] = {}  # prefixes with the same routes share one shape
        for prefix, per_metric in found.items():
            shape = tuple(per_metric.items())
            self._inst[prefix] = shapes.setdefault(shape, shape)
        touched = set(found)
        if self.stale:
            self.synced = False
        elif self.synced:
            self._out.synced = 0  # nothing of an earlier run to confirm
        # A path may already be held (events before the dump), or a route goes into a tunnel
        # already known down: decide those prefixes now.
        dead = self._adopted_dead() if self.down or self.holding else set()
        return self._recompute(p for p in touched
                               if p in dead or any(p in rib for rib in self.rib.values()))

    def _peer_synced(self, peers: Iterable[PeerAddr]) -> list[RouteOp]:
        self.pending_sync.difference_update(peers)
        if not self.pending_sync:
            return self._sweep()
        return []

    def _sweep(self) -> list[RouteOp]:
        self.pending_sync.clear()
        if self.synced:
            return []
        self.synced = True
        ops: list[RouteOp] = []
        inst = self._inst
        for prefix, metric in sorted(self.stale):
            shape = inst.get(prefix, ())
            left = tuple(r for r in shape if r[0] != metric)
            if len(left) == len(shape):
                continue
            hops = next(h for m, h in shape if m == metric)
            ops.append(route_op(OpKind.DELETE, prefix, metric, hops))
            if left:
                inst[prefix] = left
            else:
                del inst[prefix]
        self.stale.clear()
        self.stats["stale_routes_swept"] += len(ops)
        self._out.synced = len(ops)
        deferred, self.deferred = self.deferred, set()
        return ops + self._recompute(sorted({prefix for prefix, _ in deferred}))

    def _live(self, hops: tuple[NextHop, ...]) -> bool:
        """Whether every nexthop goes through a tunnel no signal says is down (or held
        down): its device, and for a gateway on a shared device, the peer's tunnel whose
        address or held next-hop it is."""
        down = self.unusable_devices
        if any(h.device in down for h in hops):
            return False
        if any(h.gateway is not None for h in hops):
            dead = self._dead_gateways()
            return not any(h.gateway in dead for h in hops)
        return True

    def _dead_gateways(self) -> set[str]:
        dead: set[str] = set()
        for kind, name in (*self.down, *self.holding):
            if kind == "peer":
                dead.add(name)
                dead.update({a.next_hop for a in self.rib.get(name, _NO_PATHS).values()})
        return dead

    def _forget(self, route: KernelRoute) -> None:
        """The kernel does not hold `route` (an ADD that did not happen): not installed."""
        inst = self._inst
        per_metric = dict(inst.get(route.prefix, ()))
        if per_metric.get(route.metric) == route.nexthops:
            del per_metric[route.metric]
            if per_metric:
                inst[route.prefix] = tuple(per_metric.items())
            else:
                del inst[route.prefix]

    def _failed(self, ev: RouteFailed) -> list[RouteOp]:
        route, kind = ev.op.route, ev.op.kind
        self.stats[f"route_failed_{kind.value}"] += 1
        inst = self._inst
        per_metric = dict(inst.get(route.prefix, ()))
        if kind is OpKind.DELETE:
            # Still in the kernel: keep knowing it, so the next change of this prefix (or a
            # reconcile) removes it again rather than forgetting a route we own.
            if route.metric not in per_metric:
                per_metric[route.metric] = route.nexthops
                inst[route.prefix] = tuple(per_metric.items())
            return []
        if kind is OpKind.REPLACE and ev.errno not in (ESRCH, ENOENT):
            # refused for another reason (ENOMEM, ENOBUFS, a device race): our route is still
            # there with its old nexthops. Believing the new ones keeps its place known to be
            # ours, and the periodic scan finds it 'changed' and replaces it again.
            return []
        self._forget(route)
        if kind is OpKind.ADD and ev.errno == EEXIST:
            self.stats["route_conflicts"] += 1  # another owner holds prefix+metric: leave it
            self.conflicts.add(route.key)
            return []
        if kind is OpKind.REPLACE and ev.errno in (ESRCH, ENOENT):
            per_metric[route.metric] = route.nexthops
            inst[route.prefix] = tuple(per_metric.items())
            return [RouteOp(OpKind.ADD, route)]
        return []


_OP_KEY = attrgetter("route.prefix", "route.metric")  # RouteOp -> its route's key
_OP_PREFIX = attrgetter("route.prefix")


def coalesce(ops: Iterable[RouteOp]) -> list[RouteOp]:
    """Fold a sequence of operations into at most one per (prefix, metric) with the same end
    result, so that a batch never carries an op that assumes an earlier one in the same batch
    succeeded (a REPLACE after a refused ADD would overwrite another owner's route)."""
    ops = list(ops)
    # One op per key already (the usual case), each is its own fold. Prefixes are strings
    # that keep their hash, so they are checked first; only if one repeats, the keys.
    if len(set(map(_OP_PREFIX, ops))) == len(ops) or len(set(map(_OP_KEY, ops))) == len(ops):
        return ops
    first: dict[tuple[Prefix, int], OpKind] = {}
    last: dict[tuple[Prefix, int], RouteOp] = {}
    for op in ops:
        key = op.route.key
        first.setdefault(key, op.kind)
        last[key] = op
    out: list[RouteOp] = []
    for key, op in last.items():
        existed_before = first[key] is not OpKind.ADD
        exists_after = op.kind is not OpKind.DELETE
        if existed_before and exists_after:
            out.append(op if op.kind is OpKind.REPLACE else RouteOp(OpKind.REPLACE, op.route))
        elif exists_after:
            out.append(op if op.kind is OpKind.ADD else RouteOp(OpKind.ADD, op.route))
        elif existed_before:
            out.append(op)
    return out


def _best_own(paths: Mapping[int, PathAttrs]) -> PathAttrs:
    """The best of one peer's ADD-PATH paths of a prefix (the order of steps 3-6, then the
    lower path identifier): only it competes with other peers' paths, through the same
    tunnel as the others would."""
    return min(paths.items(), key=lambda kv: (
        -(kv[1].local_pref if kv[1].local_pref is not None else DEFAULT_LOCAL_PREF),
        kv[1].as_path_len, kv[1].origin, kv[1].med, kv[0]))[1]


def _family_of(prefix: Prefix) -> Family:
    return "ipv6 unicast" if ":" in prefix else "ipv4 unicast"
