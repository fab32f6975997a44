"""vtibgp.tools.gcp_import: gcloud routers/vpn-tunnels/vpn-gateways JSON to a vtibgp gateway."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ipsec_tools import libreswan_checkconfig
from test_aws_import import _options_without_help, exabgp_validate, nft_check

from vtibgp.config.schema import load
from vtibgp.tools.aws_import import dpd_timers, files, import_vpn
from vtibgp.tools.azure_import import CloudImportError, load_json
from vtibgp.tools.gcp_import import parse_gcp

DATA = Path(__file__).resolve().parents[1] / "data" / "gcp"
PLUGIN = f"{sys.executable} -m vtibgp run --config /etc/vtibgp/vtibgp.yaml"
KEYS = ("GcpTunnelZeroKey0000", "GcpTunnelOneKey11111")


def doc(name: str) -> dict[str, Any]:
    return load_json(DATA / name)[1]


def parse(router: dict[str, Any] | None = None, tunnels: list[dict[str, Any]] | None = None,
          gateway: dict[str, Any] | None = None, router_name: str = "router.json") -> Any:
    return parse_gcp(router if router is not None else doc("router.json"),
                     tunnels if tunnels is not None else
                     [doc("tunnel-0.json"), doc("tunnel-1.json")],
                     gateway if gateway is not None else doc("gateway.json"), psks=KEYS,
                     router_name=router_name, tunnel_names=("tunnel-0.json", "tunnel-1.json"))


def test_two_tunnels_from_the_documented_json(tmp_path: Path) -> None:
    vpn = parse()
    assert vpn.vpn_id == "ha-vpn-gw-1" and vpn.cloud == "gcp"
    t1, t2 = vpn.tunnels
    assert (t1.vgw_outside, t1.vgw_inside, t1.cgw_inside, t1.cgw_outside) == (
        "203.0.113.40", "169.254.10.1", "169.254.10.2", "198.51.100.7")
    assert (t2.vgw_outside, t2.vgw_inside, t2.cgw_inside) == (
        "203.0.113.41", "169.254.11.1", "169.254.11.2")
    # keepalive 20 s: hold time 60 s; our DPD from it
    assert (t1.amazon_asn, t1.customer_asn, t1.hold_time) == (65534, 65000, 60)
    assert dpd_timers(t1) == (10, 30)
    assert [t.psk for t in vpn.tunnels] == list(KEYS)

    out = tmp_path / "gw"
    out.mkdir()
    for ike in ("libreswan", "strongswan"):
        d = out / ike
        assert sorted(p.name for p in import_vpn(vpn, d, plugin_command=PLUGIN, ike=ike)) == \
            sorted(files(ike))
    d = out / "libreswan"
    cfg = load(d / "vtibgp.yaml")
    assert [(p.address, p.interface, p.vpn, p.preference) for p in cfg.peers] == [
        ("169.254.10.1", "vti01", "ha-vpn-gw-1", 100),
        ("169.254.11.1", "vti02", "ha-vpn-gw-1", 100)]
    assert [t.connection for t in cfg.tunnels] == [
        "gcp-ha-vpn-gw-1-tunnel-1", "gcp-ha-vpn-gw-1-tunnel-2"]
    assert "Cloud Router sends a MED on every prefix" in (d / "vtibgp.yaml").read_text()
    conf = (d / "exabgp.conf").read_text()
    assert "local-address 169.254.10.2;" in conf and "local-address 169.254.11.2;" in conf
    assert conf.count("hold-time 60;") == 2 and "peer-as 65534;" in conf
    assert "local-as 65000;" in conf and "passive" not in conf
    exabgp_validate(d / "exabgp.conf")
    ipsec = (d / "ipsec.conf").read_text()
    for needle in ("conn gcp-ha-vpn-gw-1-tunnel-2", "right=203.0.113.41",
                   "leftvti=169.254.11.2/30", "dpddelay=10\n", "retransmit-timeout=30s\n"):
        assert needle in ipsec, needle
    r = libreswan_checkconfig(d / "ipsec.conf")
    if r is not None:
        assert r.returncode == 0, r.stdout + r.stderr
    secrets = (d / "ipsec.secrets")
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert f'198.51.100.7 203.0.113.41 : PSK "{KEYS[1]}"' in secrets.read_text()
    nft_check(d / "nftables-mss.nft")
    swan = (out / "strongswan" / "swanctl.conf")
    assert stat.S_IMODE(swan.stat().st_mode) == 0o600 and KEYS[0] in swan.read_text()


def test_google_may_take_the_second_address_of_the_30() -> None:
    """ipRange says which address is Cloud Router's; ours is the other one."""
    router = doc("router.json")
    router["interfaces"][0]["ipRange"] = "169.254.10.2/30"
    router["bgpPeers"][0].update(ipAddress="169.254.10.2", peerIpAddress="169.254.10.1")
    t1 = parse(router).tunnels[0]
    assert (t1.vgw_inside, t1.cgw_inside) == ("169.254.10.2", "169.254.10.1")


