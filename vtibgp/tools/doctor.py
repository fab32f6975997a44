"""`vtibgp doctor`: check a gateway before and while vtibgp runs, and say how to fix each
problem found.

Each check returns :class:`Finding` objects (ok / warn / error), each with the fix. The checks
read the sysctls under ``<proc_root>/sys/net``, the devices (names, MTU) with the project's
link reader (:func:`vtibgp.kernel.linkstate.read_links`, RTM_GETLINK), and ask iproute2
(``ip -j``) for addresses and routes, all in the network namespace of the calling process.
Tests give a fake ``proc_root`` tree and a fake :class:`Net`.

MTU: AWS's pages disagree (1436 in the GenericConfig sample, 1399 on an older customer gateway
page, at most 1446 on the current best-practice page, depending on the algorithms). We
recommend 1436, the figure AWS's own sample configuration and the common VTI recipes use and
which fits every algorithm AWS offers, and warn only above 1446, AWS's documented maximum:
AWS does not support path MTU discovery, so larger packets are fragmented or dropped.

Protocol id: vtibgp marks its routes with ``kernel.protocol`` (default 186, iproute2's "bgp")
and adopts, at start, the routes of that protocol in its table. So it warns when
/etc/iproute2/rt_protos names that id other than bgp/vtibgp, when a routing daemon known to use
it runs (FRR's zebra installs its BGP routes with 186), and reports routes already there.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from vtibgp.config.schema import Config
from vtibgp.kernel import compiled
from vtibgp.kernel.linkstate import Link, read_links

Level = Literal["ok", "warn", "error"]
Iface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

MTU_RECOMMENDED = 1436  # AWS GenericConfig sample; fits every algorithm AWS offers
MTU_MAX = 1446  # AWS best-practice page: the largest any algorithm allows
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
OUR_PROTO_NAMES = ("bgp", "vtibgp")
# processes of routing daemons that write kernel routes, and the protocol ids they use
DAEMON_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "zebra": (186, 187, 188, 189, 192),  # FRR/Quagga: bgp isis ospf rip eigrp
    "bgpd": (186,),
    "bird": (12,),  # BIRD 2 default krt_source "bird"
    "gobgpd": (186,),
}


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    check: str
    subject: str
    message: str
    fix: str = ""


class Net(Protocol):
    """What the checks ask the kernel about (:class:`IpNet` by default)."""

    def links(self) -> dict[str, Link]:
        """Every device, by name."""
        ...

    def addresses(self) -> dict[str, list[Iface]]:
        """Device name -> its addresses with prefix length."""
        ...

    def route_count(self, table: int, protocol: int) -> int:
        """How many IPv4 + IPv6 routes of ``protocol`` are in ``table``."""
        ...

    def nft_ruleset(self) -> object:
        """``nft -j list ruleset``, parsed; raises :class:`NftUnavailable` when it cannot be
        read (no nft, no privilege)."""
        ...


class NftUnavailable(RuntimeError):
    """The nftables ruleset cannot be read; the text says why."""


class IpNet:
    """:class:`Net` in this process's namespace: devices through the link reader, addresses
    and routes through iproute2's JSON output."""

    def links(self) -> dict[str, Link]:
        return read_links()

    @staticmethod
    def _json(*argv: str) -> list[dict[str, object]]:
        res = subprocess.run(["ip", "-j", *argv], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=30)
        if res.returncode != 0 or not res.stdout.strip():
            return []
        data: list[dict[str, object]] = json.loads(res.stdout)
        return data

    def addresses(self) -> dict[str, list[Iface]]:
        out: dict[str, list[Iface]] = {}
        for link in self._json("addr", "show"):
            name = str(link.get("ifname", ""))
            infos = link.get("addr_info", [])
            addrs: list[Iface] = []
            for a in infos if isinstance(infos, list) else []:
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    addrs.append(ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}"))
            out[name] = addrs
        return out

    def route_count(self, table: int, protocol: int) -> int:
        return sum(len(self._json(f"-{v}", "route", "show", "table", str(table),
                                  "proto", str(protocol))) for v in (4, 6))

    def nft_ruleset(self) -> object:
        try:
            res = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True,
                                 text=True, stdin=subprocess.DEVNULL, timeout=30)
        except FileNotFoundError:
            raise NftUnavailable("nft is not installed") from None
        except (OSError, subprocess.SubprocessError) as e:
            raise NftUnavailable(f"cannot run nft: {e}") from None
        if res.returncode != 0:
            raise NftUnavailable(f"`nft -j list ruleset` failed: "
                                 f"{res.stderr.strip() or res.returncode}")
        try:
            data: object = json.loads(res.stdout)
        except ValueError as e:
            raise NftUnavailable(f"`nft -j list ruleset` printed no JSON: {e}") from None
        return data


# --------------------------------------------------------------------------- helpers


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _sysctl_name(dev: str, key: str) -> str:
    return f"net.ipv4.conf.{dev.replace('.', '/')}.{key}"


def _devices(cfg: Config, addrs: dict[str, list[Iface]]) -> tuple[list[str], list[Finding]]:
    """The tunnel devices (configured, or found by the peer's subnet) and the address
    findings."""
    out: list[Finding] = []
    devices: list[str] = []
    for p in cfg.peers:
        peer = ipaddress.ip_address(p.address)
        if p.interface is not None:
            dev = p.interface
            if dev not in addrs:
                out.append(Finding("error", "device", dev, f"device {dev} of peer {p.address} "
                                   "does not exist", "bring the tunnel up (the IPsec daemon "
                                   "creates the VTI device), or correct peers[].interface"))
                continue
            devices.append(dev)
            if p.gateway:  # a shared device reaches its peers via the next hop
                mine = [a for a in addrs[dev] if a.version == peer.version]
            else:
                mine = [a for a in addrs[dev] if peer in a.network and a.ip != peer]
            if mine:
                out.append(Finding("ok", "address", dev, f"{dev} has {mine[0]}, in peer "
                                   f"{p.address}'s subnet"))
            else:
                have = ", ".join(str(a) for a in addrs[dev]) or "no address"
                out.append(Finding("error", "address", dev, f"{dev} has {have}: none in the "
                                   f"subnet of peer {p.address}", f"add the inside address "
                                   f"(e.g. `ip addr add <ours>/30 dev {dev}`; libreswan: "
                                   "leftvti=), or correct the peer address"))
        else:
            found = [d for d, aa in addrs.items()
                     if any(peer in a.network and a.ip != peer and a.network.prefixlen > 0
                            for a in aa)]
            if found:
                devices.append(found[0])
                out.append(Finding("ok", "address", found[0], f"peer {p.address} is reached "
                                   f"via {found[0]} (discovered)"))
            else:
                out.append(Finding("error", "address", p.address, f"no device has an address "
                                   f"in the subnet of peer {p.address}", "bring its tunnel up "
                                   "with its inside address, or set peers[].interface"))
    for t in cfg.tunnels:
        if t.device is not None and t.device not in devices:
            if t.device in addrs:
                devices.append(t.device)
            else:
                out.append(Finding("warn", "device", t.device, f"device {t.device} of tunnel "
                                   f"{t.connection} does not exist", "fine while the tunnel is "
                                   "down; otherwise correct tunnels[].device"))
    return list(dict.fromkeys(devices)), out


