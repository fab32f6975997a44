"""vtibgp.tools.azure_import: az network vnet-gateway/vpn-connection JSON to a vtibgp gateway."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ipsec_tools import libreswan_checkconfig
from test_aws_import import exabgp_validate, nft_check

from vtibgp.config.schema import load
from vtibgp.tools.aws_import import FILES, dpd_timers, import_vpn
from vtibgp.tools.azure_import import (
    CloudImportError,
    load_json,
    parse_azure,
    read_psk_file,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "azure"
PLUGIN = f"{sys.executable} -m vtibgp run --config /etc/vtibgp/vtibgp.yaml"
KEY = "Azure.Test_Key-1234"  # hyphen is Azure's own exclusion, allowed by libreswan


def doc(name: str) -> dict[str, Any]:
    return load_json(DATA / name)[1]


def psk_file(tmp_path: Path, text: str = "AzureTestKey0123456789\n", mode: int = 0o600) -> Path:
    p = tmp_path / "psk"
    p.write_text(text)
    p.chmod(mode)
    return p


def parse(gateway: dict[str, Any] | None = None, connection: dict[str, Any] | None = None,
          **kw: Any) -> Any:
    return parse_azure(gateway if gateway is not None else doc("gateway.json"),
                       connection if connection is not None else doc("connection.json"),
                       our_asn=kw.pop("our_asn", 65010),
                       our_outside=kw.pop("our_outside", "198.51.100.7"),
                       psks=kw.pop("psks", ("AzureTestKey0123456789",) * 2), **kw)


def checkconfig(path: Path) -> None:
    r = libreswan_checkconfig(path)
    if r is not None:
        assert r.returncode == 0, r.stdout + r.stderr


def exabgp_neighbors(path: Path) -> dict[str, tuple[bool, int]]:
    """peer -> (passive, hold time) as ExaBGP's own configuration parser reads `path`."""
    code = ("import sys\n"
            "from exabgp.environment import getenv\n"
            "from exabgp.logger import log\n"
            "from exabgp.configuration.configuration import Configuration\n"
            "log.init(getenv())\n"
            "c = Configuration([sys.argv[1]])\n"
            "assert c.reload(), c.error\n"
            "for k, n in c.neighbors.items():\n"
            "    print(k.split()[1], n['passive'], n['hold-time'])\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       timeout=60, check=False,
                       env={**os.environ, "exabgp.daemon.user": "root"})
    assert r.returncode == 0, r.stderr
    return {peer: (passive == "True", int(hold)) for peer, passive, hold in
            (line.split() for line in r.stdout.splitlines() if line.strip())}


