"""Read-only views of the core for `vtibgp status`, `vtibgp routes` and the route gauges.

Pure functions of a `Core` and nothing else: the shell adds what only it knows (times,
descriptions, flap counts) and never reads the core's tables itself. Counting is per shape
where it can be (`Core.hop_roles`), so a million prefixes cost a few dictionary passes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from vtibgp.addresses import packed_address
from vtibgp.core.engine import Core
from vtibgp.core.model import KernelRoute, NextHop, PathAttrs, PeerAddr, Prefix

_NEXT_HOP = attrgetter("next_hop")  # PathAttrs -> its BGP next-hop


@dataclass(frozen=True, slots=True)
class RouteCounts:
    """Installed routes by role: best (at the base metric) and backup (at the others)."""

    per_device: dict[str, tuple[int, int]]  # every device asked for, and any in use
    per_peer: dict[PeerAddr, tuple[int, int]]

    @property
    def best(self) -> int:
        return sum(b for b, _ in self.per_device.values())

    @property
    def backup(self) -> int:
        return sum(k for _, k in self.per_device.values())


def route_counts(core: Core, devices: Iterable[str] = ()) -> RouteCounts:
    """[best, backup] routes per device (`devices` included at 0) and per peer."""
    roles = core.hop_roles(core.settings.metric)
    per_dev: dict[str, list[int]] = {d: [0, 0] for d in devices}
    for hop, (best, backup) in roles.items():
        tot = per_dev.setdefault(hop.device, [0, 0])
        tot[0] += best
        tot[1] += backup
    return RouteCounts({d: (b, k) for d, (b, k) in per_dev.items()}, _peer_counts(core, roles))


def peer_view(core: Core, peer: PeerAddr) -> dict[str, Any]:
    """What the core knows of one peer: session state (None: no state message yet), its
    device, whether that tunnel is usable, and the paths held from it."""
    dev = core.device_of(peer)
    return {"state": core.session(peer), "device": dev,
            "device_usable": core.usable(peer) if dev else False,
            "paths": core.path_count(peer)}


def export_view(core: Core, peer: PeerAddr) -> dict[str, int]:
    """Our networks announced to `peer`: how many with the preferred attributes, how many
    with the less preferred ones."""
    anns = core.exported.get(peer, {}).values()
    preferred = sum(1 for a in anns if a.preferred)
    return {"preferred": preferred, "less_preferred": len(anns) - preferred}


def device_view(core: Core, device: str) -> dict[str, Any]:
    """One tunnel device: usable, the signals that say down, whether it is held down, and its
    probe (off, waiting for a first reply, up or down; target and last round-trip time)."""
    scope = ("device", device)
    return {"usable": device not in core.unusable_devices,
            "down": core.signals_down(scope), "holding": core.held_down(scope),
            "probe": core.probe_state(device)}


def lan_view(core: Core) -> dict[PeerAddr, dict[str, Any]]:
    """Each LAN-side peer: its session state (None: no state message yet) and how many of
    the cloud's prefixes it is told."""
    if core.lan is None:
        return {}
    counts = core.lan.counts()
    return {peer: {"state": core.lan_sessions.get(peer), "announced": counts[peer]}
            for peer, _ in core.lan.settings.peers}


def peers_seen(core: Core) -> set[PeerAddr]:
    """Every peer a state message or a path came from."""
    return {*core.sessions, *core.rib}


def route_table(core: Core, prefix: Prefix | None) -> list[dict[str, Any]]:
    """Per prefix (one, or every prefix held or installed): each peer's path with its rank
    and role, and the kernel routes with the unconfirmed ones marked stale."""
    base = core.settings.metric
    if prefix is not None:
        prefixes = [prefix]
    else:
        prefixes = sorted({p for paths in core.rib.values() for p in paths}
                          | set(core.installed), key=prefix_order)
    out = []
    for pfx in prefixes:
        installed = core.installed.get(pfx, {})
        best_first = core.ranked(pfx)
        ranked = {peer: i for i, (peer, _) in enumerate(best_first)}
        metric_of = route_owners(core, installed, best_first)
        paths = []
        for peer, rib in core.rib.items():
            attrs = rib.get(pfx)
            if attrs is None:
                continue
            metric = metric_of.get(peer)
            role = ("best" if metric == base else
                    "backup" if metric is not None else
                    "unusable" if peer not in ranked else "not installed")
            paths.append({
                "peer": peer, "device": core.device_of(peer), "rank": ranked.get(peer),
                "role": role, "metric": metric, "next_hop": attrs.next_hop,
                "as_path": list(attrs.as_path), "as_set": list(attrs.as_set),
                "origin": attrs.origin, "med": attrs.med, "local_pref": attrs.local_pref,
            })
        paths.sort(key=lambda p: (p["rank"] is None, p["rank"] or 0, p["peer"]))
        routes = [{"metric": mtr, "nexthops": [[h.device, h.gateway] for h in r.nexthops],
                   "stale": (pfx, mtr) in core.stale}
                  for mtr, r in sorted(installed.items())]
        out.append({"prefix": pfx, "paths": paths, "kernel": routes})
    return out