@pytest.mark.parametrize(("name", "match"), [
    ("router-not-30.json", r"^router-not-30\.json\.interfaces\[1\]\.ipRange: expected a /30, "
                           r"got /29"),
    ("router-missing-asn.json", r"^router-missing-asn\.json\.bgp\.asn: missing"),
    ("router-bad-peer-address.json",
     r"^router-bad-peer-address\.json\.interfaces\[0\]\.ipRange: our address 169\.254\.10\.3 "
     r"is not the other usable address of 169\.254\.10\.0/30 \(169\.254\.10\.2\)"),
])
def test_malformed_routers(name: str, match: str) -> None:
    with pytest.raises(CloudImportError, match=match):
        parse(doc(name), router_name=name)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda r, t, g: r["bgp"].update(keepaliveInterval=10),
     r"router\.json\.bgp\.keepaliveInterval: expected 20 to 60, got 10"),
    (lambda r, t, g: r["bgp"].update(asn=65000), r"bgpPeers\[0\]\.peerAsn: the same as"),
    (lambda r, t, g: r["bgp"].update(asn=3), r"router\.json\.bgp\.asn: expected a Cloud Router"),
    (lambda r, t, g: (r["interfaces"][0].update(ipRange="10.0.0.1/30"),
                      r["bgpPeers"][0].update(ipAddress="10.0.0.1")),
     r"interfaces\[0\]\.ipRange: expected a link-local /30 in 169\.254\.0\.0/16"),
    (lambda r, t, g: r["interfaces"][0].update(ipRange="169.254.10.1"),
     r"interfaces\[0\]\.ipRange: expected a /30, got /32"),
    (lambda r, t, g: r["interfaces"][0].update(ipRange="link-local"),
     r"interfaces\[0\]\.ipRange: expected ADDRESS/30"),
    (lambda r, t, g: r["bgpPeers"][1].update(peerAsn=65001),
     r"bgpPeers\[1\]\.peerAsn: 65001, the other tunnel's is 65000"),
    (lambda r, t, g: r["bgpPeers"].pop(), r"expected one BGP peer with interfaceName "
                                          r"if-tunnel-1, found 0"),
    (lambda r, t, g: r["interfaces"][1].update(linkedVpnTunnel="x/vpnTunnels/other"),
     r"expected one interface with linkedVpnTunnel tunnel-1, found 0"),
    (lambda r, t, g: t[0].update(ikeVersion=1), r"tunnel-0\.json\.ikeVersion: expected 2"),
    (lambda r, t, g: t[1].update(peerIp="198.51.100.8"),
     r"tunnel-1\.json\.peerIp: 198\.51\.100\.8, tunnel-0\.json has 198\.51\.100\.7"),
    (lambda r, t, g: t[1].update(vpnGatewayInterface=0),
     r"tunnel-1\.json\.vpnGatewayInterface: the same interface"),
    (lambda r, t, g: t[1].update(vpnGatewayInterface=2),
     r"tunnel-1\.json\.vpnGatewayInterface: 2, but gateway\.json\.vpnInterfaces has ids"),
    (lambda r, t, g: t[0].update(vpnGateway=t[0]["vpnGateway"] + "-other"),
     r"tunnel-0\.json\.vpnGateway: .*ha-vpn-gw-1-other is not gateway\.json"),
    (lambda r, t, g: g["vpnInterfaces"][0].update(ipAddress="127.0.0.1"),
     r"vpnInterfaces\[0\]\.ipAddress: expected a tunnel endpoint"),
    (lambda r, t, g: g.pop("vpnInterfaces"), r"gateway\.json\.vpnInterfaces: missing"),
])
def test_bad_values(edit: Any, match: str) -> None:
    r, g = doc("router.json"), doc("gateway.json")
    t = [doc("tunnel-0.json"), doc("tunnel-1.json")]
    edit(r, t, g)
    with pytest.raises(CloudImportError, match=match):
        parse(r, t, g)


def test_a_disabled_peer_is_not_a_tunnel() -> None:
    router = doc("router.json")
    router["bgpPeers"][1]["enable"] = "FALSE"
    with pytest.raises(CloudImportError, match="expected one BGP peer with interfaceName "
                       "if-tunnel-1, found 0"):
        parse(router)


def _cli(tmp_path: Path, key_mode: int = 0o600, *extra: str) -> subprocess.CompletedProcess[str]:
    keys = tmp_path / f"keys{key_mode:o}"
    keys.write_text("\n".join(KEYS) + "\n")
    keys.chmod(key_mode)
    return subprocess.run([sys.executable, "-m", "vtibgp", "gcp-import", str(DATA / "router.json"),
                           "--tunnel", str(DATA / "tunnel-0.json"),
                           "--tunnel", str(DATA / "tunnel-1.json"),
                           "--gateway", str(DATA / "gateway.json"), "--psk-file", str(keys),
                           *extra], capture_output=True, text=True, timeout=60, check=False)


def test_cli(tmp_path: Path) -> None:
    r = _cli(tmp_path, 0o600, "--out", str(tmp_path / "gw"), "--table", "100",
             "--devices", "gcp0", "gcp1", "--vtibgp", "/opt/vtibgp/bin/vtibgp",
             "--config-path", "/etc/vtibgp/gcp.yaml")
    assert r.returncode == 0, r.stderr
    assert not any(k in r.stdout + r.stderr for k in KEYS)
    cfg = load(tmp_path / "gw" / "vtibgp.yaml")
    assert cfg.table == 100 and [p.interface for p in cfg.peers] == ["gcp0", "gcp1"]
    assert "run /opt/vtibgp/bin/vtibgp run --config /etc/vtibgp/gcp.yaml;" in \
        (tmp_path / "gw" / "exabgp.conf").read_text()
    r = _cli(tmp_path, 0o604, "--out", str(tmp_path / "no"))
    assert r.returncode == 1 and "mode 0604 lets others read the keys" in r.stderr
    assert not (tmp_path / "no").exists()
    r = subprocess.run([sys.executable, "-m", "vtibgp", "gcp-import", "--help"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and "--tunnel" in r.stdout
    assert _options_without_help(r.stdout) == []
