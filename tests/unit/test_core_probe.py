"""The probe signal in the core, without sockets: replies and the clock in, verdicts out."""

from __future__ import annotations

import pytest
from test_core import P1, P2, Kernel, ann, decide, feed, installed

from vtibgp.core.engine import Core
from vtibgp.core.model import DeviceState, NextHop, PeerState, ProbeReply, Reconfigure, Tick
from vtibgp.core.probe import ProbeSettings
from vtibgp.core.settings import CoreSettings, PeerSettings

PROBE = ProbeSettings(interval=0.2, multiplier=3, up_after=3)  # detect time 0.6 s


def settings(probe: ProbeSettings | None = PROBE, fallback: bool = False,
             targets: tuple[str | None, str | None] = (P1, P2)) -> CoreSettings:
    return CoreSettings(metric=100, hold_down=1.0, fallback=fallback, probe=probe, peers={
        P1: PeerSettings("vti01", probe=targets[0]), P2: PeerSettings("vti02", probe=targets[1])})


def up_core(**kw: object) -> tuple[Core, Kernel]:
    """Both tunnels probed and answering at t=0..1; 10.0/16 best via vti01, backup vti02."""
    core, k = Core(settings(**kw)), Kernel()  # type: ignore[arg-type]
    feed(core, k, Tick(0.0), ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    replies(core, k, ("vti01", "vti02"), 0.0, 1.0)
    return core, k


def replies(core: Core, k: Kernel, devices: tuple[str, ...], start: float, end: float) -> None:
    t = start
    while t <= end + 1e-9:
        feed(core, k, *(ProbeReply(dev, 0.01, t) for dev in devices), Tick(t))
        t = round(t + 0.2, 6)


def via(k: Kernel, metric: int = 100) -> str | None:
    route = k.routes.get(("10.0.0.0/16", metric))
    return route.nexthops[0].device if route and route.nexthops else None


def test_the_devices_to_probe_come_out_once_and_follow_the_link() -> None:
    core = Core(settings())
    assert core.handle(Tick(0.0)).probes == {"vti01": P1, "vti02": P2}
    assert core.handle(Tick(0.1)).probes is None  # unchanged: not said again
    d = core.handle(DeviceState("vti01", False, "carrier lost", 0.2))
    assert d.probes == {"vti02": P2}  # never a probe into a device that is down
    assert core.handle(DeviceState("vti01", True, "carrier", 0.3)).probes == {
        "vti01": P1, "vti02": P2}
    off = Core(settings(targets=(None, P2)))
    assert off.handle(Tick(0.0)).probes == {"vti02": P2}  # peers[].probe: off


def test_a_silent_tunnel_is_down_one_detect_time_after_its_last_reply() -> None:
    core, k = up_core()
    replies(core, k, ("vti02",), 1.2, 1.4)  # vti01 answers no more after t=1.0
    assert via(k) == "vti01"  # 0.6 s not over yet
    assert core.next_timer() == pytest.approx(1.6)
    assert decide(core, k, Tick(1.599)).tunnels == []
    # what the next Tick will take down, for the shell to flush first
    assert core.probe_due(1.599) == [] and core.probe_due(1.6) == ["vti01"]
    d = decide(core, k, ProbeReply("vti02", 0.01, 1.6), Tick(1.6))
    assert [(c.scope, c.up) for c in d.tunnels] == [(("device", "vti01"), False)]
    assert d.tunnels[0].reason.startswith("probe: no echo reply from 169.254.10.1")
    assert via(k) == "vti02" and ("10.0.0.0/16", 101) not in k.routes
    assert core.rib[P1]  # BGP is up: the path is kept, only its tunnel is not used
    assert core.probe_due(1.7) == []  # down already: nothing more to flush


def test_losses_shorter_than_the_detect_time_move_nothing() -> None:
    core, k = up_core()
    for t in (1.2, 1.4):  # two replies of vti01 lost: a 0.4 s gap
        feed(core, k, ProbeReply("vti02", 0.01, t), Tick(t))
    d = decide(core, k, ProbeReply("vti01", 0.01, 1.55), ProbeReply("vti02", 0.01, 1.6),
               Tick(1.6), ProbeReply("vti01", 0.01, 1.8), ProbeReply("vti02", 0.01, 1.8),
               Tick(2.0))
    assert d.tunnels == [] and via(k) == "vti01"


def test_replies_again_bring_the_tunnel_back_after_the_run_and_the_hold_down() -> None:
    core, k = up_core()
    replies(core, k, ("vti02",), 1.2, 2.0)
    assert via(k) == "vti02"
    feed(core, k, ProbeReply("vti01", 0.01, 2.1), ProbeReply("vti01", 0.01, 2.3))
    assert via(k) == "vti02"  # two replies: not yet a run of three
    d = decide(core, k, ProbeReply("vti01", 0.01, 2.5))
    assert d.ops == [] and via(k) == "vti02"  # up, but held down for 1 s
    replies(core, k, ("vti01", "vti02"), 2.7, 3.3)
    d = decide(core, k, ProbeReply("vti01", 0.01, 3.5), ProbeReply("vti02", 0.01, 3.5),
               Tick(3.5))
    assert [(c.up, c.reason) for c in d.tunnels] == [(True, "hold-down passed")]
    assert via(k) == "vti01" and via(k, 101) == "vti02"


def test_a_reply_after_a_long_gap_starts_the_run_again() -> None:
    core, k = up_core()
    replies(core, k, ("vti02",), 1.2, 2.0)
    feed(core, k, ProbeReply("vti01", 0.01, 2.1), ProbeReply("vti01", 0.01, 2.3))
    # 0.8 s without a reply (more than the detect time): the run starts again
    feed(core, k, ProbeReply("vti01", 0.01, 3.1), ProbeReply("vti01", 0.01, 3.3))
    assert core.probe_state("vti01")["state"] == "down"
    feed(core, k, ProbeReply("vti01", 0.01, 3.5), ProbeReply("vti02", 0.01, 3.5))
    replies(core, k, ("vti01", "vti02"), 3.7, 4.5)
    assert via(k) == "vti01"  # the run of three, then the 1 s hold-down


def test_a_target_that_never_answered_decides_nothing_and_is_warned_about_once() -> None:
    core, k = Core(settings()), Kernel()
    feed(core, k, Tick(0.0), ann(P1, "10.0.0.0/16"), ann(P2, "10.0.0.0/16", med=1))
    for t in range(1, 30):  # vti02 answers, vti01's target never does
        d = decide(core, k, ProbeReply("vti02", 0.01, float(t)), Tick(float(t)))
        assert d.tunnels == []
        if t == 10:
            assert len(d.warnings) == 1 and "169.254.10.1" in d.warnings[0]
        else:
            assert d.warnings == []
    assert via(k) == "vti01" and core.probe_state("vti01") == {
        "state": "waiting", "target": P1, "rtt": None}


def test_silence_is_judged_up_to_what_the_shell_has_handed_in() -> None:
    """A busy loop has replies still queued: `seen` says how far its input is read."""
    core, k = up_core()
    d = decide(core, k, Tick(5.0, seen=1.5))
    assert d.tunnels == [] and via(k) == "vti01"
    assert decide(core, k, Tick(5.0, seen=1.6)).tunnels != []


def test_when_the_probe_says_down_on_every_tunnel_the_best_stays() -> None:
    """An uplink failure or a broken probe: removing every route would send the traffic to
    a less specific route in clear. While BGP is up the routes stay as the ranking says."""
    core, k = up_core()
    replies(core, k, ("vti02",), 1.2, 1.6)
    assert via(k) == "vti02"
    feed(core, k, Tick(2.2))  # vti02 silent since 1.6: both down by the probe alone
    assert core.probe_state("vti02")["state"] == "down"
    assert via(k) == "vti01" and via(k, 101) == "vti02"  # both kept, best first
    # a session that goes down takes its paths as always
    feed(core, k, PeerState(P1, "down"))
    assert via(k) == "vti02" and ("10.0.0.0/16", 101) not in k.routes
    # another signal down on the last one: nothing keeps it
    feed(core, k, DeviceState("vti02", False, "carrier lost", 2.3))
    assert installed(core) == k.routes == {}


@pytest.mark.parametrize("how", ["withdraw", "fallback"])
def test_when_all_down_withdraw_or_a_fallback_route_empties_the_prefix(how: str) -> None:
    probe = ProbeSettings(0.2, 3, 3, keep_when_all_down=how != "withdraw")
    core, k = up_core(probe=probe, fallback=how == "fallback")
    replies(core, k, (), 1.2, 2.2)
    feed(core, k, Tick(2.3))
    real = {key: r for key, r in k.routes.items() if r.nexthops}
    assert real == {}
    assert (k.routes == {}) == (how == "withdraw")


def test_a_probe_that_stops_takes_its_verdict_with_it() -> None:
    core, k = up_core()
    replies(core, k, ("vti02",), 1.2, 1.8)
    assert via(k) == "vti02" and core.signals_down(("device", "vti01")) == ["probe"]
    feed(core, k, DeviceState("vti01", False, "carrier lost", 1.9))
    assert core.signals_down(("device", "vti01")) == ["link"]  # no probe while it is down
    d = decide(core, k, DeviceState("vti01", True, "carrier", 2.0), Tick(3.0))
    assert via(k) == "vti01"  # the link's hold-down alone
    assert d.probes == {"vti01": P1, "vti02": P2}
    assert core.probe_state("vti01")["state"] == "waiting"  # from scratch


def test_turning_the_probe_off_by_reload_releases_its_tunnels() -> None:
    core, k = up_core()
    replies(core, k, ("vti02",), 1.2, 1.8)
    assert via(k) == "vti02"
    d = decide(core, k, Reconfigure(settings(probe=None)), Tick(3.0))
    assert d.probes == {} and via(k) == "vti01"
    assert core.next_timer() is None
    assert installed(core)[("10.0.0.0/16", 100)].nexthops == (NextHop("vti01"),)
