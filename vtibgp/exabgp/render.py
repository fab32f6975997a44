"""Render ExaBGP's configuration from a vtibgp Config, so that vtibgp.yaml is the one source
of truth for the peers (`vtibgp exabgp-config`, and `vtibgp aws-import`).

vtibgp.yaml says who the peers are (address, families, description) but not what only the BGP
session needs. Those come from the arguments of `render`:

* `local_as` (required) and `peer_as` (default 64512, the VGW default), `hold_time` (30, what
  AWS uses), `router_id` (default: the first IPv4 local address);
* per peer, an optional `Session` in `sessions` (keyed by the peer address as in vtibgp.yaml)
  overriding local address, peer AS, hold time or description;
* a peer without a session's local address gets the AWS one: for an AWS-style inside /30 in
  169.254.0.0/16 (or /126 in fd00::/8) whose first usable address is the peer, ours is the
  second. Any other peer without a local address is an error naming it.

The output is checked with `exabgp validate` in the tests (ExaBGP 5.0; the syntax is the one
that works unchanged on 4.2 as well).

`render_neighbor` (with `render_api`, a neighbor's `api { ... }` block) and `render_process`
are the only places that write those stanzas: the lab's ExaBGP (vtibgp.lab.parts) uses them
too, so the integration tests run ExaBGP on what `vtibgp exabgp-config` writes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vtibgp.config.schema import Config

DEFAULT_PEER_AS = 64512
DEFAULT_HOLD_TIME = 30
PROCESS_NAME = "vtibgp"
_UNSAFE = re.compile(r'[;{}"\n\r\\#]')  # characters that would end or break an ExaBGP token


class ExabgpConfigError(ValueError):
    """The ExaBGP config cannot be rendered; the text names the peer and what is missing."""


@dataclass(frozen=True, slots=True)
class Session:
    """What a BGP session needs beyond vtibgp.yaml's peer entry; None: the default."""

    local_address: str | None = None
    peer_as: int | None = None
    hold_time: int | None = None
    description: str | None = None


def aws_local_address(peer: str) -> str | None:
    """Our inside address for an AWS tunnel peer (the VGW's, first usable of its /30 in
    169.254.0.0/16 or /126 in fd00::/8): the second usable one. None when `peer` is not one."""
    ip = ipaddress.ip_address(peer)
    if isinstance(ip, ipaddress.IPv4Address):
        if ip in ipaddress.ip_network("169.254.0.0/16") and int(ip) % 4 == 1:
            return str(ip + 1)
    elif ip in ipaddress.ip_network("fd00::/8") and int(ip) % 4 == 1:
        return str(ip + 1)
    return None


