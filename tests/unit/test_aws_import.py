"""vtibgp.tools.aws_import: AWS VPN XML to vtibgp.yaml, exabgp.conf, libreswan, sysctl."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ipsec_tools import libreswan_checkconfig

from vtibgp.config.schema import load
from vtibgp.tools.aws_import import FILES, AwsImportError, import_vpn, parse_vpn

DATA = Path(__file__).resolve().parents[1] / "data" / "aws"
EXABGP = shutil.which("exabgp") or str(Path(sys.executable).parent / "exabgp")
PLUGIN = f"{sys.executable} -m vtibgp run --config /etc/vtibgp/vtibgp.yaml"


def xml(name: str) -> str:
    return (DATA / name).read_text()


def run_import(name: str, out: Path, **kw: object) -> list[Path]:
    return import_vpn(xml(name), out, plugin_command=PLUGIN, **kw)  # type: ignore[arg-type]


def exabgp_validate(path: Path) -> None:
    if not os.access(EXABGP, os.X_OK):
        pytest.skip("exabgp is not installed")
    env = {**os.environ, "exabgp.daemon.user": "root"}
    r = subprocess.run([EXABGP, "validate", str(path)], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def ipsec_checkconfig(path: Path) -> None:
    """libreswan's own parser accepts the file (where there is one: always in CI)."""
    r = libreswan_checkconfig(path)
    assert r is None or r.returncode == 0, r.stdout + r.stderr


def nft_check(path: Path) -> None:
    """nft loads the file in check mode (nothing is committed)."""
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    r = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 0, r.stderr


def test_valid(tmp_path: Path) -> None:
    out = tmp_path / "gw"
    paths = run_import("valid.xml", out)
    assert sorted(p.name for p in paths) == sorted(FILES)
    assert sorted(os.listdir(tmp_path)) == ["gw"]  # no temporary directory left
    cfg = load(out / "vtibgp.yaml")
    assert [(p.address, p.interface, p.vpn, p.families) for p in cfg.peers] == [
        ("169.254.80.145", "vti01", "vpn-0123456789abcdef0", ("ipv4 unicast",)),
        ("169.254.81.1", "vti02", "vpn-0123456789abcdef0", ("ipv4 unicast",))]
    pol = cfg.policy.peers["169.254.80.145"]
    assert pol.outside == ("203.0.113.10",)
    assert pol.max_prefix is not None and pol.max_prefix.limit == 1000
    assert [(t.connection, t.device) for t in cfg.tunnels] == [
        ("aws-vpn-0123456789abcdef0-tunnel-1", "vti01"),
        ("aws-vpn-0123456789abcdef0-tunnel-2", "vti02")]
    assert cfg.table == 254

    conf = (out / "exabgp.conf").read_text()
    assert "local-address 169.254.80.146;" in conf and "local-address 169.254.81.2;" in conf
    assert "local-as 65000;" in conf and "peer-as 64512;" in conf and "hold-time 30;" in conf
    exabgp_validate(out / "exabgp.conf")

    ipsec = (out / "ipsec.conf").read_text()
    for needle in ("right=203.0.113.10", "right=203.0.113.20", "mark=100/0xffffffff",
                   "mark=200/0xffffffff", "vti-interface=vti01", "vti-interface=vti02",
                   "vti-routing=no", "leftvti=169.254.80.146/30", "leftvti=169.254.81.2/30",
                   "leftid=198.51.100.7", "dpddelay=5\n", "retransmit-timeout=15s\n",
                   "dpdaction=restart\n",
                   'leftupdown="VTIBGP_MTU=1436 /usr/local/libexec/vtibgp/vtibgp-updown.sh"'):
        assert needle in ipsec, needle
    assert "FakeKey" not in ipsec
    ipsec_checkconfig(out / "ipsec.conf")

    secrets = out / "ipsec.secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert '198.51.100.7 203.0.113.10 : PSK "FakeKey.Tunnel1_abcdef"' in secrets.read_text()
    for name in FILES:
        if name != "ipsec.secrets":
            assert stat.S_IMODE((out / name).stat().st_mode) == 0o644

    sysctl = (out / "sysctl.conf").read_text()
    for dev in ("vti01", "vti02"):
        for key, value in (("disable_policy", 1), ("rp_filter", 2), ("forwarding", 1),
                           ("disable_xfrm", 0)):
            assert f"net.ipv4.conf.{dev}.{key} = {value}\n" in sysctl


