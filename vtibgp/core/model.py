"""Values that cross the line between the pure core and the I/O shell.

Events flow in (from ExaBGP's stdin, the link monitor, the start-up dump, timers); kernel
route operations flow out. Everything here is immutable and free of I/O so the core can be
tested without root. Prefixes are kept as the canonical text ExaBGP prints ("10.0.0.0/24",
"2001:db8::/32"): cheap to hash, and what the kernel dump is formatted back into.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:  # (settings imports the policy, which imports this module)
    from vtibgp.core.settings import CoreSettings

Prefix = str
PeerAddr = str
Family = Literal["ipv4 unicast", "ipv6 unicast"]
FAMILIES: tuple[Family, ...] = ("ipv4 unicast", "ipv6 unicast")

ORIGINS = {"igp": 0, "egp": 1, "incomplete": 2}


@dataclass(frozen=True, slots=True)
class PathAttrs:
    """The attributes of one BGP path that matter to vtibgp. One object is shared by every
    prefix of an UPDATE, so a full table costs one of these per UPDATE, not per prefix."""

    next_hop: str
    origin: int = 0  # 0 igp, 1 egp, 2 incomplete
    as_path: tuple[int, ...] = ()  # AS_SEQUENCE segments, flattened in order
    as_set: tuple[int, ...] = ()  # AS_SET members (counts as one hop, RFC 4271 9.1.2.2)
    # None: the UPDATE had no MED; it compares as 0 (RFC 4271's default), or as the worst with
    # policy.med_missing_as_worst (FRR's `bgp bestpath med missing-as-worst`)
    med: int | None = None
    local_pref: int | None = None  # absent on eBGP

    @property
    def as_path_len(self) -> int:
        return len(self.as_path) + (1 if self.as_set else 0)


# ---------------------------------------------------------------- events (inputs to the core)


@dataclass(frozen=True, slots=True)
class PeerState:
    """ExaBGP's `state` message: connected, up or down (with its free-text reason)."""

    peer: PeerAddr
    state: Literal["connected", "up", "down"]
    reason: str = ""
    local: str | None = None
    local_as: int | None = None  # our AS on the session (its "asn": {"local": ...})


@dataclass(frozen=True, slots=True)
class Announce:
    """Prefixes of one family announced by a peer with one set of attributes. A prefix already
    held from that peer is replaced (BGP implicit withdraw)."""

    peer: PeerAddr
    family: Family
    attrs: PathAttrs
    prefixes: tuple[Prefix, ...]
    peer_as: int | None = None  # the session's peer AS (None when unknown, or iBGP)
    # ADD-PATH (RFC 7911): the path identifier these prefixes carry; None without ADD-PATH.
    # A peer may hold several paths of one prefix, one per identifier.
    path_id: int | None = None


@dataclass(frozen=True, slots=True)
class Withdraw:
    peer: PeerAddr
    family: Family
    prefixes: tuple[Prefix, ...]
    path_id: int | None = None  # ADD-PATH: only this path of each prefix goes


@dataclass(frozen=True, slots=True)
class EndOfRib:
    peer: PeerAddr
    family: Family


@dataclass(frozen=True, slots=True)
class NotificationReceived:
    peer: PeerAddr
    code: int
    subcode: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class ExabgpShutdown:
    """ExaBGP itself is stopping (its `notification: shutdown` line)."""