def is_tun(dev: str, proc_root: str) -> bool:
    """Whether `dev` is a TUN device (sysfs beside `proc_root` has its tun_flags): a tunnel
    whose IPsec runs in userspace (strongSwan's kernel-libipsec, `ipsecN`), not in XFRM."""
    return (Path(proc_root).parent / "sys/class/net" / dev / "tun_flags").exists()


def check_sysctls(dev: str, proc_root: str, *, tun: bool = False) -> list[Finding]:
    """disable_xfrm, disable_policy (not on a TUN device: `tun`), rp_filter, forwarding of
    one device."""
    conf = Path(proc_root) / "sys/net/ipv4/conf"
    d = conf / dev
    out: list[Finding] = []
    if tun:
        out.append(Finding("ok", "device", dev, f"{dev} is a TUN device: IPsec in userspace "
                           "(strongSwan kernel-libipsec), no kernel XFRM on it, so "
                           "disable_xfrm and disable_policy do not apply"))

    def val(key: str) -> int | None:
        v = _read_int(d / key)
        if v is None:
            out.append(Finding("warn", key, dev, f"cannot read {_sysctl_name(dev, key)}",
                               "run doctor as root in the gateway's network namespace"))
        return v

    xfrm = None if tun else val("disable_xfrm")
    if xfrm is not None:
        if xfrm != 0:
            out.append(Finding("error", "disable_xfrm", dev, f"disable_xfrm={xfrm}: the kernel "
                               f"does not encrypt what leaves {dev}, so the tunnel silently "
                               "carries nothing", f"sysctl -w {_sysctl_name(dev, 'disable_xfrm')}"
                               "=0 (and remove it from sysctl.d)"))
        else:
            out.append(Finding("ok", "disable_xfrm", dev, "disable_xfrm=0"))
    pol = None if tun else val("disable_policy")
    if pol is not None:
        if pol != 1:
            out.append(Finding("error", "disable_policy", dev, f"disable_policy={pol}: "
                               f"decrypted packets arriving on {dev} are checked against IPsec "
                               "policies a route-based tunnel does not have, and dropped",
                               f"sysctl -w {_sysctl_name(dev, 'disable_policy')}=1"))
        else:
            out.append(Finding("ok", "disable_policy", dev, "disable_policy=1"))
    rp = val("rp_filter")
    if rp is not None:
        rp_all = _read_int(conf / "all" / "rp_filter") or 0
        eff = max(rp, rp_all)
        if eff == 1:
            which = (f"net.ipv4.conf.all.rp_filter={rp_all}" if rp_all > rp
                     else f"{_sysctl_name(dev, 'rp_filter')}={rp}")
            out.append(Finding("error", "rp_filter", dev, f"strict reverse-path filtering "
                               f"({which}; the kernel uses the larger of all and {dev}): "
                               f"traffic arriving on {dev} while the best route is via the "
                               "other tunnel is dropped", f"sysctl -w "
                               f"{_sysctl_name(dev, 'rp_filter')}=2"
                               + (" and net.ipv4.conf.all.rp_filter=0 (or 2)"
                                  if rp_all == 1 else "")))
        else:
            out.append(Finding("ok", "rp_filter", dev, f"effective rp_filter={eff} "
                               f"(all={rp_all}, {dev}={rp})"))
    fwd = val("forwarding")
    if fwd is not None:
        if fwd != 1:
            out.append(Finding("error", "forwarding", dev, f"forwarding=0: traffic between "
                               f"{dev} and the LAN is not routed",
                               f"sysctl -w {_sysctl_name(dev, 'forwarding')}=1 (or "
                               "net.ipv4.ip_forward=1)"))
        else:
            out.append(Finding("ok", "forwarding", dev, "forwarding=1"))
    return out


def check_mtu(dev: str, link: Link | None) -> list[Finding]:
    """The MTU of device `dev` (`link`: as the kernel reports it; None if it is gone)."""
    mtu = link.mtu if link is not None else None
    if mtu is None:
        return [Finding("warn", "mtu", dev, f"cannot read the MTU of {dev}", "")]
    if mtu > MTU_MAX:
        return [Finding("warn", "mtu", dev, f"MTU {mtu} is above {MTU_MAX}, the largest AWS "
                        "allows inside a tunnel; AWS does not do path MTU discovery, so large "
                        "packets are fragmented or lost", f"ip link set dev {dev} mtu "
                        f"{MTU_RECOMMENDED} (AWS's sample configuration) and clamp the TCP MSS "
                        f"to {MTU_RECOMMENDED - 40}")]
    return [Finding("ok", "mtu", dev, f"MTU {mtu} (AWS: {MTU_RECOMMENDED} recommended, at most "
                    f"{MTU_MAX})")]


def _rt_protos(etc_root: str) -> dict[int, str]:
    base = Path(etc_root) / "iproute2"
    files = [base / "rt_protos"]
    with contextlib.suppress(OSError):
        files += sorted((base / "rt_protos.d").glob("*.conf"))
    names: dict[int, str] = {}
    for f in files:
        for line in (_read(f) or "").splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2:
                with contextlib.suppress(ValueError):
                    names[int(parts[0], 0)] = parts[1]
    return names


