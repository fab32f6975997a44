"""Best path: a prefix's usable paths, ranked, made into the routes it should have.

Path order, best first (README "How the best path is chosen"), among the usable paths (the
core passes only those whose tunnel is known and usable): higher configured peer
`preference`, higher LOCAL_PREF (absent = 100), shorter AS path (an AS_SET counts as one
hop, confederation segments not at all), lower origin, lower MED (absent = 0, compared across
peers), lower peer address (IPv4 before IPv6). Rank i becomes the route at metric
`metric + i` through its own peer's device, for at most `max_paths` routes; with `ecmp`,
paths equal but for the address form one multipath route. With `fallback`, a route without
nexthop sits behind them all.

The result is a "shape" (metric, nexthops pairs): it depends on the prefix only through its
family, so it is computed once per (family, candidate paths) and shared by every prefix with
those paths (one PathAttrs object serves a whole UPDATE). Knows nothing of tunnels' signals or
the kernel: the core passes the usable paths.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping

from vtibgp.core.installed import Shape
from vtibgp.core.model import NextHop, PathAttrs, PeerAddr, Prefix
from vtibgp.core.rib import DEFAULT_LOCAL_PREF
from vtibgp.core.settings import CoreSettings, PeerSettings

SHAPE_CACHE = 4096  # distinct (family, candidate paths) combinations remembered
INTERN_CACHE = 4096  # distinct shapes and nexthop sets shared between prefixes
Candidates = list[tuple[PeerAddr, PathAttrs]]
MED_WORST = 0xFFFFFFFF


def _missing_med(settings: CoreSettings) -> int:
    """What a path without a MED compares as: 0, or the worst (missing-as-worst)."""
    pol = settings.policy
    return MED_WORST if pol is not None and pol.med_missing_as_worst else 0


class BestPath:
    def __init__(self, settings: CoreSettings, peers: Mapping[PeerAddr, PeerSettings],
                 device_of: Callable[[PeerAddr], str | None]) -> None:
        self.settings = settings
        self.peers = peers
        self.device_of = device_of
        self._order_cache: dict[PeerAddr, tuple[int, int]] = {}
        self.missing_med = _missing_med(settings)
        self._shapes: dict[tuple[object, ...], tuple[tuple[PathAttrs, ...], Shape]] = {}
        # One object per distinct shape and nexthops value, so that comparing what is
        # installed with what is wanted is mostly an identity test.
        self._interned: dict[Shape, Shape] = {}
        self._interned_hops: dict[tuple[NextHop, ...], tuple[NextHop, ...]] = {}

    def configure(self, settings: CoreSettings, peers: Mapping[PeerAddr, PeerSettings]) -> None:
        self.settings, self.peers = settings, peers
        self.missing_med = _missing_med(settings)
        self.forget()

    def forget(self) -> None:
        """Usability, devices or settings changed: the remembered shapes no longer hold."""
        self._shapes.clear()

    def rank(self, cands: Candidates) -> Candidates:
        """The paths best first."""
        return sorted(cands, key=self.rank_key) if len(cands) > 1 else cands

    def want(self, prefix: Prefix, cands: Candidates) -> Shape:
        """The shape of the routes `prefix` should have, given its usable paths (remembered
        per family and candidate paths, until `forget`)."""
        if not cands:
            return ()
        key = (":" in prefix, *[(peer, id(attrs)) for peer, attrs in cands])
        hit = self._shapes.get(key)
        if hit is not None and all(a is b for (_, a), b in zip(cands, hit[0], strict=True)):
            return hit[1]
        if len(self._shapes) >= SHAPE_CACHE:
            self._shapes.clear()
        shape = self.intern(self._shape(prefix, cands))
        # the attrs objects are kept alive with the entry, so their ids stay theirs
        self._shapes[key] = (tuple(a for _, a in cands), shape)
        return shape

    def fallback_only(self) -> Shape:
        """The fallback route alone (a prefix held but with no usable path)."""
        return self.intern((self._fallback_route(),))

    def intern(self, value: Shape) -> Shape:
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

    def rank_key(self, cand: tuple[PeerAddr, PathAttrs]) -> tuple[object, ...]:
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
            a.med if a.med is not None else self.missing_med,
            order,
        )

    def _shape(self, prefix: Prefix, cands: Candidates) -> Shape:
        cands = self.rank(cands)
        groups: list[Candidates] = []
        last = None
        for cand in cands:
            key = self.rank_key(cand)[:-1]
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
            out.append(self._fallback_route())
        return tuple(out)

    def _fallback_route(self) -> tuple[int, tuple[NextHop, ...]]:
        """The fallback: no nexthop (the kernel writer gives it its type, unreachable or
        blackhole), behind every path's route."""
        return (self.settings.metric + self.settings.max_paths, ())

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


def _peer_order(peer: PeerAddr) -> tuple[int, int]:
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return (2, 0)
    return (ip.version, int(ip))
