"""The probe signal's verdicts: is anything coming back through a tunnel?

The shell sends an ICMP echo request through each probed tunnel device every `interval`
seconds and hands every reply in (with the time it was read). Detection is BFD's: a tunnel
whose probe has answered is down once no reply came for `interval * multiplier` (the detect
time), counted from the last reply, so a silent failure is seen at most one detect time
after the first packet lost. It is up again after `up_after` replies in a row (a gap longer
than the detect time starts the run again); the tunnel's hold-down then applies as for any
signal. A target that has never answered since its probe started decides nothing: the
tunnel keeps whatever the other signals say (a VGW that does not answer ping, a typo in
the target), and the core warns once.

Pure: knows nothing of sockets, routes or paths. The core says which devices are probed
(`start`/`stop`) and turns the verdicts into the tunnel signal "probe".
"""

from __future__ import annotations

from dataclasses import dataclass

SILENT_WARNING = 10.0  # seconds (at least 10 detect times) a target may stay silent unwarned


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    interval: float = 0.2  # seconds between echo requests
    multiplier: int = 3  # detect time = interval * multiplier
    up_after: int = 3  # replies in a row before the probe says up again
    keep_when_all_down: bool = True  # see Core: the probe alone never empties a prefix

    @property
    def detect(self) -> float:
        return self.interval * self.multiplier


@dataclass(slots=True)
class _Watch:
    target: str
    started: float
    last_reply: float | None = None  # None: never answered since the probe started
    down: bool = False
    run: int = 0  # replies in a row while down
    rtt: float | None = None  # the last round-trip time
    warned: bool = False  # the silent-target warning was given


class ProbeWatch:
    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self.watches: dict[str, _Watch] = {}  # by device

    def targets(self) -> dict[str, str]:
        return {dev: w.target for dev, w in self.watches.items()}

    def start(self, device: str, target: str, now: float) -> None:
        """Probe `device` (again, from scratch if its target changed)."""
        w = self.watches.get(device)
        if w is None or w.target != target:
            self.watches[device] = _Watch(target, now)

    def stop(self, device: str) -> bool:
        """No more probing of `device` (its link is down, or no peer wants it): its verdicts
        are forgotten. True if it said down."""
        w = self.watches.pop(device, None)
        return w is not None and w.down

    def reply(self, device: str, rtt: float, at: float) -> bool:
        """A reply through `device`. True when it makes the probe say up again."""
        w = self.watches.get(device)
        if w is None:
            return False  # (a reply still in flight when the probe stopped)
        w.rtt = rtt
        gap_ok = w.last_reply is not None and at - w.last_reply <= self.settings.detect
        w.last_reply = at
        if not w.down:
            return False
        w.run = w.run + 1 if gap_ok else 1
        if w.run >= self.settings.up_after:
            w.down, w.run = False, 0
            return True
        return False

    def due(self, now: float) -> list[str]:
        """The devices `expire(now)` would say down (without saying it)."""
        detect = self.settings.detect
        return [dev for dev, w in self.watches.items()
                if not w.down and w.last_reply is not None and now - w.last_reply >= detect]

    def expire(self, now: float) -> list[tuple[str, str]]:
        """The devices whose probe says down as of `now`, with why (once each)."""
        out = []
        for dev in self.due(now):
            w = self.watches[dev]
            w.down, w.run = True, 0
            assert w.last_reply is not None  # (due: answered before)
            out.append((dev, f"no echo reply from {w.target} for {now - w.last_reply:.2f} s "
                             f"(detect time {self.settings.detect:g} s)"))
        return out

    def silent(self, now: float) -> list[tuple[str, str]]:
        """Targets that never answered for a while, warned about once each: (device, text)."""
        after = max(SILENT_WARNING, 10 * self.settings.detect)
        out = []
        for dev, w in self.watches.items():
            if w.last_reply is None and not w.warned and now - w.started >= after:
                w.warned = True
                out.append((dev, f"probe: {w.target} has not answered an echo request through "
                                 f"{dev} in {now - w.started:.0f} s; the probe decides nothing "
                                 "for this tunnel until it does (probe target, or ICMP "
                                 "filtered at the far end?)"))
        return out

    def next_deadline(self) -> float | None:
        """The earliest time a verdict may change without a reply (for the shell's timer)."""
        detect = self.settings.detect
        times = [w.last_reply + detect for w in self.watches.values()
                 if not w.down and w.last_reply is not None]
        return min(times) if times else None

    def state(self, device: str) -> dict[str, object]:
        """For `status`: off, waiting (no reply yet), up or down; target and last RTT."""
        w = self.watches.get(device)
        if w is None:
            return {"state": "off"}
        state = "down" if w.down else "waiting" if w.last_reply is None else "up"
        return {"state": state, "target": w.target, "rtt": w.rtt}
