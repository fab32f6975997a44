"""vtibgp doctor on a fake /proc and /sys tree and a fake kernel (no root needed)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest
from ipsec_tools import libreswan_checkconfig

from vtibgp.config.schema import Config, parse
from vtibgp.kernel.linkstate import IFF_LOWER_UP, IFF_UP, Link
from vtibgp.tools import doctor
from vtibgp.tools.doctor import Finding, Iface


def nft_rule(expr: list[object], family: str = "inet", table: str = "t",
             chain: str = "forward") -> dict[str, object]:
    return {"rule": {"family": family, "table": table, "chain": chain, "handle": 3,
                     "expr": expr}}


def if_match(key: str, names: tuple[str, ...]) -> dict[str, object]:
    """`oifname/iifname NAME` or `{ NAME, ... }`, as `nft -j` prints it."""
    right: object = names[0] if len(names) == 1 else {"set": list(names)}
    return {"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}}


def mss_set(value: object) -> dict[str, object]:
    return {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}},
                       "value": value}}


def clamp_ruleset(devices: tuple[str, ...] = ("vti01", "vti02"), mss: object = 1396,
                  keys: tuple[str, ...] = ("oifname", "iifname")) -> dict[str, object]:
    syn = {"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp",
                                                               "field": "flags"}},
                                                 ["syn", "rst"]]}, "right": "syn"}}
    return {"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
                         {"table": {"family": "inet", "name": "t", "handle": 1}},
                         *(nft_rule([if_match(k, devices), syn, mss_set(mss)]) for k in keys)]}


class FakeNet:
    """Devices `addrs` (with those addresses) and `bare` (none), all of MTU `mtu`; `ruleset`
    is what `nft -j list ruleset` gives (default: an MSS clamp on vti01 and vti02), or the
    NftUnavailable it raises."""

    def __init__(self, addrs: dict[str, list[str]], routes: int = 0, *, mtu: int = 1436,
                 bare: tuple[str, ...] = (),
                 ruleset: object = None) -> None:
        self.addrs = {d: [ipaddress.ip_interface(a) for a in aa] for d, aa in addrs.items()}
        self.routes = routes
        self.devices = {name: Link(i, name, IFF_UP | IFF_LOWER_UP, mtu, "UP")
                        for i, name in enumerate([*addrs, *bare], start=1)}
        self.ruleset = clamp_ruleset() if ruleset is None else ruleset

    def nft_ruleset(self) -> object:
        if isinstance(self.ruleset, doctor.NftUnavailable):
            raise self.ruleset
        return self.ruleset

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


def test_packer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Doctor says whether the writer packs in C; without the build it warns and says how."""
    from vtibgp.kernel import compiled

    built = compiled.pack_run is not None
    [f] = doctor.check_packer()
    assert (f.level, f.check) == ("ok" if built else "warn", "packer")
    monkeypatch.setattr(compiled, "pack_run", None)
    [f] = doctor.check_packer()
    assert f.level == "warn" and "Python" in f.message and "build-essential" in f.fix


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
    local-address 169.254.12.2; local-as 65000; peer-as 64512; hold-time 90;
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
        "169.254.10.1": {"local": "169.254.10.2", "processes": ["vtibgp"], "hold": None},
        "169.254.11.1": {"local": "169.254.12.2", "processes": ["vtibgp"], "hold": "90"},
        "169.254.13.1": {"local": "169.254.13.2", "processes": ["other"], "hold": None},
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
    assert found["169.254.10.1"] == {"local": "169.254.10.2", "processes": ["vtibgp"],
                                     "hold": "30"}
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


# -- TCP MSS clamping (nft -j list ruleset, through the Net)

def mss_findings(net: FakeNet, devices: tuple[str, ...] = ("vti01", "vti02")
                 ) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in doctor.check_mss(list(devices), net.links(), net):
        out.setdefault(f.subject, []).append(f)
    return out


def test_mss_clamp_both_ways_is_ok() -> None:
    found = mss_findings(FakeNet(ADDRS))
    assert {d: [f.level for f in ff] for d, ff in found.items()} == {
        "vti01": ["ok"], "vti02": ["ok"]}
    assert "MSS 1396" in found["vti01"][0].message


