"""Tunnel signals: which tunnels are usable, from every signal that speaks about them.

A tunnel is a scope: ("device", name) for a tunnel device, or ("peer", address) for one
peer's tunnel on a device several peers share. Each signal (link, ipsec, probe…) says down
or up on its own; a scope is usable when no signal says down and its hold-down (flap
damping) has passed. Knows nothing of paths or routes: the core asks what is usable and
recomputes the prefixes of the scopes that changed.
"""

from __future__ import annotations

from vtibgp.core.decision import Scope, TunnelChange

LINK, IPSEC, PROBE = "link", "ipsec", "probe"
SIGNALS = (LINK, IPSEC, PROBE)  # every signal (vtibgp_tunnel_signal_up's `signal` values)


class TunnelSignals:
    def __init__(self, hold_down: float = 0.0) -> None:
        self.hold_down = hold_down  # seconds a tunnel must stay up before it is usable again
        # the signals that say down, per scope (signal -> reason)
        self.down: dict[Scope, dict[str, str]] = {}
        # scopes that came up but are held down until the time given
        self.holding: dict[Scope, float] = {}

    def usable(self, scope: Scope) -> bool:
        return scope not in self.down and scope not in self.holding

    @property
    def unusable_devices(self) -> set[str]:
        return {name for kind, name in (*self.down, *self.holding) if kind == "device"}

    def unusable_peers(self) -> set[str]:
        """The peers whose own tunnel (on a shared device) is not usable."""
        return {name for kind, name in (*self.down, *self.holding) if kind == "peer"}

    def signals_down(self, scope: Scope) -> list[str]:
        """The signals that say `scope` is down, sorted."""
        return sorted(self.down.get(scope, ()))

    def says_down(self, scope: Scope, signal: str) -> bool:
        return signal in self.down.get(scope, ())

    def only_down_by(self, scope: Scope, signal: str) -> bool:
        """Whether `signal` and no other says `scope` is down."""
        return self.down.get(scope, {}).keys() == {signal}

    def held(self, scope: Scope) -> bool:
        """Whether `scope` came up and waits out its hold-down."""
        return scope in self.holding

    def signal(self, scope: Scope, signal: str, up: bool, reason: str,
               at: float) -> TunnelChange | None:
        """One signal about a tunnel, at time `at`. Returns the change it made to the
        scope's usability (or a flap: a down inside the hold-down), None when it made none.
        Up starts the hold-down once every signal is up."""
        before = self.usable(scope)
        sigs = self.down.get(scope, {})
        flap = False
        if up:
            if signal not in sigs:
                return None
            del sigs[signal]
            if sigs:
                return None
            del self.down[scope]
            if self.hold_down > 0:
                self.holding[scope] = at + self.hold_down
        else:
            if scope in self.holding:
                del self.holding[scope]
                flap = True
            already = signal in sigs
            sigs[signal] = reason
            self.down[scope] = sigs
            if already:
                return None
        after = self.usable(scope)
        if before != after or flap:
            return TunnelChange(scope, after, f"{signal}: {reason}", flap)
        return None

    def expire(self, now: float) -> list[TunnelChange]:
        """The hold-downs that have run out by `now`: those scopes are usable again."""
        done = [scope for scope, until in self.holding.items() if until <= now]
        for scope in done:
            del self.holding[scope]
        return [TunnelChange(scope, True, "hold-down passed") for scope in done]
