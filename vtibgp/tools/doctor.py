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


def check_sysctls(dev: str, proc_root: str) -> list[Finding]:
    """disable_xfrm, disable_policy, rp_filter, forwarding of one device."""
    conf = Path(proc_root) / "sys/net/ipv4/conf"
    d = conf / dev
    out: list[Finding] = []

    def val(key: str) -> int | None:
        v = _read_int(d / key)
        if v is None:
            out.append(Finding("warn", key, dev, f"cannot read {_sysctl_name(dev, key)}",
                               "run doctor as root in the gateway's network namespace"))
        return v

    xfrm = val("disable_xfrm")
    if xfrm is not None:
        if xfrm != 0:
            out.append(Finding("error", "disable_xfrm", dev, f"disable_xfrm={xfrm}: the kernel "
                               f"does not encrypt what leaves {dev}, so the tunnel silently "
                               "carries nothing", f"sysctl -w {_sysctl_name(dev, 'disable_xfrm')}"
                               "=0 (and remove it from sysctl.d)"))
        else:
            out.append(Finding("ok", "disable_xfrm", dev, "disable_xfrm=0"))
    pol = val("disable_policy")
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


_NEIGHBOR = re.compile(r"\bneighbor\s+([\w.:-]+)\s*\{")
_INHERIT = re.compile(r"\binherit\s+([^;]+);")
_LOCAL = re.compile(r"\blocal-address\s+([^;\s]+)\s*;")
_PROCESSES = re.compile(r"\bprocesses\s*\[([^\]]*)\]")
_PROCESS = re.compile(r"\bprocess\s+([\w.-]+)\s*\{")


def parse_exabgp_neighbors(text: str) -> dict[str, dict[str, object]]:
    """neighbor address -> {'local': local-address or None, 'processes': [names]}, from
    ExaBGP config text (comments stripped; each block up to its matching brace)."""
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
        entry: dict[str, object] = {"local": local.group(1) if local else None,
                                    "processes": procs}
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
            if entry["local"] is None:
                entry["local"] = tpl["local"]
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


# --------------------------------------------------------------------------- entry points


def run_checks(cfg: Config, *, exabgp_conf: str | None = None, proc_root: str = "/proc",
               etc_root: str = "/etc", net: Net | None = None) -> list[Finding]:
    """All the checks, in the calling process's network namespace."""
    net = net or IpNet()
    links = net.links()
    addrs = net.addresses()
    for name in links:  # a device without an address still exists
        addrs.setdefault(name, [])
    devices, out = _devices(cfg, addrs)
    for dev in devices:
        out += check_sysctls(dev, proc_root)
        out += check_mtu(dev, links.get(dev))
    out += check_protocol(cfg, net, proc_root, etc_root)
    out += check_metrics_port(cfg.metrics_listen)
    out += check_capabilities(proc_root)
    out += check_probe(cfg, proc_root)
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


__all__ = ["Finding", "IpNet", "Net", "exit_status", "format", "parse_exabgp_neighbors",
           "run_checks"]