def test_a_tunnel_device_without_a_clamp() -> None:
    only_vti01 = clamp_ruleset(devices=("vti01",))
    found = mss_findings(FakeNet(ADDRS, ruleset=only_vti01))
    assert [f.level for f in found["vti01"]] == ["ok"]
    [f] = found["vti02"]
    assert f.level == "warn" and "no TCP MSS clamp on vti02" in f.message
    assert "nftables-mss.nft" in f.fix
    empty = {"nftables": [{"metainfo": {"version": "1.0.6"}}]}
    assert {f.level for ff in mss_findings(FakeNet(ADDRS, ruleset=empty)).values()
            for f in ff} == {"warn"}


def test_a_clamp_in_one_direction_only() -> None:
    found = mss_findings(FakeNet(ADDRS, ruleset=clamp_ruleset(keys=("oifname",))))
    [f] = found["vti01"]
    assert f.level == "warn" and "only for connections into vti01, not out of" in f.message


@pytest.mark.parametrize(("mtu", "mss", "family", "level"), [
    (1436, 1396, "inet", "ok"), (1436, 1397, "inet", "warn"), (1436, 1406, "inet", "warn"),
    (1400, 1396, "inet", "warn"), (1400, 1360, "inet", "ok"),
    (1436, 1376, "ip6", "ok"), (1436, 1396, "ip6", "warn"),  # IPv6: MTU - 60
])
def test_a_clamp_above_what_the_mtu_allows(mtu: int, mss: int, family: str,
                                           level: str) -> None:
    rules = clamp_ruleset(mss=mss)
    for item in rules["nftables"]:  # type: ignore[attr-defined]
        if "rule" in item:
            item["rule"]["family"] = family
    found = mss_findings(FakeNet(ADDRS, mtu=mtu, ruleset=rules), ("vti01",))
    assert [f.level for f in found["vti01"]] == [level]
    if level == "warn":
        limit = mtu - (60 if family == "ip6" else 40)
        assert f"to {mss}, above the {limit} its MTU {mtu} allows" in found["vti01"][0].message


def test_rt_mtu_wildcards_nfproto_and_iptables_tcpmss() -> None:
    rules = clamp_ruleset(devices=("vti*",), mss={"rt": {"key": "mtu"}})
    found = mss_findings(FakeNet(ADDRS, ruleset=rules))
    assert [f.level for f in found["vti02"]] == ["ok"] and "rt mtu" in found["vti02"][0].message
    # a clamp limited to IPv6 by nfproto is held against MTU - 60
    v6 = {"nftables": [nft_rule([{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}},
                                            "right": "ipv6"}}, mss_set(1390)])]}
    assert doctor.parse_mss_clamps(v6)[0].ipv6 is True
    assert [f.level for f in mss_findings(FakeNet(ADDRS, ruleset=v6))["vti01"]] == ["warn"]
    # iptables-nft's TCPMSS target on every device (no interface match): a clamp both ways
    xt = {"nftables": [nft_rule([{"xt": {"type": "target", "name": "TCPMSS"}}],
                                family="ip", table="mangle", chain="FORWARD")]}
    assert [f.level for f in mss_findings(FakeNet(ADDRS, ruleset=xt))["vti01"]] == ["ok"]
    assert doctor.parse_mss_clamps({"nftables": "junk"}) == []
    assert doctor.parse_mss_clamps(None) == []


