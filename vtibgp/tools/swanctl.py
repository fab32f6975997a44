"""strongSwan configuration of a cloud VPN connection: `vtibgp aws-import --ike strongswan`
(and the other clouds' imports, from the same VpnConnection).

From the parsed XML (:class:`vtibgp.tools.aws_import.VpnConnection`) two files:

  swanctl.conf            one IKEv2/PSK connection per tunnel with one CHILD_SA each (0/0
                          traffic selectors, route-based), AWS's DPD derived from the BGP hold
                          time (:func:`aws_import.dpd_timers`), the updown chained to vtibgp,
                          marks (VTI devices) or if_id (XFRM interfaces), and the two
                          pre-shared keys in its `secrets` section: one file that
                          `swanctl --load-all` loads whole, so it is written mode 0600.
  strongswan-vtibgp.conf  charon settings (install as /etc/strongswan.d/charon-vtibgp.conf):
                          no routes in table 220, and the IKEv2 retransmission schedule that
                          makes dead peer detection give up after dpd_timers' timeout (with
                          IKEv2 `dpd_timeout` is not used: a peer is dead when the
                          retransmissions of a DPD request run out).

The CHILD_SA has the connection's name: strongSwan's updown passes the CHILD_SA name as
PLUTO_CONNECTION, and vtibgp.yaml's `tunnels:` map (aws_import.vtibgp_yaml) uses that name.
`tunnels` selects a subset (the lab runs one charon per tunnel: kernel-libipsec's SA lookup
cannot tell two 0/0 CHILD_SAs of one charon apart, docs/failover.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from vtibgp.tools import aws_import as aws

# The proposals are the VpnConnection's (ike_proposal / esp_proposal, in libreswan's
# spelling, what ipsec.conf's ike=/esp= get), translated: one place says which suite.
_CIPHERS = {"aes128": "aes128", "aes192": "aes192", "aes256": "aes256",
            "aes_gcm128": "aes128gcm16", "aes_gcm192": "aes192gcm16",
            "aes_gcm256": "aes256gcm16", "aes_gcm": "aes256gcm16"}
_INTEG = {"sha1": "sha1", "sha2_256": "sha256", "sha2": "sha256", "sha2_384": "sha384",
          "sha2_512": "sha512"}
_GROUPS = {"modp1024": "modp1024", "modp2048": "modp2048", "modp3072": "modp3072",
           "modp4096": "modp4096", "dh2": "modp1024", "dh14": "modp2048",
           "dh15": "modp3072", "dh16": "modp4096", "dh19": "ecp256", "dh20": "ecp384",
           "dh21": "ecp521", "dh24": "modp2048s256", "ecp256": "ecp256", "ecp384": "ecp384",
           "ecp521": "ecp521"}
DEFAULT_UPDOWN = "/usr/local/libexec/vtibgp/strongswan-updown.sh"
DEVICE_KINDS = aws.DEVICE_KINDS  # vti: marks; xfrm: if_id (aws_import says which exist)
# charon's IKEv2 retransmission: a request is sent again after timeout * base^n, n = 0..tries-1,
# and given up timeout * base^tries after the last one (strongSwan's "Retransmission" page)
RETRANSMIT_BASE = 1.5
RETRANSMIT_TRIES = 3
REKEY_SHARE = 0.9  # rekey at 90 % of AWS's lifetime, so that ours rekeys before AWS expires it


def proposal(libreswan: str, *, ike: bool) -> str:
    """strongSwan's spelling of a libreswan ike=/esp= value ("aes256-sha2_256;modp2048" ->
    "aes256-sha256-modp2048"; AEAD ciphers take the hash as the IKE PRF and no ESP integrity;
    "," separates alternatives). AwsImportError names a part it does not know."""
    out = []
    for alt in libreswan.split(","):
        algs, _, groups = alt.strip().partition(";")
        cipher, _, integ = algs.partition("-")
        parts = [_CIPHERS.get(cipher)]
        aead = cipher.startswith("aes_gcm")
        if integ and integ != "null":
            name = _INTEG.get(integ)
            if name is None or not aead:
                parts.append(name)
            elif ike:  # an AEAD cipher protects integrity itself; IKE still needs a PRF
                parts.append("prf" + name)
        parts += [_GROUPS.get(g) for g in groups.split("+") if g]
        if any(x is None for x in parts):
            raise aws.AwsImportError(f"proposal {libreswan!r}: {alt!r} has a part strongSwan's "
                                     f"writer does not know (ciphers {', '.join(_CIPHERS)}; "
                                     f"hashes {', '.join(_INTEG)}; groups {', '.join(_GROUPS)})")
        out.append("-".join(x for x in parts if x))
    return ",".join(out)


def retransmit_timeout(give_up: float, base: float = RETRANSMIT_BASE,
                       tries: int = RETRANSMIT_TRIES) -> float:
    """charon.retransmit_timeout for which the IKEv2 retransmissions of one request give up
    after `give_up` seconds (the sum of timeout * base^n for n = 0..tries)."""
    if give_up <= 0 or base < 1 or tries < 0:
        raise ValueError(f"give_up > 0, base >= 1, tries >= 0: got {give_up}, {base}, {tries}")
    return round(give_up / sum(base ** n for n in range(tries + 1)), 2)


def _key(device: str, devices: Sequence[str], marks: Sequence[int], i: int) -> tuple[str, int]:
    """How tunnel i's CHILD_SA finds its device: a VTI's mark (`marks`), or an XFRM
    interface's if_id, the N of its name ipsecN as with libreswan's ipsec-interface=N."""
    if device == "xfrm":
        return "if_id", aws.xfrm_interface_ids(devices)[i]
    return "mark", marks[i]


def _check(vpn: aws.VpnConnection, devices: Sequence[str], keys: Sequence[int], updown: str,
           device: str, tunnels: Sequence[int]) -> None:
    if device not in DEVICE_KINDS:
        raise aws.AwsImportError(f"device: expected one of {', '.join(DEVICE_KINDS)}, "
                                 f"got {device!r}")
    if len(devices) != 2 or len(keys) != 2 or len(set(keys)) != 2:
        raise aws.AwsImportError(f"devices and marks: two each, the marks different, got "
                                 f"{devices!r} and {keys!r}")
    if not updown.startswith("/") or any(c.isspace() or c in "\"'\\$`" for c in updown):
        raise aws.AwsImportError(f"updown: expected an absolute path without spaces or "
                                 f"quotes, got {updown!r}")
    bad = [n for n in tunnels if n not in (1, 2)]
    if bad or not tunnels:
        raise aws.AwsImportError(f"tunnels: expected 1 and/or 2, got {tuple(tunnels)!r}")


def swanctl_conf(vpn: aws.VpnConnection, devices: Sequence[str], marks: Sequence[int],
                 updown: str = DEFAULT_UPDOWN, *, device: str = "vti",
                 mtu: int = aws.DEFAULT_MTU, tunnels: Sequence[int] = (1, 2),
                 secrets: bool = True) -> str:
    """swanctl.conf for `vpn`: a connection per tunnel in `tunnels`, each CHILD_SA selected by
    `marks[i]` (`device` "vti": mark_in/mark_out, the VTI's key) or as an XFRM interface's
    if_id (`device` "xfrm": if_id_in/if_id_out, N of the device ipsecN); `updown` is run as
    `[VTIBGP_DEVICE_KIND=xfrm] VTIBGP_MTU=mtu updown DEVICE INSIDE/LEN KEY`
    (config/strongswan/strongswan-updown.sh, which creates the device if missing).
    With `secrets` the pre-shared keys follow in a `secrets` section."""
    _check(vpn, devices, marks, updown, device, tunnels)
    t1 = vpn.tunnels[0]
    any_net = "0.0.0.0/0" if t1.inside.version == 4 else "::/0"
    ike_life, sa_life = aws.lifetimes(t1)
    delay, give_up = aws.dpd_timers(t1)
    kind, _ = _key(device, devices, marks, 0)
    ike_proposals = proposal(vpn.ike_proposal, ike=True)
    esp_proposals = proposal(vpn.esp_proposal, ike=False)
    out = [
        f"# strongSwan (swanctl): {aws.label(vpn)}, --ike strongswan.",
        "# Install as /etc/swanctl/conf.d/aws-vpn.conf (root, mode 0600: the pre-shared keys "
        "are in it),",
        "# strongswan-vtibgp.conf as /etc/strongswan.d/charon-vtibgp.conf, then: "
        "swanctl --load-all",
        "# Configure the same IKE/ESP algorithms on the cloud's side of the tunnels.",
        f"# Dead peer detection: a probe every {delay} s; with IKEv2 the peer is dead when the "
        "probe's",
        f"# retransmissions run out ({give_up} s with strongswan-vtibgp.conf), so within "
        f"{delay + give_up} s: before",
        f"# BGP's {t1.hold_time} s hold time, and the updown moves the routes first. "
        "AWS never initiates:",
        "# ours starts the tunnels and restarts them (dpd_action, close_action, keyingtries).",
        f"# {'if_id_in/if_id_out: the XFRM interface' if kind == 'if_id' else 'mark_in/mark_out: the VTI key'}"  # noqa: E501
        " of each tunnel's device; TCP MSS: load nftables-mss.nft.",
        "",
        "connections {",
    ]
    for i, (t, dev) in enumerate(zip(vpn.tunnels, devices, strict=True)):
        if t.number not in tunnels:
            continue
        name = aws.connection_name(vpn, t)
        _, key = _key(device, devices, marks, i)
        out += [
            f"    {name} {{",
            "        version = 2",
            "        local_addrs = %any",
            f"        remote_addrs = {t.vgw_outside}",
            f"        proposals = {ike_proposals}",
            f"        rekey_time = {int(ike_life * REKEY_SHARE)}s",
            "        mobike = no",
            "        keyingtries = 0",
            f"        dpd_delay = {delay}s",
            "        local {",
            "            auth = psk",
            f"            id = {t.cgw_outside}",
            "        }",
            "        remote {",
            "            auth = psk",
            f"            id = {t.vgw_outside}",
            "        }",
            "        children {",
            f"            {name} {{",
            f"                local_ts = {any_net}",
            f"                remote_ts = {any_net}",
            f"                esp_proposals = {esp_proposals}",
            f"                rekey_time = {int(sa_life * REKEY_SHARE)}s",
            f"                {kind}_in = {key}",
            f"                {kind}_out = {key}",
            f'                updown = "{"VTIBGP_DEVICE_KIND=xfrm " if kind == "if_id" else ""}'
            f'VTIBGP_MTU={mtu} {updown} {dev} '
            f'{t.cgw_inside}/{t.inside.prefixlen} {key}"',
            "                dpd_action = restart",
            "                close_action = start",
            "                start_action = start",
            "            }",
            "        }",
            "    }",
        ]
    out.append("}")
    if secrets:
        out += ["", "secrets {"]
        for t in vpn.tunnels:
            if t.number in tunnels:
                out += [f"    ike-{aws.connection_name(vpn, t)} {{",
                        f"        id-local = {t.cgw_outside}",
                        f"        id-remote = {t.vgw_outside}",
                        f'        secret = "{t.psk}"',
                        "    }"]
        out.append("}")
    return "\n".join(out) + "\n"


def strongswan_conf(vpn: aws.VpnConnection) -> str:
    """The charon settings of strongswan-vtibgp.conf (see the module docstring)."""
    t1 = vpn.tunnels[0]
    delay, give_up = aws.dpd_timers(t1)
    timeout = retransmit_timeout(give_up)
    return (
        f"# charon settings for vtibgp: {aws.label(vpn)}, --ike strongswan.\n"
        "# Install as /etc/strongswan.d/charon-vtibgp.conf\n"
        "charon {\n"
        "    # With 0.0.0.0/0 selectors charon would route everything into the tunnel that\n"
        "    # came up last (table 220, consulted before main); vtibgp installs the routes.\n"
        "    install_routes = no\n"
        "    # IKEv2 gives up on a request after retransmit_timeout * base^n, n = 0..tries:\n"
        f"    # {timeout} * (1 + {RETRANSMIT_BASE} + ...) = {give_up} s, so a dead AWS "
        f"endpoint is noticed within\n"
        f"    # dpd_delay {delay} s + {give_up} s, before BGP's {t1.hold_time} s hold time "
        "(`vtibgp doctor` checks it).\n"
        "    # This applies to every IKE SA of this charon.\n"
        f"    retransmit_timeout = {timeout}\n"
        f"    retransmit_base = {RETRANSMIT_BASE}\n"
        f"    retransmit_tries = {RETRANSMIT_TRIES}\n"
        "}\n"
    )


__all__ = ["DEFAULT_UPDOWN", "DEVICE_KINDS", "proposal", "retransmit_timeout",
           "strongswan_conf", "swanctl_conf"]