def test_secrets_never_wider_than_0600_even_with_open_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        run_import("valid.xml", tmp_path / "gw")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "gw" / "ipsec.secrets").stat().st_mode) == 0o600


def test_options(tmp_path: Path) -> None:
    out = tmp_path / "gw"
    run_import("valid.xml", out, our_asn=4200000001, devices=("ipsec1", "ipsec2"), table=100,
               marks=(11, 12))
    cfg = load(out / "vtibgp.yaml")
    assert cfg.table == 100 and [p.interface for p in cfg.peers] == ["ipsec1", "ipsec2"]
    conf = (out / "exabgp.conf").read_text()
    assert "local-as 4200000001;" in conf
    assert "mark=11/0xffffffff" in (out / "ipsec.conf").read_text()
    exabgp_validate(out / "exabgp.conf")


def test_ipv6_inside(tmp_path: Path) -> None:
    out = tmp_path / "gw"
    run_import("ipv6-inside.xml", out)
    cfg = load(out / "vtibgp.yaml")
    assert [(p.address, p.families) for p in cfg.peers] == [
        ("fd00:0:0:10::1", ("ipv6 unicast",)), ("fd00:0:0:11::1", ("ipv6 unicast",))]
    conf = (out / "exabgp.conf").read_text()
    assert "local-address fd00:0:0:10::2;" in conf and "family { ipv6 unicast; }" in conf
    assert "router-id 198.51.100.7;" in conf  # no IPv4 inside address: the outside one
    ipsec = (out / "ipsec.conf").read_text()
    assert "leftvti=fd00:0:0:10::2/126" in ipsec and "leftsubnet=::/0" in ipsec
    exabgp_validate(out / "exabgp.conf")


@pytest.mark.parametrize(("name", "match"), [
    ("missing-second-tunnel.xml", r"^vpn_connection/ipsec_tunnel\[2\]: expected exactly two"),
    ("reserved-cidr.xml", r"^vpn_connection/ipsec_tunnel\[2\]/customer_gateway/"
                          r"tunnel_inside_address/ip_address: 169.254.5.0/30 is reserved"),
    ("missing-vgw-inside.xml", r"^vpn_connection/ipsec_tunnel\[2\]/vpn_gateway/"
                               r"tunnel_inside_address/ip_address: missing"),
    ("swapped-inside.xml", r"^vpn_connection/ipsec_tunnel\[2\]/vpn_gateway/"
                           r"tunnel_inside_address/ip_address: expected 169.254.81.1"),
    ("customer-asn-7224.xml", r"^vpn_connection/ipsec_tunnel\[1\]/customer_gateway/bgp/asn: "
                              r"AWS refuses customer ASN 7224"),
    ("malformed.xml", r"^not well-formed XML"),
    ("entity.xml", r"DOCTYPE/ENTITY declarations are refused"),
])
def test_bad_documents_write_nothing(tmp_path: Path, name: str, match: str) -> None:
    with pytest.raises(AwsImportError, match=match):
        run_import(name, tmp_path / "gw")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("edit", "match"), [
    (("<network_cidr>30</network_cidr>", "<network_cidr>29</network_cidr>"),
     r"ipsec_tunnel\[1\]/customer_gateway/tunnel_inside_address/network_cidr: expected 30"),
    (("169.254.80.146", "10.0.0.2"), r"expected an address in 169.254.0.0/16"),
    (("<asn>64512</asn>", "<asn>65000</asn>"), r"vpn_gateway/bgp/asn: the same as ours"),
    (("FakeKey.Tunnel1_abcdef", 'bad" key'), r"ipsec_tunnel\[1\]/ike/pre_shared_key"),
    (("<interval>10</interval>", ""), r"dead_peer_detection/interval: missing"),
    (('id="vpn-0123456789abcdef0"', 'id="vpn 1; x"'), r"vpn_connection/@id"),
    (("<vpn_connection ", "<other "), r"expected the root element vpn_connection"),
])
def test_bad_values(tmp_path: Path, edit: tuple[str, str], match: str) -> None:
    text = xml("valid.xml").replace(*edit)
    if edit[0] == "<vpn_connection ":
        text = text.replace("</vpn_connection>", "</other>")
    with pytest.raises(AwsImportError, match=match):
        import_vpn(text, tmp_path / "gw", plugin_command=PLUGIN)
    assert os.listdir(tmp_path) == []


