"""What the core returns for an event: one `Decision`, everything it decided in it.

The kernel route operations, and every other consequence the shell must carry out or make
known: a tunnel that became usable or not (logs, metrics), prefixes refused by the import
policy (counted, a few logged), a max-prefix threshold crossed, BGP sessions to reset (the
shell tells ExaBGP), when to take a peer's prefixes from ExaBGP's adj-rib-in again, what a
periodic scan repaired, the start-up sync being complete, input that could not be used.
The shell performs these and decides nothing about them, as h11's `Connection` returns
events and bytes, or faucet's valve returns flow messages.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vtibgp.core.export import ExportChange
from vtibgp.core.model import PeerAddr, Prefix, RouteOp
from vtibgp.core.policy import MaxPrefixAction, MaxPrefixEvent

Scope = tuple[str, str]  # ("device", name) or ("peer", address): what a tunnel signal is about


@dataclass(frozen=True, slots=True)
class TunnelChange:
    """A tunnel (device, or one peer's tunnel on a shared device) became usable or not; a flap
    is a down that came while the tunnel was still in its hold-down."""

    scope: Scope
    up: bool
    reason: str
    flap: bool = False


@dataclass(frozen=True, slots=True)
class LimitCrossed:
    """A peer's max-prefix threshold was crossed: `warn` (near it), `limit` (reached; new
    prefixes refused or, with action warn, only reported), `teardown` (the session is reset:
    the Decision carries the reset)."""

    peer: PeerAddr
    event: MaxPrefixEvent
    limit: int
    held: int  # prefixes held from the peer when it was crossed
    action: MaxPrefixAction


@dataclass(frozen=True, slots=True)
class HeldBack:
    """A session came up inside its max-prefix restart delay: what it sends is refused until
    `until` (the core's clock), then read again from ExaBGP's adj-rib-in."""

    peer: PeerAddr
    until: float


@dataclass(slots=True)
class Decision:
    """Everything one event (or several, merged) decided. Empty lists are the usual case."""

    ops: list[RouteOp] = field(default_factory=list)
    tunnels: list[TunnelChange] = field(default_factory=list)
    # refusals by (peer, reason), and the first few (peer, prefix, reason) to log
    refused: Counter[tuple[PeerAddr, str]] = field(default_factory=Counter)
    refused_samples: list[tuple[PeerAddr, Prefix, str]] = field(default_factory=list)
    limits: list[LimitCrossed] = field(default_factory=list)
    held_back: list[HeldBack] = field(default_factory=list)
    # BGP sessions to reset, as (peer, Cease subcode): ExaBGP is told (`neighbor … teardown`)
    resets: list[tuple[PeerAddr, int]] = field(default_factory=list)
    repairs: Counter[str] = field(default_factory=Counter)  # a scan's repairs, by kind
    synced: int | None = None  # the start-up sync completed: routes no peer confirmed, swept
    # worth a warning: input the core could not use, a probe target that never answered
    warnings: list[str] = field(default_factory=list)
    # the devices to probe now, with their targets, when that changed (None: unchanged)
    probes: dict[str, str] | None = None
    # what to announce or withdraw of our own networks, per peer (ExaBGP is told)
    exports: list[ExportChange] = field(default_factory=list)

    def merge(self, other: Decision) -> Decision:
        """Append `other` (decided after this one) to this one; returns self."""
        self.ops += other.ops
        if other.tunnels:
            self.tunnels += other.tunnels
        if other.refused:
            self.refused.update(other.refused)
            self.refused_samples += other.refused_samples
        if other.limits:
            self.limits += other.limits
        if other.held_back:
            self.held_back += other.held_back
        if other.resets:
            self.resets += other.resets
        if other.repairs:
            self.repairs.update(other.repairs)
        if other.synced is not None:
            self.synced = (self.synced or 0) + other.synced
        if other.warnings:
            self.warnings += other.warnings
        if other.probes is not None:
            self.probes = other.probes
        if other.exports:
            self.exports += other.exports
        return self

    def effects(self) -> bool:
        """Whether anything besides route operations was decided."""
        return bool(self.tunnels or self.refused or self.limits or self.held_back
                    or self.resets or self.repairs or self.warnings or self.exports
                    or self.synced is not None or self.probes is not None)