def _processes(proc_root: str) -> Iterable[tuple[int, str, list[str]]]:
    """(pid, comm, argv) of every process we can see, except this one."""
    try:
        entries = list(os.scandir(proc_root))
    except OSError:
        return
    for e in entries:
        if not e.name.isdigit() or int(e.name) == os.getpid():
            continue
        comm = _read(Path(e.path) / "comm")
        try:
            raw = (Path(e.path) / "cmdline").read_bytes()
        except OSError:
            continue
        if comm is not None:
            yield int(e.name), comm, [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def check_protocol(cfg: Config, net: Net, proc_root: str, etc_root: str) -> list[Finding]:
    out: list[Finding] = []
    subject = f"protocol {cfg.protocol}"
    name = _rt_protos(etc_root).get(cfg.protocol)
    if name is not None and name not in OUR_PROTO_NAMES:
        out.append(Finding("warn", "protocol", subject, f"rt_protos names protocol "
                           f"{cfg.protocol} '{name}': another routing daemon may use it",
                           "set kernel.protocol to an id no other daemon uses"))
    users = sorted({comm for _pid, comm, _argv in _processes(proc_root)
                    if cfg.protocol in DAEMON_PROTOCOLS.get(comm, ())})
    if users:
        out.append(Finding("error", "protocol", subject, f"{', '.join(users)} runs and writes "
                           f"routes with protocol {cfg.protocol}: vtibgp would adopt and "
                           "remove them", "set kernel.protocol (and table) to ones that "
                           "daemon does not use"))
    count = net.route_count(cfg.table, cfg.protocol)
    if count:
        out.append(Finding("warn", "protocol", subject, f"{count} routes with protocol "
                           f"{cfg.protocol} are in table {cfg.table}: a (re)starting vtibgp "
                           "adopts them and removes those BGP does not confirm",
                           "expected if vtibgp runs or ran; otherwise find their owner "
                           f"(`ip route show table {cfg.table} proto {cfg.protocol}`)"))
    if not out:
        out.append(Finding("ok", "protocol", subject, f"no other user of protocol "
                           f"{cfg.protocol} in table {cfg.table}"))
    return out


def check_metrics_port(listen: str | None) -> list[Finding]:
    if listen is None:
        return [Finding("ok", "metrics", "-", "metrics disabled")]
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
        try:
            s.bind((host, int(port)))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return [Finding("warn", "metrics", listen, f"{listen} is in use: fine if it is "
                                "vtibgp itself, else vtibgp cannot serve metrics",
                                f"check with `ss -ltnp 'sport = :{port}'`; if another program "
                                "holds it, change metrics.listen")]
            return [Finding("error", "metrics", listen, f"cannot listen on {listen}: "
                            f"{e.strerror}", "use an address of this host in metrics.listen")]
    return [Finding("ok", "metrics", listen, f"{listen} is free")]


def _caps(status: str | None) -> tuple[int, int, int | None]:
    """(CapEff, CapAmb, real uid) from a /proc/PID/status text."""
    eff = amb = 0
    uid: int | None = None
    for line in (status or "").splitlines():
        key, _, value = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            if key == "CapEff":
                eff = int(value.strip(), 16)
            elif key == "CapAmb":
                amb = int(value.strip(), 16)
            elif key == "Uid":
                uid = int(value.split()[0])
    return eff, amb, uid


def check_capabilities(proc_root: str) -> list[Finding]:
    how = ("run ExaBGP with `env exabgp.daemon.user=root`, or as its own user with "
           "AmbientCapabilities=CAP_NET_ADMIN (config/systemd/)")
    out: list[Finding] = []
    bit = 1 << CAP_NET_ADMIN
    for pid, comm, argv in _processes(proc_root):
        text = " ".join(argv)
        eff, amb, uid = _caps(_read(Path(proc_root) / str(pid) / "status"))
        if "vtibgp" in text and "run" in argv:
            if eff & bit:
                out.append(Finding("ok", "capabilities", f"pid {pid}", "the running vtibgp "
                                   "plugin has CAP_NET_ADMIN"))
            else:
                out.append(Finding("error", "capabilities", f"pid {pid}", "the running vtibgp "
                                   "plugin lacks CAP_NET_ADMIN and cannot program routes", how))
        elif "exabgp" in comm or any(Path(a).name.startswith("exabgp") for a in argv[:2]):
            if amb & bit or uid == 0:
                out.append(Finding("ok", "capabilities", f"pid {pid}", "ExaBGP runs as root "
                                   "or with CAP_NET_ADMIN ambient: its processes keep it "
                                   "(as root: unless it drops them to nobody; see README)"))
            else:
                out.append(Finding("error", "capabilities", f"pid {pid}", f"ExaBGP runs as uid "
                                   f"{uid} without CAP_NET_ADMIN in its ambient set: vtibgp "
                                   "will not be able to program routes", how))
    eff, _amb, _uid = _caps(_read(Path(proc_root) / "self" / "status"))
    if not out:
        level: Level = "ok" if eff & bit else "warn"
        out.append(Finding(level, "capabilities", "doctor", "no ExaBGP runs; this process "
                           + ("has" if eff & bit else "lacks") + " CAP_NET_ADMIN, which the "
                           "plugin needs", how))
    return out


def check_packer() -> list[Finding]:
    """Whether the writer packs route requests in C (vtibgp.kernel._fastpack) or in Python."""
    if compiled.pack_run is not None:
        return [Finding("ok", "packer", "vtibgp.kernel._fastpack", "the kernel writer packs "
                        "route requests with the compiled packer")]
    return [Finding("warn", "packer", "vtibgp.kernel._fastpack", "not built: the kernel writer "
                    "packs in Python, the same bytes at about half the routes per second",
                    "reinstall vtibgp where a C compiler and Python's headers exist "
                    "(apt install build-essential python3-dev; pip install .)")]


def _gids(status: str | None) -> set[int]:
    """The real, effective and supplementary group ids of a /proc/PID/status text."""
    out: set[int] = set()
    for line in (status or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("Gid", "Groups"):
            out.update(int(v) for v in value.split() if v.isdigit())
    return out


def check_probe(cfg: Config, proc_root: str) -> list[Finding]:
    """The probe's ICMP echo requests need CAP_NET_RAW (raw sockets) or a
    net.ipv4.ping_group_range that holds the plugin's group (ping sockets); without either
    vtibgp runs with the probe off, and a silent tunnel failure waits for BGP's hold timer."""
    if not cfg.probe_enabled or not any(p.probe for p in cfg.peers):
        return [Finding("ok", "probe", "probe", "the probe is off in the config (silent tunnel "
                        "failures wait for BGP's hold timer)")]
    rng = (_read(Path(proc_root) / "sys/net/ipv4/ping_group_range") or "1 0").split()
    lo, hi = (int(rng[0]), int(rng[1])) if len(rng) == 2 and all(
        v.isdigit() for v in rng) else (1, 0)
    how = ("give the plugin CAP_NET_RAW (AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW, "
           "config/systemd/), or allow its group ping sockets: sysctl -w "
           "net.ipv4.ping_group_range='GID GID'")
    out: list[Finding] = []
    for pid, _comm, argv in _processes(proc_root):
        if "vtibgp" not in " ".join(argv) or "run" not in argv:
            continue
        status = _read(Path(proc_root) / str(pid) / "status")
        eff, _amb, _uid = _caps(status)
        groups = sorted(g for g in _gids(status) if lo <= g <= hi)
        if eff & (1 << CAP_NET_RAW):
            out.append(Finding("ok", "probe", f"pid {pid}", "the running vtibgp plugin has "
                               "CAP_NET_RAW: its probe sends echo requests (raw sockets)"))
        elif groups:
            out.append(Finding("ok", "probe", f"pid {pid}", f"ping_group_range {lo} {hi} holds "
                               f"the plugin's group {groups[0]}: its probe uses ping sockets"))
        else:
            out.append(Finding("warn", "probe", f"pid {pid}", "the running vtibgp plugin has "
                               f"no CAP_NET_RAW and ping_group_range {lo} {hi} excludes its "
                               "groups: its probe is off (vtibgp_probe_available 0)", how))
    if not out:
        out.append(Finding("ok", "probe", "probe", "no vtibgp plugin runs; when it does it "
                           f"needs CAP_NET_RAW or a group in ping_group_range ({lo} {hi})"))
    return out


# --------------------------------------------------------------------------- TCP MSS clamping

TCP_IP4_HEADERS = 40  # IPv4 (20) + TCP (20): the largest MSS that fits is MTU - 40
TCP_IP6_HEADERS = 60  # IPv6 (40) + TCP (20)
_IF_KEYS = {"oifname": "out", "oif": "out", "iifname": "in", "iif": "in"}


@dataclass(frozen=True, slots=True)
class MssClamp:
    """An nftables rule that sets the TCP MSS option (or an iptables TCPMSS target in the
    ruleset, iptables-nft)."""

    where: str  # "family table chain"
    into: tuple[str, ...] | None  # oifname patterns it is limited to (None: every device)
    out_of: tuple[str, ...] | None  # iifname patterns
    ipv6: bool | None  # True: IPv6 packets only, False: IPv4 only, None: both
    value: int | None  # None: not a fixed number (`rt mtu`, iptables' TCPMSS)
    how: str  # what it sets, for the messages


def _names(right: object) -> tuple[str, ...]:
    if isinstance(right, str):
        return (right,)
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        return tuple(v for v in right["set"] if isinstance(v, str))
    return ()


def parse_mss_clamps(ruleset: object) -> list[MssClamp]:
    """The rules of ``nft -j list ruleset`` output that set the TCP MSS."""
    items = ruleset.get("nftables", []) if isinstance(ruleset, dict) else []
    out: list[MssClamp] = []
    for item in items if isinstance(items, list) else []:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or not isinstance(rule.get("expr"), list):
            continue
        family = rule.get("family")
        ipv6: bool | None = {"ip": False, "ip6": True}.get(str(family))
        match: dict[str, tuple[str, ...]] = {}
        value: int | None = None
        how = ""
        for e in rule["expr"]:
            if not isinstance(e, dict):
                continue
            m = e.get("match")
            if isinstance(m, dict) and isinstance(m.get("left"), dict):
                key = m["left"].get("meta", {}).get("key") if isinstance(
                    m["left"].get("meta"), dict) else None
                if key in _IF_KEYS and m.get("op") in ("==", "in"):
                    match[_IF_KEYS[key]] = _names(m.get("right"))
                elif key == "nfproto" and m.get("op") in ("==", "in"):
                    ipv6 = {"ipv4": False, "ipv6": True}.get(str(m.get("right")), ipv6)
            mangle = e.get("mangle")
            if isinstance(mangle, dict) and isinstance(mangle.get("key"), dict):
                opt = mangle["key"].get("tcp option")
                if isinstance(opt, dict) and opt.get("name") == "maxseg":
                    v = mangle.get("value")
                    if isinstance(v, int) and not isinstance(v, bool):
                        value, how = v, f"MSS {v}"
                    else:
                        value, how = None, "MSS from the route MTU (rt mtu)"
            xt = e.get("xt")
            if isinstance(xt, dict) and xt.get("name") == "TCPMSS":
                value, how = None, "MSS with iptables' TCPMSS (value not shown by nft)"
        if how:
            out.append(MssClamp(f"{family} {rule.get('table')} {rule.get('chain')}",
                                match.get("out"), match.get("in"), ipv6, value, how))
    return out


def _applies(patterns: tuple[str, ...], dev: str) -> bool:
    return any(p == dev or (p.endswith("*") and dev.startswith(p[:-1])) for p in patterns)


def check_mss(devices: Sequence[str], links: dict[str, Link], net: Net) -> list[Finding]:
    """Every tunnel device should have a TCP MSS clamp, both ways, that fits its MTU: AWS does
    no path MTU discovery inside a tunnel (MTU at most 1446, MSS at most 1406)."""
    if not devices:
        return []
    try:
        clamps = parse_mss_clamps(net.nft_ruleset())
    except NftUnavailable as e:
        return [Finding("warn", "mss", "nftables", f"cannot check the TCP MSS clamp of "
                        f"{', '.join(devices)}: {e}", "install nftables (the clamp "
                        "`vtibgp aws-import` writes is nftables-mss.nft) and run doctor as "
                        "root")]
    out: list[Finding] = []
    for dev in devices:
        link = links.get(dev)
        mtu = link.mtu if link is not None else None
        # a rule without an interface match clamps everything; one that names oifnames
        # clamps what goes into those devices, one that names iifnames what comes out
        unbound = [c for c in clamps if c.into is None and c.out_of is None]
        into = [*unbound, *(c for c in clamps if c.into is not None and _applies(c.into, dev))]
        out_of = [*unbound, *(c for c in clamps
                              if c.out_of is not None and _applies(c.out_of, dev))]
        bad: dict[tuple[str, int, bool], tuple[MssClamp, int]] = {}
        for c in (*into, *out_of):
            if mtu is None or c.value is None:
                continue
            limit = mtu - (TCP_IP6_HEADERS if c.ipv6 else TCP_IP4_HEADERS)
            if c.value > limit:  # one finding per chain and value, not per rule
                bad.setdefault((c.where, c.value, bool(c.ipv6)), (c, limit))
        for c, limit in bad.values():
            out.append(Finding("warn", "mss", dev, f"{c.where} clamps the TCP MSS on {dev} "
                               f"to {c.value}, above the {limit} its MTU {mtu} allows (MTU - "
                               f"{TCP_IP6_HEADERS if c.ipv6 else TCP_IP4_HEADERS} for "
                               f"IPv{6 if c.ipv6 else 4}): segments that size do not fit the "
                               "tunnel, and AWS does no path MTU discovery",
                               f"clamp to {limit} or less, or `tcp option maxseg size set rt "
                               "mtu` (aws-import's nftables-mss.nft derives it from the MTU)"))
        fix = (f"load nftables-mss.nft from `vtibgp aws-import` (nft -f), or clamp with nft "
               f"on oifname and iifname {dev}: `tcp flags & (syn | rst) == syn tcp option "
               "maxseg size set rt mtu`")
        if not into and not out_of:
            out.append(Finding("warn", "mss", dev, f"no TCP MSS clamp on {dev}: AWS does no "
                               "path MTU discovery inside the tunnel, so TCP connections "
                               "whose hosts offer a larger MSS (1460 on Ethernet, 8961 in a "
                               f"VPC) lose segments that do not fit MTU {mtu or '?'}", fix))
        elif not into or not out_of:
            missing = "into" if not into else "out of"
            out.append(Finding("warn", "mss", dev, f"the TCP MSS is clamped only for "
                               f"connections {'out of' if not into else 'into'} {dev}, not "
                               f"{missing} it: one direction's segments can be too large "
                               "for the tunnel", fix))
        elif not bad:
            how = sorted({c.how for c in (*into, *out_of)})
            out.append(Finding("ok", "mss", dev, f"TCP MSS clamped both ways on {dev} "
                               f"({'; '.join(how)}; MTU {mtu or '?'})"))
    return out


# --------------------------------------------------------------------------- IKE liveness

DEFAULT_HOLD_TIME = 30  # AWS's BGP hold time, and ExaBGP's default in our renderer
# libreswan 4.x defaults: no DPD unless dpddelay is set; IKEv2 gives up on a peer after
# retransmit-timeout (60 s) of unanswered retransmissions; dpdaction hold
LIBRESWAN_RETRANSMIT_TIMEOUT = 60.0
# strongSwan (charon) defaults: IKEv2 gives up after retransmit_tries retransmissions, the
# n-th after retransmit_timeout * retransmit_base ** n seconds (165 s in all); IKEv1's DPD
# timeout 150 s
CHARON_RETRANSMIT = {"retransmit_timeout": 4.0, "retransmit_base": 1.8, "retransmit_tries": 5.0,
                     "retransmit_limit": 0.0}
STRONGSWAN_DPD_TIMEOUT = 150.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _seconds(value: str | None) -> float | None:
    """A libreswan/strongSwan duration ("30", "30s", "500ms", "2m", ...) in seconds."""
    m = _DURATION.match((value or "").strip().lower())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def _strip_comment(line: str) -> str:
    quoted = False
    for i, c in enumerate(line):
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            return line[:i]
    return line


def parse_ipsec_conf(text: str) -> dict[str, dict[str, str]]:
    """conn name -> its own keyword=value settings, from libreswan ipsec.conf text (`config
    setup` and other sections are skipped; `also=` is resolved by :func:`libreswan_conn`)."""
    conns: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            words = line.split()
            current = (conns.setdefault(words[1], {})
                       if words[0] == "conn" and len(words) > 1 else None)
            continue
        key, sep, value = line.strip().partition("=")
        if current is not None and sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            current[key.strip()] = value
    return conns


def libreswan_conn(conns: dict[str, dict[str, str]], name: str) -> dict[str, str] | None:
    """The settings of conn `name` with `conn %default` and its `also=` conns pulled in (its
    own settings win), or None if there is no such conn."""
    if name not in conns:
        return None
    out: dict[str, str] = dict(conns.get("%default", {}))
    seen: set[str] = set()

    def pull(n: str) -> None:
        if n in seen or n not in conns:
            return
        seen.add(n)
        for also in conns[n].get("also", "").split():
            pull(also)
        out.update({k: v for k, v in conns[n].items() if k != "also"})

    pull(name)
    return out


_SETTINGS_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}=\n]|#[^\n]*|[^\s{}="#]+')