def test_region_specific_asn() -> None:
    text = xml("valid.xml").replace("<asn>65000</asn>", "<asn>9059</asn>")
    with pytest.raises(AwsImportError, match="9059 in eu-west-1"):
        parse_vpn(text)
    assert parse_vpn(text, region="us-east-1").tunnels[0].customer_asn == 9059
    with pytest.raises(AwsImportError, match="our_asn: AWS refuses customer ASN 7224"):
        parse_vpn(xml("valid.xml"), our_asn=7224)


def test_existing_files_are_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "gw"
    out.mkdir()
    (out / "vtibgp.yaml").write_text("keep: me\n")
    with pytest.raises(AwsImportError, match=r"would overwrite vtibgp\.yaml"):
        run_import("valid.xml", out)
    assert os.listdir(out) == ["vtibgp.yaml"] and (out / "vtibgp.yaml").read_text() == "keep: me\n"
    assert os.listdir(tmp_path) == ["gw"]
    run_import("valid.xml", out, overwrite=True)
    assert sorted(os.listdir(out)) == sorted(FILES)
    assert os.listdir(tmp_path) == ["gw"]
    assert stat.S_IMODE((out / "ipsec.secrets").stat().st_mode) == 0o600
    load(out / "vtibgp.yaml")


def test_mss_clamp_follows_the_mtu_and_loads_in_nft(tmp_path: Path) -> None:
    out = tmp_path / "gw"
    run_import("valid.xml", out)
    nft = (out / "nftables-mss.nft").read_text()
    # valid.xml asks for 1379 (tcp_mss_adjustment), below 1436 - 40: AWS's value is used
    assert "tcp option maxseg size > 1379 tcp option maxseg size set 1379" in nft
    assert "meta nfproto ipv6" in nft and "set 1359" in nft
    assert 'oifname { "vti01", "vti02" }' in nft and 'iifname { "vti01", "vti02" }' in nft
    assert "AWS does not do path MTU discovery" in nft  # the why, in the file
    nft_check(out / "nftables-mss.nft")

    no_mss = xml("valid.xml").replace("<tcp_mss_adjustment>1379</tcp_mss_adjustment>", "")
    for mtu, v4, v6 in ((1436, 1396, 1376), (1446, 1406, 1386), (1400, 1360, 1340)):
        d = tmp_path / f"mtu{mtu}"
        import_vpn(no_mss, d, plugin_command=PLUGIN, devices=("ipsec1", "ipsec2"), mtu=mtu)
        nft = (d / "nftables-mss.nft").read_text()
        assert f"maxseg size set {v4}\n" in nft and f"maxseg size set {v6}\n" in nft
        assert f"have MTU {mtu}" in nft
        assert f'VTIBGP_MTU={mtu} ' in (d / "ipsec.conf").read_text()
        nft_check(d / "nftables-mss.nft")


@pytest.mark.parametrize("mtu", [1447, 1500, 1279, True])
def test_mtu_out_of_range(tmp_path: Path, mtu: int) -> None:
    with pytest.raises(AwsImportError, match="mtu: expected 1280 to 1446"):
        run_import("valid.xml", tmp_path / "gw", mtu=mtu)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("hold", "delay", "timeout"), [
    (30, 5, 15), (90, 10, 45), (9, 1, 4), (3, 1, 1), (0, 10, 30)])
def test_dpd_is_faster_than_the_hold_time(hold: int, delay: int, timeout: int) -> None:
    from vtibgp.tools.aws_import import dpd_timers

    text = xml("valid.xml").replace("<hold_time>30</hold_time>", f"<hold_time>{hold}</hold_time>")
    t = parse_vpn(text).tunnels[0]
    assert dpd_timers(t) == (delay, timeout)
    if hold:
        assert delay + timeout < hold


