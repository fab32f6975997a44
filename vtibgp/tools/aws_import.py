"""`vtibgp aws-import`: from AWS's VPN connection configuration to a gateway's config files.

Reads the `CustomerGatewayConfiguration` XML of one Site-to-Site VPN connection (what
`aws ec2 describe-vpn-connections` returns in that field, or the "download configuration"
XML: a `vpn_connection` element with two `ipsec_tunnel`s) and writes into one directory:

  vtibgp.yaml     peers (VGW inside address, device, vpn id, outside address, max_prefix 1000,
                  families) and the tunnels: map (connection name -> device)
  exabgp.conf     rendered from that vtibgp.yaml (vtibgp.exabgp.render.render)
  ipsec.conf      libreswan conns for both tunnels (route-based, VTI devices)
  ipsec.secrets   the two pre-shared keys, mode 0600
  sysctl.conf     the tunnel devices' sysctls
  nftables-mss.nft  TCP MSS clamping on the tunnel devices (AWS does no path MTU discovery)

The tunnel device MTU (`mtu`, default 1436, at most 1446) decides the MSS clamp (MTU - 40 for
IPv4, MTU - 60 for IPv6). Dead peer detection is derived from the BGP hold time so that the
IPsec daemon notices a dead AWS endpoint before BGP does (see `dpd_timers`); docs/gateway.md
says what each file holds and why.

Everything is validated before anything is written; errors name the element path, e.g.
`vpn_connection/ipsec_tunnel[2]/vpn_gateway/tunnel_inside_address/ip_address`. Files are
written into a private temporary directory beside the target and moved into place only when
all of them are complete, so a failure leaves nothing behind.

IPv6 inside addresses (transit gateway VPNs with a /126 from fd00::/8) are handled: the BGP
session is then IPv6 (ipv6 unicast), the traffic selectors ::/0, and the router id comes from
the customer gateway's outside IPv4 address unless given.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vtibgp.config import schema as vconfig
from vtibgp.exabgp.render import ExabgpConfigError, Session, plugin_command, render

V4_LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")
V6_INSIDE = ipaddress.IPv6Network("fd00::/8")
# AWS refuses these inside CIDRs (they collide with its own link-local services)
RESERVED_INSIDE = tuple(ipaddress.IPv4Network(n) for n in (
    *(f"169.254.{i}.0/30" for i in range(6)), "169.254.169.252/30"))
# customer ASNs AWS refuses: everywhere, or in one region
CUSTOMER_ASN_REFUSED = {7224: None, 9059: "eu-west-1", 10124: "ap-northeast-1",
                        17943: "ap-southeast-1"}
AS_TRANS = 23456
PSK_RE = re.compile(r"^[A-Za-z1-9._][A-Za-z0-9._]{7,63}$")  # AWS: 8-64 of these, no leading 0
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
DEFAULT_PLUGIN = plugin_command()
DEFAULT_UPDOWN = "/usr/local/libexec/vtibgp/vtibgp-updown.sh"
FILES = ("vtibgp.yaml", "exabgp.conf", "ipsec.conf", "ipsec.secrets", "sysctl.conf",
         "nftables-mss.nft")
# the IKE daemon's files per `ike` (import_vpn); the others are the same for both
IKE_FILES = {"libreswan": ("ipsec.conf", "ipsec.secrets"),
             "strongswan": ("swanctl.conf", "strongswan-vtibgp.conf")}

# Tunnel MTU. AWS's best-practice page allows at most 1446 inside a tunnel (MSS 1406), less with
# some algorithms; its generic sample configuration uses 1436, which fits every algorithm AWS
# offers. AWS does not support path MTU discovery inside the tunnel, so the MSS is clamped.
DEFAULT_MTU = 1436
MTU_MAX = 1446
MTU_MIN = 1280  # IPv6's minimum; nothing smaller is useful for a tunnel carrying a LAN
TCP_IP4_HEADERS = 40  # IPv4 (20) + TCP (20) header bytes without options
TCP_IP6_HEADERS = 60  # IPv6 (40) + TCP (20)
PREFERRED = 200  # peers[].preference of the tunnel --prefer-tunnel names (the other: 100)
DEVICE_KINDS = ("vti", "xfrm")  # tunnel devices: VTI (marks) or XFRM interfaces (if_id)
XFRM_DEVICES = ("ipsec1", "ipsec2")  # default devices for device "xfrm" (libreswan's ipsecN)


class AwsImportError(ValueError):
    """The XML cannot be used; the text names the element path and what is wrong."""


@dataclass(frozen=True, slots=True)
class Tunnel:
    number: int  # 1 or 2, the order in the XML
    cgw_outside: str
    vgw_outside: str
    inside: ipaddress.IPv4Network | ipaddress.IPv6Network
    cgw_inside: str
    vgw_inside: str
    customer_asn: int
    amazon_asn: int
    hold_time: int
    psk: str
    dpd_interval: int
    dpd_retries: int
    ike_lifetime: int | None
    ipsec_lifetime: int | None
    tcp_mss: int | None


@dataclass(frozen=True, slots=True)
class VpnConnection:
    vpn_id: str
    tunnels: tuple[Tunnel, Tunnel]
    # which cloud (the name prefix of the IPsec connections, `vtibgp CLOUD-import`); the other
    # importers (azure_import, gcp_import) fill these, AWS's are the defaults
    cloud: str = "aws"
    ike_proposal: str = "aes256-sha2_256;modp2048"  # libreswan ike=
    esp_proposal: str = "aes256-sha2_256;modp2048"  # libreswan esp=
    max_prefix: int = 1000  # AWS: at most 1,000 routes per VPN connection
    yaml_note: str = ""  # comment lines for vtibgp.yaml instead of AWS's (MED, preferences)


CLOUD_SHORT = {"aws": "AWS", "azure": "Azure", "gcp": "Google Cloud"}
CLOUD_NAMES = {"aws": "AWS VPN connection", "azure": "Azure VPN connection",
               "gcp": "Google Cloud HA VPN"}


def label(vpn: VpnConnection) -> str:
    """E.g. "AWS VPN connection vpn-0123... (`vtibgp aws-import`)", for file headers."""
    return f"{CLOUD_NAMES.get(vpn.cloud, vpn.cloud)} {vpn.vpn_id} (`vtibgp {vpn.cloud}-import`)"


# ------------------------------------------------------------------ reading the XML


def _parse_xml(xml_text: str | bytes) -> ET.Element:
    raw = xml_text.encode() if isinstance(xml_text, str) else xml_text
    head = raw.upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
        raise AwsImportError("vpn_connection: DOCTYPE/ENTITY declarations are refused (AWS's "
                             "document has none; they could expand entities)")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise AwsImportError(f"not well-formed XML: {e}") from None
    if root.tag != "vpn_connection":
        raise AwsImportError(f"{root.tag}: expected the root element vpn_connection "
                             "(the CustomerGatewayConfiguration document)")
    return root


def _text(elem: ET.Element, rel: str, base: str, *, required: bool = True) -> str | None:
    node = elem.find(rel)
    value = (node.text or "").strip() if node is not None else ""
    if not value:
        if required:
            raise AwsImportError(f"{base}/{rel}: missing or empty")
        return None
    return value


def _req(elem: ET.Element, rel: str, base: str) -> str:
    v = _text(elem, rel, base)
    assert v is not None
    return v


def _int(elem: ET.Element, rel: str, base: str, lo: int, hi: int,
         *, required: bool = True) -> int | None:
    v = _text(elem, rel, base, required=required)
    if v is None:
        return None
    try:
        n = int(v)
    except ValueError:
        raise AwsImportError(f"{base}/{rel}: expected an integer, got {v!r}") from None
    if not lo <= n <= hi:
        raise AwsImportError(f"{base}/{rel}: expected {lo} to {hi}, got {n}")
    return n


def _ip(elem: ET.Element, rel: str, base: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    v = _req(elem, rel, base)
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        raise AwsImportError(f"{base}/{rel}: expected an IP address, got {v!r}") from None


def _outside(elem: ET.Element, rel: str, base: str) -> str:
    ip = _ip(elem, rel, base)
    if ip.version != 4 or ip.is_loopback or ip.is_link_local or ip.is_multicast \
            or ip.is_unspecified:
        raise AwsImportError(f"{base}/{rel}: expected a public IPv4 tunnel endpoint, got {ip}")
    return str(ip)


def _inside(t: ET.Element, base: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                               str, str]:
    """The inside CIDR, our address and the VGW's. IPv4: `tunnel_inside_address`
    (ip_address, network_mask, network_cidr). IPv6 (transit gateway VPNs,
    TunnelInsideIpVersion ipv6): `tunnel_inside_ipv6_address` (ip_address, prefix_length), or
    an IPv6 ip_address in `tunnel_inside_address` with network_cidr 126."""
    v4_elem, v6_elem = "tunnel_inside_address", "tunnel_inside_ipv6_address"
    has_v6 = t.find(f"customer_gateway/{v6_elem}") is not None
    if has_v6 and t.find(f"customer_gateway/{v4_elem}") is not None:
        raise AwsImportError(f"{base}/customer_gateway: both {v4_elem} and {v6_elem}; a tunnel "
                             "has one inside IP version (AWS's TunnelInsideIpVersion: ipv4 or "
                             "ipv6), so keep the one the connection was created with")
    elem, len_tag = (v6_elem, "prefix_length") if has_v6 else (v4_elem, "network_cidr")
    cbase, vbase = f"{base}/customer_gateway/{elem}", f"{base}/vpn_gateway/{elem}"
    ours = _ip(t, f"customer_gateway/{elem}/ip_address", base)
    theirs = _ip(t, f"vpn_gateway/{elem}/ip_address", base)
    if has_v6 and ours.version != 6:
        raise AwsImportError(f"{cbase}/ip_address: expected an IPv6 address, got {ours}")
    want = 30 if ours.version == 4 else 126
    for side in ("customer_gateway", "vpn_gateway"):
        cidr_path = f"{side}/{elem}/{len_tag}"
        length = _int(t, cidr_path, base, 0, 128, required=False)
        if length is not None and length != want:
            raise AwsImportError(f"{base}/{cidr_path}: expected {want} (AWS inside CIDRs are "
                                 f"/{want} for IPv{ours.version}"
                                 + (", from fd00::/8" if want == 126 else "")
                                 + f"), got {length}")
    mask = _text(t, f"customer_gateway/{elem}/network_mask", base, required=False)
    if ours.version == 4 and mask is not None and mask != "255.255.255.252":
        raise AwsImportError(f"{cbase}/network_mask: expected 255.255.255.252, got {mask!r}")
    net = ipaddress.ip_network(f"{ours}/{want}", strict=False)
    if isinstance(net, ipaddress.IPv4Network):
        if not net.subnet_of(V4_LINK_LOCAL):
            raise AwsImportError(f"{cbase}/ip_address: expected an address in 169.254.0.0/16, "
                                 f"got {ours}")
        for r in RESERVED_INSIDE:
            if net == r:
                raise AwsImportError(f"{cbase}/ip_address: {net} is reserved by AWS "
                                     "(169.254.0.0/30 to 169.254.5.0/30 and "
                                     "169.254.169.252/30 cannot be inside CIDRs)")
    elif not net.subnet_of(V6_INSIDE):
        raise AwsImportError(f"{cbase}/ip_address: expected an address in fd00::/8 (AWS's "
                             f"IPv6 inside CIDRs are /126s of the ULA range fd00::/8), "
                             f"got {ours}")
    first, second = net.network_address + 1, net.network_address + 2
    if theirs != first:
        raise AwsImportError(f"{vbase}/ip_address: expected {first} (the first usable "
                             f"address of {net}), got {theirs}")
    if ours != second:
        raise AwsImportError(f"{cbase}/ip_address: expected {second} (the second usable "
                             f"address of {net}; host bits beyond it are not AWS's), "
                             f"got {ours}")
    return net, str(ours), str(theirs)


def _customer_asn(n: int, where: str, region: str | None) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 0xFFFFFFFF:
        raise AwsImportError(f"{where}: expected an ASN from 1 to 4294967295, got {n!r}")
    if n == AS_TRANS:
        raise AwsImportError(f"{where}: 23456 is AS_TRANS, not a usable ASN")
    if n in CUSTOMER_ASN_REFUSED:
        only = CUSTOMER_ASN_REFUSED[n]
        if only is None:
            raise AwsImportError(f"{where}: AWS refuses customer ASN {n} in every region")
        if region is None or region == only:
            raise AwsImportError(f"{where}: AWS refuses customer ASN {n} in {only} (pass the "
                                 "region if the VPN is elsewhere)")
    return n


def _amazon_asn(n: int, where: str) -> int:
    if not (n == 7224 or 64512 <= n <= 65534 or 4200000000 <= n <= 4294967294):
        raise AwsImportError(f"{where}: expected an Amazon-side ASN (64512-65534, "
                             f"4200000000-4294967294, or the legacy 7224), got {n}")
    return n


def _tunnel(t: ET.Element, number: int, our_asn: int | None, region: str | None) -> Tunnel:
    base = f"vpn_connection/ipsec_tunnel[{number}]"
    net, ours, theirs = _inside(t, base)
    asn_path = "customer_gateway/bgp/asn"
    xml_asn = _int(t, asn_path, base, 1, 0xFFFFFFFF)
    assert xml_asn is not None
    customer_asn = _customer_asn(our_asn if our_asn is not None else xml_asn,
                                 "our_asn" if our_asn is not None else f"{base}/{asn_path}",
                                 region)
    amazon = _int(t, "vpn_gateway/bgp/asn", base, 1, 0xFFFFFFFF)
    assert amazon is not None
    _amazon_asn(amazon, f"{base}/vpn_gateway/bgp/asn")
    if amazon == customer_asn:
        raise AwsImportError(f"{base}/vpn_gateway/bgp/asn: the same as ours ({amazon}); the "
                             "sessions are eBGP")
    hold = _int(t, "vpn_gateway/bgp/hold_time", base, 0, 65535, required=False)
    if hold is None:
        hold = _int(t, "customer_gateway/bgp/hold_time", base, 0, 65535, required=False)
    hold = 30 if hold is None else hold
    if 0 < hold < 3:
        raise AwsImportError(f"{base}/vpn_gateway/bgp/hold_time: 0 or at least 3, got {hold}")
    psk = _req(t, "ike/pre_shared_key", base)
    if not PSK_RE.match(psk):
        raise AwsImportError(f"{base}/ike/pre_shared_key: expected 8-64 letters, digits, '.' "
                             "or '_', not starting with 0 (the key itself is not shown)")
    dpd = "ipsec/dead_peer_detection"
    interval = _int(t, f"{dpd}/interval", base, 1, 3600)
    retries = _int(t, f"{dpd}/retries", base, 1, 100)
    assert interval is not None and retries is not None
    return Tunnel(
        number=number,
        cgw_outside=_outside(t, "customer_gateway/tunnel_outside_address/ip_address", base),
        vgw_outside=_outside(t, "vpn_gateway/tunnel_outside_address/ip_address", base),
        inside=net, cgw_inside=ours, vgw_inside=theirs,
        customer_asn=customer_asn, amazon_asn=amazon, hold_time=hold, psk=psk,
        dpd_interval=interval, dpd_retries=retries,
        ike_lifetime=_int(t, "ike/lifetime", base, 60, 86400 * 7, required=False),
        ipsec_lifetime=_int(t, "ipsec/lifetime", base, 60, 86400 * 7, required=False),
        tcp_mss=_int(t, "ipsec/tcp_mss_adjustment", base, 500, 9000, required=False),
    )


def parse_vpn(xml_text: str | bytes, *, our_asn: int | None = None,
              region: str | None = None) -> VpnConnection:
    """Read and validate the XML; raise AwsImportError naming the element on any problem."""
    root = _parse_xml(xml_text)
    vpn_id = (root.get("id") or "").strip()
    if not ID_RE.match(vpn_id):
        raise AwsImportError(f"vpn_connection/@id: expected the VPN connection id "
                             f"(vpn-...), got {vpn_id!r}")
    elems = root.findall("ipsec_tunnel")
    if len(elems) != 2:
        which = "vpn_connection/ipsec_tunnel[2]" if len(elems) == 1 else \
            "vpn_connection/ipsec_tunnel"
        raise AwsImportError(f"{which}: expected exactly two ipsec_tunnel elements (one VPN "
                             f"connection = two tunnels), found {len(elems)}")
    t1, t2 = (_tunnel(e, i, our_asn, region) for i, e in enumerate(elems, 1))
    base2 = "vpn_connection/ipsec_tunnel[2]"
    if t1.inside.overlaps(t2.inside):
        raise AwsImportError(f"{base2}/customer_gateway/tunnel_inside_address/ip_address: the "
                             f"same inside CIDR as tunnel 1 ({t1.inside})")
    if t1.inside.version != t2.inside.version:
        raise AwsImportError(f"{base2}/customer_gateway/tunnel_inside_address/ip_address: "
                             "IPv4 and IPv6 inside addresses mixed in one VPN connection")
    if t1.vgw_outside == t2.vgw_outside:
        raise AwsImportError(f"{base2}/vpn_gateway/tunnel_outside_address/ip_address: the same "
                             f"as tunnel 1's ({t1.vgw_outside}); AWS uses two endpoints")
    if t1.cgw_outside != t2.cgw_outside:
        raise AwsImportError(f"{base2}/customer_gateway/tunnel_outside_address/ip_address: "
                             f"{t2.cgw_outside}, tunnel 1 has {t1.cgw_outside} (one customer "
                             "gateway)")
    if (t1.customer_asn, t1.amazon_asn) != (t2.customer_asn, t2.amazon_asn):
        raise AwsImportError(f"{base2}/vpn_gateway/bgp/asn: the ASNs differ from tunnel 1's")
    return VpnConnection(vpn_id, (t1, t2))


# ------------------------------------------------------------------ the files


def connection_name(vpn: VpnConnection, t: Tunnel) -> str:
    """The IPsec connection name of tunnel `t` (libreswan conn, strongSwan connection and
    CHILD_SA): what the updown passes as PLUTO_CONNECTION, and vtibgp.yaml's tunnels: key."""
    return f"{vpn.cloud}-{vpn.vpn_id}-tunnel-{t.number}"