def test_no_nft_is_a_finding_not_a_crash(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nft anywhere
    with pytest.raises(doctor.NftUnavailable, match="nft is not installed"):
        doctor.IpNet().nft_ruleset()
    net = FakeNet(ADDRS, ruleset=doctor.NftUnavailable("nft is not installed"))
    out = run(tmp_path, net=net)
    [f] = [f for f in out if f.check == "mss"]
    assert (f.level, f.subject) == ("warn", "nftables")
    assert "nft is not installed" in f.message and "install nftables" in f.fix


def test_aws_import_clamp_loaded_in_a_real_nft_is_ok(tmp_path: Path) -> None:
    """The snippet aws-import writes, loaded by a real nft in a private network namespace,
    read back with `nft -j list ruleset` and judged by the doctor."""
    import json
    import os
    import shutil
    import subprocess

    from vtibgp.tools.aws_import import import_vpn

    if shutil.which("nft") is None or shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root, nft and unshare")
    xml = (Path(__file__).resolve().parents[1] / "data/aws/valid.xml").read_text()
    import_vpn(xml, tmp_path / "gw", mtu=1400)
    snippet = tmp_path / "gw/nftables-mss.nft"
    r = subprocess.run(["unshare", "-n", "sh", "-c", 'nft -f "$1" && nft -f "$1" && '
                        "nft -j list ruleset", "sh", str(snippet)],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    ruleset = json.loads(r.stdout)
    clamps = doctor.parse_mss_clamps(ruleset)
    assert sorted((c.ipv6, c.value) for c in clamps) == [(False, 1360)] * 2 + [(True, 1340)] * 2
    found = mss_findings(FakeNet(ADDRS, mtu=1400, ruleset=ruleset))
    assert {d: [f.level for f in ff] for d, ff in found.items()} == {
        "vti01": ["ok"], "vti02": ["ok"]}
    # the same rules on a device with a smaller MTU: above what it allows
    small = mss_findings(FakeNet(ADDRS, mtu=1380, ruleset=ruleset))
    assert {f.level for f in small["vti01"]} == {"warn"}


# -- IKE liveness against BGP's hold time

REPO = Path(__file__).resolve().parents[2]
TUNNELS = [{"connection": "aws-vpn-1-tunnel-1", "device": "vti01"},
           {"connection": "aws-vpn-1-tunnel-2", "device": "vti02"}]
LIBRESWAN_SLOW = """\
config setup
    logfile=/var/log/pluto.log

conn %default
    retransmit-timeout=60s

conn aws-vpn-1-common
    type=tunnel
    authby=secret
    ikev2=yes
    dpddelay=10   # AWS's interval
    dpdtimeout=30
    retransmit-timeout=30s
    dpdaction=restart
    left=%defaultroute
    leftsubnet=0.0.0.0/0
    rightsubnet=0.0.0.0/0
    vti-routing=no
    leftupdown="VTIBGP_MTU=1436 /usr/local/libexec/vtibgp/vtibgp-updown.sh"

conn aws-vpn-1-tunnel-1
    also=aws-vpn-1-common
    right=203.0.113.10
    mark=100/0xffffffff
    vti-interface=vti01
    leftvti=169.254.10.2/30
    auto=start

conn aws-vpn-1-tunnel-2
    also=aws-vpn-1-common
    right=198.51.100.20
    mark=200/0xffffffff
    vti-interface=vti02
    leftvti=169.254.11.2/30
    auto=start
    dpddelay=5
    retransmit-timeout=20s
    dpdaction=clear
"""


def ipsec_checkconfig(path: Path) -> None:
    """libreswan's own parser accepts the file (where there is one: always in CI)."""
    r = libreswan_checkconfig(path)
    assert r is None or r.returncode == 0, r.stdout + r.stderr


def liveness(tmp_path: Path, *, ipsec: str | None = None, swanctl: str | None = None,
             strongswan: str | None = None, exabgp: str | None = None,
             **extra: object) -> dict[tuple[str, str], Finding]:
    files = []
    for name, text in (("ipsec.conf", ipsec), ("swanctl.conf", swanctl),
                       ("strongswan.conf", strongswan)):
        p = tmp_path / name
        if text is not None:
            p.write_text(text)
        else:
            p.unlink(missing_ok=True)
        files.append((str(p),))
    c = cfg(**{"tunnels": TUNNELS, **extra})
    out = doctor.check_ike_liveness(c, doctor.IpsecFiles(*files), exabgp)
    return {(f.check, f.subject): f for f in out}


def test_libreswan_slower_than_the_hold_time_warns(tmp_path: Path) -> None:
    (tmp_path / "ipsec.conf").write_text(LIBRESWAN_SLOW)
    ipsec_checkconfig(tmp_path / "ipsec.conf")
    found = liveness(tmp_path, ipsec=LIBRESWAN_SLOW)
    t1 = found[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert t1.level == "warn"
    assert "after up to 40 s" in t1.message  # dpddelay 10 + retransmit-timeout 30 (also=)
    assert "retransmit-timeout 30 s" in t1.message and "BGP hold time 30 s" in t1.message
    assert "the updown signal is useless" in t1.message
    assert "probe still sees" in t1.message  # the probe helps: it is on in this config
    assert "dpddelay=5" in t1.fix
    t2 = found[("ike-liveness", "aws-vpn-1-tunnel-2")]
    assert t2.level == "ok" and "within 25 s" in t2.message  # its own values win over also=
    assert ("dpd-action", "aws-vpn-1-tunnel-1") not in found
    action = found[("dpd-action", "aws-vpn-1-tunnel-2")]
    assert action.level == "warn" and "dpdaction=clear" in action.message
    assert action.fix == "dpdaction=restart"


def test_libreswan_defaults_ikev1_and_no_dpd(tmp_path: Path) -> None:
    text = LIBRESWAN_SLOW.replace("    retransmit-timeout=30s\n", "").replace(
        "    dpddelay=5\n    retransmit-timeout=20s\n", "")
    found = liveness(tmp_path, ipsec=text)
    t1 = found[("ike-liveness", "aws-vpn-1-tunnel-1")]
    # conn %default's 60 s applies; without it libreswan's own default, also 60 s
    assert t1.level == "warn" and "after up to 70 s" in t1.message
    nodefault = text.replace("conn %default\n    retransmit-timeout=60s\n", "")
    t1 = liveness(tmp_path, ipsec=nodefault)[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert "retransmit-timeout 60 s (default)" in t1.message
    off = text.replace("    dpddelay=10   # AWS's interval\n", "")
    t1 = liveness(tmp_path, ipsec=off)[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert t1.level == "warn" and "dead peer detection is off" in t1.message
    v1 = text.replace("ikev2=yes", "ikev2=no").replace("dpddelay=10", "dpddelay=5").replace(
        "dpdtimeout=30", "dpdtimeout=20")
    t1 = liveness(tmp_path, ipsec=v1)[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert t1.level == "ok" and "IKEv1: dpddelay 5 s + dpdtimeout 20 s" in t1.message


def test_shipped_and_imported_libreswan_configs_are_quiet(tmp_path: Path) -> None:
    from vtibgp.tools.aws_import import import_vpn

    shipped = (REPO / "config/libreswan/aws-vpn.conf").read_text()
    found = liveness(tmp_path, ipsec=shipped)
    assert {f.level for f in found.values()} == {"ok"}, found
    assert "within 20 s" in found[("ike-liveness", "aws-vpn-1-tunnel-1")].message
    xml = (REPO / "tests/data/aws/valid.xml").read_text()
    import_vpn(xml, tmp_path / "gw")
    conf = (tmp_path / "gw/ipsec.conf").read_text()
    ipsec_checkconfig(tmp_path / "gw/ipsec.conf")
    c = cfg(tunnels=[{"connection": f"aws-vpn-0123456789abcdef0-tunnel-{i}",
                      "device": f"vti0{i}"} for i in (1, 2)])
    (tmp_path / "imported.conf").write_text(conf)
    out = doctor.check_ike_liveness(c, doctor.IpsecFiles((str(tmp_path / "imported.conf"),),
                                                         (), ()))
    assert [(f.level, f.check) for f in out] == [("ok", "ike-liveness")] * 2


def test_the_hold_time_comes_from_the_exabgp_config(tmp_path: Path) -> None:
    exa = EXA.replace("local-address 169.254.10.2;", "local-address 169.254.10.2; "
                      "hold-time 90;")
    found = liveness(tmp_path, ipsec=LIBRESWAN_SLOW, exabgp=exa)
    t1 = found[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert t1.level == "ok" and "before the BGP hold time 90 s on vti01" in t1.message
    # without an ExaBGP config: AWS's 30 s, and the message says it is assumed
    t1 = liveness(tmp_path, ipsec=LIBRESWAN_SLOW)[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert "(assumed: AWS's; give --exabgp-conf)" in t1.message


def test_the_probe_being_off_is_said(tmp_path: Path) -> None:
    found = liveness(tmp_path, ipsec=LIBRESWAN_SLOW, probe={"enabled": False})
    t1 = found[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert t1.level == "warn" and "enable it" in t1.message


def test_strongswan_shipped_config_with_and_without_the_charon_settings(tmp_path: Path) -> None:
    swanctl = (REPO / "config/strongswan/swanctl.conf").read_text()
    charon = (REPO / "config/strongswan/charon-vtibgp.conf").read_text()
    # the CHILD_SA names are what the updown passes: the shipped ones
    tunnels = [{"connection": "aws-vpn-1-tunnel-1", "device": "vti01"},
               {"connection": "aws-vpn-1-tunnel-2", "device": "vti02"}]
    found = liveness(tmp_path, swanctl=swanctl, strongswan=charon, tunnels=tunnels)
    t1 = found[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert t1.level == "ok", t1
    assert "dpd_delay 5 s + retransmissions 16.2 s" in t1.message  # 2 * (1+1.5+2.25+3.375)
    # charon's defaults: 4 * (1 + 1.8 + ... + 1.8**5) = 165 s
    found = liveness(tmp_path, swanctl=swanctl, tunnels=tunnels)
    t1 = found[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert t1.level == "warn" and "after up to 170.1 s" in t1.message
    assert ("dpd-action", "aws-vpn-1-tunnel-1") not in found  # dpd_action = restart


def test_strongswan_settings_syntax(tmp_path: Path) -> None:
    text = """
# the format of the strongSwan lab notes: several settings on a line
connections {
    tun1 {
        version = 1
        dpd_delay = 2s
        dpd_timeout = 1m  # IKEv1 uses it
        local  { auth = psk  id = 198.51.100.1 }
        remote { auth = psk  id = "198.51.100.2" }
        children {
            aws-vpn-1-tunnel-1 { local_ts = 0.0.0.0/0  remote_ts = 0.0.0.0/0 }
        }
    }
    tun2 {
        dpd_delay = 0
        children { aws-vpn-1-tunnel-2 { dpd_action = clear } }
    }
}
"""
    parsed = doctor.parse_settings(text)
    conns = parsed["connections"]
    assert isinstance(conns, dict)
    assert conns["tun1"]["local"] == {"auth": "psk", "id": "198.51.100.1"}
    assert conns["tun1"]["remote"]["id"] == "198.51.100.2"
    assert conns["tun1"]["children"]["aws-vpn-1-tunnel-1"]["remote_ts"] == "0.0.0.0/0"
    found = liveness(tmp_path, swanctl=text)
    t1 = found[("ike-liveness", "aws-vpn-1-tunnel-1")]
    assert t1.level == "warn" and "IKEv1: dpd_delay 2 s + dpd_timeout 60 s" in t1.message
    assert ("dpd-action", "aws-vpn-1-tunnel-1") in found  # default clear
    t2 = found[("ike-liveness", "aws-vpn-1-tunnel-2")]
    assert t2.level == "warn" and "dead peer detection is off" in t2.message


def test_connections_not_found(tmp_path: Path) -> None:
    found = liveness(tmp_path)
    assert [(k, f.level) for k, f in found.items()] == [(("ike-liveness", "tunnels"), "warn")]
    other = LIBRESWAN_SLOW.replace("aws-vpn-1-tunnel-2", "something-else")
    f = liveness(tmp_path, ipsec=other)[("ike-liveness", "aws-vpn-1-tunnel-2")]
    assert f.level == "warn" and "no IPsec configuration file defines" in f.message
    assert [f.level for f in doctor.check_ike_liveness(cfg(), doctor.IpsecFiles((), (), ()))
            ] == ["ok"]


def test_run_checks_reads_the_standard_paths_under_etc_root(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "ipsec.d").mkdir(parents=True)
    (etc / "ipsec.d/aws.conf").write_text(LIBRESWAN_SLOW)
    out = doctor.run_checks(cfg(tunnels=TUNNELS), proc_root=make_tree(tmp_path, {
        "vti01": {}, "vti02": {}}), etc_root=str(etc), net=NET)
    assert {(f.level, f.subject) for f in out if f.check == "ike-liveness"} == {
        ("warn", "aws-vpn-1-tunnel-1"), ("ok", "aws-vpn-1-tunnel-2")}


# -- preference against the cloud's MED

def test_unequal_preferences_within_one_vpn_connection_warn() -> None:
    c = cfg(peers=[{"address": "169.254.10.1", "interface": "vti01", "vpn": "vpn-1",
                    "preference": 100},
                   {"address": "169.254.11.1", "interface": "vti02", "vpn": "vpn-1",
                    "preference": 90},
                   {"address": "169.254.12.1", "interface": "vti03", "vpn": "vpn-2",
                    "preference": 50},
                   {"address": "169.254.13.1", "interface": "vti04", "vpn": "vpn-2",
                    "preference": 50},
                   {"address": "169.254.14.1", "interface": "vti05", "preference": 1}])
    found = {f.subject: f for f in doctor.check_preferences(c)}
    assert set(found) == {"vpn-1", "vpn-2"}  # a peer without vpn: is in no connection
    f = found["vpn-1"]
    assert f.level == "warn"
    assert "169.254.10.1 100, 169.254.11.1 90" in f.message
    assert "before LOCAL_PREF, AS path and MED" in f.message
    assert "cannot move traffic off 169.254.10.1" in f.message
    assert "same peers[].preference" in f.fix and "or leave it" in f.fix
    assert found["vpn-2"].level == "ok"


def test_the_example_config_prefers_tunnel_1_and_doctor_says_so() -> None:
    from vtibgp.config.schema import load

    example = load(REPO / "config/vtibgp.yaml")
    [f] = doctor.check_preferences(example)
    assert f.level == "warn" and f.subject == "vpn-0123"