def test_equal_preferences_unless_asked(tmp_path: Path) -> None:
    run_import("valid.xml", tmp_path / "eq")
    text = (tmp_path / "eq" / "vtibgp.yaml").read_text()
    assert [p.preference for p in load(tmp_path / "eq" / "vtibgp.yaml").peers] == [100, 100]
    assert "lower MED on the tunnel that stays in service" in text
    run_import("valid.xml", tmp_path / "two", prefer_tunnel=2)
    cfg = load(tmp_path / "two" / "vtibgp.yaml")
    assert [p.preference for p in cfg.peers] == [100, 200]
    assert "Tunnel 2 has preference 200" in (tmp_path / "two" / "vtibgp.yaml").read_text()
    with pytest.raises(AwsImportError, match="prefer_tunnel: expected 1 or 2"):
        run_import("valid.xml", tmp_path / "bad", prefer_tunnel=3)


def test_imported_gateway_passes_doctor_checks_it_can(tmp_path: Path) -> None:
    """doctor on what aws-import wrote: equal preferences, DPD before the hold time."""
    from vtibgp.tools import doctor

    out = tmp_path / "gw"
    run_import("valid.xml", out)
    cfg = load(out / "vtibgp.yaml")
    assert [f.level for f in doctor.check_preferences(cfg)] == ["ok"]
    files = doctor.IpsecFiles((str(out / "ipsec.conf"),), (), ())
    found = doctor.check_ike_liveness(cfg, files, (out / "exabgp.conf").read_text())
    assert [(f.level, f.subject) for f in found] == [
        ("ok", "aws-vpn-0123456789abcdef0-tunnel-1"), ("ok", "aws-vpn-0123456789abcdef0-tunnel-2")]
    assert "before the BGP hold time 30 s on vti01" in found[0].message


