"""`vtibgp azure-import`: an Azure active-active VPN gateway connection as a vtibgp gateway.

Reads what the Azure CLI prints (JSON):

* `az network vnet-gateway show -g RG -n GATEWAY`: `bgpSettings.asn` (Azure's ASN) and
  `bgpSettings.bgpPeeringAddresses[]`, one entry per gateway instance (active-active: two),
  each with `tunnelIpAddresses` (the instance's public IP, our IPsec peer) and
  `customBgpIpAddresses` (Azure's APIPA BGP addresses, 169.254.21.0 to 169.254.22.255);
* `az network vpn-connection show -g RG -n CONNECTION`: `enableBgp` (must be true),
  `connectionProtocol` (IKEv2), `ipsecPolicies` (the custom IPsec/IKE policy, one entry),
  `dpdTimeoutSeconds`, `gatewayCustomBgpIpAddresses` (which custom APIPA address each instance
  uses for this connection) and `sharedKey` (usually absent: then `--psk-file`).

Both JSON shapes are accepted: the CLI's, with the resource's properties at the top level, and
the REST API's, under `properties`. Each tunnel is one /30: Azure's APIPA address and ours, the
other usable address of that /30 (set it as the local network gateway's BGP peer address).

Facts this relies on (sources in docs/clouds.md):
* Azure does not initiate BGP from APIPA addresses: our side must. ExaBGP's neighbors are
  active (they connect) unless configured passive, and the writer never writes `passive`.
* Azure's BGP timers are fixed, keepalive 60 s and hold 180 s; ours are the same, so the
  hold time does not depend on which side's OPEN is smaller.
* Azure honours AS-path prepending from our side and documents nothing about MED; see
  docs/clouds.md for what that means for `export.steering`.

The files are written by vtibgp.tools.aws_import.import_vpn, as for AWS. Errors name the
file, the JSON key and what is allowed; the pre-shared keys are never printed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vtibgp.tools.aws_import import ID_RE, AwsImportError, Tunnel, VpnConnection

APIPA_LOW = ipaddress.IPv4Address("169.254.21.0")
APIPA_HIGH = ipaddress.IPv4Address("169.254.22.255")
AZURE_HOLD_TIME = 180  # fixed; keepalive 60 s
AZURE_DEFAULT_DPD_TIMEOUT = 45  # dpdTimeoutSeconds when the connection does not say
AZURE_IKE_LIFETIME = 28800  # Azure's IKE (main mode) SA lifetime
AZURE_RESERVED_ASNS = frozenset({8074, 8075, 12076, 65515, 65517, 65518, 65519, 65520})
AZURE_MTU = 1400  # Azure's recommendation: MTU 1400, TCP MSS 1350
# psk: what the key may hold in ipsec.secrets' quotes: printable ASCII without space, " or \
PSK_RE = re.compile(r'^[!#-\[\]-~]{8,128}$')

# the custom IPsec/IKE policy's values -> libreswan's names; what is not here is refused
IKE_ENCRYPTION = {"AES128": "aes128", "AES192": "aes192", "AES256": "aes256"}
IKE_INTEGRITY = {"SHA1": "sha1", "SHA256": "sha2_256", "SHA384": "sha2_384"}
DH_GROUP = {"DHGroup14": "modp2048", "DHGroup2048": "modp2048", "ECP256": "dh19",
            "ECP384": "dh20"}
ESP_ENCRYPTION = {"AES128": "aes128", "AES192": "aes192", "AES256": "aes256",
                  "GCMAES128": "aes_gcm128", "GCMAES192": "aes_gcm192",
                  "GCMAES256": "aes_gcm256"}
ESP_INTEGRITY = {"SHA1": "sha1", "SHA256": "sha2_256"}
PFS_GROUP = {"PFS14": "modp2048", "PFS2048": "modp2048", "ECP256": "dh19", "ECP384": "dh20"}


class CloudImportError(AwsImportError):
    """An Azure or Google Cloud document cannot be used; the text names file and key."""


# ------------------------------------------------------------------ JSON documents


def load_json(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(name for errors, the document) of JSON file `path`: an object, else an error."""
    name = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise CloudImportError(f"{name}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise CloudImportError(f"{name}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CloudImportError(f"{name}: expected a JSON object (the command's --output json / "
                               f"--format=json), got {type(doc).__name__}")
    return name, doc


def get(doc: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...],
        *, required: bool = True) -> Any:
    """doc[key] of type `kind`; `where` names file and path for the error."""
    if key not in doc or doc[key] is None:
        if required:
            raise CloudImportError(f"{where}.{key}: missing")
        return None
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CloudImportError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def ipv4(value: Any, where: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise CloudImportError(f"{where}: expected an IPv4 address, got {value!r}") from None


def public_ipv4(value: Any, where: str) -> str:
    """A tunnel endpoint: an IPv4 address that is not loopback, link-local, multicast or
    0.0.0.0 (private ones are allowed: a gateway may sit behind NAT or on a private link)."""
    ip = ipv4(value, where)
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        raise CloudImportError(f"{where}: expected a tunnel endpoint's IPv4 address, got {ip}")
    return str(ip)


def asn(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 0xFFFFFFFF \
            or value == 23456:
        raise CloudImportError(f"{where}: expected an ASN from 1 to 4294967295 (not 23456), "
                               f"got {value!r}")
    return value


def read_psk_file(path: str | Path, count: int) -> tuple[str, ...]:
    """The pre-shared keys in `path`, one a line (blank lines and # comments skipped).
    `count` keys, or one for all. The file must be ours alone (no group/other access)."""
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise CloudImportError(f"{name}: cannot read: {e.strerror or e}") from None
    with os.fdopen(fd, encoding="utf-8") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise CloudImportError(f"{name}: mode {mode:04o} lets others read the keys; "
                                   f"chmod 600 {name}")
        lines = [s.strip() for s in f.read().splitlines()]
    keys = tuple(s for s in lines if s and not s.startswith("#"))
    if len(keys) not in (1, count):
        raise CloudImportError(f"{name}: expected {count} pre-shared keys (one a line, in "
                               f"tunnel order) or 1 for all, found {len(keys)}")
    for i, k in enumerate(keys, 1):
        if not PSK_RE.match(k):
            raise CloudImportError(f"{name}: key {i}: expected 8-128 printable ASCII "
                                   "characters without space, \" or \\ (the key itself is "
                                   "not shown)")
    return keys if len(keys) == count else keys * count


def pair(cloud_ip: ipaddress.IPv4Address, prefixlen: int, where: str,
         ours: ipaddress.IPv4Address | None = None
         ) -> tuple[ipaddress.IPv4Network, str]:
    """(the /30, our address) for a tunnel whose cloud end is `cloud_ip`: ours is the other
    usable address (checked against `ours` when the document gives it)."""
    if prefixlen != 30:
        raise CloudImportError(f"{where}: expected a /30, got /{prefixlen}")
    net = ipaddress.IPv4Network(f"{cloud_ip}/30", strict=False)
    if not net.subnet_of(ipaddress.IPv4Network("169.254.0.0/16")):
        raise CloudImportError(f"{where}: expected a link-local /30 in 169.254.0.0/16, "
                               f"got {net}")
    first, second = net.network_address + 1, net.network_address + 2
    if cloud_ip not in (first, second):
        raise CloudImportError(f"{where}: {cloud_ip} is the network or broadcast address of "
                               f"{net}; expected {first} or {second}")
    other = second if cloud_ip == first else first
    if ours is not None and ours != other:
        raise CloudImportError(f"{where}: our address {ours} is not the other usable address "
                               f"of {net} ({other})")
    return net, str(other)


# ------------------------------------------------------------------ Azure


def _props(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """The resource's properties: the CLI prints them at the top level, REST under
    `properties`."""
    inner = doc.get("properties")
    return inner if isinstance(inner, dict) else doc


def _apipa(value: Any, where: str) -> ipaddress.IPv4Address:
    ip = ipv4(value, where)
    if not APIPA_LOW <= ip <= APIPA_HIGH:
        raise CloudImportError(f"{where}: expected an Azure APIPA BGP address from "
                               f"169.254.21.0 to 169.254.22.255, got {ip}")
    return ip


def _proposals(policies: Sequence[Any], where: str) -> tuple[str, str, int | None]:
    """(libreswan ike=, esp=, IPsec SA lifetime) from the connection's `ipsecPolicies`."""
    if len(policies) != 1:
        raise CloudImportError(
            f"{where}: expected one custom IPsec/IKE policy, found {len(policies)} (set one "
            "with `az network vpn-connection ipsec-policy add`: Azure's default is a list "
            "of offers, and the gateway here needs the one both sides use)")
    pol = policies[0]
    w = f"{where}[0]"
    if not isinstance(pol, dict):
        raise CloudImportError(f"{w}: expected an object, got {pol!r}")

    def pick(key: str, table: Mapping[str, str]) -> str:
        v = get(pol, key, w, str)
        if v not in table:
            raise CloudImportError(f"{w}.{key}: {v!r} is not supported here; allowed: "
                                   + ", ".join(table))
        return table[v]

    ike = f"{pick('ikeEncryption', IKE_ENCRYPTION)}-{pick('ikeIntegrity', IKE_INTEGRITY)};" \
          f"{pick('dhGroup', DH_GROUP)}"
    enc = pick("ipsecEncryption", ESP_ENCRYPTION)
    integ = get(pol, "ipsecIntegrity", w, str)
    if enc.startswith("aes_gcm"):
        if integ != pol["ipsecEncryption"]:
            raise CloudImportError(f"{w}.ipsecIntegrity: with ipsecEncryption "
                                   f"{pol['ipsecEncryption']} expected the same, got {integ!r}")
        esp = enc
    else:
        esp = f"{enc}-{pick('ipsecIntegrity', ESP_INTEGRITY)}"
    esp += f";{pick('pfsGroup', PFS_GROUP)}"
    life = get(pol, "saLifeTimeSeconds", w, int, required=False)
    if life is not None and not 300 <= life <= 172799:
        raise CloudImportError(f"{w}.saLifeTimeSeconds: expected 300 to 172799, got {life}")
    return ike, esp, life


def parse_azure(gateway: Mapping[str, Any], connection: Mapping[str, Any], *, our_asn: int,
                our_outside: str, psks: Sequence[str] | None = None,
                gateway_name: str = "gateway.json", connection_name: str = "connection.json",
                name: str | None = None) -> VpnConnection:
    """The two tunnels of one connection to an active-active Azure VPN gateway. `psks`: the
    keys (from --psk-file) when the connection JSON has no `sharedKey`."""
    gw, conn = _props(gateway), _props(connection)
    gwhere, cwhere = gateway_name, connection_name
    our_asn = asn(our_asn, "our_asn")
    if our_asn in AZURE_RESERVED_ASNS:
        raise CloudImportError(f"our_asn: {our_asn} is reserved by Azure (8074, 8075, 12076, "
                               "65515, 65517-65520)")
    our_outside = public_ipv4(our_outside, "our_outside")
    vpn_id = name or get(connection, "name", cwhere, str)
    if not ID_RE.match(vpn_id):
        raise CloudImportError(f"{cwhere}.name: {vpn_id!r} cannot name the IPsec connections "
                               "(letters, digits and -, at most 63); give --name")

    bgp = get(gw, "bgpSettings", gwhere, dict)
    bw = f"{gwhere}.bgpSettings"
    azure_asn = asn(get(bgp, "asn", bw, int), f"{bw}.asn")
    if azure_asn == our_asn:
        raise CloudImportError(f"{bw}.asn: the same as ours ({our_asn}); the sessions are eBGP")
    peering = get(bgp, "bgpPeeringAddresses", bw, list)
    if len(peering) != 2:
        raise CloudImportError(f"{bw}.bgpPeeringAddresses: expected two entries (an "
                               f"active-active gateway: one per instance), found {len(peering)}")

    if get(conn, "enableBgp", cwhere, bool) is not True:
        raise CloudImportError(f"{cwhere}.enableBgp: expected true (vtibgp needs the BGP "
                               "sessions)")
    proto = get(conn, "connectionProtocol", cwhere, str, required=False) or "IKEv2"
    if proto != "IKEv2":
        raise CloudImportError(f"{cwhere}.connectionProtocol: expected IKEv2, got {proto!r}")
    ike, esp, sa_life = _proposals(get(conn, "ipsecPolicies", cwhere, list, required=False)
                                   or [], f"{cwhere}.ipsecPolicies")
    dpd = get(conn, "dpdTimeoutSeconds", cwhere, int, required=False)
    dpd = AZURE_DEFAULT_DPD_TIMEOUT if dpd is None else dpd
    if not 9 <= dpd <= 3600:
        raise CloudImportError(f"{cwhere}.dpdTimeoutSeconds: expected 9 to 3600, got {dpd}")
    key = get(conn, "sharedKey", cwhere, str, required=False)
    if key is not None:
        if not PSK_RE.match(key):
            raise CloudImportError(f"{cwhere}.sharedKey: expected 8-128 printable ASCII "
                                   "characters without space, \" or \\ (not shown)")
        keys: Sequence[str] = (key, key)
    elif psks is not None:
        keys = psks
    else:
        raise CloudImportError(f"{cwhere}.sharedKey: missing (Azure does not show it): give "
                               "--psk-file with the connection's key")

    chosen: dict[str, ipaddress.IPv4Address] = {}
    custom = get(conn, "gatewayCustomBgpIpAddresses", cwhere, list, required=False) or []
    for i, c in enumerate(custom):
        w = f"{cwhere}.gatewayCustomBgpIpAddresses[{i}]"
        if not isinstance(c, dict):
            raise CloudImportError(f"{w}: expected an object, got {c!r}")
        chosen[get(c, "ipConfigurationId", w, str).lower()] = \
            _apipa(get(c, "customBgpIpAddress", w, str), f"{w}.customBgpIpAddress")

    tunnels = []
    for i, entry in enumerate(peering):
        w = f"{bw}.bgpPeeringAddresses[{i}]"
        if not isinstance(entry, dict):
            raise CloudImportError(f"{w}: expected an object, got {entry!r}")
        outs = get(entry, "tunnelIpAddresses", w, list)
        if len(outs) != 1:
            raise CloudImportError(f"{w}.tunnelIpAddresses: expected the instance's one "
                                   f"public IP, found {len(outs)}")
        outside = public_ipv4(outs[0], f"{w}.tunnelIpAddresses[0]")
        addrs = [_apipa(a, f"{w}.customBgpIpAddresses[{j}]") for j, a in
                 enumerate(get(entry, "customBgpIpAddresses", w, list))]
        config_id = (get(entry, "ipconfigurationId", w, str, required=False) or "").lower()
        if config_id in chosen:
            mine = chosen[config_id]
            if mine not in addrs:
                raise CloudImportError(f"{cwhere}.gatewayCustomBgpIpAddresses: {mine} is not "
                                       f"one of {w}.customBgpIpAddresses "
                                       f"({', '.join(map(str, addrs)) or 'none'})")
        elif len(addrs) == 1:
            mine = addrs[0]
        else:
            raise CloudImportError(f"{w}.customBgpIpAddresses: expected one APIPA address, or "
                                   f"the connection's gatewayCustomBgpIpAddresses choosing one "
                                   f"for {config_id or 'this instance'}, found {len(addrs)}")
        net, ours = pair(mine, 30, f"{w}.customBgpIpAddresses")
        tunnels.append(Tunnel(
            number=i + 1, cgw_outside=our_outside, vgw_outside=outside, inside=net,
            cgw_inside=ours, vgw_inside=str(mine), customer_asn=our_asn,
            amazon_asn=azure_asn, hold_time=AZURE_HOLD_TIME, psk=keys[i],
            # our DPD probes a third of Azure's DPD timeout apart, 3 tries (dpd_timers caps
            # them by the hold time)
            dpd_interval=max(1, dpd // 3), dpd_retries=3,
            ike_lifetime=AZURE_IKE_LIFETIME, ipsec_lifetime=sa_life, tcp_mss=None))
    t1, t2 = tunnels
    if t1.vgw_outside == t2.vgw_outside:
        raise CloudImportError(f"{bw}.bgpPeeringAddresses[1].tunnelIpAddresses[0]: the same as "
                               f"instance 0's ({t1.vgw_outside}); expected two public IPs")
    if t1.inside.overlaps(t2.inside):
        raise CloudImportError(f"{bw}.bgpPeeringAddresses[1]: the same /30 as instance 0 "
                               f"({t1.inside}); each tunnel needs its own")
    note = ("# Azure: the BGP timers are fixed (keepalive 60 s, hold 180 s), and Azure does not\n"
            "# open BGP sessions from APIPA addresses: ExaBGP connects (exabgp.conf). Azure\n"
            "# documents AS-path prepending, not MED, for steering; equal preferences keep\n"
            "# both tunnels in use (docs/clouds.md).\n")
    return VpnConnection(vpn_id, (t1, t2), cloud="azure", ike_proposal=ike,
                         esp_proposal=esp, max_prefix=1000, yaml_note=note)


__all__ = ["APIPA_HIGH", "APIPA_LOW", "AZURE_HOLD_TIME", "AZURE_MTU", "CloudImportError",
           "load_json", "pair", "parse_azure", "read_psk_file"]