def route_owners(core: Core, routes: dict[int, KernelRoute],
                 ranked: list[tuple[PeerAddr, PathAttrs]]) -> dict[PeerAddr, int]:
    """Which installed route of a prefix is whose: {peer: metric}. A usable path's route
    goes through its peer's device, via its BGP next-hop or peer address when it has a
    gateway. Several peers on one device can share a nexthop (no gateway, or the same
    next-hop): each nexthop of a route then belongs to one path, taken best first, so the
    backup is not shown at the best route's metric."""
    owners: dict[PeerAddr, int] = {}
    claimed: set[tuple[int, NextHop]] = set()
    order = sorted(routes.items())
    for peer, attrs in ranked:
        dev = core.device_of(peer)
        for metric, route in order:
            hop = next((h for h in route.nexthops if h.device == dev
                        and (h.gateway is None or h.gateway in (attrs.next_hop, peer))
                        and (metric, h) not in claimed), None)
            if hop is not None:
                claimed.add((metric, hop))
                owners[peer] = metric
                break
    return owners


def _peer_counts(core: Core, roles: dict[NextHop, list[int]]) -> dict[PeerAddr, tuple[int, int]]:
    """[best, backup] routes per peer. From the per-nexthop counts where each nexthop in
    use can be only one peer's (its device has one peer with paths, or its gateway is
    the next-hop or address of one of them); otherwise (peers sharing a device without
    gateways, or announcing one next-hop) prefix by prefix, by rank."""
    on_device: dict[str, list[PeerAddr]] = {}
    for peer, paths in core.rib.items():
        dev = core.device_of(peer)
        if paths and dev is not None:
            on_device.setdefault(dev, []).append(peer)
    gateways: dict[PeerAddr, set[str]] = {}  # of the peers on a shared device, when asked

    def gateways_of(peer: PeerAddr) -> set[str]:
        if peer not in gateways:
            gateways[peer] = {peer, *map(_NEXT_HOP, core.rib[peer].values())}
        return gateways[peer]

    counts: dict[PeerAddr, list[int]] = {}
    for hop, (best, backup) in roles.items():
        owners = on_device.get(hop.device, [])
        if len(owners) > 1:
            gw = hop.gateway
            owners = [p for p in owners if gw is None or gw in gateways_of(p)]
        if len(owners) > 1:
            return _peer_counts_by_prefix(core)
        if owners:  # (none: a route of an earlier run that nothing confirms)
            tot = counts.setdefault(owners[0], [0, 0])
            tot[0] += best
            tot[1] += backup
    return {peer: (b, k) for peer, (b, k) in counts.items()}


def _peer_counts_by_prefix(core: Core) -> dict[PeerAddr, tuple[int, int]]:
    counts: dict[PeerAddr, list[int]] = {}
    installed = core.installed
    base = core.settings.metric
    for pfx in installed:
        for peer, metric in route_owners(core, installed[pfx], core.ranked(pfx)).items():
            counts.setdefault(peer, [0, 0])[0 if metric == base else 1] += 1
    return {peer: (b, k) for peer, (b, k) in counts.items()}


def prefix_order(prefix: Prefix) -> tuple[int, bytes, int]:
    """Sort key: IPv4 before IPv6, then by address, then by length."""
    addr, _, plen = prefix.partition("/")
    found = packed_address(addr)
    family, packed = (6 if ":" in addr else 4), (found[1] if found else addr.encode())
    return (family, packed, int(plen) if plen.isdigit() else 0)