_connection_name = connection_name


def lifetimes(t: Tunnel) -> tuple[int, int]:
    """(IKE, IPsec) SA lifetimes in seconds: the XML's, else AWS's defaults (8 h and 1 h)."""
    return t.ike_lifetime or 28800, t.ipsec_lifetime or 3600


def dpd_timers(t: Tunnel) -> tuple[int, int]:
    """(probe interval, give-up timeout) in seconds for our side's dead peer detection.

    AWS's documented defaults (Site-to-Site VPN User Guide, "Tunnel options for your Site-to-Site
    VPN connection"): on AWS's side the DPD timeout is 30 s and cannot be set lower, and the DPD
    timeout action is Clear; the configuration AWS generates asks the customer gateway for DPD
    every 10 s with 3 retries (ipsec/dead_peer_detection in the XML). AWS never initiates a
    tunnel, so the customer gateway must send DPD, notice a dead endpoint and restart.

    Taken literally (probe every 10 s, dead after 30 s more) a dead endpoint is noticed after up
    to 40 s: later than BGP's hold time of 30 s, so BGP would fail over first and the updown
    signal would come too late to matter. So ours probes every hold/6 s (5 s for 30 s; at least
    every second, never less often than AWS's interval) and gives up after hold/2 s of
    unanswered retransmissions (15 s): a dead endpoint is noticed within 2/3 of the hold time.
    The 30 s floor is for AWS's side only: it decides when AWS clears, not when we restart. A
    hold time of 0 (no hold timer): AWS's interval x retries."""
    if t.hold_time == 0:
        return t.dpd_interval, t.dpd_interval * t.dpd_retries
    delay = max(1, min(t.dpd_interval, t.hold_time // 6))
    return delay, max(1, t.hold_time // 2)


def mss_clamp(vpn: VpnConnection, mtu: int) -> tuple[int, int]:
    """(IPv4, IPv6) TCP MSS that fit a tunnel device of MTU `mtu`: MTU minus the IP and TCP
    headers. If AWS's XML asks for less (ipsec/tcp_mss_adjustment, 1379 in its samples), that."""
    v4, v6 = mtu - TCP_IP4_HEADERS, mtu - TCP_IP6_HEADERS
    asked = [t.tcp_mss for t in vpn.tunnels if t.tcp_mss is not None]
    if asked:
        v4 = min(v4, *asked)
        v6 = min(v6, v4 - (TCP_IP6_HEADERS - TCP_IP4_HEADERS))
    return v4, v6


def nftables_mss(vpn: VpnConnection, devices: Sequence[str], mtu: int) -> str:
    """An nftables file (nft -f) clamping the TCP MSS of connections through the tunnels."""
    v4, v6 = mss_clamp(vpn, mtu)
    asked = vpn.tunnels[0].tcp_mss
    names = ", ".join(f'"{d}"' for d in devices)
    why = (f"# AWS's configuration asks for MSS {asked}, less than that: {v4} is used.\n"
           if asked is not None and asked < mtu - TCP_IP4_HEADERS else "")
    head = (
        f"#!/usr/sbin/nft -f\n"
        f"# TCP MSS clamping for {label(vpn)}.\n"
        "#\n"
        + ("# Why: AWS does not do path MTU discovery inside its tunnels (at most MTU 1446 and"
           " MSS\n# 1406 fit, depending on the algorithms), so a TCP segment that does not fit is\n"
           if vpn.cloud == "aws" else
           "# Why: a TCP segment larger than the tunnel MTU allows is\n") +
        "# fragmented or lost. The tunnel devices " + ", ".join(devices) + f" have MTU {mtu} (the\n"
        "# updown sets it, VTIBGP_MTU in ipsec.conf's leftupdown=); a segment fits when its MSS\n"
        f"# is at most MTU - 40 = {mtu - TCP_IP4_HEADERS} (IPv4 and TCP headers, 20 bytes each),"
        f" MTU - 60 = {mtu - TCP_IP6_HEADERS}\n"
        "# for IPv6 (40 + 20).\n"
        + why +
        "# The rules lower, never raise, the MSS option of SYN and SYN-ACK packets forwarded into\n"
        "# a tunnel (our hosts' offer, so the cloud's side sends small segments) and out of one\n"
        "# (the far hosts' offer, so ours do). The gateway's own connections (BGP) take the MSS\n"
        "# from the device MTU already. `vtibgp doctor` checks every tunnel device's clamp.\n"
        "#\n"
        "# Load with `nft -f nftables-mss.nft` (check first: `nft -c -f nftables-mss.nft`), or\n"
        "# include it from /etc/nftables.conf. Loading again replaces the table, nothing else.\n"
    )
    syn = "tcp flags & (syn | rst) == syn"
    rules = []
    for proto, mss in (("ipv4", v4), ("ipv6", v6)):
        for direction in ("oifname", "iifname"):
            rules.append(f"        meta nfproto {proto} {direction} {{ {names} }} {syn} "
                         f"tcp option maxseg size > {mss} tcp option maxseg size set {mss}")
    body = [
        "table inet vtibgp_mss",
        "delete table inet vtibgp_mss",
        "table inet vtibgp_mss {",
        "    chain forward {",
        "        type filter hook forward priority mangle; policy accept;",
        *rules,
        "    }",
        "}",
    ]
    return head + "\n" + "\n".join(body) + "\n"


def vtibgp_yaml(vpn: VpnConnection, devices: Sequence[str], table: str | int,
                prefer_tunnel: int | None = None, announce: Sequence[str] = ()) -> str:
    family = "ipv4" if vpn.tunnels[0].inside.version == 4 else "ipv6"
    data: dict[str, Any] = {
        "kernel": {"table": table},
        "peers": [{
            "address": t.vgw_inside,
            "interface": dev,
            "preference": PREFERRED if t.number == prefer_tunnel else 100,
            "families": [family],
            "description": f"{vpn.cloud} {vpn.vpn_id} tunnel {t.number}",
            "vpn": vpn.vpn_id,
            "outside": t.vgw_outside,
            "max_prefix": {"limit": vpn.max_prefix, "warn_at": 0.8, "action": "stop"},
        } for t, dev in zip(vpn.tunnels, devices, strict=True)],
        "tunnels": [{"connection": _connection_name(vpn, t), "device": dev}
                    for t, dev in zip(vpn.tunnels, devices, strict=True)],
    }
    if announce:
        # the return path: our networks, announced on both tunnels, AWS's return traffic
        # steered to the tunnel vtibgp uses (README "The return path")
        data["export"] = {"networks": list(announce), "steering": "symmetric",
                          "local_as": vpn.tunnels[0].customer_asn}
    if prefer_tunnel is None:
        pref = ("# Both tunnels have preference 100. vtibgp compares preference before\n"
                "# LOCAL_PREF, AS path and MED, and AWS steers with MED: during endpoint\n"
                "# maintenance it announces a lower MED on the tunnel that stays in service.\n"
                "# Equal preferences let that decide (`aws-import --prefer-tunnel N`: always\n"
                "# prefer tunnel N).\n")
    else:
        pref = (f"# Tunnel {prefer_tunnel} has preference {PREFERRED} (--prefer-tunnel), "
                "the other 100: it is\n"
                "# used whenever it is up, whatever MED AWS announces (also during AWS's\n"
                "# maintenance of its endpoint, when AWS lowers the other tunnel's MED).\n")
    if vpn.yaml_note:  # another cloud: its own words on routes, MED and preferences
        pref = vpn.yaml_note
    head = (f"# vtibgp for {label(vpn)}.\n" + ("" if vpn.yaml_note else
            "# AWS sends at most 1,000 routes per VPN connection (max_prefix). Defaults apply\n"
            "# to everything else; see config/vtibgp.yaml in vtibgp for all keys.\n") + pref)
    return head + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def xfrm_interface_ids(devices: Sequence[str]) -> tuple[int, ...]:
    """libreswan's `ipsec-interface=N` numbers for XFRM interface devices named ipsecN.

    libreswan names the XFRM interface of `ipsec-interface=N` ipsecN, with XFRM if_id N, and
    creates, ups and deletes it itself; so with --device xfrm the device names say the
    numbers. 0 is refused: libreswan maps ipsec0 to if_id 16384 (KLIPS migration)."""
    ids = []
    for dev in devices:
        m = re.fullmatch(r"ipsec([1-9][0-9]{0,9})", dev)
        if m is None or not 1 <= int(m.group(1)) <= 0xFFFFFFFF or int(m.group(1)) == 16384:
            raise AwsImportError(f"devices: with device xfrm libreswan names each XFRM "
                                 f"interface ipsecN after its ipsec-interface=N (N 1 to "
                                 f"4294967295, not 16384, no leading zero), got {dev!r}")
        ids.append(int(m.group(1)))
    return tuple(ids)


def ipsec_conf(vpn: VpnConnection, devices: Sequence[str], marks: Sequence[int],
               updown: str, mtu: int = DEFAULT_MTU, *, device: str = "vti") -> str:
    """libreswan's conns for both tunnels. `device` "vti": VTI devices selected by `marks`
    (mark=, vti-interface=, leftvti= puts the inside address on); "xfrm": XFRM interfaces
    (`ipsec-interface=N` for devices ipsecN, no marks), whose inside address and MTU the
    updown wrapper sets (VTIBGP_DEVICE, VTIBGP_ADDRESS): libreswan 4 has no working
    interface-ip= yet."""
    if device not in DEVICE_KINDS:
        raise AwsImportError(f"device: expected one of {', '.join(DEVICE_KINDS)}, "
                             f"got {device!r}")
    xfrm_ids = xfrm_interface_ids(devices) if device == "xfrm" else ()
    t1 = vpn.tunnels[0]
    any_net = "0.0.0.0/0" if t1.inside.version == 4 else "::/0"
    ike_life, sa_life = lifetimes(t1)
    delay, timeout = dpd_timers(t1)
    common = f"{vpn.cloud}-{vpn.vpn_id}-common"
    out = [
        f"# libreswan: {label(vpn)}.",
        "# Install as /etc/ipsec.d/aws-vpn.conf; check with",
        "#     ipsec addconn --checkconfig --config /etc/ipsec.d/aws-vpn.conf",
        f"# Configure the same IKE/ESP algorithms on the VPN tunnel options in "
        f"{CLOUD_SHORT.get(vpn.cloud, vpn.cloud)}.",
        "# TCP MSS: load nftables-mss.nft (clamped to what the tunnel MTU allows).",
        "",
        f"conn {common}",
        "    type=tunnel",
        "    authby=secret",
        "    ikev2=yes",
        f"    ike={vpn.ike_proposal}",
        f"    esp={vpn.esp_proposal}",
        f"    ikelifetime={ike_life}s",
        f"    salifetime={sa_life}s",
        "    # Dead peer detection, faster than BGP's hold time "
        f"({t1.hold_time} s) so that the updown",
        "    # moves the routes before BGP would: a probe every "
        f"{delay} s, the peer dead after {timeout} s",
        f"    # of unanswered retransmissions, at most {delay + timeout} s in all."
        + (" AWS's side: DPD timeout" if vpn.cloud == "aws" else ""),
        *(["    # 30 s and action Clear by default, and it never initiates: ours must restart."]
          if vpn.cloud == "aws" else []),
        f"    dpddelay={delay}",
        f"    dpdtimeout={timeout}",
        f"    retransmit-timeout={timeout}s",
        "    dpdaction=restart",
        "    left=%defaultroute",
        f"    leftid={t1.cgw_outside}",
        f"    leftsubnet={any_net}",
        f"    rightsubnet={any_net}",
    ]
    if device == "vti":
        out += [
            "    vti-routing=no",
            "    vti-shared=no",
            f"    # the wrapper runs the stock updown, sets the device MTU {mtu}, tells vtibgp",
            f'    leftupdown="VTIBGP_MTU={mtu} {updown}"',
        ]
    else:
        out += [
            "    # XFRM interfaces: equal 0/0 selectors make libreswan's updown add no routes"
            " (vtibgp",
            "    # routes into the devices); each tunnel's leftupdown names its device and"
            " address.",
        ]
    for i, (t, dev, mark) in enumerate(zip(vpn.tunnels, devices, marks, strict=True)):
        out += [
            "",
            f"conn {_connection_name(vpn, t)}",
            f"    also={common}",
            f"    right={t.vgw_outside}",
            f"    rightid={t.vgw_outside}",
        ]
        if device == "vti":
            out += [f"    mark={mark}/0xffffffff",
                    f"    vti-interface={dev}",
                    f"    leftvti={t.cgw_inside}/{t.inside.prefixlen}"]
        else:
            addr = f"{t.cgw_inside}/{t.inside.prefixlen}"
            out += [f"    # XFRM interface {dev}, if_id {xfrm_ids[i]}: libreswan creates it",
                    f"    ipsec-interface={xfrm_ids[i]}",
                    f"    # the wrapper runs the stock updown, puts {addr} and MTU {mtu} on"
                    f" {dev}, tells vtibgp",
                    f'    leftupdown="VTIBGP_MTU={mtu} VTIBGP_DEVICE={dev} '
                    f'VTIBGP_ADDRESS={addr} {updown}"']
        out.append("    auto=start")
    return "\n".join(out) + "\n"


def ipsec_secrets(vpn: VpnConnection) -> str:
    lines = [f"# pre-shared keys of {label(vpn)}: root, mode 0600"]
    lines += [f'{t.cgw_outside} {t.vgw_outside} : PSK "{t.psk}"' for t in vpn.tunnels]
    return "\n".join(lines) + "\n"


def sysctl_conf(vpn: VpnConnection, devices: Sequence[str]) -> str:
    out = [f"# tunnel devices of {label(vpn)}: /etc/sysctl.d/90-vtibgp.conf",
           "# disable_xfrm must stay 0: 1 turns off IPsec on the device.",
           "net.ipv4.ip_forward = 1",
           "net.ipv4.conf.all.rp_filter = 2",
           "net.ipv4.conf.default.rp_filter = 2"]
    if vpn.tunnels[0].inside.version == 6:
        out.append("net.ipv6.conf.all.forwarding = 1")
    for dev in devices:
        out += [f"net.ipv4.conf.{dev}.disable_policy = 1",
                f"net.ipv4.conf.{dev}.rp_filter = 2",
                f"net.ipv4.conf.{dev}.forwarding = 1",
                f"net.ipv4.conf.{dev}.disable_xfrm = 0"]
    return "\n".join(out) + "\n"


def files(ike: str = "libreswan") -> tuple[str, ...]:
    """The names import_vpn writes for IKE daemon `ike` (FILES for libreswan)."""
    common = tuple(n for n in FILES if n not in IKE_FILES["libreswan"])
    return FILES if ike == "libreswan" else common + IKE_FILES[ike]


def _write(directory: Path, name: str, text: str, mode: int) -> None:
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), mode)  # exactly this mode, whatever the umask
        f.write(text)


def import_vpn(xml_text: str | bytes | VpnConnection, out_dir: str | Path, *,
               our_asn: int | None = None, devices: Sequence[str] | None = None,
               table: str | int = "main",
               marks: Sequence[int] = (100, 200), region: str | None = None,
               plugin_command: str = DEFAULT_PLUGIN, updown: str = DEFAULT_UPDOWN,
               router_id: str | None = None, overwrite: bool = False,
               mtu: int = DEFAULT_MTU, prefer_tunnel: int | None = None,
               announce: Sequence[str] = (), ike: str = "libreswan",
               device: str = "vti") -> list[Path]:
    """Validate the XML and write files(ike) into `out_dir` (created if missing); return the
    paths. `ike` "libreswan" (ipsec.conf, ipsec.secrets) or "strongswan" (swanctl.conf with
    the keys, mode 0600, and strongswan-vtibgp.conf; vtibgp.tools.swanctl); with strongSwan
    the default `updown` is swanctl.DEFAULT_UPDOWN (config/strongswan/strongswan-updown.sh).

    `our_asn` overrides the customer gateway's ASN from the XML, `region` allows the
    region-specific refused ASNs elsewhere, `marks` are the per-tunnel XFRM marks (unique on the
    host), `plugin_command` the ExaBGP process line (its program must exist when ExaBGP reads
    the config), `mtu` the tunnel devices' MTU (the MSS clamp follows from it),
    `prefer_tunnel` (1 or 2) a tunnel to prefer whatever MED AWS sends (default: equal
    preferences, AWS's MED decides), `announce` our networks to announce to AWS (export).
    `device` "vti" (VTI devices, marks) or "xfrm" (XFRM interfaces: libreswan's
    `ipsec-interface=N` for devices ipsecN, strongSwan's if_id); `devices` default vti01,
    vti02 (vti) or ipsec1, ipsec2 (xfrm). Existing files in `out_dir` are an error unless
    `overwrite`. Raises AwsImportError; nothing is written then."""
    if ike not in IKE_FILES:
        raise AwsImportError(f"ike: expected one of {', '.join(IKE_FILES)}, got {ike!r}")
    names = files(ike)
    if device not in DEVICE_KINDS:
        raise AwsImportError(f"device: expected one of {', '.join(DEVICE_KINDS)}, "
                             f"got {device!r}")
    if devices is None:
        devices = XFRM_DEVICES if device == "xfrm" else ("vti01", "vti02")
    if ike == "strongswan" and updown == DEFAULT_UPDOWN:
        from vtibgp.tools import swanctl
        updown = swanctl.DEFAULT_UPDOWN
    if len(devices) != 2 or len(set(devices)) != 2 or \
            any(not vconfig.DEVICE_RE.match(d) for d in devices):
        raise AwsImportError(f"devices: expected two different device names, got {devices!r}")
    if len(marks) != 2 or len(set(marks)) != 2 or \
            any(isinstance(m, bool) or not 1 <= m <= 0xFFFFFFFF for m in marks):
        raise AwsImportError(f"marks: expected two different marks 1..4294967295, got {marks!r}")
    if any(c.isspace() for c in updown) or not updown.startswith("/"):
        raise AwsImportError(f"updown: expected an absolute path without spaces, got {updown!r}")
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX:
        raise AwsImportError(f"mtu: expected {MTU_MIN} to {MTU_MAX} (AWS: at most {MTU_MAX} "
                             f"inside a tunnel), got {mtu!r}")
    if prefer_tunnel not in (None, 1, 2):
        raise AwsImportError(f"prefer_tunnel: expected 1 or 2, got {prefer_tunnel!r}")
    for prefix in announce:
        try:
            net = ipaddress.ip_network(prefix)
        except ValueError:
            raise AwsImportError(f"announce: expected a prefix of this gateway's networks "
                                 f"such as 192.168.0.0/16 (no host bits set), got "
                                 f"{prefix!r}") from None
        if net.prefixlen == 0:
            raise AwsImportError(f"announce: one of this gateway's own networks, not a "
                                 f"default route, got {prefix!r}")
    vpn = xml_text if isinstance(xml_text, VpnConnection) else \
        parse_vpn(xml_text, our_asn=our_asn, region=region)  # azure_import, gcp_import: parsed
    t1 = vpn.tunnels[0]

    yaml_text = vtibgp_yaml(vpn, devices, table, prefer_tunnel, announce)
    try:
        cfg = vconfig.parse(yaml.safe_load(yaml_text), "vtibgp.yaml")
    except vconfig.ConfigError as e:
        raise AwsImportError(f"the generated vtibgp.yaml does not load: {e}") from None
    if router_id is None and t1.inside.version == 6:
        router_id = t1.cgw_outside
    try:
        exabgp_text = render(
            cfg, plugin_command=plugin_command, local_as=t1.customer_asn,
            peer_as=t1.amazon_asn, hold_time=t1.hold_time, router_id=router_id,
            sessions={t.vgw_inside: Session(local_address=t.cgw_inside, hold_time=t.hold_time,
                                            description=f"{vpn.vpn_id} tunnel {t.number} "
                                                        f"({dev})")
                      for t, dev in zip(vpn.tunnels, devices, strict=True)},
            header=f"ExaBGP for {label(vpn)}.")
    except ExabgpConfigError as e:
        raise AwsImportError(f"exabgp.conf: {e}") from None
    contents = {
        "vtibgp.yaml": (yaml_text, 0o644),
        "exabgp.conf": (exabgp_text, 0o644),
        "sysctl.conf": (sysctl_conf(vpn, devices), 0o644),
        "nftables-mss.nft": (nftables_mss(vpn, devices, mtu), 0o644),
    }
    if ike == "strongswan":
        from vtibgp.tools import swanctl
        contents["swanctl.conf"] = (swanctl.swanctl_conf(vpn, devices, marks, updown,
                                                         mtu=mtu, device=device), 0o600)
        contents["strongswan-vtibgp.conf"] = (swanctl.strongswan_conf(vpn), 0o644)
    else:
        contents["ipsec.conf"] = (ipsec_conf(vpn, devices, marks, updown, mtu,
                                             device=device), 0o644)
        contents["ipsec.secrets"] = (ipsec_secrets(vpn), 0o600)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AwsImportError(f"{out}: exists and is not a directory")
    if out.is_dir() and not overwrite:
        present = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
        if present:
            raise AwsImportError(f"{out}: would overwrite {', '.join(present)} (use overwrite)")
    parent = out.resolve().parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".vtibgp-aws-import-", dir=parent))  # mode 0700
    except OSError as e:
        raise AwsImportError(f"{parent}: cannot write: {e.strerror or e}") from None
    try:
        for name, (text, mode) in contents.items():
            _write(tmp, name, text, mode)
        if not out.exists():
            os.chmod(tmp, 0o755)  # the secrets file itself is 0600
            os.rename(tmp, out)
        else:
            for name in names:
                os.replace(tmp / name, out / name)
    except OSError as e:
        raise AwsImportError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return [out / n for n in names]


__all__ = ["DEFAULT_MTU", "FILES", "IKE_FILES", "AwsImportError", "Tunnel", "VpnConnection",
           "connection_name", "dpd_timers", "files", "import_vpn", "lifetimes", "mss_clamp",
           "parse_vpn"]
