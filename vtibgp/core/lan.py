"""The LAN side: what the BGP peers on the LAN (`export.lan_peers`: a LAN router, a second
gateway) are told of the cloud's prefixes.

A prefix is announced to them (next-hop self; to each peer the prefixes of its session's
address family) while at least one usable tunnel carries a path of it, and withdrawn the
moment none does: when both tunnels of this gateway fail, the LAN's own BGP moves the
traffic to another gateway, with no state shared between the gateways. A failover from one
tunnel to the other changes nothing here, so the LAN sees no churn: the attributes are ours
alone (the cloud's AS path would change with the tunnel), our AS (`prepend` more times on
eBGP) and the MED `med`: a standby gateway announces worse ones. Pure: the engine says which
prefixes changed and whether a usable path of each remains; the shell turns the changes into
ExaBGP commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from vtibgp.core.export import Announcement, ExportChange
from vtibgp.core.model import PeerAddr, Prefix


@dataclass(frozen=True, slots=True)
class LanSettings:
    peers: tuple[tuple[PeerAddr, int], ...]  # (address, peer AS)
    med: int | None = None
    prepend: int = 0  # extra copies of our AS (eBGP peers only)

    @property
    def addresses(self) -> frozenset[PeerAddr]:
        return frozenset(p for p, _ in self.peers)


class LanFeed:
    """What has been told to the LAN peers (the same to each), and what may have changed."""

    def __init__(self, settings: LanSettings) -> None:
        self.settings = settings
        self.addresses = settings.addresses  # (looked up for every event: kept)
        self.told: set[Prefix] = set()
        self.dirty: set[Prefix] = set()
        self.everything = True  # look at every prefix held (start, reload)

    def configure(self, settings: LanSettings) -> None:
        self.settings = settings
        self.addresses = settings.addresses
        self.everything = True

    def touch(self, prefixes: Iterable[Prefix]) -> None:
        self.dirty.update(prefixes)

    def sync(self, held: Callable[[], Iterable[Prefix]], carried: Callable[[Prefix], bool],
             local_as: int | None) -> list[ExportChange]:
        """The changes to send: each prefix looked at is announced while `carried` (a usable
        path of it) and withdrawn when not. `held`: every prefix with a path (looked at after
        a start or reload). Nothing while our AS is not known (a state message tells it, or
        export.local_as): it says which peers are eBGP, whose AS paths start with it."""
        lan = self.settings
        if not lan.peers or local_as is None:
            return []
        look: Iterable[Prefix] = self.dirty
        if self.everything:
            look = {*held(), *self.told, *self.dirty}
            self.everything = False
        told = self.told
        news: list[Prefix] = []
        gone: list[Prefix] = []
        for prefix in look:
            if carried(prefix):
                if prefix not in told:
                    told.add(prefix)
                    news.append(prefix)
            elif prefix in told:
                told.discard(prefix)
                gone.append(prefix)
        self.dirty = set()
        out = []
        for peer, peer_as in lan.peers:
            v6 = ":" in peer
            for prefixes, ann in ((news, self.announcement(peer_as, local_as)), (gone, None)):
                mine = tuple(sorted(p for p in prefixes if (":" in p) == v6))
                if mine:
                    out.append(ExportChange(peer, mine, ann))
        return out

    def announcement(self, peer_as: int, local_as: int) -> Announcement:
        """What a peer is told of every prefix: ExaBGP's default AS path (ours once on eBGP,
        empty on iBGP) unless prepended."""
        own = (local_as,) * (1 + self.settings.prepend) \
            if peer_as != local_as and self.settings.prepend else ()
        return Announcement(self.settings.med, own, True)

    def withdraw_all(self) -> list[ExportChange]:
        """Everything told, withdrawn (a stop that withdraws)."""
        out = [ExportChange(peer, mine, None) for peer, _ in self.settings.peers
               if (mine := self.of_family(peer))]
        self.told.clear()
        return out

    def of_family(self, peer: PeerAddr) -> tuple[Prefix, ...]:
        """What `peer` has been told: the prefixes of its session's address family (a next
        hop of ours in the other family is not one the session has)."""
        v6 = ":" in peer
        return tuple(sorted(p for p in self.told if (":" in p) == v6))

    def counts(self) -> Mapping[PeerAddr, int]:
        """Prefixes announced to each LAN peer."""
        v6 = sum(1 for p in self.told if ":" in p)
        return {peer: v6 if ":" in peer else len(self.told) - v6
                for peer, _ in self.settings.peers}
