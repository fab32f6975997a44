"""vtibgp doctor on a fake /proc and /sys tree and a fake kernel (no root needed)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from vtibgp.config.schema import Config, parse
from vtibgp.kernel.linkstate import IFF_LOWER_UP, IFF_UP, Link
from vtibgp.tools import doctor
from vtibgp.tools.doctor import Finding, Iface


class FakeNet:
    """Devices `addrs` (with those addresses) and `bare` (none), all of MTU `mtu`."""

    def __init__(self, addrs: dict[str, list[str]], routes: int = 0, *, mtu: int = 1436,
                 bare: tuple[str, ...] = ()) -> None:
        self.addrs = {d: [ipaddress.ip_interface(a) for a in aa] for d, aa in addrs.items()}
        self.routes = routes
        self.devices = {name: Link(i, name, IFF_UP | IFF_LOWER_UP, mtu, "UP")
                        for i, name in enumerate([*addrs, *bare], start=1)}

    def links(self) -> dict[str, Link]:
        return dict(self.devices)

    def addresses(self) -> dict[str, list[Iface]]:
        return {d: list(aa) for d, aa in self.addrs.items()}

    def route_count(self, table: int, protocol: int) -> int:
        return self.routes


GOOD = {"disable_xfrm": 0, "disable_policy": 1, "rp_filter": 2, "forwarding": 1}


def make_tree(root: Path, devs: dict[str, dict[str, int]], rp_all: int = 0) -> str:
    proc = root / "proc"
    conf = proc / "sys/net/ipv4/conf"
    (conf / "all").mkdir(parents=True)
    (conf / "all/rp_filter").write_text(f"{rp_all}\n")
    for dev, values in devs.items():
        (conf / dev).mkdir()
        for k, v in {**GOOD, **values}.items():
            (conf / dev / k).write_text(f"{v}\n")
    (proc / "self").mkdir()
    (proc / "self/status").write_text("Uid:\t0\t0\t0\t0\nCapEff:\t000001ffffffffff\n"
                                      "CapAmb:\t0000000000000000\n")
    return str(proc)


def cfg(**extra: object) -> Config:
    data: dict[str, object] = {
        "peers": [{"address": "169.254.10.1", "interface": "vti01"},
                  {"address": "169.254.11.1", "interface": "vti02"}],
        "metrics": {"listen": None},
    }
    data.update(extra)
    return parse(data)


ADDRS = {"vti01": ["169.254.10.2/30"], "vti02": ["169.254.11.2/30"], "lo": ["127.0.0.1/8"]}
NET = FakeNet(ADDRS)


def run(tmp_path: Path, devs: dict[str, dict[str, int]] | None = None, *, c: Config | None = None,
        net: FakeNet = NET, **kw: object) -> list[Finding]:
    devs = {"vti01": {}, "vti02": {}} if devs is None else devs
    proc = make_tree(tmp_path, devs, **kw)  # type: ignore[arg-type]
    return doctor.run_checks(c or cfg(), proc_root=proc, etc_root=str(tmp_path / "etc"),
                             net=net)


def errors(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.check, f.subject) for f in findings if f.level == "error"]


def test_all_good(tmp_path: Path) -> None:
    out = run(tmp_path)
    assert errors(out) == []
    assert [f for f in out if f.level == "warn"] == []
    assert doctor.exit_status(out) == 0
    assert "0 errors, 0 warnings" in doctor.format(out)


def test_disable_xfrm_is_an_error(tmp_path: Path) -> None:
    out = run(tmp_path, {"vti01": {"disable_xfrm": 1}, "vti02": {}})
    assert errors(out) == [("disable_xfrm", "vti01")]
    f = next(f for f in out if f.level == "error")
    assert "net.ipv4.conf.vti01.disable_xfrm=0" in f.fix
    assert doctor.exit_status(out) == 1
    assert "fix: sysctl -w net.ipv4.conf.vti01.disable_xfrm=0" in doctor.format(out)


def test_disable_policy_and_forwarding(tmp_path: Path) -> None:
    out = run(tmp_path, {"vti01": {"disable_policy": 0}, "vti02": {"forwarding": 0}})
    assert errors(out) == [("disable_policy", "vti01"), ("forwarding", "vti02")]


@pytest.mark.parametrize(("dev", "all_", "bad"), [
    (0, 0, False), (2, 0, False), (0, 2, False), (2, 2, False),
    (1, 0, True),   # strict on the device
    (0, 1, True),   # all=1 wins over device 0: max(all, dev)
    (2, 1, False),  # max(1, 2) = 2: loose
    (1, 2, False),  # max(2, 1) = 2: loose
])
def test_rp_filter_uses_max_of_all_and_device(tmp_path: Path, dev: int, all_: int,
                                              bad: bool) -> None:
    out = run(tmp_path, {"vti01": {"rp_filter": dev}, "vti02": {}}, rp_all=all_)
    # vti02 has rp_filter=2, so max(all, 2) is loose whatever all is
    assert errors(out) == ([("rp_filter", "vti01")] if bad else [])


def test_missing_device_and_wrong_address(tmp_path: Path) -> None:
    net = FakeNet({"vti02": ["10.0.0.1/30"]})
    out = run(tmp_path, {"vti02": {}}, net=net)
    assert errors(out) == [("device", "vti01"), ("address", "vti02")]


def test_discovered_device(tmp_path: Path) -> None:
    c = cfg(peers=[{"address": "169.254.10.1"}, {"address": "169.254.99.1"}])
    out = run(tmp_path, {"vti01": {"disable_xfrm": 1}}, c=c)
    # vti01 found by subnet (and its sysctls checked); nothing has 169.254.99.x
    assert errors(out) == [("address", "169.254.99.1"), ("disable_xfrm", "vti01")]


@pytest.mark.parametrize(("mtu", "level"), [(1399, "ok"), (1436, "ok"), (1446, "ok"),
                                            (1447, "warn"), (1500, "warn")])
def test_mtu(tmp_path: Path, mtu: int, level: str) -> None:
    out = run(tmp_path, net=FakeNet(ADDRS, mtu=mtu))
    assert {f.level for f in out if f.check == "mtu"} == {level}
    assert {f.subject for f in out if f.check == "mtu"} == {"vti01", "vti02"}
    if level == "warn":
        assert f"MTU {mtu} is above" in next(f.message for f in out if f.check == "mtu")


def test_a_device_without_an_address_exists(tmp_path: Path) -> None:
    """The devices come from the link reader, not from the address list: a device with no
    address is reported as such, not as missing."""
    net = FakeNet({"vti02": ["169.254.11.2/30"]}, bare=("vti01",))
    out = run(tmp_path, net=net)
    assert errors(out) == [("address", "vti01")]
    assert "vti01 has no address" in next(f.message for f in out if f.level == "error")
    assert ("ok", "mtu") in {(f.level, f.check) for f in out if f.subject == "vti01"}


def test_the_mtu_of_a_device_gone_meanwhile(tmp_path: Path) -> None:
    """An address listed for a device the link reader no longer finds: the MTU is unknown."""
    net = FakeNet(ADDRS)
    del net.devices["vti02"]
    out = run(tmp_path, net=net)
    assert [(f.level, f.subject) for f in out if f.check == "mtu"] == [("ok", "vti01"),
                                                                      ("warn", "vti02")]


def test_protocol(tmp_path: Path) -> None:
    etc = tmp_path / "etc/iproute2"
    etc.mkdir(parents=True)
    (etc / "rt_protos").write_text("186\tbgp\n99  other # comment\n")
    assert [f.level for f in run(tmp_path / "a", net=FakeNet({}))
            if f.check == "protocol"] == ["ok"]
    proc = make_tree(tmp_path / "b", {})
    (Path(proc) / "4242").mkdir()
    (Path(proc) / "4242/comm").write_text("zebra\n")
    (Path(proc) / "4242/cmdline").write_bytes(b"/usr/lib/frr/zebra\0-d\0")
    c = cfg(kernel={"protocol": 99})
    out = doctor.run_checks(c, proc_root=proc, etc_root=str(tmp_path / "etc"),
                            net=FakeNet({}, routes=3))
    prot = [(f.level, f.message) for f in out if f.check == "protocol"]
    assert prot[0][0] == "warn" and "'other'" in prot[0][1]
    assert prot[1][0] == "warn" and "3 routes" in prot[1][1]
    out = doctor.run_checks(cfg(), proc_root=proc, etc_root=str(tmp_path / "etc"),
                            net=FakeNet({}))
    assert [f.level for f in out if f.check == "protocol"] == ["error"]  # zebra uses 186


def test_metrics_port() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert doctor.check_metrics_port(f"127.0.0.1:{port}")[0].level == "ok"
        s.listen()
        assert doctor.check_metrics_port(f"127.0.0.1:{port}")[0].level == "warn"
    assert doctor.check_metrics_port("192.0.2.77:10179")[0].level == "error"
    assert doctor.check_metrics_port(None)[0].level == "ok"


def test_capabilities(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, comm, argv, status in [
        (11, "python3", b"/usr/bin/python3\0/usr/local/bin/vtibgp\0run\0--config\0x\0",
         "Uid:\t65534\nCapEff:\t0000000000000000\nCapAmb:\t0000000000000000\n"),
        (12, "exabgp", b"/usr/bin/python3\0/usr/sbin/exabgp\0/etc/exabgp/exabgp.conf\0",
         "Uid:\t110\nCapEff:\t0000000000001000\nCapAmb:\t0000000000001000\n"),
    ]:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm)
        (proc / str(pid) / "cmdline").write_bytes(argv)
        (proc / str(pid) / "status").write_text(status)
    out = {f.subject: f.level for f in doctor.check_capabilities(str(proc))}
    assert out == {"pid 11": "error", "pid 12": "ok"}
    (proc / "self").mkdir()
    (proc / "self/status").write_text("CapEff:\t0000000000000000\n")
    for pid in ("11", "12"):
        for f in (proc / pid).iterdir():
            f.unlink()
        (proc / pid).rmdir()
    assert [f.level for f in doctor.check_capabilities(str(proc))] == ["warn"]


EXA = """
process vtibgp {
    run /usr/local/bin/vtibgp run --config /etc/vtibgp/vtibgp.yaml;  # { not a block
    encoder json;
}
neighbor 169.254.10.1 {
    local-address 169.254.10.2; local-as 65000; peer-as 64512;
    family { ipv4 unicast; }
    api { processes [ vtibgp ]; neighbor-changes; receive { parsed; update; } }
}
neighbor 169.254.11.1 {
    local-address 169.254.12.2; local-as 65000; peer-as 64512;
    api { processes [ vtibgp ]; }
}
neighbor 169.254.13.1 {
    local-address 169.254.13.2;
    api { processes [ other ]; }
}
"""


def test_parse_exabgp_neighbors() -> None:
    n = doctor.parse_exabgp_neighbors(EXA)
    assert n == {
        "169.254.10.1": {"local": "169.254.10.2", "processes": ["vtibgp"]},
        "169.254.11.1": {"local": "169.254.12.2", "processes": ["vtibgp"]},
        "169.254.13.1": {"local": "169.254.13.2", "processes": ["other"]},
    }


def test_exabgp_config_compared(tmp_path: Path) -> None:
    conf = tmp_path / "exabgp.conf"
    conf.write_text(EXA)
    c = cfg(peers=[{"address": "169.254.10.1", "interface": "vti01"},
                   {"address": "169.254.11.1", "interface": "vti02"},
                   {"address": "169.254.14.1", "interface": "vti02"}])
    out = doctor.check_exabgp(c, str(conf), NET.addresses())
    got = {(f.subject, f.level) for f in out}
    assert got == {("169.254.10.1", "ok"),
                   ("169.254.11.1", "error"),   # local-address not on vti02
                   ("169.254.14.1", "error"),   # no neighbor
                   ("169.254.13.1", "warn")}    # neighbor that is no peer
    assert doctor.check_exabgp(c, str(tmp_path / "missing"), {})[0].level == "error"


def test_exabgp_templates_and_inherit_are_followed() -> None:
    """The shipped config/exabgp.conf puts the api block in a template neighbor."""
    from pathlib import Path

    from vtibgp.tools.doctor import parse_exabgp_neighbors

    text = (Path(__file__).resolve().parents[2] / "config" / "exabgp.conf").read_text()
    found = parse_exabgp_neighbors(text)
    assert set(found) == {"169.254.10.1", "169.254.11.1"}
    assert found["169.254.10.1"] == {"local": "169.254.10.2", "processes": ["vtibgp"]}
    assert found["169.254.11.1"]["processes"] == ["vtibgp"]


def test_probe_privileges_are_checked_for_the_running_plugin(tmp_path: Path) -> None:
    cfg = parse({"peers": [{"address": "169.254.10.1", "interface": "vti01"}]}, "t.yaml")
    proc = tmp_path / "proc"
    (proc / "sys/net/ipv4").mkdir(parents=True)
    (proc / "sys/net/ipv4/ping_group_range").write_text("1\t0\n")
    argv = b"/usr/bin/python3\0/usr/local/bin/vtibgp\0run\0--config\0x\0"
    plugins = {
        21: "Uid:\t110\nGid:\t110\t110\t110\t110\nGroups:\t\nCapEff:\t0000000000003000\n",
        22: "Uid:\t110\nGid:\t110\t110\t110\t110\nGroups:\t120\nCapEff:\t0000000000001000\n",
    }
    for pid, status in plugins.items():
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "comm").write_text("python3")
        (proc / str(pid) / "cmdline").write_bytes(argv)
        (proc / str(pid) / "status").write_text(status)
    found = {f.subject: f for f in doctor.check_probe(cfg, str(proc))}
    assert found["pid 21"].level == "ok" and "CAP_NET_RAW" in found["pid 21"].message
    assert found["pid 22"].level == "warn" and "probe is off" in found["pid 22"].message
    assert "ping_group_range" in (found["pid 22"].fix or "")
    # a range holding one of its groups: ping sockets
    (proc / "sys/net/ipv4/ping_group_range").write_text("120 120\n")
    assert {f.subject: f.level for f in doctor.check_probe(cfg, str(proc))} == {
        "pid 21": "ok", "pid 22": "ok"}
    off = parse({"peers": [{"address": "169.254.10.1", "probe": False}]}, "t.yaml")
    assert [f.message.startswith("the probe is off") for f in doctor.check_probe(
        off, str(proc))] == [True]
