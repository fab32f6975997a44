"""What the core is configured with: its settings and each peer's (made from the config by
the shell; the core never reads a file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vtibgp.core.export import ExportSettings
from vtibgp.core.model import Family, PeerAddr
from vtibgp.core.policy import PolicySettings
from vtibgp.core.probe import ProbeSettings


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """What the core needs to know of a peer: its device (None = not known yet), its
    preference, whether routes go via its next-hop as an onlink gateway, and the families whose
    End-of-RIB complete its initial sync."""

    device: str | None = None
    preference: int = 100
    gateway: bool = False
    families: tuple[Family, ...] = ("ipv4 unicast",)
    probe: str | None = None  # the address echo requests go to through its device; None: none
    vpn: str = ""  # the VPN connection its tunnel belongs to (the return path is steered per one)


@dataclass(frozen=True, slots=True)
class CoreSettings:
    metric: int = 100
    max_paths: int = 4
    ecmp: bool = False
    peers: Mapping[PeerAddr, PeerSettings] = field(default_factory=dict)
    accept_unconfigured_peers: bool = False
    hold_down: float = 0.0  # seconds a tunnel must stay up before routes return to it
    policy: PolicySettings | None = None  # import policy; None: accept everything
    # a route without nexthop behind every prefix held (tunnel.fallback): when every tunnel
    # of a prefix is down its traffic is refused rather than sent along a less specific route
    fallback: bool = False
    probe: ProbeSettings | None = None  # the probe signal; None: no probing at all
    export: ExportSettings | None = None  # our networks announced to the peers; None: none
