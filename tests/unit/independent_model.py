"""An independent statement of what vtibgp's decision core must do, written from README.md,
for tests/unit/test_core_independent_model.py. It reads nothing of the core's state: it keeps
its own Adj-RIB-In (per peer, prefix and ADD-PATH path id), its own tunnel signals and
hold-downs, its own import policy, its own start-up sync, and from them says which kernel
routes are wanted (`Model.wanted`) and which tunnels a route may go into (`Model.hop_ok`).

Where each rule comes from (README section, in quotes where the words decide):

* RIB: "A BGP withdraw removes that path; a changed route (a fresh announce) replaces it."
  With ADD-PATH (model.Announce/Withdraw `path_id`) a path is (peer, prefix, path id): "the
  best of them (steps 2-5, then the lower path identifier) is that peer's path, and a
  withdraw of one path identifier leaves the others standing".
  "When a session goes down ... vtibgp drops all that peer's paths at once"; a session that
  comes up again starts from an empty Adj-RIB-In (RFC 4271), so "up" drops them as well.
* Usable peers: "over the paths of usable peers (configured, device known and up)"; a peer
  without `interface` is usable once its device is discovered (PeerDevice).
* Order: "How the best path is chosen" 1-6, word for word; ECMP: "paths that are equal on
  every criterion but the peer address become one multipath route"; "The best path goes in
  at `metric`, the next-best at 101, 102, ... up to `max_paths` routes, each through its own
  peer's device"; a shared device ("set the same interface on them: their routes then use the
  BGP next-hop as an onlink gateway"). IPv6 multipath always goes via the next-hops (the
  kernel refuses it otherwise; core docstring, test_ipv6_ecmp_goes_via_next_hops).
* Fallback: "a route of that type (no nexthop) at metric `metric + max_paths` behind every
  prefix vtibgp holds a path for".
* Signals: "the device ..., the IPsec daemon ..., the BGP session"; "Routes return once every
  signal is up again and the tunnel has stayed up for `tunnel.hold_down` seconds (flap
  damping)": a down inside the hold-down starts it over at the next up. An IPsec event naming
  peers is about those peers' tunnels only ("a tunnel event touches only those peers'
  routes"). A route's nexthop (device, gateway) goes into the device's tunnel and, for a
  gateway on a shared device, into the tunnel of the peer on that device whose address or
  held next-hop it is (nothing else can tell whose tunnel a gateway is).
* Policy: "every announced prefix passes the import policy before it is held": martians
  (the README's list), default routes, protected overlaps, the loop guard (a prefix covering
  one of the peer's learned outside endpoints, kept across reloads), AS paths longer than
  `max_as_path_length` (an AS_SET counts as one); "A refused re-announcement removes the path
  held before (an implicit withdraw)".
* Reload: "peers, preferences, policy and timers apply at once to every held path": a peer no
  longer configured holds nothing; held paths the new policy refuses go (paths refused
  before are not held, so a looser policy brings nothing back by itself: the shell re-reads
  ExaBGP's adj-rib-in for that).
* Start-up: adopted routes are kept until the sync completes (every configured peer's
  End-of-RIB for its `families`, or established at the resync, or the grace timer), "a route
  into a tunnel that is down is not kept". The test keeps the adopted routes still in the
  kernel as they were (`Model.adopted`) as the only exception to "the kernel holds what is
  wanted".
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from vtibgp.core.model import Family, KernelRoute, NextHop, PathAttrs

Scope = tuple[str, str]  # ("device", name) or ("peer", address)
Key = tuple[str, int]
V4: Family = "ipv4 unicast"
V6: Family = "ipv6 unicast"

# README "What may be installed": the martians, as listed there.
README_MARTIANS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "192.0.0.0/24", "192.0.2.0/24",
    "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20", "198.18.0.0/15",
    "224.0.0.0/4", "ff00::/8", "240.0.0.0/4", "255.255.255.255/32", "::/128", "::1/128",
    "::ffff:0:0/96", "100::/64", "fe80::/10",
))


@dataclass(frozen=True)
class PeerConf:
    device: str | None  # None: discovered
    preference: int = 100
    gateway: bool = False
    families: tuple[str, ...] = (V4,)


@dataclass(frozen=True)
class Conf:
    peers: dict[str, PeerConf]
    metric: int = 100
    max_paths: int = 4
    ecmp: bool = False
    hold_down: float = 0.0
    fallback: bool = False
    protected: tuple[str, ...] = ()
    max_as_path_length: int = 64


def _net(prefix: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(prefix)


def _overlap(a: str, b: str) -> bool:
    na, nb = _net(a), _net(b)
    return na.version == nb.version and na.overlaps(nb)


def address_order(addr: str) -> tuple[int, int]:
    """README 6: lower peer address, IPv4 before IPv6."""
    ip = ipaddress.ip_address(addr)
    return (ip.version, int(ip))


@dataclass
class Model:
    conf: Conf
    # peer -> prefix -> path id (None without ADD-PATH) -> attributes
    rib: dict[str, dict[str, dict[int | None, PathAttrs]]] = field(default_factory=dict)
    outside: dict[str, tuple[str, ...]] = field(default_factory=dict)
    discovered: dict[str, str | None] = field(default_factory=dict)
    down: dict[Scope, set[str]] = field(default_factory=dict)  # scope -> signals saying down
    held_until: dict[Scope, float] = field(default_factory=dict)
    now: float = 0.0
    adopted: dict[Key, KernelRoute] = field(default_factory=dict)  # kept until the sync
    adopting: bool = False
    pending: set[str] = field(default_factory=set)  # configured peers not synced yet
    eor: dict[str, set[str]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # peers a reload took away

    def __post_init__(self) -> None:
        self.pending = set(self.conf.peers)

    # ------------------------------------------------------------ policy

    def refused(self, peer: str, prefix: str, attrs: PathAttrs) -> bool:
        net = _net(prefix)
        if any(net.version == m.version and net.subnet_of(m)  # type: ignore[arg-type]
               for m in README_MARTIANS):
            return True
        if net.prefixlen == 0:
            return True  # default route (allow_default false)
        if any(_overlap(prefix, p) for p in self.conf.protected):
            return True
        for addr in self.outside.get(peer, ()):
            ip = ipaddress.ip_address(addr)
            if ip.version == net.version and ip in net:
                return True  # the loop guard
        return len(attrs.as_path) + (1 if attrs.as_set else 0) > self.conf.max_as_path_length

    # ------------------------------------------------------------ RIB events

    def announce(self, peer: str, prefixes: tuple[str, ...], attrs: PathAttrs,
                 pid: int | None) -> None:
        if peer not in self.conf.peers:
            return  # accept_unconfigured_peers: false
        table = self.rib.setdefault(peer, {})
        for prefix in prefixes:
            if self.refused(peer, prefix, attrs):
                self._drop(peer, prefix, pid)
            elif pid is None:
                table[prefix] = {None: attrs}
            else:
                table.setdefault(prefix, {})[pid] = attrs

    def withdraw(self, peer: str, prefixes: tuple[str, ...], pid: int | None) -> None:
        for prefix in prefixes:
            self._drop(peer, prefix, pid)

    def _drop(self, peer: str, prefix: str, pid: int | None) -> None:
        table = self.rib.get(peer, {})
        paths = table.get(prefix)
        if paths is None:
            return
        if pid is None:
            del table[prefix]
            return
        paths.pop(pid, None)
        if not paths:
            del table[prefix]

    def session(self, peer: str, state: str) -> None:
        if state in ("down", "up"):
            self.rib.pop(peer, None)
            self.eor.pop(peer, None)

    def learn_outside(self, peer: str, addresses: tuple[str, ...]) -> None:
        self.outside[peer] = addresses
        self._rejudge()

    def reconfigure(self, conf: Conf) -> None:
        self.removed |= set(self.conf.peers) - set(conf.peers)
        self.removed -= set(conf.peers)
        self.conf = conf
        for peer in [p for p in self.rib if p not in conf.peers]:
            del self.rib[peer]
        self.pending &= set(conf.peers)
        self._rejudge()

    def _rejudge(self) -> None:
        for peer, table in self.rib.items():
            for prefix in list(table):
                for pid, attrs in list(table[prefix].items()):
                    if self.refused(peer, prefix, attrs):
                        self._drop(peer, prefix, pid)

    # ------------------------------------------------------------ start-up sync

    def adopt(self, routes: tuple[KernelRoute, ...]) -> None:
        for r in routes:
            self.adopted[r.key] = r
        if routes:
            self.adopting = True

    def end_of_rib(self, peer: str, family: str) -> None:
        if peer not in self.conf.peers:
            return
        seen = self.eor.setdefault(peer, set())
        seen.add(family)
        if seen >= set(self.conf.peers[peer].families):
            self.synced_peers({peer})

    def synced_peers(self, peers: set[str]) -> None:
        self.pending -= peers
        if not self.pending:
            self.sweep()

    def sweep(self) -> None:
        self.pending.clear()
        self.adopting = False
        self.adopted.clear()

    # ------------------------------------------------------------ tunnel signals

    def signal(self, scope: Scope, signal: str, up: bool, at: float) -> None:
        sigs = self.down.get(scope, set())
        if up:
            if signal not in sigs:
                return
            sigs.discard(signal)
            if not sigs:
                del self.down[scope]
                if self.conf.hold_down > 0:
                    self.held_until[scope] = at + self.conf.hold_down
            return
        self.held_until.pop(scope, None)  # a flap: the hold-down starts over at the next up
        sigs.add(signal)
        self.down[scope] = sigs

    def tick(self, now: float) -> None:
        self.now = now
        for scope in [s for s, until in self.held_until.items() if until <= now]:
            del self.held_until[scope]

    def scope_ok(self, scope: Scope) -> bool:
        return scope not in self.down and scope not in self.held_until

    def device_of(self, peer: str) -> str | None:
        pc = self.conf.peers.get(peer)
        if pc is None:
            return None
        return pc.device if pc.device is not None else self.discovered.get(peer)

    def usable(self, peer: str) -> bool:
        dev = self.device_of(peer)
        return (peer in self.conf.peers and dev is not None
                and self.scope_ok(("device", dev)) and self.scope_ok(("peer", peer)))

    def hop_peers(self, hop: NextHop) -> list[str]:
        """The peers whose tunnel a gateway on a shared device goes into: on that device, with
        that address or a held path with that next-hop."""
        if hop.gateway is None:
            return []
        return [p for p in self.conf.peers if self.device_of(p) == hop.device and (
            p == hop.gateway or any(a.next_hop == hop.gateway
                                    for paths in self.rib.get(p, {}).values()
                                    for a in paths.values()))]

    def hop_ok(self, hop: NextHop) -> bool:
        return self.scope_ok(("device", hop.device)) and all(
            self.scope_ok(("peer", p)) for p in self.hop_peers(hop))

    # ------------------------------------------------------------ what is wanted

    @staticmethod
    def own_best(paths: dict[int | None, PathAttrs]) -> PathAttrs:
        def key(item: tuple[int | None, PathAttrs]) -> tuple[int, ...]:
            pid, a = item
            lp = 100 if a.local_pref is None else a.local_pref
            return (-lp, len(a.as_path) + (1 if a.as_set else 0), a.origin, a.med, pid or 0)
        return min(paths.items(), key=key)[1]

    def rank(self, peer: str, a: PathAttrs) -> tuple[tuple[int, ...], tuple[int, int]]:
        """README order 1-5, then 6 (the peer address) apart, for ECMP."""
        lp = 100 if a.local_pref is None else a.local_pref
        aslen = len(a.as_path) + (1 if a.as_set else 0)
        return ((-self.conf.peers[peer].preference, -lp, aslen, a.origin, a.med),
                address_order(peer))

    def ranked(self, prefix: str) -> list[tuple[str, PathAttrs]]:
        cands = [(peer, self.own_best(table[prefix])) for peer, table in self.rib.items()
                 if table.get(prefix) and self.usable(peer)]
        cands.sort(key=lambda c: self.rank(*c))
        return cands

    def wanted(self) -> dict[Key, KernelRoute]:
        c = self.conf
        out: dict[Key, KernelRoute] = {}
        held = {p for table in self.rib.values() for p, paths in table.items() if paths}
        for prefix in held:
            groups: list[tuple[tuple[int, ...], list[tuple[str, PathAttrs]]]] = []
            for peer, a in self.ranked(prefix):
                tie = self.rank(peer, a)[0]
                if c.ecmp and groups and groups[-1][0] == tie:
                    groups[-1][1].append((peer, a))
                else:
                    groups.append((tie, [(peer, a)]))
            v6 = ":" in prefix
            for i, (_, members) in enumerate(groups[: c.max_paths]):
                via_gw = v6 and len(members) > 1
                hops = set()
                for peer, a in members:
                    dev = self.device_of(peer)
                    assert dev is not None
                    gw = a.next_hop if (c.peers[peer].gateway or via_gw) else None
                    hops.add(NextHop(dev, gw))
                metric = c.metric + i
                out[(prefix, metric)] = KernelRoute(
                    prefix, metric, tuple(sorted(hops, key=NextHop.sort_key)))
            if c.fallback:
                fb = c.metric + c.max_paths
                out[(prefix, fb)] = KernelRoute(prefix, fb, ())
        return out

    def best_device(self, prefix: str) -> set[str]:
        """The devices of the best group (README 1-5 equal with ECMP)."""
        ranked = self.ranked(prefix)
        if not ranked:
            return set()
        top = self.rank(*ranked[0])[0]
        members = [p for p, a in ranked if self.rank(p, a)[0] == top] if self.conf.ecmp \
            else [ranked[0][0]]
        return {d for p in members if (d := self.device_of(p)) is not None}
