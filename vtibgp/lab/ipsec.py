"""The lab with real IPsec: strongSwan's charon with kernel-libipsec on both sides of each tunnel.

This kernel has no ESP, vti or xfrm devices, but kernel-libipsec does ESP in userspace on a
TUN device ``ipsecN`` (always ESP-in-UDP on port 4500). Facts, configs and pitfalls are in
the strongSwan reference notes; the ones this module rests on:

* **One charon per tunnel and side.** Two 0/0 CHILD_SAs in one charon share one TUN and
  libipsec sends everything out through the one installed last, so each tunnel has its own
  charon, each in a private mount namespace with a tmpfs ``/run`` (charon's pid file path is
  compiled in), ``STRONGSWAN_CONF`` pointing at its own strongswan.conf, and its own vici
  socket, IKE ports and routing table.
* **Routing is ours.** kernel-libipsec installs ``<remote_ts> dev ipsecN`` whatever
  ``install_routes`` says; ``kernel-netlink.fwmark`` makes charon's rule
  ``fwmark X lookup 22N``, which nothing matches, so table 22N stays inert.
* **The TUN lives as long as its charon** (addresses and routes through it go with it): the
  TUN names follow the start order (gateway and VGW each: tunnel 1 ``ipsec0``, tunnel 2
  ``ipsec1``), and :meth:`IpsecLab.restart_charon` adds the inside address again.

Layout (:class:`IpsecTopology`: the namespaces of :class:`parts.Topology`, one veth "internet"
link instead of the two veth tunnels)::

   gateway  wan0 198.51.100.1  <--veth-->  wan0 203.0.113.10, 203.0.113.20  VGW
   charon 1 :500/4500   -> ipsec0 169.254.10.2/30  <=ESP-in-UDP=>  ipsec0 169.254.10.1/30  charon 1
   charon 2 :1500/14500 -> ipsec1 169.254.11.2/30  <=ESP-in-UDP=>  ipsec1 169.254.11.1/30  charon 2

The gateway's swanctl.conf is what ``aws-import --ike strongswan`` writes
(:func:`vtibgp.tools.swanctl.swanctl_conf`) for :func:`lab_vpn`, the lab's VPN connection, one
tunnel per charon; its updown is :func:`updown_script`, which adds the inside address and runs
``vtibgp updown`` (the lean hook of ``install-hook``). Both VGW charons listen on other ports
(AWS has one address per endpoint; here they share a namespace): nftables redirects UDP 500
and 4500 for each VGW address to its charon's ports, so the gateway's config keeps port 500.

Failures (:meth:`IpsecLab.drop`, at the gateway's end of the outer link): ``ipsec`` drops the
tunnel's UDP 500/4500 both ways (DPD, then a real ``down-client``); ``blackhole`` drops its
ESP only (UDP 4500 whose first four bytes are not the zero marker of IKE), so IKE and DPD
stay alive and only the probe can tell; :meth:`IpsecLab.terminate` is ``swanctl
--terminate``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from vtibgp import defaults
from vtibgp.control.updown import hook_script
from vtibgp.lab import parts
from vtibgp.tools import aws_import as aws
from vtibgp.tools import swanctl

CHARON = "/usr/lib/ipsec/charon"
# kernel-libipsec before kernel-netlink: libipsec is the SA/policy backend, netlink stays the
# address/route one; kdf is required with an explicit list (strongSwan 5.9.8)
PLUGINS = ("random nonce kdf openssl aes sha1 sha2 hmac gmp pem pkcs1 x509 pubkey "
           "kernel-libipsec kernel-netlink socket-default vici updown")
WAN = "wan0"
GW_OUTSIDE = "198.51.100.1"
VGW_OUTSIDE = {1: "203.0.113.10", 2: "203.0.113.20"}
OUTSIDE_PLEN = 24
# IKE and NAT-T ports of each charon: the gateway's first one has the standard ports
GW_PORTS = {1: (500, 4500), 2: (1500, 14500)}
VGW_PORTS = {1: (2500, 24500), 2: (3500, 34500)}
VPN_ID = "vpn-0vtibgplab"
PSK = {1: "lab.psk.tunnel.1", 2: "lab.psk.tunnel.2"}
DPD_INTERVAL = 2  # the lab's XML asks for DPD every 2 s (AWS's: 10 s), dpd_timers caps it
# the lab's charons give up on a DPD request after this many seconds (aws-import derives it
# from the hold time: 15 s for 30 s; the lab is faster, tests faster still)
LAB_GIVE_UP = 6.0
NFT_TABLE = "vtibgp-lab-ipsec"
SIGNALS = ("ipsec", "ike", "blackhole", "bgp")  # what `lab fail --signal` does in this lab
TUN_RE = re.compile(r"created TUN device: (\S+)")


def available() -> str | None:
    """None when this machine can run the IPsec lab, else what is missing."""
    missing = [p for p in (CHARON,) if not Path(p).is_file()]
    missing += [p for p in ("swanctl", "nft", "unshare") if shutil.which(p) is None]
    if missing:
        return (f"{', '.join(missing)} not found (apt-get install strongswan-charon "
                f"strongswan-swanctl libcharon-extra-plugins nftables)")
    return None


def tun_name(n: int) -> str:
    """The TUN device of tunnel ``n`` on either side (charons start in tunnel order)."""
    return f"ipsec{n - 1}"


class IpsecTopology(parts.Topology):
    """:class:`parts.Topology` with an outer link instead of the veth "tunnels": the tunnel
    devices are the charons' TUNs (:class:`IpsecLab` makes them), named in ``tunnels``."""

    def __init__(self, tag: str | None = None, *,
                 names: tuple[str, str] | None = None) -> None:
        super().__init__(tag, names=names, tunnels=parts.DEFAULT_TUNNELS)
        self.tunnels = {n: dataclasses.replace(t, gw_dev=tun_name(n), aws_dev=tun_name(n))
                        for n, t in self.tunnels.items()}

    def up(self) -> IpsecTopology:
        parts._register(self)
        try:
            if self._use_marker:
                self._marker = parts._write_marker(self.tag)
            for ns in (self.gw, self.aws):
                parts._cmd(["ip", "netns", "add", ns])
                # IPv4 only: no IPv6 on the TUNs (whose 0/0 selectors would drop it anyway,
                # with a log line per router solicitation)
                self.run(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1",
                         "net.ipv6.conf.all.disable_ipv6=1", "net.ipv4.ip_forward=1")
                self.ip(ns, "link", "set", "lo", "up")
            self.ip("gw", "link", "add", WAN, "type", "veth", "peer", "name", WAN,
                    "netns", self.aws)
            self.ip("gw", "addr", "add", f"{GW_OUTSIDE}/{OUTSIDE_PLEN}", "dev", WAN)
            for addr in VGW_OUTSIDE.values():
                self.ip("aws", "addr", "add", f"{addr}/{OUTSIDE_PLEN}", "dev", WAN)
            for ns in ("gw", "aws"):
                self.set_link(ns, WAN, True)
            # the other side's addresses are on the link (as if one hop of the internet)
            self.ip("gw", "route", "add", _net(VGW_OUTSIDE[1]), "dev", WAN)
            self.ip("aws", "route", "add", _net(GW_OUTSIDE), "dev", WAN)
        except BaseException:
            self.down()
            raise
        return self

    # the veth lab's link-level failures do not exist here
    def recreate_link(self, n: int, wait: bool = True) -> None:
        raise parts.HarnessError("the IPsec lab's tunnel devices are charon's TUNs: "
                                 "IpsecLab.restart_charon re-creates one")

    def link_ready(self, n: int) -> bool:
        info = self.link("gw", self.tunnels[n].gw_dev)
        return info is not None and "UP" in info.get("flags", [])