def test_two_tunnels_from_the_documented_json(tmp_path: Path) -> None:
    vpn = parse()
    assert vpn.vpn_id == "conn-site1" and vpn.cloud == "azure"
    t1, t2 = vpn.tunnels
    assert (t1.vgw_outside, t1.vgw_inside, t1.cgw_inside, str(t1.inside)) == (
        "203.0.113.30", "169.254.21.2", "169.254.21.1", "169.254.21.0/30")
    assert (t2.vgw_outside, t2.vgw_inside, t2.cgw_inside) == (
        "203.0.113.31", "169.254.22.2", "169.254.22.1")
    assert (t1.amazon_asn, t1.customer_asn, t1.hold_time) == (65515, 65010, 180)
    assert vpn.ike_proposal == "aes256-sha2_256;modp2048"
    assert vpn.esp_proposal == "aes256-sha2_256;modp2048"
    assert t1.ipsec_lifetime == 27000 and t1.ike_lifetime == 28800
    # dpdTimeoutSeconds 45: our probes every 15 s, dead after half the hold time
    assert dpd_timers(t1) == (15, 90)

    out = tmp_path / "gw"
    paths = import_vpn(vpn, out, plugin_command=PLUGIN, mtu=1400)
    assert sorted(p.name for p in paths) == sorted(FILES)
    cfg = load(out / "vtibgp.yaml")
    assert [(p.address, p.interface, p.vpn) for p in cfg.peers] == [
        ("169.254.21.2", "vti01", "conn-site1"), ("169.254.22.2", "vti02", "conn-site1")]
    assert [t.connection for t in cfg.tunnels] == [
        "azure-conn-site1-tunnel-1", "azure-conn-site1-tunnel-2"]
    assert [p.preference for p in cfg.peers] == [100, 100]
    yaml_text = (out / "vtibgp.yaml").read_text()
    assert "Azure VPN connection conn-site1" in yaml_text and "AWS" not in yaml_text

    conf = (out / "exabgp.conf").read_text()
    assert "local-address 169.254.21.1;" in conf and "local-address 169.254.22.1;" in conf
    assert conf.count("hold-time 180;") == 2 and "peer-as 65515;" in conf
    assert "local-as 65010;" in conf
    # Azure does not open sessions from APIPA addresses: ours must connect
    assert "passive" not in conf
    exabgp_validate(out / "exabgp.conf")
    assert exabgp_neighbors(out / "exabgp.conf") == {
        "169.254.21.2": (False, 180), "169.254.22.2": (False, 180)}

    ipsec = (out / "ipsec.conf").read_text()
    for needle in ("conn azure-conn-site1-tunnel-1", "right=203.0.113.30", "right=203.0.113.31",
                   "leftid=198.51.100.7", "leftvti=169.254.21.1/30", "ikelifetime=28800s",
                   "salifetime=27000s", "dpddelay=15\n", "retransmit-timeout=90s\n"):
        assert needle in ipsec, needle
    assert "AzureTestKey" not in ipsec
    checkconfig(out / "ipsec.conf")
    secrets = out / "ipsec.secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert '198.51.100.7 203.0.113.31 : PSK "AzureTestKey0123456789"' in secrets.read_text()
    nft = (out / "nftables-mss.nft").read_text()
    assert "maxseg size set 1360\n" in nft  # MTU 1400 - 40
    nft_check(out / "nftables-mss.nft")


def test_rest_api_shape_and_shared_key_in_the_json(tmp_path: Path) -> None:
    """The REST API puts the fields under `properties`; a sharedKey there is used."""
    conn = doc("connection.json")
    conn["sharedKey"] = KEY
    vpn = parse({"name": "vnetgw1", "properties": doc("gateway.json")},
                {"name": "conn-site1", "properties": conn}, psks=None)
    assert [t.psk for t in vpn.tunnels] == [KEY, KEY]
    import_vpn(vpn, tmp_path / "gw", plugin_command=PLUGIN)
    checkconfig(tmp_path / "gw" / "ipsec.conf")


def test_without_custom_addresses_on_the_connection_each_instance_needs_one() -> None:
    conn = doc("connection.json")
    del conn["gatewayCustomBgpIpAddresses"]
    assert [t.vgw_inside for t in parse(connection=conn).tunnels] == [
        "169.254.21.2", "169.254.22.2"]
    gw = doc("gateway.json")
    gw["bgpSettings"]["bgpPeeringAddresses"][0]["customBgpIpAddresses"].append("169.254.21.6")
    with pytest.raises(CloudImportError, match=r"bgpPeeringAddresses\[0\]\.customBgpIpAddresses"
                       r": expected one APIPA address"):
        parse(gw, conn)
    # the connection's choice picks one of them
    assert parse(gw).tunnels[0].vgw_inside == "169.254.21.2"


def test_gcm_and_elliptic_curve_policy() -> None:
    conn = doc("connection.json")
    conn["ipsecPolicies"][0].update(ipsecEncryption="GCMAES256", ipsecIntegrity="GCMAES256",
                                    dhGroup="ECP384", pfsGroup="ECP384", ikeIntegrity="SHA384")
    vpn = parse(connection=conn)
    assert (vpn.ike_proposal, vpn.esp_proposal) == ("aes256-sha2_384;dh20", "aes_gcm256;dh20")