def _check_asn(what: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 0xFFFFFFFF:
        raise ExabgpConfigError(f"{what}: expected an AS number from 1 to 4294967295, got {v!r}")
    return v


def _check_hold(what: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not (v == 0 or 3 <= v <= 65535):
        raise ExabgpConfigError(f"{what}: expected a hold time of 0 or 3 to 65535 seconds, "
                                f"got {v!r}")
    return v


def _text(what: str, v: str) -> str:
    if _UNSAFE.search(v):
        raise ExabgpConfigError(f"{what}: must not contain ; {{ }} \" # \\ or a line break, "
                                f"got {v!r}")
    return v


DEFAULT_VTIBGP = "/usr/local/bin/vtibgp"
DEFAULT_CONFIG_PATH = "/etc/vtibgp/vtibgp.yaml"


def plugin_command(vtibgp: str = DEFAULT_VTIBGP, config_path: str = DEFAULT_CONFIG_PATH) -> str:
    """The process's `run` line for the vtibgp command at `vtibgp` reading `config_path`, both
    as they are on the gateway: absolute, and without spaces or characters that would end an
    ExaBGP token (ExaBGP splits `run` on whitespace)."""
    for what, path in (("vtibgp", vtibgp), ("config_path", config_path)):
        if not path.startswith("/") or any(c.isspace() for c in path) or _UNSAFE.search(path):
            raise ExabgpConfigError(f"{what}: expected an absolute path without spaces, "
                                    f"; {{ }} \" # or \\, got {path!r}")
    return f"{vtibgp} run --config {config_path}"


def render_process(run: str, *, name: str = PROCESS_NAME) -> str:
    """ExaBGP's `process <name> { run <run>; encoder json; }` stanza (no trailing newline)."""
    return "\n".join([f"process {name} {{", f"    run {run};", "    encoder json;", "}"])


def render_api(process: str = PROCESS_NAME, extra: str = "", *, receive: bool = True) -> str:
    """A neighbor's `api { ... }` block, indented for inside `neighbor ... { }` (no trailing
    newline): `process` gets the session's state changes and parsed updates and
    notifications. `extra` is more api configuration (e.g. `send { parsed; update; }`),
    written as given, one statement a line. `receive=False`: the state changes only (a
    LAN-side peer, whose routes are not used)."""
    lines = [
        "    api {",
        f"        processes [ {process} ];",
        "        neighbor-changes;",
    ]
    if receive:
        lines.append("        receive { parsed; update; notification; }")
    lines += [f"        {line.strip()}" for line in extra.splitlines() if line.strip()]
    lines.append("    }")
    return "\n".join(lines)


def render_neighbor(peer: str, *, router_id: str, local_address: str, local_as: int,
                    peer_as: int, hold_time: int, families: Sequence[str],
                    process: str = PROCESS_NAME, description: str = "",
                    extra_api: str = "", receive: bool = True) -> str:
    """One `neighbor <peer> { ... }` stanza (no trailing newline), its api block from
    :func:`render_api`. `families` as in vtibgp.yaml, e.g. `("ipv4 unicast",)`. The values are
    written as given: :func:`render` checks them first."""
    lines = [f"neighbor {peer} {{"]
    if description:
        lines.append(f'    description "{description}";')
    lines += [
        f"    router-id {router_id};",
        f"    local-address {local_address};",
        f"    local-as {local_as};",
        f"    peer-as {peer_as};",
        f"    hold-time {hold_time};",
        "    capability { route-refresh; }",
        "    family { " + " ".join(f"{f};" for f in families) + " }",
        render_api(process, extra_api, receive=receive),
        "}",
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Neighbor:
    """One peer's checked values, before the router id is known."""

    peer: str
    local_address: str
    peer_as: int
    hold_time: int
    families: tuple[str, ...]
    description: str


def render(cfg: Config, *, plugin_command: str, local_as: int,
           peer_as: int = DEFAULT_PEER_AS, hold_time: int = DEFAULT_HOLD_TIME,
           router_id: str | None = None,
           sessions: Mapping[str, Session] | None = None,
           header: str = "") -> str:
    """The ExaBGP config text: the vtibgp process and one neighbor per `cfg.peers` entry.

    `plugin_command` is the process's `run` line, e.g.
    `/usr/local/bin/vtibgp run --config /etc/vtibgp/vtibgp.yaml` (ExaBGP checks that the program
    exists). `header` lines are written as comments at the top. Raises ExabgpConfigError."""
    if not cfg.peers:
        raise ExabgpConfigError("peers: at least one peer is needed to render neighbors")
    _text("plugin_command", plugin_command)
    if not plugin_command.strip().startswith("/"):
        raise ExabgpConfigError(f"plugin_command: expected an absolute program path, got "
                                f"{plugin_command!r}")
    _check_asn("local_as", local_as)
    _check_asn("peer_as", peer_as)
    _check_hold("hold_time", hold_time)
    by_peer: dict[str, Session] = {}
    for addr, sess in (sessions or {}).items():
        try:
            by_peer[str(ipaddress.ip_address(addr))] = sess
        except ValueError:
            raise ExabgpConfigError(f"sessions: {addr!r} is not a peer address") from None
    unknown = set(by_peer) - {p.address for p in cfg.peers}
    if unknown:
        raise ExabgpConfigError(f"sessions: not peers in {cfg.source}: "
                                + ", ".join(sorted(unknown)))

    neighbors: list[_Neighbor] = []
    for i, peer in enumerate(cfg.peers):
        s = by_peer.get(peer.address, Session())
        what = f"peers[{i}] ({peer.address})"
        local = s.local_address or aws_local_address(peer.address)
        if local is None:
            raise ExabgpConfigError(f"{what}: no local address: not an AWS inside address "
                                    "(first usable of a 169.254.x.x/30), so give one")
        try:
            local_ip = ipaddress.ip_address(local)
        except ValueError:
            raise ExabgpConfigError(f"{what}: local address {local!r} is not an IP address"
                                    ) from None
        if local_ip.version != ipaddress.ip_address(peer.address).version:
            raise ExabgpConfigError(f"{what}: local address {local} is not of the peer's "
                                    "address family")
        if str(local_ip) == peer.address:
            raise ExabgpConfigError(f"{what}: the local address is the peer's own")
        pas = _check_asn(f"{what}: peer_as", s.peer_as if s.peer_as is not None else peer_as)
        hold = _check_hold(f"{what}: hold_time",
                           s.hold_time if s.hold_time is not None else hold_time)
        desc = _text(f"{what}: description", s.description if s.description is not None
                     else peer.description or (f"{peer.interface}" if peer.interface else ""))
        neighbors.append(_Neighbor(peer.address, str(local_ip), pas, hold,
                                   tuple(peer.families), desc))

    if router_id is None:
        v4 = [n.local_address for n in neighbors
              if ipaddress.ip_address(n.local_address).version == 4]
        if not v4:
            raise ExabgpConfigError("router_id: no IPv4 local address to take it from (all "
                                    "sessions are IPv6), so give one")
        router_id = v4[0]
    try:
        rid = ipaddress.IPv4Address(router_id)
    except ValueError:
        raise ExabgpConfigError(f"router_id: expected an IPv4 address, got {router_id!r}"
                                ) from None
    if int(rid) == 0:
        raise ExabgpConfigError("router_id: 0.0.0.0 is not a router id")

    out = [f"# {line}".rstrip() for line in header.splitlines()]
    out += [
        f"# Generated from {cfg.source} by vtibgp; the peers are defined there.",
        "# Run ExaBGP so the plugin keeps CAP_NET_ADMIN (config/systemd/, README \"Privileges\").",
        "",
        render_process(plugin_command.strip()),
        "",
    ]
    stanzas = [
        render_neighbor(n.peer, router_id=str(rid), local_address=n.local_address,
                        local_as=local_as, peer_as=n.peer_as, hold_time=n.hold_time,
                        families=n.families, description=n.description)
        for n in neighbors]
    # the LAN side (export.lan_peers): told the cloud's prefixes, their own routes not read
    stanzas += [
        render_neighbor(lp.address, router_id=str(rid), local_address=lp.local_address,
                        local_as=local_as, peer_as=lp.peer_as, hold_time=lp.hold_time,
                        families=("ipv6 unicast" if ":" in lp.address else "ipv4 unicast",),
                        description=_text(f"export.lan_peers ({lp.address}): description",
                                          lp.description or "LAN side"), receive=False)
        for lp in cfg.export_lan_peers]
    out.append("\n\n".join(stanzas))
    return "\n".join(out) + "\n"


__all__ = ["DEFAULT_CONFIG_PATH", "DEFAULT_VTIBGP", "ExabgpConfigError", "Session",
           "aws_local_address", "plugin_command", "render", "render_api", "render_neighbor",
           "render_process"]
