"""The return path: which of the gateway's own networks are announced to which cloud peer,
with which attributes, so that the cloud sends its return traffic through the tunnel vtibgp
uses for the forward traffic.

Peers are grouped by VPN connection (`peers[].vpn`; peers without one form one group). In
each group, with `steering: symmetric`, the tunnel vtibgp uses as best for the connection's
prefixes gets the most preferred attributes (`med`, no prepend) and every other tunnel the
less preferred ones (`backup_med`, the local AS prepended `backup_prepend` more times): a
cloud that picks by AS-path length, then MED (AWS's VGW does) follows vtibgp's choice, and on
every failover the changed announcements go out in the same decision as the route changes.
`ecmp` (Transit Gateway ECMP) gives every usable tunnel the preferred attributes; `none`
announces the same to all. A tunnel that is not usable gets the less preferred ones (its
session may still be up over a black tunnel). Pure: the shell turns the changes into ExaBGP
commands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vtibgp.core.model import PeerAddr, Prefix

if TYPE_CHECKING:  # (the LAN side builds on the announcements here)
    from vtibgp.core.lan import LanSettings

STEERINGS = ("symmetric", "ecmp", "none")
SAMPLE = 64  # prefixes per peer looked at to find the connection's best tunnel


@dataclass(frozen=True, slots=True)
class ExportSettings:
    networks: tuple[Prefix, ...]
    steering: str = "symmetric"
    med: int | None = 100  # the preferred tunnel's MED (None: no MED sent)
    backup_med: int | None = 200  # the others'
    backup_prepend: int = 1  # extra copies of the local AS on the others' AS path
    local_as: int | None = None  # None: learned from the sessions (ExaBGP's state messages)
    reachable_only: bool = False  # only the networks the kernel has another route to
    lan: LanSettings | None = None  # the LAN side's peers (core/lan.py)


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one peer is told about one of our networks; `withdraw`: that it is gone."""

    med: int | None
    as_path: tuple[int, ...]  # empty: ExaBGP's default (the local AS once)
    preferred: bool


@dataclass(frozen=True, slots=True)
class ExportChange:
    peer: PeerAddr
    prefixes: tuple[Prefix, ...]
    announcement: Announcement | None  # None: withdraw them


def groups(vpn_of: Mapping[PeerAddr, str]) -> dict[str, list[PeerAddr]]:
    """The peers by VPN connection, each group sorted."""
    out: dict[str, list[PeerAddr]] = {}
    for peer in sorted(vpn_of):
        out.setdefault(vpn_of[peer], []).append(peer)
    return out


def best_of(candidates: list[PeerAddr], tables: Mapping[PeerAddr, Mapping[Prefix, object]],
            winner: Callable[[Prefix, list[PeerAddr]], PeerAddr | None]) -> PeerAddr | None:
    """The tunnel vtibgp uses as best for a connection: of `candidates` (usable, with paths),
    the one that wins the most of a sample of the connection's prefixes (the first SAMPLE
    each candidate holds); ties to the first candidate. One candidate: it."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    sample: dict[Prefix, None] = {}
    for peer in candidates:
        for i, prefix in enumerate(tables.get(peer, ())):
            if i >= SAMPLE:
                break
            sample[prefix] = None
    wins = dict.fromkeys(candidates, 0)
    for prefix in sample:
        w = winner(prefix, candidates)
        if w is not None:
            wins[w] += 1
    return max(candidates, key=lambda p: wins[p])  # (max keeps the first of equals)


def plan(settings: ExportSettings, group: list[PeerAddr], preferred: Iterable[PeerAddr],
         local_as: int | None, beat: int | None = None) -> dict[PeerAddr, Announcement]:
    """The announcement each peer of a group gets, given the peers that are to be preferred.
    `beat`: the lowest MED the cloud still holds from a tunnel it no longer hears us on (its
    session up, the tunnel black: our change of that announcement never arrives). The
    preferred MED is then lower still, or the cloud would keep the dead tunnel on a tie."""
    best = set(preferred)
    extra = settings.backup_prepend if local_as is not None else 0
    med = settings.med
    if med is not None and beat is not None and beat <= med and settings.steering != "none":
        med = max(0, beat - 1)
    out = {}
    for peer in group:
        if peer in best or settings.steering == "none":
            out[peer] = Announcement(med, (), True)
        else:
            path = (local_as,) * (1 + extra) if extra and local_as is not None else ()
            out[peer] = Announcement(settings.backup_med, path, False)
    return out