def _net(addr: str) -> str:
    return str(ipaddress.ip_interface(f"{addr}/{OUTSIDE_PLEN}").network)


def lab_vpn(topology: parts.Topology, hold_time: int = parts.DEFAULT_HOLD_TIME
            ) -> aws.VpnConnection:
    """The lab's VPN connection as aws_import.parse_vpn would read it from AWS's XML: the
    topology's inside /30s, the outside addresses above, the lab's ASNs and keys."""
    tunnels = []
    for n in (1, 2):
        t = topology.tunnels[n]
        tunnels.append(aws.Tunnel(
            number=n, cgw_outside=GW_OUTSIDE, vgw_outside=VGW_OUTSIDE[n],
            inside=ipaddress.ip_network(f"{t.aws_v4}/{t.plen_v4}", strict=False),
            cgw_inside=t.gw_v4, vgw_inside=t.aws_v4, customer_asn=parts.GW_ASN,
            amazon_asn=parts.AWS_ASN, hold_time=hold_time, psk=PSK[n],
            dpd_interval=DPD_INTERVAL, dpd_retries=3, ike_lifetime=None, ipsec_lifetime=None,
            tcp_mss=None))
    return aws.VpnConnection(VPN_ID, (tunnels[0], tunnels[1]))


def vgw_swanctl(vpn: aws.VpnConnection, n: int) -> str:
    """The VGW's side of tunnel ``n``: the responder, as AWS is (it never initiates; on a
    dead peer it clears, DPD timeout action "Clear"), with the gateway's proposals."""
    t = vpn.tunnels[n - 1]
    name = aws.connection_name(vpn, t)
    any_net = "0.0.0.0/0" if t.inside.version == 4 else "::/0"
    delay, _ = aws.dpd_timers(t)
    return f"""# the lab VGW's end of {name}, written by vtibgp.lab.ipsec
connections {{
    {name} {{
        version = 2
        local_addrs = {t.vgw_outside}
        remote_addrs = %any
        proposals = {swanctl.proposal(vpn.ike_proposal, ike=True)}
        mobike = no
        dpd_delay = {delay}s
        local {{
            auth = psk
            id = {t.vgw_outside}
        }}
        remote {{
            auth = psk
            id = {t.cgw_outside}
        }}
        children {{
            {name} {{
                local_ts = {any_net}
                remote_ts = {any_net}
                esp_proposals = {swanctl.proposal(vpn.esp_proposal, ike=False)}
                dpd_action = clear
                start_action = none
                close_action = none
            }}
        }}
    }}
}}
secrets {{
    ike-{name} {{
        id-local = {t.vgw_outside}
        id-remote = {t.cgw_outside}
        secret = "{t.psk}"
    }}
}}
"""


