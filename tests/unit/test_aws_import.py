"""vtibgp.tools.aws_import: AWS VPN XML to vtibgp.yaml, exabgp.conf, libreswan, sysctl."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

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
                   "leftid=198.51.100.7", "dpddelay=10", "dpdtimeout=30",
                   "leftupdown=/usr/local/libexec/vtibgp/vtibgp-updown.sh"):
        assert needle in ipsec, needle
    assert "FakeKey" not in ipsec

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