def parse_settings(text: str) -> dict[str, object]:
    """strongSwan's settings format (swanctl.conf, strongswan.conf): nested `name { ... }`
    sections of `key = value` lines, several on a line allowed; as nested dicts. `include`
    lines are skipped (give the included files too), `name : template` is read as `name`."""
    tokens = [t for t in _SETTINGS_TOKEN.findall(text) if not t.startswith("#")]
    root: dict[str, object] = {}
    stack = [root]
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        if t in ("\n", "=", "{"):
            i += 1
            continue
        if t == "}":
            if len(stack) > 1:
                stack.pop()
            i += 1
            continue
        j = i + 1
        while j < n and tokens[j] not in ("{", "=", "\n", "}"):
            j += 1  # `name : template {`, or `include FILE`
        if j < n and tokens[j] == "{":
            sec = stack[-1].get(t)
            if not isinstance(sec, dict):
                sec = stack[-1][t] = {}
            stack.append(sec)
            i = j + 1
        elif j < n and tokens[j] == "=" and j == i + 1:
            k, words = j + 1, []
            while k < n and tokens[k] not in ("\n", "}", "{") and not (
                    k + 1 < n and tokens[k + 1] == "="):
                w = tokens[k]
                words.append(w[1:-1] if len(w) >= 2 and w[0] == w[-1] == '"' else w)
                k += 1
            stack[-1][t] = " ".join(words)
            i = k
        else:
            i = j
    return root