def updown_script(hook: Path, socket: Path, log: Path) -> str:
    """The gateway charons' updown (run as ``updown DEVICE INSIDE/LEN KEY``, the arguments
    of config/strongswan/strongswan-updown.sh): on up-client the TUN gets its inside address
    (again, if charon re-created it), then ``vtibgp updown --device DEVICE`` through the lean
    hook. Each call is logged with its wall-clock time (the failover benchmark reads it)."""
    return f"""#!/bin/sh
# written by vtibgp.lab.ipsec: the lab gateway's strongSwan updown, chained to vtibgp updown
PATH=/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin
dev=$1 addr=$2
echo "$(date +%s.%N) start $PLUTO_VERB $PLUTO_CONNECTION $dev" >> {shlex.quote(str(log))}
case "$PLUTO_VERB" in
    up-client)
        ip addr replace "$addr" dev "$dev" && ip link set dev "$dev" up ;;
esac
{shlex.quote(str(hook))} updown --device "$dev" --socket {shlex.quote(str(socket))}
echo "$(date +%s.%N) end $PLUTO_VERB $PLUTO_CONNECTION $dev rc=$?" >> {shlex.quote(str(log))}
exit 0
"""


class Charon(parts._Daemon):
    """One charon (kernel-libipsec) in namespace ``ns`` with its own directory, strongswan.conf,
    vici socket, ports and routing table; ``swanctl_text`` is loaded at start."""

    def __init__(self, ns: str, workdir: Path, *, ports: tuple[int, int], table: int,
                 give_up: float, swanctl_text: str, keep: Sequence[Path] = ()) -> None:
        """``keep``: more paths that charon and its updown must see (the control socket's
        directory); those under /run, which charon gets a tmpfs of its own over, are
        mounted back into it (with the work directory)."""
        self.ns = ns
        self.keep = (workdir, *keep)
        self.workdir = workdir
        self.ports = ports
        self.table = table
        self.give_up = give_up
        self.swanctl_text = swanctl_text
        self.conf_path = workdir / "strongswan.conf"
        self.swanctl_path = workdir / "swanctl.conf"
        self.vici = workdir / "charon.vici"
        self.log_path = workdir / "charon.log"
        self.stdout_path = workdir / "charon.stdout"
        self.tun: str | None = None

    def __repr__(self) -> str:
        return f"Charon(ns={self.ns!r}, vici={str(self.vici)!r})"

    def strongswan_conf(self) -> str:
        port, natt = self.ports
        timeout = swanctl.retransmit_timeout(self.give_up)
        return f"""# written by vtibgp.lab.ipsec
charon {{
    load_modular = no
    load = {PLUGINS}
    install_virtual_ip = no
    routing_table = {self.table}
    routing_table_prio = {self.table}
    port = {port}
    port_nat_t = {natt}
    retransmit_timeout = {timeout}
    retransmit_base = {swanctl.RETRANSMIT_BASE}
    retransmit_tries = {swanctl.RETRANSMIT_TRIES}
    filelog {{
        lab {{
            path = {self.log_path}
            time_format = %T
            append = yes
            flush_line = yes
            default = 1
            ike = 1
            knl = 1
            cfg = 1
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{self.vici}
        }}
        kernel-netlink {{
            fwmark = {hex(0x2200 + self.table)}
        }}
    }}
}}
"""

    def start(self, timeout: float = 10.0) -> Charon:
        parts._register(self)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.strongswan_conf())
        self.swanctl_path.write_text(self.swanctl_text)
        self.swanctl_path.chmod(0o600)
        self.vici.unlink(missing_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        inner = "mount -t tmpfs tmpfs /run && "
        back = sorted({Path("/run", p.resolve().relative_to("/run").parts[0])
                       for p in self.keep if p.resolve().is_relative_to("/run")
                       and p.resolve() != Path("/run")})
        if back:  # the real /run, seen at /mnt in this mount namespace only, meanwhile
            inner = "mount --bind /run /mnt && " + inner + "".join(
                f"mkdir -p {shlex.quote(str(d))} && mount --bind "
                f"{shlex.quote('/mnt' + str(d)[4:])} {shlex.quote(str(d))} && " for d in back
            ) + "umount -l /mnt && "
        inner += f"exec env STRONGSWAN_CONF={shlex.quote(str(self.conf_path))} {CHARON}"
        self._spawn(["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation",
                     "private", "sh", "-c", inner], self.stdout_path)

        def tun() -> str | None:
            if not self.running():
                raise parts.HarnessError(f"charon exited\n{self._diag()}")
            m = TUN_RE.search(self.log_text()[offset:])
            return m.group(1) if m and self.vici.exists() else None

        try:
            self.tun = parts.wait_until(tun, timeout, what=f"{self!r} TUN and vici socket")
        except (TimeoutError, parts.HarnessError):
            self.stop()
            raise
        self.swanctl("--load-all", "--file", str(self.swanctl_path))
        return self

    def _diag(self) -> str:
        out = ""
        for p in (self.stdout_path, self.log_path):
            with contextlib.suppress(OSError):
                out += f"--- {p}\n{parts.tail(p.read_text(errors='replace'))}\n"
        return out

    def swanctl(self, *args: str, timeout: float = 20.0) -> str:
        """``swanctl ARGS`` against this charon (its vici socket)."""
        return parts._cmd(["swanctl", *args, "--uri", f"unix://{self.vici}"], timeout=timeout)

    def sas(self) -> dict[str, tuple[str, str | None]]:
        """IKE SA name -> (IKE state, CHILD_SA state or None), from ``swanctl --list-sas``."""
        out: dict[str, tuple[str, str | None]] = {}
        try:
            text = self.swanctl("--list-sas", timeout=5)
        except parts.HarnessError:
            return out
        ike: str | None = None
        for line in text.splitlines():
            m = re.match(r"^(\S+): #\d+, (\w+),", line)
            if m:
                ike = m.group(1)
                out[ike] = (m.group(2), None)
                continue
            m = re.match(r"^  (\S+): #\d+, reqid \d+, (\w+),", line)
            if m and ike is not None:
                out[ike] = (out[ike][0], m.group(2))
        return out

    def stop(self, timeout: float = 5.0) -> int | None:
        rc = self._terminate(timeout)
        parts._unregister(self)
        return rc

    close = stop


def _redirects() -> str:
    """nftables in the VGW namespace: UDP 500/4500 for each VGW address to its charon."""
    rules = []
    for n, addr in VGW_OUTSIDE.items():
        for std, port in zip((500, 4500), VGW_PORTS[n], strict=True):
            # dnat, not redirect: that would also rewrite the address (to the first one)
            rules.append(f"    ip daddr {addr} udp dport {std} counter dnat to {addr}:{port}")
    return (f"table ip {NFT_TABLE} {{\n  chain pre {{\n    type nat hook prerouting priority "
            f"dstnat; policy accept;\n" + "\n".join(rules) + "\n  }\n}\n")


def _snat() -> str:
    """nftables in the gateway namespace: the second charon's packets leave from 500/4500, as
    a gateway's do (charon takes an IKE_SA_INIT with neither port 500 for no config)."""
    rules = []
    for n, addr in VGW_OUTSIDE.items():
        for std, port in zip((500, 4500), GW_PORTS[n], strict=True):
            if port != std:
                rules.append(f"    ip daddr {addr} udp sport {port} counter snat to :{std}")
    return (f"table ip {NFT_TABLE} {{\n  chain post {{\n    type nat hook postrouting "
            f"priority srcnat; policy accept;\n" + "\n".join(rules) + "\n  }\n}\n")


def _drops(dropped: Mapping[int, str]) -> str:
    """nftables at the gateway's outer link: per failed tunnel ``ipsec`` (all of IKE and
    ESP: UDP 500/4500 to and from its VGW address) or ``blackhole`` (ESP only)."""
    rules_out, rules_in = [], []
    for n, how in sorted(dropped.items()):
        addr = VGW_OUTSIDE[n]
        if how == "ipsec":
            rules_out.append(f"oifname {WAN} ip daddr {addr} udp dport {{ 500, 4500 }}")
            rules_in.append(f"iifname {WAN} ip saddr {addr} udp sport {{ 500, 4500 }}")
        else:  # ESP-in-UDP: a non-zero SPI where IKE on 4500 has its zero marker
            rules_out.append(f"oifname {WAN} ip daddr {addr} udp dport 4500 @th,64,32 != 0")
            rules_in.append(f"iifname {WAN} ip saddr {addr} udp sport 4500 @th,64,32 != 0")

    def chain(hook: str, rules: Sequence[str]) -> str:
        body = "".join(f"    {r} counter drop\n" for r in rules)
        return (f"  chain {hook} {{\n    type filter hook {hook} priority -200; "
                f"policy accept;\n{body}  }}\n")

    return (f"table inet {NFT_TABLE} {{\n" + chain("output", rules_out)
            + chain("input", rules_in) + "}\n")


class IpsecLab:
    """Four charons on an :class:`IpsecTopology`: per tunnel one at the VGW (the responder)
    and one at the gateway (the initiator, with the swanctl.conf of aws-import). ``socket``
    is vtibgp's control socket, which the gateway's updown tells."""

    def __init__(self, topology: IpsecTopology, workdir: Path, socket: Path, *,
                 hold_time: int = parts.DEFAULT_HOLD_TIME, give_up: float = LAB_GIVE_UP,
                 hook_python: str = sys.executable) -> None:
        self.topology = topology
        self.workdir = workdir
        self.socket = socket
        self.vpn = lab_vpn(topology, hold_time)
        self.updown_log = workdir / "updown.log"
        self.hook = workdir / "updown-hook"
        self.updown = workdir / "updown.sh"
        self.hook_python = hook_python
        self.dropped: dict[int, str] = {}
        self.vgw = {n: self._charon("aws", n, VGW_PORTS[n], vgw_swanctl(self.vpn, n), give_up)
                    for n in (1, 2)}
        self.gw = {n: self._charon("gw", n, GW_PORTS[n], self.gateway_swanctl(n), give_up)
                   for n in (1, 2)}

    def _charon(self, side: str, n: int, ports: tuple[int, int], text: str,
                give_up: float) -> Charon:
        return Charon(self.topology._ns(side), self.workdir / f"{side}{n}", ports=ports,
                      table=219 + n, give_up=give_up, swanctl_text=text,
                      keep=(self.socket.parent,))

    @property
    def devices(self) -> tuple[str, str]:
        return tun_name(1), tun_name(2)

    def gateway_swanctl(self, n: int) -> str:
        """What `aws-import --ike strongswan` writes for the lab's VPN, tunnel ``n`` only."""
        return swanctl.swanctl_conf(self.vpn, self.devices, (100, 200), str(self.updown),
                                    tunnels=(n,))

    def gateway_yaml(self) -> str:
        """vtibgp.yaml as aws-import writes it for the lab's VPN (peers, tunnels: map)."""
        return aws.vtibgp_yaml(self.vpn, self.devices, "main")

    def charons(self) -> list[Charon]:
        return [*self.vgw.values(), *self.gw.values()]

    def start(self) -> IpsecLab:
        """VGW charons first (they only answer), then the gateway's, each tunnel in order
        so that the TUN names are ``ipsec0`` and ``ipsec1`` on both sides."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        package_parent = str(Path(__file__).resolve().parents[2])
        self.hook.write_text(hook_script(self.hook_python, package_parent))
        self.hook.chmod(0o755)
        self.updown.write_text(updown_script(self.hook, self.socket, self.updown_log))
        self.updown.chmod(0o755)
        self._nft("aws", f"add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"
                  + _redirects())
        self._nft("gw", f"add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n" + _snat())
        self._apply_drops()
        try:
            for side in (self.vgw, self.gw):
                for n, charon in side.items():
                    self._start_one(side is self.gw, n, charon)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_one(self, gateway: bool, n: int, charon: Charon) -> None:
        t = self.topology.tunnels[n]
        ns, dev = ("gw", t.gw_dev) if gateway else ("aws", t.aws_dev)
        addr = f"{t.gw_v4 if gateway else t.aws_v4}/{t.plen_v4}"
        # the address before the SA exists (so before the connection is loaded): BGP and
        # the updown of the first up-client find the TUN ready
        swan = charon.swanctl_text
        charon.swanctl_text = "connections {\n}\n"
        charon.start()
        charon.swanctl_text = swan
        if charon.tun != dev:
            raise parts.HarnessError(f"{charon!r} created {charon.tun}, expected {dev} (is "
                                     f"another TUN in {charon.ns}?)")
        self.topology.ip(ns, "addr", "replace", addr, "dev", dev)
        self.topology.set_link(ns, dev, True)
        charon.swanctl_path.write_text(swan)
        charon.swanctl("--load-all", "--file", str(charon.swanctl_path))

    def restart_charon(self, n: int) -> None:
        """Stop the gateway's charon of tunnel ``n`` (its TUN goes, with the address and the
        routes through it) and start it again: the TUN is re-created under the same name."""
        self.gw[n].stop()
        parts.wait_until(lambda: self.topology.link("gw", tun_name(n)) is None, 5,
                         what=f"{tun_name(n)} gone")
        self._start_one(True, n, self.gw[n])

    def stop(self) -> None:
        for charon in reversed(self.charons()):
            with contextlib.suppress(Exception):
                charon.stop()

    close = stop

    # -- failures
    def _nft(self, side: str, script: str) -> None:
        full = ["ip", "netns", "exec", self.topology._ns(side), "nft", "-f", "-"]
        res = subprocess.run(full, input=script, capture_output=True, text=True, timeout=30,
                             check=False)
        if res.returncode != 0:
            raise parts.HarnessError(f"command failed (rc={res.returncode}): "
                                     f"{shlex.join(full)}\n{res.stderr.strip()}\n{script}")

    def _apply_drops(self) -> None:
        self._nft("gw", f"add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
                  + _drops(self.dropped))

    def drop(self, n: int, how: str | None) -> None:
        """``ipsec``: drop tunnel ``n``'s IKE and ESP on the outer link; ``blackhole``: its
        ESP only; None: pass everything again."""
        if how not in (None, "ipsec", "blackhole"):
            raise ValueError(f"how: ipsec, blackhole or None, got {how!r}")
        if how is None:
            self.dropped.pop(n, None)
        else:
            self.dropped[n] = how
        self._apply_drops()

    def terminate(self, n: int) -> None:
        """``swanctl --terminate --ike`` at the gateway: a clean close (``down-client``)."""
        name = aws.connection_name(self.vpn, self.vpn.tunnels[n - 1])
        self.gw[n].swanctl("--terminate", "--ike", name, "--force", "--timeout", "5")

    def initiate(self, n: int) -> None:
        """``swanctl --initiate --child`` at the gateway (does nothing when it is up)."""
        name = aws.connection_name(self.vpn, self.vpn.tunnels[n - 1])
        if self.sa_state(n) == ("ESTABLISHED", "INSTALLED"):
            return
        self.gw[n].swanctl("--initiate", "--child", name, "--timeout", "10")

    def sa_state(self, n: int) -> tuple[str, str | None] | None:
        """(IKE SA state, CHILD_SA state) of tunnel ``n`` at the gateway, None: no SA."""
        name = aws.connection_name(self.vpn, self.vpn.tunnels[n - 1])
        return self.gw[n].sas().get(name)

    def established(self, n: int) -> bool:
        return self.sa_state(n) == ("ESTABLISHED", "INSTALLED")

    def wait_established(self, timeout: float = 20.0) -> None:
        parts.wait_until(lambda: all(self.established(n) for n in (1, 2)), timeout, 0.1,
                         what="both IPsec tunnels established")

    def updown_calls(self) -> list[tuple[float, str, str, str]]:
        """(wall-clock time, verb, connection, device) of each updown call's start."""
        out = []
        with contextlib.suppress(OSError):
            for line in self.updown_log.read_text().splitlines():
                f = line.split()
                if len(f) >= 5 and f[1] == "start":
                    out.append((float(f[0]), f[2], f[3], f[4]))
        return out

    def outer_esp_packets(self) -> int:
        """ESP-in-UDP packets the gateway sent on the outer link (``nft`` counter)."""
        return _esp_counter(self.topology)

    def records(self) -> dict[str, Any]:
        return {f"{side}{n}": c.record() for side, group in (("aws", self.vgw), ("gw", self.gw))
                for n, c in group.items() if c.pid is not None}

    def adopt(self, records: Mapping[str, Any]) -> None:
        for side, group in (("aws", self.vgw), ("gw", self.gw)):
            for n, c in group.items():
                if f"{side}{n}" in records:
                    c.adopt(records[f"{side}{n}"])


