"""The LAN side in the core: the cloud's prefixes announced to the LAN peers while a usable
tunnel carries them, withdrawn in the decision that leaves none, untouched by a failover
between tunnels."""

from __future__ import annotations

import random

from test_core import P1, P2, V4, Kernel, ann, decide, feed

from vtibgp.core.engine import Core
from vtibgp.core.export import Announcement, ExportChange, ExportSettings
from vtibgp.core.lan import LanSettings
from vtibgp.core.model import (
    Announce,
    DeviceState,
    IpsecState,
    NetworksReachable,
    PeerState,
    ProbeReply,
    Stopping,
    Tick,
    Withdraw,
)
from vtibgp.core.probe import ProbeSettings
from vtibgp.core.settings import CoreSettings, PeerSettings

LAN, LAN6, IBGP = "192.168.1.1", "fd00:1::1", "192.168.1.3"
OURS = 65000
VPC = ("10.0.0.0/16", "10.1.0.0/16")


def core_with(lan: LanSettings | None = None, networks: tuple[str, ...] = (),
              **kw: object) -> Core:
    lan = lan or LanSettings(((LAN, 65010),))
    return Core(CoreSettings(metric=100, peers={
        P1: PeerSettings("vti01", vpn="vpn-1", probe=P1),
        P2: PeerSettings("vti02", vpn="vpn-1", probe=P2)},
        export=ExportSettings(networks, lan=lan), **kw))  # type: ignore[arg-type]


def lan_changes(changes: list[ExportChange]) -> list[ExportChange]:
    return sorted((c for c in changes if c.peer in (LAN, LAN6, IBGP)),
                  key=lambda c: (c.peer, c.announcement is None, c.prefixes))


def up(core: Core, k: Kernel) -> list[ExportChange]:
    d = decide(core, k, PeerState(P1, "up", local_as=OURS), PeerState(P2, "up", local_as=OURS),
               ann(P1, *VPC, path=(64512,)), ann(P2, *VPC, path=(64512, 64512)), Tick(1.0))
    return lan_changes(d.exports)


def test_the_lan_is_told_the_prefixes_a_tunnel_carries_with_our_attributes() -> None:
    core, k = core_with(LanSettings(((LAN, 65010), (IBGP, OURS)), med=50, prepend=1)), Kernel()
    assert up(core, k) == [
        ExportChange(LAN, VPC, Announcement(50, (OURS, OURS), True)),
        ExportChange(IBGP, VPC, Announcement(50, (), True))]  # iBGP: no AS of ours added


def test_a_failover_between_tunnels_says_nothing_to_the_lan() -> None:
    core, k = core_with(), Kernel()
    up(core, k)
    d = decide(core, k, DeviceState("vti01", False, "carrier lost", 2.0), Tick(2.1))
    assert k.routes[("10.0.0.0/16", 100)].nexthops[0].device == "vti02"  # the failover
    assert lan_changes(d.exports) == []


def test_the_last_tunnel_going_down_withdraws_in_the_same_decision() -> None:
    core, k = core_with(), Kernel()
    up(core, k)
    feed(core, k, DeviceState("vti01", False, "carrier lost", 2.0))
    d = decide(core, k, IpsecState("vti02", (), False, "down-client", 3.0))
    assert lan_changes(d.exports) == [ExportChange(LAN, VPC, None)]
    assert core.lan is not None and core.lan.counts() == {LAN: 0}
    d = decide(core, k, DeviceState("vti01", True, "carrier", 4.0))
    assert lan_changes(d.exports) == [
        ExportChange(LAN, VPC, Announcement(None, (), True))]


def test_a_real_withdraw_reaches_the_lan_at_the_next_tick() -> None:
    core, k = core_with(), Kernel()
    up(core, k)
    d = decide(core, k, Withdraw(P1, V4, ("10.1.0.0/16",)))
    assert lan_changes(d.exports) == []  # still carried by tunnel 2
    d = decide(core, k, Withdraw(P2, V4, ("10.1.0.0/16",)))
    assert lan_changes(d.exports) == []  # looked at once per tick, not per UPDATE
    assert lan_changes(decide(core, k, Tick(2.0)).exports) == [
        ExportChange(LAN, ("10.1.0.0/16",), None)]


def test_what_a_lan_peer_sends_is_not_installed() -> None:
    core, k = core_with(), Kernel()
    up(core, k)
    before = dict(k.routes)
    d = decide(core, k, PeerState(LAN, "up", local_as=OURS), ann(LAN, "172.16.0.0/12"),
               Tick(2.0))
    assert k.routes == before and lan_changes(d.exports) == []
    assert core.lan_sessions == {LAN: "up"} and LAN not in core.sessions


def test_each_lan_peer_gets_its_own_address_family() -> None:
    core, k = core_with(LanSettings(((LAN, 65010), (LAN6, 65010)))), Kernel()
    d = decide(core, k, PeerState(P1, "up", local_as=OURS),
               ann(P1, "10.0.0.0/16", path=(64512,)),
               Announce(P1, "ipv6 unicast", ann(P1, path=(64512,)).attrs, ("2001:db8::/32",)),
               Tick(1.0))
    by_peer = {c.peer: c.prefixes for c in lan_changes(d.exports)}
    assert by_peer == {LAN: ("10.0.0.0/16",), LAN6: ("2001:db8::/32",)}
    assert core.lan is not None and core.lan.counts() == {LAN: 1, LAN6: 1}


