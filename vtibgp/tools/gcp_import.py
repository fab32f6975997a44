"""`vtibgp gcp-import`: a Google Cloud HA VPN (two tunnels, one Cloud Router) as a vtibgp gateway.

Reads what gcloud prints (`--format=json`):

* `gcloud compute routers describe ROUTER --region R`: `bgp.asn` (the Cloud Router's ASN),
  `bgp.keepaliveInterval` (20 to 60 s, default 20; the hold time is three times it),
  `interfaces[]` (`name`, `ipRange`: the Cloud Router's link-local address and /30,
  `linkedVpnTunnel`: the tunnel's URL) and `bgpPeers[]` (`interfaceName`, `ipAddress`: the
  Cloud Router's, `peerIpAddress`: ours, `peerAsn`: ours, `advertisedRoutePriority`: the MED
  Cloud Router sends on every prefix of that session);
* `gcloud compute vpn-tunnels describe TUNNEL --region R`, once per tunnel: `name`,
  `selfLink`, `peerIp` (our public IP), `ikeVersion` (2), `vpnGateway` and
  `vpnGatewayInterface` (which of the HA VPN gateway's interfaces); the shared secret is not
  returned (only `sharedSecretHash`), so the keys come from `--psk-file`;
* `gcloud compute vpn-gateways describe GATEWAY --region R`: `name`, `selfLink` and
  `vpnInterfaces[]` (`id`, `ipAddress`: Google's public IP of each interface).

Tunnel N is the Nth tunnel file given. The files are written by
vtibgp.tools.aws_import.import_vpn, as for AWS; sources in docs/clouds.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from vtibgp.tools.aws_import import ID_RE, Tunnel, VpnConnection
from vtibgp.tools.azure_import import CloudImportError, asn, get, ipv4, pair, public_ipv4

DEFAULT_KEEPALIVE = 20  # bgp.keepaliveInterval when the router does not say
GOOGLE_ASN = 16550  # Cloud Router's ASN for Partner Interconnect; allowed for HA VPN too


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _cloud_router_asn(n: int, where: str) -> int:
    if not (n == GOOGLE_ASN or 64512 <= n <= 65534 or 4200000000 <= n <= 4294967294):
        raise CloudImportError(f"{where}: expected a Cloud Router ASN (64512-65534, "
                               f"4200000000-4294967294, or 16550), got {n}")
    return n


def parse_gcp(router: Mapping[str, Any], tunnels: Sequence[Mapping[str, Any]],
              gateway: Mapping[str, Any], *, psks: Sequence[str],
              router_name: str = "router.json",
              tunnel_names: Sequence[str] = ("tunnel1.json", "tunnel2.json"),
              gateway_name: str = "gateway.json") -> VpnConnection:
    """The two HA VPN tunnels and their BGP sessions on one Cloud Router."""
    if len(tunnels) != 2:
        raise CloudImportError(f"tunnels: expected two vpn-tunnels describe documents (HA VPN: "
                               f"one per gateway interface), got {len(tunnels)}")
    rw, gw = router_name, gateway_name
    bgp = get(router, "bgp", rw, dict)
    google_asn = _cloud_router_asn(asn(get(bgp, "asn", f"{rw}.bgp", int), f"{rw}.bgp.asn"),
                                   f"{rw}.bgp.asn")
    keepalive = get(bgp, "keepaliveInterval", f"{rw}.bgp", int, required=False)
    keepalive = DEFAULT_KEEPALIVE if keepalive is None else keepalive
    if not 20 <= keepalive <= 60:
        raise CloudImportError(f"{rw}.bgp.keepaliveInterval: expected 20 to 60, got "
                               f"{keepalive}")
    hold = 3 * keepalive

    vpn_id = get(gateway, "name", gw, str)
    if not ID_RE.match(vpn_id):
        raise CloudImportError(f"{gw}.name: {vpn_id!r} cannot name the IPsec connections")
    interfaces_ip: dict[int, str] = {}
    for i, vi in enumerate(get(gateway, "vpnInterfaces", gw, list)):
        w = f"{gw}.vpnInterfaces[{i}]"
        if not isinstance(vi, dict):
            raise CloudImportError(f"{w}: expected an object, got {vi!r}")
        interfaces_ip[get(vi, "id", w, int, required=False) or 0] = \
            public_ipv4(get(vi, "ipAddress", w, str), f"{w}.ipAddress")
    gw_link = get(gateway, "selfLink", gw, str, required=False)

    by_iface: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for i, itf in enumerate(get(router, "interfaces", rw, list)):
        w = f"{rw}.interfaces[{i}]"
        if not isinstance(itf, dict):
            raise CloudImportError(f"{w}: expected an object, got {itf!r}")
        by_iface[get(itf, "name", w, str)] = (i, itf)
    peers = [p for p in get(router, "bgpPeers", rw, list)
             if not (isinstance(p, dict) and p.get("enable") == "FALSE")]

    out = []
    our_asn: int | None = None
    for n, (tdoc, tw) in enumerate(zip(tunnels, tunnel_names, strict=True), 1):
        tname = get(tdoc, "name", tw, str)
        link = get(tdoc, "selfLink", tw, str, required=False) or tname
        if get(tdoc, "ikeVersion", tw, int, required=False) not in (None, 2):
            raise CloudImportError(f"{tw}.ikeVersion: expected 2 (HA VPN with IKEv2), got "
                                   f"{tdoc['ikeVersion']!r}")
        vgw = get(tdoc, "vpnGateway", tw, str)
        if (gw_link is not None and vgw != gw_link) or _last(vgw) != vpn_id:
            raise CloudImportError(f"{tw}.vpnGateway: {vgw} is not {gw} ({gw_link or vpn_id})")
        gi = get(tdoc, "vpnGatewayInterface", tw, int, required=False) or 0
        if gi not in interfaces_ip:
            raise CloudImportError(f"{tw}.vpnGatewayInterface: {gi}, but {gw}.vpnInterfaces "
                                   f"has ids {sorted(interfaces_ip)}")
        ours_out = public_ipv4(get(tdoc, "peerIp", tw, str), f"{tw}.peerIp")
        # the router interface linked to this tunnel, and its BGP peer
        linked = [(name, i, itf) for name, (i, itf) in by_iface.items()
                  if _last(str(itf.get("linkedVpnTunnel", ""))) == _last(link)]
        if len(linked) != 1:
            raise CloudImportError(f"{rw}.interfaces: expected one interface with "
                                   f"linkedVpnTunnel {tname}, found {len(linked)}")
        iname, ii, itf = linked[0]
        iw = f"{rw}.interfaces[{ii}]"
        rng = get(itf, "ipRange", iw, str)
        try:
            iface = ipaddress.IPv4Interface(rng)
        except ValueError:
            raise CloudImportError(f"{iw}.ipRange: expected ADDRESS/30 such as "
                                   f"169.254.0.1/30, got {rng!r}") from None
        matching = [(j, p) for j, p in enumerate(peers)
                    if isinstance(p, dict) and p.get("interfaceName") == iname]
        if len(matching) != 1:
            raise CloudImportError(f"{rw}.bgpPeers: expected one BGP peer with interfaceName "
                                   f"{iname}, found {len(matching)}")
        j, peer = matching[0]
        pw = f"{rw}.bgpPeers[{j}]"
        google_ip = ipv4(get(peer, "ipAddress", pw, str, required=False) or str(iface.ip),
                         f"{pw}.ipAddress")
        if google_ip != iface.ip:
            raise CloudImportError(f"{pw}.ipAddress: {google_ip}, but {iw}.ipRange is {rng}")
        ours_in = ipv4(get(peer, "peerIpAddress", pw, str), f"{pw}.peerIpAddress")
        net, ours = pair(google_ip, iface.network.prefixlen, f"{iw}.ipRange", ours_in)
        peer_asn = asn(get(peer, "peerAsn", pw, int), f"{pw}.peerAsn")
        if our_asn is not None and peer_asn != our_asn:
            raise CloudImportError(f"{pw}.peerAsn: {peer_asn}, the other tunnel's is {our_asn}")
        our_asn = peer_asn
        if peer_asn == google_asn:
            raise CloudImportError(f"{pw}.peerAsn: the same as {rw}.bgp.asn; the sessions "
                                   "are eBGP")
        prio = get(peer, "advertisedRoutePriority", pw, int, required=False)
        if prio is not None and not 0 <= prio <= 65535:
            raise CloudImportError(f"{pw}.advertisedRoutePriority: expected 0 to 65535, got "
                                   f"{prio}")
        out.append(Tunnel(
            number=n, cgw_outside=ours_out, vgw_outside=interfaces_ip[gi], inside=net,
            cgw_inside=ours, vgw_inside=str(google_ip), customer_asn=peer_asn,
            amazon_asn=google_asn, hold_time=hold, psk=psks[n - 1],
            # no DPD figures in the documents: dpd_timers derives ours from the hold time
            dpd_interval=hold, dpd_retries=1, ike_lifetime=None, ipsec_lifetime=None,
            tcp_mss=None))
    t1, t2 = out
    if t1.cgw_outside != t2.cgw_outside:
        raise CloudImportError(f"{tunnel_names[1]}.peerIp: {t2.cgw_outside}, "
                               f"{tunnel_names[0]} has {t1.cgw_outside} (one gateway here)")
    if t1.vgw_outside == t2.vgw_outside:
        raise CloudImportError(f"{tunnel_names[1]}.vpnGatewayInterface: the same interface "
                               f"({t1.vgw_outside}) as tunnel 1; HA VPN uses both")
    if t1.inside.overlaps(t2.inside):
        raise CloudImportError(f"{rw}.interfaces: both tunnels use {t1.inside}")
    note = ("# Google Cloud: Cloud Router sends a MED on every prefix (the session's advertised\n"
            "# route priority, plus a region-to-region cost for other regions). Equal\n"
            "# preferences let that MED decide (docs/clouds.md).\n")
    return VpnConnection(vpn_id, (t1, t2), cloud="gcp", yaml_note=note)


__all__ = ["DEFAULT_KEEPALIVE", "parse_gcp"]