@dataclass(frozen=True, slots=True)
class DeviceState:
    """The link signal of a tunnel device: usable means it exists, is administratively up and
    has carrier, as the link monitor sees it. `at` is the shell's monotonic clock."""

    device: str
    usable: bool
    reason: str = ""
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class IpsecState:
    """The IPsec signal (an updown notification): the tunnel behind `device` is up or down,
    or, on a shared device, only the tunnels of `peers`."""

    device: str | None
    peers: tuple[PeerAddr, ...]
    up: bool
    reason: str = ""
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class KernelFlushed:
    """The kernel took our routes through `device` away by itself: its nexthop objects went
    (the device went down or away, or the shell deleted them to act on an IPsec down at
    once). A multipath route keeps its nexthops on other devices."""

    device: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes (the shell's monotonic clock): hold-downs that ran out end, probes that
    heard nothing for their detect time say down. `seen`: the shell has handed in every
    input that arrived until then (probe replies queue behind a busy loop): silence is
    judged up to that time, not `now`. None: up to `now`."""

    now: float
    seen: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeReply:
    """An echo reply came back through `device` after `rtt` seconds, read at `at` (the
    shell's monotonic clock)."""

    device: str
    rtt: float
    at: float


@dataclass(frozen=True, slots=True)
class PeerDevice:
    """The shell discovered (or lost) the device that carries a peer's session."""

    peer: PeerAddr
    device: str | None


@dataclass(frozen=True, slots=True)
class KernelRoutesFound:
    """Routes carrying our protocol id found in the kernel at start (from a previous run)."""

    routes: tuple[KernelRoute, ...]


@dataclass(frozen=True, slots=True)
class ResyncDone:
    """ExaBGP answered `show adj-rib in extensive`: what it holds for `peers` (the peers whose
    sessions were established when asked) is now in the RIB."""

    peers: frozenset[PeerAddr]


@dataclass(frozen=True, slots=True)
class GraceExpired:
    """The start-up grace timer ran out: unconfirmed kernel routes may now be removed."""


@dataclass(frozen=True, slots=True)
class RouteFailed:
    """The kernel refused an operation the core asked for."""

    op: RouteOp
    errno: int


@dataclass(frozen=True, slots=True)
class Reconfigure:
    """New settings (a config reload): every held path is judged again under them, and what
    a peer no longer configured held is forgotten."""

    settings: CoreSettings


@dataclass(frozen=True, slots=True)
class OutsideLearned:
    """The IPsec daemon told the tunnel's outside endpoint of `peer` (PLUTO_PEER): no prefix
    covering it may go into that tunnel. Kept across reloads."""

    peer: PeerAddr
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reconcile:
    """The periodic scan: what the kernel holds of ours now (a dump), to compare with what
    the core believes and wants."""

    kernel: tuple[KernelRoute, ...]


@dataclass(frozen=True, slots=True)
class Stopping:
    """vtibgp is exiting: `withdraw` (on_exit: withdraw) takes every route of ours out;
    otherwise they stay in the kernel for the next run to adopt."""

    withdraw: bool


@dataclass(frozen=True, slots=True)
class NetworksReachable:
    """Which of our networks (export.networks) the kernel has a route to that is not ours:
    with `export.reachable_only`, only these are announced."""

    networks: frozenset[Prefix]


Event = (
    PeerState
    | Announce
    | Withdraw
    | EndOfRib
    | NotificationReceived
    | ExabgpShutdown
    | DeviceState
    | IpsecState
    | KernelFlushed
    | Tick
    | ProbeReply
    | PeerDevice
    | KernelRoutesFound
    | ResyncDone
    | GraceExpired
    | RouteFailed
    | Reconfigure
    | OutsideLearned
    | Reconcile
    | Stopping
    | NetworksReachable
)


# ---------------------------------------------------------------- outputs (kernel operations)


@dataclass(frozen=True, slots=True)
class NextHop:
    device: str
    gateway: str | None = None  # an onlink gateway where several peers share one device

    def sort_key(self) -> tuple[str, str]:
        return (self.device, self.gateway or "")


class KernelRoute(NamedTuple):
    """One route as the kernel keys it in our table: (prefix, metric). Table and protocol id
    are the same for every route vtibgp owns and live in the kernel writer's settings. A named
    tuple: the core makes one per route it changes, and a tuple is the cheapest immutable,
    hashable value Python builds."""

    prefix: Prefix
    metric: int
    nexthops: tuple[NextHop, ...]  # sorted; several = multipath; none = the fallback route

    @property
    def key(self) -> tuple[Prefix, int]:
        return (self.prefix, self.metric)


class OpKind(Enum):
    ADD = "add"  # create, fail if something is there (never overwrite another owner)
    REPLACE = "replace"  # our own route at this key changes its nexthops
    DELETE = "delete"


class RouteOp(NamedTuple):
    kind: OpKind
    route: KernelRoute

    def __str__(self) -> str:
        route = self.route
        if not route.nexthops:  # the fallback (tunnel.fallback): unreachable or blackhole
            return f"{self.kind.value} {route.prefix} metric {route.metric} fallback"
        hops = ",".join(
            f"{h.device}" + (f" via {h.gateway}" if h.gateway else "") for h in route.nexthops
        )
        return f"{self.kind.value} {route.prefix} metric {route.metric} dev {hops}"


@dataclass(slots=True)
class OpResult:
    """What the kernel said about a batch: the ops it refused, with their errno."""

    applied: int = 0
    failed: list[tuple[RouteOp, int]] = field(default_factory=list)


# ---------------------------------------------------------------- hot-path construction

# The core builds one KernelRoute and one RouteOp per route it changes; tuple.__new__ skips
# the named tuples' generated __new__ (a Python-level call), for about a third of the cost.
_tuple_new: Any = tuple.__new__


def kernel_route(prefix: Prefix, metric: int, nexthops: tuple[NextHop, ...]) -> KernelRoute:
    """`KernelRoute(prefix, metric, nexthops)`, faster."""
    route: KernelRoute = _tuple_new(KernelRoute, (prefix, metric, nexthops))
    return route


def route_op(kind: OpKind, prefix: Prefix, metric: int,
             nexthops: tuple[NextHop, ...]) -> RouteOp:
    """`RouteOp(kind, KernelRoute(prefix, metric, nexthops))`, faster."""
    op: RouteOp = _tuple_new(RouteOp, (kind, _tuple_new(KernelRoute, (prefix, metric,
                                                                      nexthops))))
    return op