def test_nothing_before_our_as_is_known_nor_before_the_sync() -> None:
    core, k = core_with(), Kernel()
    d = decide(core, k, PeerState(P1, "up"), ann(P1, *VPC), Tick(1.0))
    assert lan_changes(d.exports) == []  # eBGP or iBGP: not known yet
    d = decide(core, k, PeerState(P2, "up", local_as=OURS), Tick(2.0))
    assert [c.prefixes for c in lan_changes(d.exports)] == [VPC]


def test_a_probe_kept_route_is_not_told_to_the_lan() -> None:
    """Every tunnel black by the probe alone: the routes stay (no leak in clear), but the
    LAN is told to use another gateway."""
    core, k = core_with(probe=ProbeSettings(interval=0.1, multiplier=3, up_after=1,
                                            keep_when_all_down=True)), Kernel()
    up(core, k)
    feed(core, k, Tick(1.0), ProbeReply("vti01", 0.001, 1.0), ProbeReply("vti02", 0.001, 1.0))
    assert core.probe_state("vti01")["state"] == "up"
    d = decide(core, k, Tick(5.0))
    assert k.routes  # kept
    assert lan_changes(d.exports) == [ExportChange(LAN, VPC, None)]


def test_stopping_with_withdraw_withdraws_from_the_lan() -> None:
    core, k = core_with(), Kernel()
    up(core, k)
    assert lan_changes(decide(core, k, Stopping(True)).exports) == [ExportChange(LAN, VPC, None)]


def test_reachable_only_announces_the_networks_the_kernel_reaches() -> None:
    nets = ("192.168.50.0/24", "192.168.60.0/24")
    core = Core(CoreSettings(metric=100, peers={P1: PeerSettings("vti01", vpn="v")},
                             export=ExportSettings(nets, reachable_only=True)))
    k = Kernel()
    d = decide(core, k, PeerState(P1, "up", local_as=OURS), ann(P1, *VPC), Tick(1.0))
    assert d.exports == []  # not looked at yet: nothing announced
    d = decide(core, k, NetworksReachable(frozenset({nets[1]})))
    assert [(c.prefixes, c.announcement is not None) for c in d.exports] == [((nets[1],), True)]
    d = decide(core, k, NetworksReachable(frozenset({nets[0]})))
    assert sorted((c.prefixes, c.announcement is not None) for c in d.exports) == [
        ((nets[0],), True), ((nets[1],), False)]
    assert decide(core, k, NetworksReachable(frozenset({nets[0]}))).exports == []


def test_the_lan_always_holds_what_a_usable_tunnel_carries() -> None:
    """Random events; after every Tick the LAN has been told exactly the prefixes that have a
    path from a peer whose tunnel and session are up (an independent, simple model)."""
    rng = random.Random(7)
    prefixes = [f"10.{i}.0.0/16" for i in range(12)]
    devices = {P1: "vti01", P2: "vti02"}
    for _ in range(40):
        core, k = core_with(), Kernel()
        link = {P1: True, P2: True}
        session: dict[str, bool] = {}
        held: dict[str, set[str]] = {P1: set(), P2: set()}
        told: set[str] = set()
        now = 1.0
        for _ in range(60):
            now += 0.5
            peer = rng.choice([P1, P2])
            roll = rng.random()
            if roll < 0.15:
                up_ = rng.random() < 0.6
                session[peer] = up_
                held[peer].clear()  # ExaBGP: the session's paths go with it
                ev = [PeerState(peer, "up" if up_ else "down", local_as=OURS)]
            elif roll < 0.3:
                link[peer] = not link[peer]
                ev = [DeviceState(devices[peer], link[peer], "test", now)]
            elif roll < 0.7 and session.get(peer):
                some = tuple(rng.sample(prefixes, rng.randint(1, 4)))
                held[peer].update(some)
                ev = [ann(peer, *some, path=(64512,))]
            elif session.get(peer):
                some = tuple(rng.sample(prefixes, rng.randint(1, 4)))
                held[peer].difference_update(some)
                ev = [Withdraw(peer, V4, some)]
            else:
                continue
            d = decide(core, k, *ev, Tick(now))
            for c in lan_changes(d.exports):
                (told.difference_update if c.announcement is None else told.update)(c.prefixes)
            if any(session.values()):
                want = {p for peer_, ps in held.items() if link[peer_] and session.get(peer_)
                        for p in ps}
                assert told == want


def test_a_reload_withdraws_from_a_removed_lan_peer_and_tells_a_new_one_everything() -> None:
    from dataclasses import replace

    from vtibgp.core.model import Reconfigure

    core, k = core_with(), Kernel()
    up(core, k)
    settings = core.settings
    assert settings.export is not None
    new = replace(settings, export=replace(settings.export,
                                           lan=LanSettings(((IBGP, OURS),), med=10)))
    d = decide(core, k, Reconfigure(new))
    assert lan_changes(d.exports) == [
        ExportChange(LAN, VPC, None),  # no longer configured: told to withdraw
        ExportChange(IBGP, VPC, Announcement(10, (), True))]  # the new one: all of it
    assert core.lan is not None and core.lan.counts() == {IBGP: len(VPC)}
    d = decide(core, k, Reconfigure(replace(new, export=replace(new.export, lan=None))))
    assert lan_changes(d.exports) == [ExportChange(IBGP, VPC, None)] and core.lan is None