@pytest.mark.parametrize(("gateway", "connection", "match"), [
    ("gateway-non-apipa.json", "connection.json",
     r"^gateway-non-apipa\.json\.bgpSettings\.bgpPeeringAddresses\[1\]\.customBgpIpAddresses"
     r"\[0\]: expected an Azure APIPA BGP address from 169\.254\.21\.0 to 169\.254\.22\.255, "
     r"got 169\.254\.30\.2"),
    ("gateway-bad-address.json", "connection.json",
     r"^gateway-bad-address\.json\.bgpSettings\.bgpPeeringAddresses\[0\]\.tunnelIpAddresses"
     r"\[0\]: expected an IPv4 address, got '203\.0\.113\.300'"),
    ("gateway.json", "connection-missing-enablebgp.json",
     r"^connection-missing-enablebgp\.json\.enableBgp: missing"),
])
def test_malformed_documents(tmp_path: Path, gateway: str, connection: str, match: str) -> None:
    gname, gdoc = load_json(DATA / gateway)
    cname, cdoc = load_json(DATA / connection)
    with pytest.raises(CloudImportError, match=match.replace("^", "^.*/", 1)):
        parse_azure(gdoc, cdoc, our_asn=65010, our_outside="198.51.100.7",
                    psks=("AzureTestKey0123456789",) * 2, gateway_name=gname,
                    connection_name=cname)


def test_not_json_names_the_file() -> None:
    with pytest.raises(CloudImportError, match=r"malformed\.json: not JSON"):
        load_json(DATA / "malformed.json")


@pytest.mark.parametrize(("edit", "match"), [
    (lambda g, c: c.update(enableBgp=False), r"connection\.json\.enableBgp: expected true"),
    (lambda g, c: c.update(connectionProtocol="IKEv1"),
     r"connectionProtocol: expected IKEv2, got 'IKEv1'"),
    (lambda g, c: c.update(ipsecPolicies=[]),
     r"ipsecPolicies: expected one custom IPsec/IKE policy, found 0"),
    (lambda g, c: c["ipsecPolicies"][0].update(dhGroup="DHGroup2"),
     r"ipsecPolicies\[0\]\.dhGroup: 'DHGroup2' is not supported here; allowed: DHGroup14"),
    (lambda g, c: c["ipsecPolicies"][0].update(pfsGroup="None"),
     r"ipsecPolicies\[0\]\.pfsGroup: 'None' is not supported"),
    (lambda g, c: c.update(dpdTimeoutSeconds=5), r"dpdTimeoutSeconds: expected 9 to 3600"),
    (lambda g, c: g["bgpSettings"].update(asn=65010), r"bgpSettings\.asn: the same as ours"),
    (lambda g, c: g["bgpSettings"]["bgpPeeringAddresses"].pop(),
     r"bgpPeeringAddresses: expected two entries \(an active-active gateway"),
    (lambda g, c: c["gatewayCustomBgpIpAddresses"][0].update(customBgpIpAddress="169.254.21.6"),
     r"gatewayCustomBgpIpAddresses: 169\.254\.21\.6 is not one of"),
    (lambda g, c: g["bgpSettings"]["bgpPeeringAddresses"][1].update(
        customBgpIpAddresses=["169.254.21.3"]),
     r"\[1\]\.customBgpIpAddresses: 169\.254\.21\.3 is the network or broadcast address"),
    (lambda g, c: c.update(name="conn site 1"), r"connection\.json\.name: 'conn site 1'"),
])
def test_bad_values(edit: Any, match: str) -> None:
    g, c = doc("gateway.json"), doc("connection.json")
    edit(g, c)
    del c["gatewayCustomBgpIpAddresses"][1:]
    with pytest.raises(CloudImportError, match=match):
        parse_azure(g, c, our_asn=65010, our_outside="198.51.100.7",
                    psks=("AzureTestKey0123456789",) * 2, gateway_name="gateway.json",
                    connection_name="connection.json")


