"""The decision core: Adj-RIB-In per peer, best path per prefix, kernel routes out.

Pure and I/O-free: `Core.handle(event)` is the one way in. It updates the state and returns
one `Decision`: the kernel route operations that bring the kernel from what the core
believes is installed to what it wants, and every other effect (tunnel changes, refusals,
max-prefix events, session resets, repairs, the sync completing). The shell performs them
and reports the kernel's refusals back as `RouteFailed` events. Time comes in events (`Tick`).

The core joins four layers, each in its own module, as BIRD keeps its tables apart from its
kernel protocol: the paths held (rib.AdjRibIn), the tunnels' signals (tunnels.TunnelSignals),
the ranking of usable paths into routes (bestpath.BestPath: the path order is written there),
and what the kernel holds with its sync bookkeeping (installed.KernelState). Here: the events,
which prefixes each one touches, and the recomputation that brings their routes from what is
installed to what is wanted (`_recompute`, the hot loop of a full table).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import attrgetter

from vtibgp.core.bestpath import BestPath
from vtibgp.core.decision import Decision, HeldBack, LimitCrossed, Scope
from vtibgp.core.export import Announcement, ExportChange, ExportSettings, best_of, groups, plan
from vtibgp.core.installed import Installed, KernelState, Shape, Steps
from vtibgp.core.lan import LanFeed
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
    NetworksReachable,
    NextHop,
    NotificationReceived,
    OpKind,
    OutsideLearned,
    PathAttrs,
    PeerAddr,
    PeerDevice,
    PeerState,
    Prefix,
    ProbeReply,
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
from vtibgp.core.probe import ProbeWatch
from vtibgp.core.rib import AdjRibIn
from vtibgp.core.settings import CoreSettings, PeerSettings
from vtibgp.core.tunnels import IPSEC, LINK, PROBE, TunnelSignals

REJECT_SAMPLES = 100  # refused prefixes kept for the shell to log, per event
ATTRS_INTERN = 65536  # distinct attribute sets shared between prefixes
CEASE_MAX_PREFIX = 1  # Cease subcode: maximum number of prefixes reached (RFC 4486)
# what `reconcile` counts, by kind (vtibgp_kernel_repairs_total's label values)
REPAIR_KINDS = ("missing", "changed", "stray", "retried")
_NO_PATHS: dict[Prefix, PathAttrs] = {}


class Core:
    def __init__(self, settings: CoreSettings) -> None:
        self.settings = settings
        self.stats: Counter[str] = Counter()
        # the three layers: the paths held, the tunnels' signals, what the kernel holds
        self.adj = AdjRibIn()
        self.rib = self.adj.tables  # (the same dict: the hot loops read it directly)
        self.tunnels = TunnelSignals(settings.hold_down)
        self.in_kernel = KernelState(self.stats)
        # Outside endpoints the IPsec daemon told us (PLUTO_PEER), kept across reloads.
        self.outside: dict[PeerAddr, tuple[str, ...]] = {}
        self.peers: dict[PeerAddr, PeerSettings] = dict(settings.peers)
        self.discovered: dict[PeerAddr, str | None] = {}
        self.sessions: dict[PeerAddr, str] = {}
        self._dead_gateways_seen: set[str] = set()  # next-hops of down peers checked (above)
        self.pending_sync: set[PeerAddr] = set(settings.peers)
        self._usable_memo: frozenset[PeerAddr] | None = None
        self.now = 0.0  # the shell's monotonic clock, from the last Tick
        self._attrs: dict[PathAttrs, PathAttrs] = {}
        self._set_policy(settings.policy)
        # what the event being handled decided besides its route ops (returned by handle)
        self._out = Decision()
        self.best = BestPath(settings, self.peers, self.device_of)
        self.probe = ProbeWatch(settings.probe) if settings.probe else None
        self._probes_dirty = self.probe is not None  # which devices to probe may have changed
        # peers whose tunnel only the probe says is down: what stays when every path of a
        # prefix is down that way (see _usable_peers)
        self._kept_memo: frozenset[PeerAddr] = frozenset()
        # what each peer has been told of our networks, and whether that may have to change
        # (now: a tunnel or session changed; soon: paths changed, looked at by the next Tick)
        self.exported: dict[PeerAddr, dict[Prefix, Announcement]] = {}
        # what the cloud last heard from each peer while its tunnel carried our UPDATEs
        self._heard: dict[PeerAddr, Announcement] = {}
        self._export_now = False
        self._export_soon = False
        self.local_as = settings.export.local_as if settings.export else None
        # with export.reachable_only: the networks the kernel has another route to (None:
        # not known yet, so none is announced)
        self.reachable: frozenset[Prefix] | None = None
        lan = settings.export.lan if settings.export else None
        self.lan = LanFeed(lan) if lan is not None else None
        self.lan_sessions: dict[PeerAddr, str] = {}  # the LAN peers' session states

    # ---------------------------------------------------------------- queries

    def device_of(self, peer: PeerAddr) -> str | None:
        pol = self.peers.get(peer)
        if pol is not None and pol.device is not None:
            return pol.device
        return self.discovered.get(peer)

    def known(self, peer: PeerAddr) -> bool:
        return peer in self.peers or self.settings.accept_unconfigured_peers

    @property
    def synced(self) -> bool:
        """Whether the start-up sync is complete (every route of an earlier run judged)."""
        return self.in_kernel.synced

    @property
    def stale(self) -> set[tuple[Prefix, int]]:
        """Adopted routes (prefix, metric) not confirmed yet."""
        return self.in_kernel.stale

    def scope_usable(self, scope: Scope) -> bool:
        return self.tunnels.usable(scope)

    @property
    def unusable_devices(self) -> set[str]:
        return self.tunnels.unusable_devices

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
        return self.adj.count(peer)

    def prefix_limit(self, peer: PeerAddr) -> int:
        """The peer's max-prefix limit, 0 if it has none."""
        limit = self.max_prefix.get(peer)
        return limit.settings.limit if limit is not None else 0

    def signals_down(self, scope: Scope) -> list[str]:
        """The tunnel signals (link, ipsec…) that say `scope` is down, sorted."""
        return self.tunnels.signals_down(scope)

    def held_down(self, scope: Scope) -> bool:
        """Whether `scope` came up and waits out its hold-down."""
        return self.tunnels.held(scope)

    @property
    def installed(self) -> Installed:
        """What we believe the kernel holds, per prefix, keyed by metric."""
        return Installed(self.in_kernel.shapes)

    def routes(self) -> Iterator[KernelRoute]:
        return self.in_kernel.routes()

    def route_count(self) -> int:
        return self.in_kernel.route_count()

    def hop_roles(self, best: int) -> dict[NextHop, list[int]]:
        """For every nexthop in use: [routes at metric `best`, routes at other metrics]."""
        return self.in_kernel.hop_roles(best)

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
            self._kept_memo = self._probe_kept_peers()
        return self._usable_memo

    def _probe_kept_peers(self) -> frozenset[PeerAddr]:
        """The peers whose tunnel is down by the probe alone (its session up, its device
        known, no other signal down, not in a hold-down). When every path of a prefix is
        down, these keep it: the probe says the path is black, but removing every route
        sends the traffic along a less specific route (in clear, to the Internet) on an
        uplink failure or a broken probe. Not with `probe.when_all_down: withdraw`, nor
        with a fallback route (which refuses the traffic instead)."""
        probe = self.settings.probe
        if probe is None or not probe.keep_when_all_down or self.settings.fallback:
            return frozenset()
        t = self.tunnels
        out = set()
        for peer in self.rib:
            dev = self.device_of(peer)
            if dev is None or not self.known(peer) or not t.usable(("peer", peer)):
                continue
            scope = ("device", dev)
            if t.only_down_by(scope, PROBE) and not t.held(scope):
                out.add(peer)
        return frozenset(out)

    def _kept(self, prefix: Prefix, kept: frozenset[PeerAddr]) -> Shape:
        """The routes of a prefix whose every path is down by the probe alone."""
        return self.best.want(prefix, [(peer, paths[prefix]) for peer, paths in self.rib.items()
                                       if peer in kept and prefix in paths])

    def _invalidate(self) -> None:
        """Usability or policy changed: forget what was derived from it."""
        self._usable_memo = None
        self.best.forget()

    def _candidates(self, prefix: Prefix) -> list[tuple[PeerAddr, PathAttrs]]:
        usable = self._usable_peers()
        return [(peer, paths[prefix]) for peer, paths in self.rib.items()
                if peer in usable and prefix in paths]

    def ranked(self, prefix: Prefix) -> list[tuple[PeerAddr, PathAttrs]]:
        """Every usable path for a prefix, best first."""
        return self.best.rank(self._candidates(prefix))

    def desired(self, prefix: Prefix) -> dict[int, KernelRoute]:
        """The kernel routes this prefix should have, keyed by metric."""
        shape = self.best.want(prefix, self._candidates(prefix))
        if not shape and self._kept_memo:
            shape = self._kept(prefix, self._kept_memo)
        if not shape and self.settings.fallback:
            shape = self._fallback_only(prefix)
        return {metric: kernel_route(prefix, metric, hops) for metric, hops in shape}

    def _fallback_only(self, prefix: Prefix) -> Shape:
        """With `fallback`: what a prefix with no usable path keeps while any path of it is
        held (its tunnels are down, its sessions not yet): the fallback route alone."""
        return self.best.fallback_only() if self.adj.holds(prefix) else ()

    def desired_all(self) -> dict[Prefix, dict[int, KernelRoute]]:
        """From scratch, over every path held: what `installed` must equal once synced."""
        return {p: d for p in self.adj.prefixes() if (d := self.desired(p))}

    # ---------------------------------------------------------------- events

    def handle(self, event: Event) -> Decision:
        """The one way in: `event` changes the state; the result is everything decided."""
        out = self._out = Decision()
        ops = self._handle(event)
        if self._probes_dirty:
            ops += self._sync_probes()
        if self._export_now or out.tunnels:
            self._sync_exports()
        if self.lan is not None and self.in_kernel.synced and \
                not isinstance(event, Announce | Withdraw):
            out.exports += self.lan.sync(self.adj.prefixes, self._carried, self.local_as)
        lost = self.in_kernel.lost
        if lost and not isinstance(event, KernelFlushed):
            # the event behind the kernel's flush is in: what the flush took away that is
            # still wanted (adopted routes kept until sync, a prefix whose path is held
            # elsewhere) goes back now rather than at the sweep
            self.in_kernel.lost = set()
            ops += self._recompute(sorted(lost))
        out.ops = ops
        return out

    def _handle(self, event: Event) -> list[RouteOp]:
        match event:
            case Announce() if self._lan_peer(event.peer):
                return []  # what the LAN sends is not ours to install
            case Withdraw() if self._lan_peer(event.peer):
                return []
            case PeerState() if self._lan_peer(event.peer):
                self.lan_sessions[event.peer] = event.state
                self._learn_local_as(event.local_as)
                return []
            case Announce():
                self._export_soon = True
                ops: list[RouteOp] = self._announce(event)
                ks = self.in_kernel
                if (ks.stale or ks.deferred) and not ks.synced and \
                        not self.scope_usable(("peer", event.peer)) and \
                        event.attrs.next_hop not in self._dead_gateways_seen:
                    # a next-hop of a peer whose tunnel is down, not seen before: an adopted
                    # route via it as gateway is now known to go into that dead tunnel
                    self._dead_gateways_seen.add(event.attrs.next_hop)
                    ops += self._recompute(ks.adopted_dead(self._live))
                return ops
            case Withdraw():
                self._export_soon = True
                return self._withdraw(event)
            case PeerState():
                self._learn_local_as(event.local_as)
                self._export_now = True
                return self._peer_state(event)
            case EndOfRib():
                seen = self.adj.eor_seen.setdefault(event.peer, set())
                seen.add(event.family)
                if seen >= set(self._families(event.peer)):
                    return self._peer_synced([event.peer])
                return []
            case DeviceState():
                self._probes_dirty = self.probe is not None  # no probe while the link is down
                return self._signal(("device", event.device), LINK, event.usable,
                                    event.reason, event.at)
            case IpsecState():
                scopes = [("peer", p) for p in event.peers] if event.peers else (
                    [("device", event.device)] if event.device else [])
                ops = []
                for scope in scopes:
                    ops += self._signal(scope, IPSEC, event.up, event.reason, event.at)
                return ops
            case Tick():
                self._export_now |= self._export_soon
                return self._tick(event.now, event.now if event.seen is None else event.seen)
            case ProbeReply():
                if self.probe is not None and self.probe.reply(event.device, event.rtt,
                                                               event.at):
                    return self._signal(("device", event.device), PROBE, True,
                                        f"{self.probe.settings.up_after} echo replies in a "
                                        "row", event.at)
                return []
            case KernelFlushed():
                self.in_kernel.flushed(event.device)
                return []
            case PeerDevice():
                before = self.device_of(event.peer)
                self.discovered[event.peer] = event.device
                self._invalidate()
                self._probes_dirty = self.probe is not None
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
            case NetworksReachable():
                if event.networks != self.reachable:
                    self.reachable = event.networks
                    self._export_now = True
                return []
            case Stopping():
                if not event.withdraw:
                    return []
                self._withdraw_exports()
                return self._withdraw_all()
            case NotificationReceived() | ExabgpShutdown():
                return []
        raise TypeError(f"not an event: {event!r}")  # pragma: no cover

    def _lan_peer(self, peer: PeerAddr) -> bool:
        return self.lan is not None and peer in self.lan.addresses

    def _learn_local_as(self, local_as: int | None) -> None:
        ex = self.settings.export
        if local_as is not None and ex is not None and ex.local_as is None:
            self.local_as = local_as

    def _carried(self, prefix: Prefix) -> bool:
        """Whether a usable tunnel carries a path of `prefix` (told to the LAN peers)."""
        usable = self._usable_peers()
        return any(peer in usable and prefix in paths for peer, paths in self.rib.items())

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
            self._out.warnings.append(f"outside endpoint {', '.join(found)!r} of peer {peer}: "
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
        self.tunnels.hold_down = settings.hold_down
        self.best.configure(settings, self.peers)
        ops = self._reprobe(settings)
        if settings.export is not None and settings.export.local_as is not None:
            self.local_as = settings.export.local_as
        self._export_now = True
        self._reconfigure_lan(settings)
        self._set_policy(settings.policy)
        if self.import_policy is not None:
            for peer, found in self.outside.items():
                self.import_policy.set_outside(peer, found)
        self._invalidate()
        prefixes = set(self.in_kernel.shapes)
        for peer in [p for p in self.rib if not self.known(p)]:
            prefixes.update(self.adj.forget(peer) or ())
        self.pending_sync = {p for p in self.pending_sync if self.known(p)}
        if self.import_policy is not None:
            check = self.import_policy.check
            for peer, paths in self.rib.items():
                for prefix in list(paths):
                    for pid, path in self.adj.held_paths(peer, prefix):
                        # a held path no longer allowed goes; peer AS is not kept per path,
                        # so the first-AS rule is left to the next announcement
                        reason = check(peer, None, _family_of(prefix), prefix, path)
                        if reason is not None:
                            self.adj.drop(peer, prefix, pid)
                            self._refuse(peer, prefix, reason)
        prefixes.update(self.adj.prefixes())
        return ops + self._recompute(prefixes)

    def _reprobe(self, settings: CoreSettings) -> list[RouteOp]:
        """New probe settings: off stops every probe (their verdicts go), on starts them."""
        ops: list[RouteOp] = []
        if settings.probe is None:
            if self.probe is not None:
                for dev in list(self.probe.targets()):
                    if self.probe.stop(dev):
                        ops += self._signal(("device", dev), PROBE, True, "probe turned off",
                                            self.now)
                self.probe = None
                self._out.probes = {}
        elif self.probe is None:
            self.probe = ProbeWatch(settings.probe)
        else:
            self.probe.settings = settings.probe
        self._probes_dirty = self.probe is not None
        return ops

    def _reconcile(self, kernel: Iterable[KernelRoute]) -> list[RouteOp]:
        """Compare what the kernel holds of ours with what the RIB wants (like BIRD's periodic
        scan, which compares with its table): routes the kernel lost are added back
        ("missing"), changed ones replaced ("changed"), ones we do not hold removed
        ("stray"), and what the kernel refused earlier for a transient reason (ENOBUFS,
        ENOMEM, a link race) is tried again ("retried"). A route refused because another
        owner holds its place (EEXIST) is not retried here: it is never overwritten, and is
        tried again when its prefix next changes. The repairs' count by kind goes into the
        Decision."""
        ks = self.in_kernel
        kinds = self._out.repairs
        ops = ks.compare(kernel, kinds)
        if not ks.synced:
            return ops  # adopted routes are judged at the sweep
        prefixes = self.adj.prefixes()
        ks.conflicts = {key for key in ks.conflicts if key[0] in prefixes}
        prefixes.update(ks.shapes)
        # (these ops start from what we believed installed, the repairs above from the
        # kernel: folded into one op per route, they take the kernel to what is wanted)
        retry = self._recompute(prefixes)
        if ks.conflicts:
            # not over another owner's route: left out, and not believed installed
            kept = []
            for op in retry:
                if op.kind is OpKind.ADD and op.route.key in ks.conflicts:
                    ks.forget(op.route)
                else:
                    kept.append(op)
            retry = kept
        if retry:
            kinds["retried"] += len(retry)
            ops = coalesce(ops + retry)
        return ops

    def _withdraw_all(self) -> list[RouteOp]:
        """Every route we hold, as deletes (for `on_exit: withdraw`)."""
        return self.in_kernel.withdraw_all()

    # ---------------------------------------------------------------- internals

    def _families(self, peer: PeerAddr) -> tuple[Family, ...]:
        pol = self.peers.get(peer)
        return pol.families if pol else ("ipv4 unicast",)

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
                if self.adj.drop(ev.peer, prefix, ev.path_id):
                    touched.append(prefix)
        limit = self.max_prefix.get(ev.peer)
        pid = ev.path_id
        if limit is None and pid is None and not self.adj.has_add_path(ev.peer):
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
            self.adj.store(ev.peer, paths, prefix, attrs, pid)
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
        if ev.path_id is None and not self.adj.has_add_path(ev.peer):
            gone = [p for p in ev.prefixes if paths.pop(p, None) is not None]
        else:
            gone = [p for p in ev.prefixes if self.adj.drop(ev.peer, p, ev.path_id)]
        self.stats["prefixes_withdrawn"] += len(gone)
        return self._recompute(gone)

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
        if ev.peer in self.max_prefix:
            self.max_prefix[ev.peer].reset()
        paths = self.adj.forget(ev.peer)
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
        t = self.tunnels
        probe_only = t.only_down_by(scope, PROBE)
        change = t.signal(scope, signal, up, reason, at)
        if change is None:
            if self._kept_memo or probe_only != t.only_down_by(scope, PROBE):
                # no change of usability, but of whether the probe alone holds it down,
                # which decides what stays when every path of a prefix is down
                self._invalidate()
                self._usable_peers()
                return self._recompute(self._affected(scope))
            return []
        self._out.tunnels.append(change)
        if change.flap:
            return []  # down inside the hold-down: it was not usable, and is not
        self._invalidate()
        touched = self._affected(scope)
        ks = self.in_kernel
        if not change.up and (ks.stale or ks.deferred):
            # adopted routes kept until sync that go into this tunnel, whoever's paths the
            # prefixes hold now: they leave it too
            touched |= ks.adopted_dead(self._live)
        return self._recompute(touched)

    def _tick(self, now: float, seen: float) -> list[RouteOp]:
        self.now = now
        ops: list[RouteOp] = []
        for change in self.tunnels.expire(now):
            self._invalidate()
            self._out.tunnels.append(change)
            ops += self._recompute(self._affected(change.scope))
        if self.probe is not None:
            for dev, why in self.probe.expire(seen):
                ops += self._signal(("device", dev), PROBE, False, why, now)
            self._out.warnings += [text for _, text in self.probe.silent(now)]
        return ops

    # ---------------------------------------------------------------- the probe

    def _probe_targets(self) -> dict[str, str]:
        """The devices to probe, with their target: of each device that carries a peer with
        a probe target and whose link is not down, the target of the lowest such peer."""
        targets: dict[str, str] = {}
        for peer in sorted(self.peers):
            target = self.peers[peer].probe
            dev = self.device_of(peer)
            if target is None or dev is None or dev in targets:
                continue
            if not self.tunnels.says_down(("device", dev), LINK):
                targets[dev] = target
        return targets

    def _sync_probes(self) -> list[RouteOp]:
        """Start and stop probes to match `_probe_targets`; a probe that stops takes its
        verdict with it (a down probe no longer holds its tunnel down)."""
        self._probes_dirty = False
        if self.probe is None:
            return []
        want = self._probe_targets()
        have = self.probe.targets()
        if want == have:
            return []
        ops: list[RouteOp] = []
        for dev, target in have.items():
            if want.get(dev) != target and self.probe.stop(dev):
                ops += self._signal(("device", dev), PROBE, True, "no longer probed",
                                    self.now)
        for dev, target in want.items():
            self.probe.start(dev, target, self.now)
        self._out.probes = want
        return ops

    # ---------------------------------------------------------------- the return path

    def _sync_exports(self) -> None:
        """Bring what each peer is told of our networks to what the steering wants (see
        core/export.py); the changes go into the Decision, one per peer and announcement."""
        self._export_now = self._export_soon = False
        ex = self.settings.export
        if not self.exported and (not self.in_kernel.synced or (
                ex is not None and ex.backup_prepend and self.local_as is None
                and not self._out.tunnels)):
            # a respawn: ExaBGP still announces what the process before us told it, right
            # until something changes; say nothing before our view is complete and our AS is
            # known for the prepend (a state message tells it, or export.local_as)
            return
        want: dict[PeerAddr, dict[Prefix, Announcement]] = {}
        if ex is not None:
            for group in groups({p: s.vpn for p, s in self.peers.items()}).values():
                cands = [p for p in group if self.usable(p) and self.rib.get(p)]
                if not cands and not any(p in self.exported for p in group):
                    continue  # no tunnel of it carries anything yet: nothing to steer by
                if ex.steering == "symmetric":
                    best = best_of(cands, self.rib, self._winner)
                    preferred = [best] if best is not None else []
                else:
                    preferred = cands
                for peer, ann in plan(ex, group, preferred, self.local_as,
                                      self._unheard_med(group)).items():
                    want[peer] = dict.fromkeys(self._networks(ex), ann)
                    if self.usable(peer) and self.sessions.get(peer) == "up":
                        self._heard[peer] = ann
                    elif self.sessions.get(peer) != "up":
                        self._heard.pop(peer, None)  # its session is gone: so are our routes
        for peer in sorted({*want, *self.exported}):
            have, now = self.exported.get(peer, {}), want.get(peer, {})
            changed: dict[Announcement | None, list[Prefix]] = {}
            for prefix, ann in now.items():
                if have.get(prefix) != ann:
                    changed.setdefault(ann, []).append(prefix)
            for prefix in have:
                if prefix not in now:
                    changed.setdefault(None, []).append(prefix)
            for told, prefixes in changed.items():
                self._out.exports.append(ExportChange(peer, tuple(prefixes), told))
            if now:
                self.exported[peer] = now
            else:
                self.exported.pop(peer, None)

    def _networks(self, ex: ExportSettings) -> tuple[Prefix, ...]:
        """Our networks to announce: all, or with `reachable_only` those the kernel has a
        route to that is not ours (none before the shell has looked)."""
        if not ex.reachable_only:
            return ex.networks
        reachable = self.reachable or frozenset()
        return tuple(n for n in ex.networks if n in reachable)

    def _unheard_med(self, group: list[PeerAddr]) -> int | None:
        """The lowest MED the cloud still holds from a peer of `group` whose session is up
        but whose tunnel is not usable (it does not hear our changes)."""
        meds = [a.med for p in group if (a := self._heard.get(p)) is not None
                and a.med is not None and not self.usable(p) and self.sessions.get(p) == "up"]
        return min(meds) if meds else None

    def _winner(self, prefix: Prefix, among: list[PeerAddr]) -> PeerAddr | None:
        """Of `among`, the peer whose path of `prefix` ranks first."""
        return next((peer for peer, _ in self.ranked(prefix) if peer in among), None)

    def _withdraw_exports(self) -> None:
        for peer, anns in sorted(self.exported.items()):
            self._out.exports.append(ExportChange(peer, tuple(anns), None))
        self.exported.clear()
        if self.lan is not None:
            self._out.exports += self.lan.withdraw_all()

    def _reconfigure_lan(self, settings: CoreSettings) -> None:
        """New LAN peers: a peer no longer configured is told to withdraw everything (its
        session ends when ExaBGP is reloaded with the new config), a new one all of it."""
        lan = settings.export.lan if settings.export is not None else None
        if self.lan is None:
            self.lan = LanFeed(lan) if lan is not None else None
            return
        kept = dict(lan.peers) if lan is not None else {}
        gone = [p for p in sorted(self.lan.addresses) if p not in kept]
        self._out.exports += [ExportChange(p, told, None) for p in gone
                              if (told := self.lan.of_family(p))]
        if lan is None:
            self.lan = None
            return
        fresh = lan.addresses - self.lan.addresses
        self.lan.configure(lan)
        if fresh:
            self.lan.told.clear()  # (re-announced to every peer alike: the same set to each)

    def next_timer(self) -> float | None:
        """When the core next needs a Tick without any input (a hold-down ending, a probe's
        detect time running out), or None."""
        times = list(self.tunnels.holding.values())
        if self.probe is not None and (deadline := self.probe.next_deadline()) is not None:
            times.append(deadline)
        return min(times) if times else None

    def probe_due(self, seen: float) -> list[str]:
        """The devices the next Tick (judging silence up to `seen`) takes down by the probe
        and that are usable now: the shell takes their routes out in one kernel step first
        (their nexthop objects), as for an IPsec down, so the backups carry the traffic at
        once instead of route by route."""
        if self.probe is None:
            return []
        return [dev for dev in self.probe.due(seen) if self.tunnels.usable(("device", dev))]

    def probe_state(self, device: str) -> dict[str, object]:
        """The probe of `device`, for `status`: state (off, waiting, up, down), target, RTT."""
        return self.probe.state(device) if self.probe is not None else {"state": "off"}

    def _recompute(self, prefixes: Iterable[Prefix],
                   held: tuple[PeerAddr, PathAttrs] | None = None) -> list[RouteOp]:
        """Bring the routes of `prefixes` to what their paths say, returning the ops.

        This is the hot loop of a full table. Nothing changes the RIB while it runs, so the
        usable peers' tables are looked up once; prefixes whose paths are the same objects
        (the prefixes of one UPDATE, and their backups) share one shape, found by the
        identities of their paths; and the ops between two shapes are worked out once.
        `held`: a (peer, path) that every one of `prefixes` holds (just announced), so that
        the peer's table is not looked up again."""
        if self.lan is not None:  # what the LAN is told of them may change too
            prefixes = list(prefixes)
            self.lan.touch(prefixes)
        ops: list[RouteOp] = []
        add = ops.append
        ks = self.in_kernel
        inst = ks.shapes
        stale = ks.stale
        deferred = ks.deferred
        live = self._live
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
        kept = self._kept_memo
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
            if not shape and kept:
                shape = self._kept(prefix, kept)
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
                steps, after = ks.steps(prefix, have, shape, live)
            elif have is shape:
                continue
            else:
                # the steps depend on the prefix only through what is stale
                move = moves.get((id(have), id(shape)))
                if move is None:
                    move = moves[(id(have), id(shape))] = (
                        have, shape, ks.steps(prefix, have, shape, live)[0])
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
            want = seen[key] = self.best.want(prefix, cands)
        return want

    def _adopt(self, routes: Iterable[KernelRoute]) -> list[RouteOp]:
        """Take over our routes left in the kernel by an earlier run. They stay as they are
        until the RIB confirms them, and the unconfirmed ones go at the sweep."""
        touched = self.in_kernel.adopt(routes)
        if self.in_kernel.synced:
            self._out.synced = 0  # nothing of an earlier run to confirm
        # A path may already be held (events before the dump), or a route goes into a tunnel
        # already known down: decide those prefixes now.
        t = self.tunnels
        dead = self.in_kernel.adopted_dead(self._live) if t.down or t.holding else set()
        return self._recompute(p for p in touched
                               if p in dead or any(p in rib for rib in self.rib.values()))

    def _peer_synced(self, peers: Iterable[PeerAddr]) -> list[RouteOp]:
        self.pending_sync.difference_update(peers)
        if not self.pending_sync:
            return self._sweep()
        return []

    def _sweep(self) -> list[RouteOp]:
        self.pending_sync.clear()
        swept = self.in_kernel.sweep()
        if swept is None:
            return []
        ops, deferred = swept
        self._out.synced = len(ops)
        self._export_now = True
        return ops + self._recompute(deferred)

    def _live(self, hops: tuple[NextHop, ...]) -> bool:
        """Whether every nexthop goes through a tunnel no signal says is down (or held
        down): its device, and for a gateway on a shared device, the peer's tunnel whose
        address or held next-hop it is."""
        down = self.tunnels.unusable_devices
        if any(h.device in down for h in hops):
            return False
        if any(h.gateway is not None for h in hops):
            dead = self._dead_gateways()
            return not any(h.gateway in dead for h in hops)
        return True

    def _dead_gateways(self) -> set[str]:
        dead: set[str] = set()
        for name in self.tunnels.unusable_peers():
            dead.add(name)
            dead.update({a.next_hop for a in self.rib.get(name, _NO_PATHS).values()})
        return dead

    def _failed(self, ev: RouteFailed) -> list[RouteOp]:
        return self.in_kernel.failed(ev.op, ev.errno)


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


def _family_of(prefix: Prefix) -> Family:
    return "ipv6 unicast" if ":" in prefix else "ipv4 unicast"