@dataclasses.dataclass
class Stack:
    """The IPsec lab as a whole: topology, charons, BIRD as the VGW, ExaBGP with vtibgp."""

    topology: IpsecTopology
    ipsec: IpsecLab
    bird: parts.BirdPeer
    gw: parts.ExaBGPGateway
    config: Path
    socket: Path

    def close(self) -> None:
        for part in (self.gw, self.bird, self.ipsec, self.topology):
            with contextlib.suppress(Exception):
                part.close()


def gateway_config(ipsec_lab: IpsecLab, socket: Path, **extra: Any) -> str:
    """vtibgp.yaml for the lab gateway: aws-import's (peers, tunnels: map), plus the control
    socket, no metrics listener unless given, and ``extra`` top-level keys (probe, tunnel)."""
    data = yaml.safe_load(ipsec_lab.gateway_yaml())
    data.update({"control": {"socket": str(socket)}, "metrics": {"listen": None},
                 "startup": {"grace_time": 10}})
    data.update(extra)
    return yaml.safe_dump(data, sort_keys=False)


def build(workdir: Path, prefixes: Sequence[str], *, tag: str | None = None,
          names: tuple[str, str] | None = None, hold_time: int = parts.DEFAULT_HOLD_TIME,
          give_up: float = LAB_GIVE_UP, prepend: Mapping[int, int] | None = None,
          python: str = sys.executable, **config: Any) -> Stack:
    """Build the whole IPsec lab: tunnels up, BIRD announcing ``prefixes`` on both, ExaBGP
    with vtibgp running (``config``: more vtibgp.yaml keys). Waits for both SAs; the caller
    waits for the routes. On any error everything made is removed."""
    topo = IpsecTopology(tag, names=names)
    sock = workdir / "vtibgp.sock"
    cfg = workdir / "vtibgp.yaml"
    made: list[Any] = []
    try:
        topo.up()
        made.append(topo)
        lab = IpsecLab(topo, workdir / "ipsec", sock, hold_time=hold_time, give_up=give_up,
                       hook_python=python)
        made.append(lab)
        lab.start()
        lab.wait_established()
        bird = parts.BirdPeer(topo, workdir / "bird", hold_time=hold_time,
                              prepend=prepend if prepend is not None else {2: 2},
                              socket=workdir / "bird.ctl")
        made.append(bird)
        bird.start()
        bird.announce(prefixes)
        cfg.write_text(gateway_config(lab, sock, **config))
        gw = parts.ExaBGPGateway(topo, [python, "-m", "vtibgp", "run", "--config", str(cfg)],
                                 workdir / "exabgp", hold_time=hold_time)
        made.append(gw)
        gw.start()
    except BaseException:
        for part in reversed(made):
            with contextlib.suppress(Exception):
                part.close()
        raise
    return Stack(topo, lab, bird, gw, cfg, sock)