def test_our_side_is_checked() -> None:
    with pytest.raises(CloudImportError, match="our_asn: 65515 is reserved by Azure"):
        parse(our_asn=65515)
    with pytest.raises(CloudImportError, match="our_outside: expected an IPv4 address"):
        parse(our_outside="gw.example")
    with pytest.raises(CloudImportError, match=r"sharedKey: missing \(Azure does not show "
                       r"it\): give --psk-file"):
        parse(psks=None)


def test_psk_file_mode_count_and_contents(tmp_path: Path) -> None:
    assert read_psk_file(psk_file(tmp_path), 2) == ("AzureTestKey0123456789",) * 2
    two = psk_file(tmp_path, "# tunnel keys\nFirstKey12345\n\nSecondKey6789\n")
    assert read_psk_file(two, 2) == ("FirstKey12345", "SecondKey6789")
    with pytest.raises(CloudImportError, match=r"psk: mode 0644 lets others read the keys"):
        read_psk_file(psk_file(tmp_path, mode=0o644), 2)
    with pytest.raises(CloudImportError, match=r"expected 2 pre-shared keys .* found 3"):
        read_psk_file(psk_file(tmp_path, "aaaaaaaa1\nbbbbbbbb2\ncccccccc3\n"), 2)
    secret = 'has "quote" in it'
    with pytest.raises(CloudImportError, match=r"key 1: expected 8-128") as e:
        read_psk_file(psk_file(tmp_path, secret + "\n"), 2)
    assert "quote" not in str(e.value)  # the key is never shown


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vtibgp", "azure-import", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_writes_the_gateway_and_never_prints_the_key(tmp_path: Path) -> None:
    key = psk_file(tmp_path, "CliOnlyKey98765432\n")
    r = _cli(str(DATA / "gateway.json"), str(DATA / "connection.json"), "--out",
             str(tmp_path / "gw"), "--our-asn", "65010", "--our-outside", "198.51.100.7",
             "--psk-file", str(key), "--announce", "10.20.0.0/16")
    assert r.returncode == 0, r.stderr
    assert "CliOnlyKey" not in r.stdout + r.stderr
    cfg = load(tmp_path / "gw" / "vtibgp.yaml")
    assert cfg.export_networks == ("10.20.0.0/16",) and cfg.export_local_as == 65010
    assert "VTIBGP_MTU=1400 " in (tmp_path / "gw" / "ipsec.conf").read_text()  # Azure's MTU
    bad = psk_file(tmp_path, "CliOnlyKey98765432\n", 0o640)
    r = _cli(str(DATA / "gateway.json"), str(DATA / "connection.json"), "--out",
             str(tmp_path / "no"), "--our-asn", "65010", "--our-outside", "198.51.100.7",
             "--psk-file", str(bad))
    assert r.returncode == 1 and "lets others read the keys" in r.stderr
    assert "CliOnlyKey" not in r.stdout + r.stderr and not (tmp_path / "no").exists()


def test_cli_options_all_have_help() -> None:
    from test_aws_import import _options_without_help

    r = _cli("--help")
    assert r.returncode == 0 and "--psk-file" in r.stdout
    assert _options_without_help(r.stdout) == []


def test_json_files_are_the_documented_shapes() -> None:
    """The test data holds the keys the importer reads, where the Azure CLI prints them."""
    g, c = doc("gateway.json"), doc("connection.json")
    entry = g["bgpSettings"]["bgpPeeringAddresses"][0]
    assert set(entry) == {"customBgpIpAddresses", "defaultBgpIpAddresses",
                          "ipconfigurationId", "tunnelIpAddresses"}
    assert "sharedKey" not in c and c["connectionProtocol"] == "IKEv2"
    changed = copy.deepcopy(c)
    changed["gatewayCustomBgpIpAddresses"].reverse()  # order does not matter: by config id
    assert [t.vgw_inside for t in parse(connection=changed).tunnels] == [
        "169.254.21.2", "169.254.22.2"]
    assert json.loads(json.dumps(g)) == g and os.path.getsize(DATA / "gateway.json") > 0