def test_libreswan_wrapper_sets_the_mtu(tmp_path: Path) -> None:
    """config/libreswan/vtibgp-updown.sh: the stock updown, then the VTI device's MTU."""
    script = Path(__file__).resolve().parents[2] / "config/libreswan/vtibgp-updown.sh"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "ip.log"
    (bin_ / "ip").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_ / "ip").chmod(0o755)
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "VTIBGP_STOCK_UPDOWN": "true",
           "VTIBGP": "true", "VTI_IFACE": "vti01"}
    for verb, mtu, want in (("up-client", None, "link set dev vti01 mtu 1436"),
                            ("up-client", "1400", "link set dev vti01 mtu 1400"),
                            ("down-client", None, ""), ("up-client", "", "")):
        log.unlink(missing_ok=True)
        e = {**env, "PLUTO_VERB": verb, **({} if mtu is None else {"VTIBGP_MTU": mtu})}
        r = subprocess.run(["sh", str(script)], env=e, capture_output=True, text=True,
                           timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        assert (log.read_text().strip() if log.exists() else "") == want, (verb, mtu)


def test_announce_writes_the_return_path(tmp_path: Path) -> None:
    run_import("valid.xml", tmp_path / "gw", announce=("192.168.0.0/16", "10.50.0.0/24"))
    cfg = load(tmp_path / "gw" / "vtibgp.yaml")
    assert cfg.export_networks == ("192.168.0.0/16", "10.50.0.0/24")
    assert cfg.export_steering == "symmetric" and cfg.export_local_as == 65000
    assert {p.vpn for p in cfg.peers} == {cfg.peers[0].vpn} != {""}  # steered together
    for bad in ("192.168.0.1/16", "0.0.0.0/0", "lan"):
        with pytest.raises(AwsImportError, match="announce: "):
            run_import("valid.xml", tmp_path / f"bad{len(bad)}", announce=(bad,))
    assert not (tmp_path / "bad14").exists()  # nothing written on an error


# ---- XFRM interfaces (--device xfrm) and the transit gateway's IPv6 inside form (issue 17)


def test_xfrm_interfaces_for_libreswan(tmp_path: Path) -> None:
    out = tmp_path / "gw"
    run_import("valid.xml", out, device="xfrm")
    ipsec = (out / "ipsec.conf").read_text()
    conns = ipsec.split("\nconn ")[2:]  # the two tunnels' conns, after the common one
    assert [c.split("\n")[0] for c in conns] == [
        "aws-vpn-0123456789abcdef0-tunnel-1", "aws-vpn-0123456789abcdef0-tunnel-2"]
    for conn, n, addr in ((conns[0], 1, "169.254.80.146/30"), (conns[1], 2, "169.254.81.2/30")):
        assert f"\n    ipsec-interface={n}\n" in conn
        assert (f'leftupdown="VTIBGP_MTU=1436 VTIBGP_DEVICE=ipsec{n} VTIBGP_ADDRESS={addr} '
                '/usr/local/libexec/vtibgp/vtibgp-updown.sh"') in conn
    for vti_only in ("mark=", "vti-interface=", "leftvti=", "vti-routing=", "vti-shared="):
        assert vti_only not in ipsec, vti_only
    ipsec_checkconfig(out / "ipsec.conf")
    cfg = load(out / "vtibgp.yaml")
    assert [p.interface for p in cfg.peers] == ["ipsec1", "ipsec2"]
    assert [t.device for t in cfg.tunnels] == ["ipsec1", "ipsec2"]
    sysctl = (out / "sysctl.conf").read_text()
    assert "net.ipv4.conf.ipsec2.disable_xfrm = 0\n" in sysctl and "vti0" not in sysctl
    nft = (out / "nftables-mss.nft").read_text()
    assert 'oifname { "ipsec1", "ipsec2" }' in nft
    nft_check(out / "nftables-mss.nft")
    from vtibgp.tools import doctor  # it finds each tunnel's conn and its DPD timers

    found = doctor.check_ike_liveness(cfg, doctor.IpsecFiles((str(out / "ipsec.conf"),), (), ()),
                                      (out / "exabgp.conf").read_text())
    assert [(f.level, f.subject) for f in found] == [
        ("ok", "aws-vpn-0123456789abcdef0-tunnel-1"), ("ok", "aws-vpn-0123456789abcdef0-tunnel-2")]

    # other ipsecN names give other interface ids; VTI stays the default
    run_import("valid.xml", tmp_path / "n", device="xfrm", devices=("ipsec7", "ipsec12"))
    text = (tmp_path / "n" / "ipsec.conf").read_text()
    assert "ipsec-interface=7\n" in text and "ipsec-interface=12\n" in text
    run_import("valid.xml", tmp_path / "vti")
    text = (tmp_path / "vti" / "ipsec.conf").read_text()
    assert "ipsec-interface" not in text and "vti-interface=vti01" in text


@pytest.mark.parametrize(("kw", "match"), [
    ({"devices": ("vti01", "vti02")}, r"devices: with device xfrm .* got 'vti01'"),
    ({"devices": ("ipsec0", "ipsec2")}, r"got 'ipsec0'"),
    ({"devices": ("ipsec01", "ipsec2")}, r"no leading zero\), got 'ipsec01'"),
    ({"devices": ("ipsec1", "ipsec16384")}, r"not 16384"),
    ({"device": "gre"}, r"^device: expected one of vti, xfrm, got 'gre'"),
])
def test_xfrm_device_names_are_checked(tmp_path: Path, kw: dict[str, object],
                                       match: str) -> None:
    with pytest.raises(AwsImportError, match=match):
        run_import("valid.xml", tmp_path / "gw", **{"device": "xfrm", **kw})
    assert os.listdir(tmp_path) == []


def test_cli_device_xfrm_defaults_to_ipsec1_and_ipsec2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "vtibgp", "aws-import", str(DATA / "valid.xml"),
                        "--out", str(tmp_path / "gw"), "--device", "xfrm"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert [p.interface for p in load(tmp_path / "gw" / "vtibgp.yaml").peers] == [
        "ipsec1", "ipsec2"]
    r = subprocess.run([sys.executable, "-m", "vtibgp", "aws-import", str(DATA / "valid.xml"),
                        "--out", str(tmp_path / "bad"), "--device", "xfrm", "--devices",
                        "xfrm1", "xfrm2"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 1 and "with device xfrm libreswan names" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_libreswan_wrapper_sets_address_mtu_and_device_of_an_xfrm_interface(
        tmp_path: Path) -> None:
    """config/libreswan/vtibgp-updown.sh with VTIBGP_DEVICE/VTIBGP_ADDRESS (no VTI_IFACE):
    the address and MTU go on that device, and vtibgp updown is told the device."""
    script = Path(__file__).resolve().parents[2] / "config/libreswan/vtibgp-updown.sh"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log, told = tmp_path / "ip.log", tmp_path / "vtibgp.log"
    (bin_ / "ip").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (bin_ / "vtibgp").write_text(f'#!/bin/sh\necho "$@" >> {told}\n')
    for f in ("ip", "vtibgp"):
        (bin_ / f).chmod(0o755)
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "VTIBGP_STOCK_UPDOWN": "true",
           "VTIBGP": str(bin_ / "vtibgp"), "VTIBGP_DEVICE": "ipsec2",
           "VTIBGP_ADDRESS": "fd00:64:1:11::2/126", "VTIBGP_MTU": "1400"}
    for verb, want_ip in (("up-client", ["link set dev ipsec2 mtu 1400",
                                         "addr replace fd00:64:1:11::2/126 dev ipsec2"]),
                          ("down-client", [])):
        log.unlink(missing_ok=True)
        told.unlink(missing_ok=True)
        r = subprocess.run(["sh", str(script)], env={**env, "PLUTO_VERB": verb},
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        assert (log.read_text().splitlines() if log.exists() else []) == want_ip, verb
        assert told.read_text().split() == [
            "updown", "--socket", "/run/vtibgp/vtibgp.sock", "--strict", "--device", "ipsec2"]


def test_ipv6_inside_transit_gateway_form(tmp_path: Path) -> None:
    """tunnel_inside_ipv6_address (ip_address, prefix_length), as a transit gateway VPN
    with TunnelInsideIpVersion ipv6 has it: IPv6 sessions, ipv6 unicast only."""
    out = tmp_path / "gw"
    run_import("ipv6-inside-tgw.xml", out, mtu=1400)
    cfg = load(out / "vtibgp.yaml")
    assert [(p.address, p.interface, p.families) for p in cfg.peers] == [
        ("fd00:64:1:10::1", "vti01", ("ipv6 unicast",)),
        ("fd00:64:1:11::1", "vti02", ("ipv6 unicast",))]
    conf = (out / "exabgp.conf").read_text()
    assert "neighbor fd00:64:1:10::1 {" in conf and "local-address fd00:64:1:11::2;" in conf
    assert conf.count("family { ipv6 unicast; }") == 2 and "ipv4 unicast" not in conf
    assert "router-id 198.51.100.7;" in conf and "peer-as 4200000000;" in conf
    exabgp_validate(out / "exabgp.conf")
    ipsec = (out / "ipsec.conf").read_text()
    assert "leftvti=fd00:64:1:10::2/126" in ipsec and "rightsubnet=::/0" in ipsec
    ipsec_checkconfig(out / "ipsec.conf")
    assert "net.ipv6.conf.all.forwarding = 1" in (out / "sysctl.conf").read_text()
    nft = (out / "nftables-mss.nft").read_text()
    # IPv6: MTU - 60 (40 + 20), and 20 below the 1379 AWS's XML asks for IPv4
    assert "meta nfproto ipv6 oifname" in nft and "maxseg size set 1340\n" in nft
    nft_check(out / "nftables-mss.nft")

    run_import("ipv6-inside-tgw.xml", tmp_path / "rid", router_id="10.9.9.9", device="xfrm")
    assert "router-id 10.9.9.9;" in (tmp_path / "rid" / "exabgp.conf").read_text()
    assert "VTIBGP_ADDRESS=fd00:64:1:10::2/126 " in (tmp_path / "rid" / "ipsec.conf").read_text()


T1_V6 = r"vpn_connection/ipsec_tunnel\[1\]/customer_gateway/tunnel_inside_ipv6_address"


@pytest.mark.parametrize(("edit", "match"), [
    (("<prefix_length>126</prefix_length>", "<prefix_length>64</prefix_length>"),
     rf"^{T1_V6}/prefix_length: expected 126 \(AWS inside CIDRs are /126 for IPv6, from "
     r"fd00::/8\), got 64"),
    (("fd00:64:1:10::", "fc00:64:1:10::"),
     rf"^{T1_V6}/ip_address: expected an address in fd00::/8 .*got fc00:64:1:10::2"),
    (("<ip_address>fd00:64:1:10::2</ip_address>", "<ip_address>fd00:64:1:10::3</ip_address>"),
     rf"^{T1_V6}/ip_address: expected fd00:64:1:10::2 \(the second usable address of "
     r"fd00:64:1:10::/126; host bits"),
    (("<ip_address>fd00:64:1:10::1</ip_address>", "<ip_address>fd00:64:1:10::2</ip_address>"),
     r"vpn_gateway/tunnel_inside_ipv6_address/ip_address: expected fd00:64:1:10::1"),
    (("<ip_address>fd00:64:1:10::2</ip_address>", "<ip_address>169.254.10.2</ip_address>"),
     rf"^{T1_V6}/ip_address: expected an IPv6 address, got 169.254.10.2"),
    (("<ip_address>fd00:64:1:10::2</ip_address>", "<ip_address>fd00::2::1</ip_address>"),
     rf"^{T1_V6}/ip_address: expected an IP address, got 'fd00::2::1'"),
    (("<tunnel_inside_ipv6_address>",
      "<tunnel_inside_address><ip_address>169.254.80.146</ip_address>"
      "</tunnel_inside_address><tunnel_inside_ipv6_address>"),
     r"ipsec_tunnel\[1\]/customer_gateway: both tunnel_inside_address and "
     r"tunnel_inside_ipv6_address"),
])
def test_ipv6_inside_bad_values(tmp_path: Path, edit: tuple[str, str], match: str) -> None:
    text = xml("ipv6-inside-tgw.xml").replace(*edit, 1)
    with pytest.raises(AwsImportError, match=match):
        import_vpn(text, tmp_path / "gw", plugin_command=PLUGIN)
    assert os.listdir(tmp_path) == []


def _options_without_help(text: str) -> list[str]:
    """The options an argparse --help `text` lists with no text after them."""
    lines = text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m is None or line.strip().endswith(":"):
            continue
        if m.group(2) is None and not (i + 1 < len(lines)
                                       and re.match(r"^\s{6,}\S", lines[i + 1])):
            missing.append(m.group(1))
    return missing


@pytest.mark.parametrize("command", ["aws-import", "exabgp-config"])
def test_every_option_has_help(command: str) -> None:
    r = subprocess.run([sys.executable, "-m", "vtibgp", command, "--help"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "--out" in r.stdout or "--local-as" in r.stdout
    assert _options_without_help(r.stdout) == []
    # and the check does see an option without a text
    ap = argparse.ArgumentParser(prog="x")
    ap.add_argument("--bare")
    ap.add_argument("--told", help="has a text")
    ap.add_argument("--long-option-name-that-wraps-its-text", help="a text on the next line")
    assert _options_without_help(ap.format_help()) == ["--bare BARE"]


def test_ipv6_only_router_id_from_the_flag_or_a_clear_error(tmp_path: Path) -> None:
    """exabgp-config of an IPv6-inside vtibgp.yaml: no IPv4 local address to take the router
    id from, so --router-id is needed, and the error says so."""
    run_import("ipv6-inside-tgw.xml", tmp_path / "gw")
    base = [sys.executable, "-m", "vtibgp", "exabgp-config", str(tmp_path / "gw" / "vtibgp.yaml"),
            "--local-as", "65000", "--peer-as", "4200000000"]
    r = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert "router_id: no IPv4 local address to take it from (all sessions are IPv6)" in r.stderr
    r = subprocess.run([*base, "--router-id", "192.0.2.1"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("router-id 192.0.2.1;") == 2 and "ipv4 unicast" not in r.stdout
