"""The return path in the core: our networks announced with attributes that follow the
tunnel vtibgp uses, changed in the same decision as the routes on a failover."""

from __future__ import annotations

from test_core import P1, P2, Kernel, ann, decide, feed

from vtibgp.core.engine import Core
from vtibgp.core.export import Announcement, ExportChange, ExportSettings
from vtibgp.core.model import (
    DeviceState,
    GraceExpired,
    KernelRoute,
    KernelRoutesFound,
    NextHop,
    PeerState,
    Stopping,
    Tick,
)
from vtibgp.core.settings import CoreSettings, PeerSettings

NETS = ("192.168.50.0/24", "10.200.0.0/16")
BEST = Announcement(100, (), True)
BACKUP = Announcement(200, (65000, 65000), False)


def core_with(steering: str = "symmetric", **kw: object) -> Core:
    return Core(CoreSettings(metric=100, peers={
        P1: PeerSettings("vti01", vpn="vpn-1"), P2: PeerSettings("vti02", vpn="vpn-1")},
        export=ExportSettings(NETS, steering, **kw)))  # type: ignore[arg-type]


def told(core: Core) -> dict[str, dict[str, Announcement]]:
    return {peer: dict(anns) for peer, anns in core.exported.items()}


def up(core: Core, k: Kernel) -> list[ExportChange]:
    d = decide(core, k, PeerState(P1, "up", local_as=65000), PeerState(P2, "up", local_as=65000),
               ann(P1, "10.0.0.0/16", "10.1.0.0/16"),
               ann(P2, "10.0.0.0/16", "10.1.0.0/16", path=(64512, 64512)), Tick(1.0))
    return d.exports


def test_the_tunnel_used_for_the_forward_path_gets_the_preferred_announcement() -> None:
    core, k = core_with(), Kernel()
    up(core, k)
    assert told(core) == {P1: dict.fromkeys(NETS, BEST), P2: dict.fromkeys(NETS, BACKUP)}


def test_a_failover_changes_the_announcements_in_the_same_decision() -> None:
    core, k = core_with(), Kernel()
    up(core, k)
    d = decide(core, k, DeviceState("vti01", False, "carrier lost", 2.0))
    assert k.routes[("10.0.0.0/16", 100)].nexthops == (NextHop("vti02"),)
    # one change per peer and announcement (one ExaBGP command, one UPDATE). vti01's session
    # is still up but its tunnel carries nothing: the cloud keeps what it heard there last
    # (MED 100), so vti02's MED goes below it, or the cloud would keep vti01 on a tie
    assert sorted(d.exports, key=lambda c: c.peer) == [
        ExportChange(P1, NETS, BACKUP), ExportChange(P2, NETS, Announcement(99, (), True))]
    d = decide(core, k, DeviceState("vti01", True, "carrier", 3.0))
    assert sorted(d.exports, key=lambda c: c.peer) == [
        ExportChange(P1, NETS, BEST), ExportChange(P2, NETS, BACKUP)]
    assert decide(core, k, Tick(4.0)).exports == []  # nothing changed: nothing said
    # a session that goes down takes our routes with it at the cloud: nothing to beat
    feed(core, k, DeviceState("vti01", False, "carrier lost", 5.0), PeerState(P1, "down"))
    assert told(core)[P2] == dict.fromkeys(NETS, BEST)


def test_the_cloud_changing_its_preference_moves_ours_at_the_next_tick() -> None:
    """AWS lowers the MED of the tunnel that stays in service during maintenance: vtibgp's
    best moves, and so does the preferred announcement."""
    core, k = core_with(), Kernel()
    up(core, k)
    d = decide(core, k, ann(P1, "10.0.0.0/16", "10.1.0.0/16", path=(64512, 64512), med=50))
    assert d.exports == []  # looked at once per tick, not per UPDATE
    d = decide(core, k, Tick(2.0))
    assert {c.peer: c.announcement for c in d.exports} == {P1: BACKUP, P2: BEST}


def test_ecmp_and_none_give_every_usable_tunnel_the_same() -> None:
    for steering in ("ecmp", "none"):
        core, k = core_with(steering), Kernel()
        up(core, k)
        assert told(core) == {P1: dict.fromkeys(NETS, BEST), P2: dict.fromkeys(NETS, BEST)}
    core, k = core_with("ecmp"), Kernel()
    up(core, k)
    feed(core, k, DeviceState("vti01", False, "carrier lost", 2.0))
    assert told(core)[P1] == dict.fromkeys(NETS, BACKUP)  # not usable: less preferred
    assert told(core)[P2] == dict.fromkeys(NETS, Announcement(99, (), True))
    core, k = core_with("none"), Kernel()
    up(core, k)
    feed(core, k, DeviceState("vti01", False, "carrier lost", 2.0))
    assert told(core)[P1] == dict.fromkeys(NETS, BEST)  # none: no steering at all


def test_without_a_known_local_as_it_waits_and_then_only_the_med_steers() -> None:
    """No state message told our AS (a respawn) and export.local_as is not set: ExaBGP
    still announces what the process before us said, so nothing is changed until a tunnel
    changes, and then the MED alone steers (no prepend without the AS)."""
    core, k = Core(CoreSettings(metric=100, peers={
        P1: PeerSettings("vti01"), P2: PeerSettings("vti02")},
        export=ExportSettings(NETS))), Kernel()
    d = decide(core, k, PeerState(P1, "up"), PeerState(P2, "up"), ann(P1, "10.0.0.0/16"),
               ann(P2, "10.0.0.0/16", med=5), Tick(1.0))
    assert d.exports == [] and core.exported == {}
    feed(core, k, DeviceState("vti02", False, "carrier lost", 2.0))
    assert told(core)[P2] == dict.fromkeys(NETS, Announcement(200, (), False))
    assert told(core)[P1] == dict.fromkeys(NETS, BEST)
    # with export.local_as there is no wait, and the prepend is there from the start
    core, k = Core(CoreSettings(metric=100, peers={
        P1: PeerSettings("vti01"), P2: PeerSettings("vti02")},
        export=ExportSettings(NETS, local_as=65000))), Kernel()
    feed(core, k, PeerState(P1, "up"), PeerState(P2, "up"), ann(P1, "10.0.0.0/16"),
         ann(P2, "10.0.0.0/16", med=5), Tick(1.0))
    assert told(core)[P2] == dict.fromkeys(NETS, BACKUP)


def test_after_a_restart_nothing_is_said_until_the_sync_completes() -> None:
    """ExaBGP keeps announcing what the process before us told it; until our own view is
    complete, changing that would only flap the cloud's return path."""
    core, k = core_with(), Kernel()
    old = KernelRoute("10.0.0.0/16", 100, (NextHop("vti01"),))
    k.routes[old.key] = old
    d = decide(core, k, KernelRoutesFound((old,)), PeerState(P1, "up", local_as=65000),
               ann(P1, "10.0.0.0/16"), Tick(1.0))
    assert d.exports == [] and core.exported == {}
    d = decide(core, k, GraceExpired())
    assert {c.peer: c.announcement for c in d.exports} == {P1: BEST, P2: BACKUP}


def test_stopping_with_withdraw_takes_our_networks_back() -> None:
    core, k = core_with(), Kernel()
    up(core, k)
    assert core.handle(Stopping(withdraw=False)).exports == []
    d = core.handle(Stopping(withdraw=True))
    assert sorted(d.exports, key=lambda c: c.peer) == [
        ExportChange(P1, NETS, None), ExportChange(P2, NETS, None)]
    assert core.exported == {}