def _merge(into: dict[str, object], more: dict[str, object]) -> None:
    for k, v in more.items():
        old = into.get(k)
        if isinstance(old, dict) and isinstance(v, dict):
            _merge(old, v)
        else:
            into[k] = v


def _files(paths: Sequence[str]) -> list[Path]:
    """The given paths, each a file or a glob pattern; those that exist, in order."""
    out: list[Path] = []
    for p in paths:
        if any(c in p for c in "*?["):
            path = Path(p)
            out += sorted(path.parent.glob(path.name))
        elif Path(p).is_file():
            out.append(Path(p))
    return list(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Liveness:
    """How one IPsec connection notices a dead peer."""

    daemon: str  # "libreswan" / "strongSwan"
    source: str  # the file
    seconds: float | None  # worst case until the peer is declared dead; None: never
    how: str  # the settings that give it, for the message
    action: str  # dpdaction / dpd_action
    action_ok: bool


def _fmt(s: float) -> str:
    return f"{s:g}"


def libreswan_liveness(settings: dict[str, str], source: str) -> Liveness:
    v1 = settings.get("ikev2", "").lower() in ("no", "never") or \
        settings.get("keyexchange", "").lower() == "ikev1"
    delay = _seconds(settings.get("dpddelay"))
    action = settings.get("dpdaction", "hold").lower()
    ok = action == "restart"
    if not delay:
        return Liveness("libreswan", source, None, "no dpddelay: dead peer detection is off",
                        action, ok)
    if v1:
        timeout = _seconds(settings.get("dpdtimeout"))
        if not timeout:
            return Liveness("libreswan", source, None, f"IKEv1, dpddelay={_fmt(delay)} but no "
                            "dpdtimeout: dead peer detection is off", action, ok)
        return Liveness("libreswan", source, delay + timeout, f"IKEv1: dpddelay "
                        f"{_fmt(delay)} s + dpdtimeout {_fmt(timeout)} s", action, ok)
    rt = _seconds(settings.get("retransmit-timeout"))
    default = "" if rt is not None else " (default)"
    rt = LIBRESWAN_RETRANSMIT_TIMEOUT if rt is None else rt
    return Liveness("libreswan", source, delay + rt, f"IKEv2: dpddelay {_fmt(delay)} s + "
                    f"retransmit-timeout {_fmt(rt)} s{default}; dpdtimeout is not used",
                    action, ok)


def charon_retransmit_seconds(charon: dict[str, object]) -> tuple[float, str]:
    """(seconds, description) until charon gives up on an unanswered IKEv2 request."""
    vals: dict[str, float] = {}
    for k, d in CHARON_RETRANSMIT.items():
        raw = charon.get(k)
        try:
            vals[k] = float(raw) if isinstance(raw, str) else d
        except ValueError:
            vals[k] = d
    t, base, tries, limit = (vals[k] for k in CHARON_RETRANSMIT)
    total = sum(min(t * base ** i, limit) if limit > 0 else t * base ** i
                for i in range(int(tries) + 1))
    return total, (f"retransmissions {_fmt(round(total, 1))} s (charon.retransmit_timeout "
                   f"{_fmt(t)}, _base {_fmt(base)}, _tries {int(tries)})")


def strongswan_liveness(conn: dict[str, object], child: dict[str, object], source: str,
                        charon: dict[str, object]) -> Liveness:
    def get(d: dict[str, object], k: str) -> str | None:
        v = d.get(k)
        return v if isinstance(v, str) else None

    delay = _seconds(get(conn, "dpd_delay"))
    action = (get(child, "dpd_action") or "clear").lower()
    ok = action in ("restart", "trap")
    if not delay:
        return Liveness("strongSwan", source, None, "no dpd_delay: dead peer detection is off",
                        action, ok)
    if get(conn, "version") == "1":
        timeout = _seconds(get(conn, "dpd_timeout")) or STRONGSWAN_DPD_TIMEOUT
        return Liveness("strongSwan", source, delay + timeout, f"IKEv1: dpd_delay "
                        f"{_fmt(delay)} s + dpd_timeout {_fmt(timeout)} s", action, ok)
    total, how = charon_retransmit_seconds(charon)
    return Liveness("strongSwan", source, delay + total, f"IKEv2: dpd_delay {_fmt(delay)} s + "
                    f"{how}; dpd_timeout is not used", action, ok)


@dataclass(frozen=True, slots=True)
class IpsecFiles:
    """Where doctor looks for the IPsec daemons' configuration (files or glob patterns)."""

    ipsec_conf: tuple[str, ...]
    swanctl_conf: tuple[str, ...]
    strongswan_conf: tuple[str, ...]

    @classmethod
    def under(cls, etc_root: str) -> IpsecFiles:
        e = etc_root.rstrip("/")
        return cls((f"{e}/ipsec.conf", f"{e}/ipsec.d/*.conf"),
                   (f"{e}/swanctl/swanctl.conf", f"{e}/swanctl/conf.d/*.conf"),
                   (f"{e}/strongswan.conf", f"{e}/strongswan.d/*.conf",
                    f"{e}/strongswan.d/charon/*.conf"))


def find_liveness(files: IpsecFiles) -> dict[str, Liveness]:
    """connection name (as the updown call names it) -> how it notices a dead peer, from every
    libreswan conn and strongSwan CHILD_SA (and connection) in the files."""
    out: dict[str, Liveness] = {}
    conns: dict[str, dict[str, str]] = {}
    where: dict[str, str] = {}
    for f in _files(files.ipsec_conf):
        parsed = parse_ipsec_conf(_read(f) or "")
        for name, settings in parsed.items():
            conns.setdefault(name, {}).update(settings)
            where.setdefault(name, str(f))
    for name in conns:
        resolved = libreswan_conn(conns, name)
        if resolved is not None and name != "%default":
            out[name] = libreswan_liveness(resolved, where[name])
    strongswan: dict[str, object] = {}
    for f in _files(files.strongswan_conf):
        _merge(strongswan, parse_settings(_read(f) or ""))
    charon = strongswan.get("charon")
    charon = charon if isinstance(charon, dict) else {}
    for f in _files(files.swanctl_conf):
        connections = parse_settings(_read(f) or "").get("connections")
        for cname, conn in (connections.items() if isinstance(connections, dict) else ()):
            if not isinstance(conn, dict):
                continue
            children = conn.get("children")
            kids = [(k, v) for k, v in (children.items() if isinstance(children, dict) else ())
                    if isinstance(v, dict)]
            for kname, child in kids:
                out[kname] = strongswan_liveness(conn, child, str(f), charon)
            if cname not in out:
                out[cname] = strongswan_liveness(conn, kids[0][1] if kids else {}, str(f),
                                                 charon)
    return out


def _hold_times(exabgp_text: str | None) -> dict[str, int]:
    """neighbor address -> hold-time, from ExaBGP config text (templates followed)."""
    if exabgp_text is None:
        return {}
    out: dict[str, int] = {}
    for addr, n in parse_exabgp_neighbors(exabgp_text).items():
        hold = n.get("hold")
        if isinstance(hold, str) and hold.isdigit():
            out[addr] = int(hold)
    return out


def check_ike_liveness(cfg: Config, files: IpsecFiles,
                       exabgp_text: str | None = None) -> list[Finding]:
    """Does each tunnel's IPsec daemon notice a dead peer before BGP's hold timer expires? If
    not, BGP fails over first and the updown call comes too late to matter."""
    if not cfg.tunnels:
        return [Finding("ok", "ike-liveness", "tunnels", "no tunnels: in the config, so no "
                        "IPsec connection to compare with BGP's hold time")]
    found = find_liveness(files)
    if not found:
        looked = ", ".join((*files.ipsec_conf, *files.swanctl_conf))
        return [Finding("warn", "ike-liveness", "tunnels", f"no libreswan or strongSwan "
                        f"connection found in {looked}: dead peer detection not checked",
                        "give the files with --ipsec-conf / --swanctl-conf")]
    holds = _hold_times(exabgp_text)
    probe = cfg.probe_enabled and any(p.probe for p in cfg.peers)
    out: list[Finding] = []
    for t in cfg.tunnels:
        live = found.get(t.connection)
        subject = t.connection
        if live is None:
            out.append(Finding("warn", "ike-liveness", subject, f"tunnels: names connection "
                               f"{t.connection}, which no IPsec configuration file defines",
                               "correct tunnels[].connection (libreswan: the conn name; "
                               "strongSwan: the CHILD_SA name), or give the file with "
                               "--ipsec-conf / --swanctl-conf"))
            continue
        peers = [p for p in cfg.peers if t.device is not None and p.interface == t.device]
        hold_of = {p.address: holds.get(p.address) for p in peers}
        known = [h for h in hold_of.values() if h]
        hold = min(known) if known else DEFAULT_HOLD_TIME
        hold_how = (f"BGP hold time {hold} s" if known else
                    f"BGP hold time {hold} s (assumed: AWS's; give --exabgp-conf)")
        dev = t.device or "its device"
        still = ("vtibgp's probe still sees a silent tunnel within interval x multiplier"
                 if probe else "vtibgp's probe would see it within interval x multiplier: "
                 "enable it (probe.enabled, peers[].probe)")
        fix = ("libreswan: dpddelay=5 and retransmit-timeout=15s (IKEv2) for a 30 s hold time; "
               "strongSwan: dpd_delay = 5s and shorter charon.retransmit_* (strongswan.conf); "
               "`vtibgp aws-import` writes such values")
        if live.seconds is None:
            out.append(Finding("warn", "ike-liveness", subject, f"{live.daemon} "
                               f"({live.source}): {live.how}, so a dead peer is noticed only "
                               f"when a rekey fails; the {hold_how} on {dev} decides alone and "
                               f"the updown signal never helps ({still})", fix))
        elif live.seconds > hold:
            out.append(Finding("warn", "ike-liveness", subject, f"{live.daemon} notices a "
                               f"dead peer after up to {_fmt(round(live.seconds, 1))} s "
                               f"({live.how}; {live.source}), later than the {hold_how} on "
                               f"{dev}: BGP fails over first, so the updown signal is useless "
                               f"for a dead peer ({still})", fix))
        else:
            out.append(Finding("ok", "ike-liveness", subject, f"{live.daemon} notices a dead "
                               f"peer within {_fmt(round(live.seconds, 1))} s ({live.how}), "
                               f"before the {hold_how} on {dev}"))
        if live.seconds is not None and not live.action_ok:
            what = "dpdaction" if live.daemon == "libreswan" else "dpd_action"
            out.append(Finding("warn", "dpd-action", subject, f"{what}={live.action}: when "
                               f"{live.daemon} declares the AWS endpoint dead it does not bring "
                               "the tunnel back, and AWS never initiates: the tunnel stays down"
                               + (" (libreswan 5 ignores dpdaction and restarts)"
                                  if live.daemon == "libreswan" else ""),
                               f"{what}=restart"))
    return out


_NEIGHBOR = re.compile(r"\bneighbor\s+([\w.:-]+)\s*\{")
_INHERIT = re.compile(r"\binherit\s+([^;]+);")
_LOCAL = re.compile(r"\blocal-address\s+([^;\s]+)\s*;")
_HOLD = re.compile(r"\bhold-time\s+(\d+)\s*;")
_PROCESSES = re.compile(r"\bprocesses\s*\[([^\]]*)\]")
_PROCESS = re.compile(r"\bprocess\s+([\w.-]+)\s*\{")


def parse_exabgp_neighbors(text: str) -> dict[str, dict[str, object]]:
    """neighbor address -> {'local': local-address or None, 'processes': [names], 'hold':
    hold-time or None}, from ExaBGP config text (comments stripped; each block up to its
    matching brace)."""
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    out: dict[str, dict[str, object]] = {}
    templates: dict[str, dict[str, object]] = {}
    inherits: dict[str, list[str]] = {}
    for m in _NEIGHBOR.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        block = text[m.end():i]
        local = _LOCAL.search(block)
        procs = [p for pm in _PROCESSES.finditer(block) for p in pm.group(1).split()]
        hold = _HOLD.search(block)
        entry: dict[str, object] = {"local": local.group(1) if local else None,
                                    "processes": procs,
                                    "hold": hold.group(1) if hold else None}
        try:
            addr = str(ipaddress.ip_address(m.group(1)))
        except ValueError:
            templates[m.group(1)] = entry  # `template { neighbor NAME { … } }`
            continue
        out[addr] = entry
        inherits[addr] = [n for im in _INHERIT.finditer(block) for n in im.group(1).split()]
    for addr, names in inherits.items():  # `inherit NAME;` takes the template's settings
        entry = out[addr]
        for name in names:
            tpl = templates.get(name)
            if tpl is None:
                continue
            for key in ("local", "hold"):
                if entry[key] is None:
                    entry[key] = tpl[key]
            entry["processes"] = [*tpl["processes"], *entry["processes"]]  # type: ignore[misc]
    return out


def check_exabgp(cfg: Config, path: str, addrs: dict[str, list[Iface]]) -> list[Finding]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        return [Finding("error", "exabgp", path, f"cannot read: {e.strerror or e}",
                        "give the ExaBGP config ExaBGP is started with")]
    neighbors = parse_exabgp_neighbors(text)
    ours = {p.address: p for p in cfg.peers}
    ours_proc = {m.group(1) for m in _PROCESS.finditer(text)
                 if "vtibgp" in text[m.end():text.find("}", m.end())]}
    out: list[Finding] = []
    for addr, p in ours.items():
        n = neighbors.get(addr)
        if n is None:
            out.append(Finding("error", "exabgp", addr, f"peer {addr} of {cfg.source} has no "
                               f"neighbor in {path}: no session, no routes",
                               "regenerate it with `vtibgp exabgp-config`"))
            continue
        local = n["local"]
        procs = n["processes"]
        assert isinstance(procs, list)
        if ours_proc and not ours_proc & set(procs):
            out.append(Finding("error", "exabgp", addr, f"neighbor {addr} does not send to the "
                               f"vtibgp process ({', '.join(sorted(ours_proc))})", "add it to "
                               "the neighbor's api { processes [ ... ]; }"))
        if not isinstance(local, str):
            out.append(Finding("warn", "exabgp", addr, f"neighbor {addr} has no "
                               "local-address", "set the inside address of our tunnel end"))
            continue
        try:
            lip = ipaddress.ip_address(local)
        except ValueError:
            out.append(Finding("error", "exabgp", addr, f"local-address {local!r} is not an "
                               "address", "set the inside address of our tunnel end"))
            continue
        devs = [p.interface] if p.interface else list(addrs)
        where = [d for d in devs if any(a.ip == lip for a in addrs.get(d or "", []))]
        if not where:
            out.append(Finding("error", "exabgp", addr, f"local-address {local} of neighbor "
                               f"{addr} is not on " + (p.interface or "any device"),
                               "make it our inside address of that tunnel"))
        elif p.interface is None and not any(
                ipaddress.ip_address(addr) in a.network
                for a in addrs[where[0]] if a.ip == lip):
            out.append(Finding("warn", "exabgp", addr, f"local-address {local} is not in "
                               f"peer {addr}'s subnet", "check the inside addresses"))
        else:
            out.append(Finding("ok", "exabgp", addr, f"neighbor {addr} local-address {local} "
                               "matches"))
    extra = sorted(set(neighbors) - set(ours))
    if extra and not cfg.accept_unconfigured_peers:
        out.append(Finding("warn", "exabgp", ", ".join(extra), f"neighbors in {path} that are "
                           f"not peers in {cfg.source}: vtibgp ignores their routes",
                           "add them under peers: or remove them from ExaBGP's config"))
    return out


def check_preferences(cfg: Config) -> list[Finding]:
    """The tunnels of one VPN connection (peers[].vpn) should have equal preferences: vtibgp
    compares preference before LOCAL_PREF, AS path and MED, and the cloud steers with MED (AWS
    announces a lower MED on the tunnel that stays in service while it maintains the other
    endpoint), so an unequal preference overrides that."""
    by_vpn: dict[str, list[tuple[str, int]]] = {}
    for p in cfg.peers:
        if p.vpn:
            by_vpn.setdefault(p.vpn, []).append((p.address, p.preference))
    out: list[Finding] = []
    for vpn, peers in by_vpn.items():
        prefs = {pref for _a, pref in peers}
        listed = ", ".join(f"{a} {pref}" for a, pref in peers)
        if len(peers) < 2:
            continue
        if len(prefs) > 1:
            top = max(prefs)
            best = ", ".join(a for a, pref in peers if pref == top)
            out.append(Finding("warn", "preference", vpn, f"the tunnels of VPN connection "
                               f"{vpn} have unequal preferences ({listed}): vtibgp compares "
                               "preference before LOCAL_PREF, AS path and MED, so the cloud's "
                               f"MED steering cannot move traffic off {best} (AWS lowers the "
                               "MED of the tunnel that stays in service while it maintains the "
                               "other endpoint)", "give both tunnels the same peers[]."
                               "preference; or leave it, if you want that tunnel whenever it is "
                               "up"))
        else:
            out.append(Finding("ok", "preference", vpn, f"the tunnels of VPN connection {vpn} "
                               f"have equal preferences ({listed}): the cloud's MED decides"))
    return out


# --------------------------------------------------------------------------- entry points


def run_checks(cfg: Config, *, exabgp_conf: str | None = None, proc_root: str = "/proc",
               etc_root: str = "/etc", net: Net | None = None,
               ipsec_files: IpsecFiles | None = None) -> list[Finding]:
    """All the checks, in the calling process's network namespace. `ipsec_files`: where the
    libreswan/strongSwan configuration is (default: their standard paths under `etc_root`)."""
    net = net or IpNet()
    links = net.links()
    addrs = net.addresses()
    for name in links:  # a device without an address still exists
        addrs.setdefault(name, [])
    devices, out = _devices(cfg, addrs)
    for dev in devices:
        out += check_sysctls(dev, proc_root, tun=is_tun(dev, proc_root))
        out += check_mtu(dev, links.get(dev))
    out += check_mss(devices, links, net)
    out += check_protocol(cfg, net, proc_root, etc_root)
    out += check_metrics_port(cfg.metrics_listen)
    out += check_capabilities(proc_root)
    out += check_packer()
    out += check_probe(cfg, proc_root)
    exabgp_text = _read(Path(exabgp_conf)) if exabgp_conf is not None else None
    out += check_ike_liveness(cfg, ipsec_files or IpsecFiles.under(etc_root), exabgp_text)
    out += check_preferences(cfg)
    if exabgp_conf is not None:
        out += check_exabgp(cfg, exabgp_conf, addrs)
    return out


def format(findings: Sequence[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.level.upper():5} {f.check:14} {f.subject}: {f.message}")
        if f.fix and f.level != "ok":
            lines.append(f"      fix: {f.fix}")
    errors = sum(f.level == "error" for f in findings)
    warns = sum(f.level == "warn" for f in findings)
    lines.append(f"{errors} errors, {warns} warnings")
    return "\n".join(lines)


def exit_status(findings: Iterable[Finding]) -> int:
    """1 if any finding is an error, else 0."""
    return 1 if any(f.level == "error" for f in findings) else 0


__all__ = ["Finding", "IpNet", "IpsecFiles", "Net", "NftUnavailable", "exit_status", "format",
           "parse_exabgp_neighbors", "parse_ipsec_conf", "parse_mss_clamps", "parse_settings",
           "run_checks"]