ESP_COUNTER_TABLE = "vtibgp-lab-esp-count"


def count_esp(topology: parts.Topology, on: bool) -> None:
    """Count (``on``) the ESP-in-UDP packets the gateway sends on its outer link, per
    tunnel (nftables counters ``t1``/``t2``); ``off`` removes the counters."""
    script = f"add table inet {ESP_COUNTER_TABLE}\ndelete table inet {ESP_COUNTER_TABLE}\n"
    if on:
        counters = "".join(f"  counter t{n} {{ }}\n" for n in VGW_OUTSIDE)
        rules = "".join(f"    oifname {WAN} ip daddr {a} udp dport 4500 @th,64,32 != 0 "
                        f"counter name t{n}\n" for n, a in VGW_OUTSIDE.items())
        script += (f"table inet {ESP_COUNTER_TABLE} {{\n{counters}  chain out {{\n"
                   f"    type filter hook output priority 0; policy accept;\n{rules}  }}\n}}\n")
    res = subprocess.run(["ip", "netns", "exec", topology.gw, "nft", "-f", "-"], input=script,
                         capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise parts.HarnessError(f"nft: {res.stderr.strip()}\n{script}")


def esp_packets(topology: parts.Topology) -> dict[int, int]:
    """Tunnel -> ESP-in-UDP packets the gateway sent on the outer link since count_esp."""
    out: dict[int, int] = {}
    for n in VGW_OUTSIDE:
        text = topology.run("gw", "nft", "list", "counter", "inet", ESP_COUNTER_TABLE,
                            f"t{n}").stdout
        m = re.search(r"packets (\d+)", text)
        out[n] = int(m.group(1)) if m else 0
    return out


def _esp_counter(topology: parts.Topology) -> int:
    return sum(esp_packets(topology).values())


def wait_routes_via(topology: parts.Topology, prefixes: Sequence[str], dev: str,
                    metric: int = 100, timeout: float = 30.0) -> float:
    """Wait until every prefix is routed via ``dev`` at ``metric``; the wall-clock time."""
    def ok() -> bool:
        got = {r["dst"] for r in topology.routes("gw", proto=defaults.PROTOCOL)
               if r.get("dev") == dev and int(r.get("metric", 0)) == metric}
        return set(prefixes) <= got

    parts.wait_until(ok, timeout, 0.02, what=f"{', '.join(prefixes)} via {dev} ({metric})")
    return time.time()


__all__ = ["SIGNALS", "Charon", "IpsecLab", "IpsecTopology", "Stack", "available", "build",
           "count_esp", "esp_packets", "gateway_config", "lab_vpn", "tun_name",
           "updown_script", "vgw_swanctl", "wait_routes_via"]
