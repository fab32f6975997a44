"""The configuration schema: the one place that says which keys exist, their types, defaults
and allowed values. Loading validates everything before anything is touched, and every error
names the file, the key path and what is allowed."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vtibgp import defaults
from vtibgp.core.export import STEERINGS
from vtibgp.core.model import FAMILIES, Family
from vtibgp.core.policy import (
    MARTIANS,
    Martian,
    MaxPrefixSettings,
    PeerPolicySettings,
    PolicySettings,
    PrefixRule,
)

DEVICE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # IFNAMSIZ - 1, no '/' or spaces
LOG_LEVELS = ("debug", "info", "warning", "error")
TABLE_NAMES = {"main": 254, "local": 255, "default": 253}
FAMILY_NAMES: dict[str, Family] = {"ipv4": "ipv4 unicast", "ipv6": "ipv6 unicast"}


class ConfigError(ValueError):
    """A config problem, already phrased for the operator: file, key path, what is allowed."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    address: str  # canonical text of the neighbor address, as ExaBGP prints it
    interface: str | None = None  # None: discover from the session's local address
    preference: int = 100  # higher wins; compared before local-pref
    gateway: bool = False  # install via the BGP next-hop as an onlink gateway (shared devices)
    families: tuple[Family, ...] = ("ipv4 unicast",)
    description: str = ""
    vpn: str = ""  # the VPN connection the tunnel belongs to (AWS: two tunnels per VPN)
    # where the probe's echo requests go through `interface` (default: the peer's own,
    # inside, address); None: this peer's tunnel is not probed
    probe: str | None = None


@dataclass(frozen=True, slots=True)
class TunnelConfig:
    """An IPsec connection as its daemon names it in updown calls, and what it carries."""

    connection: str  # libreswan conn name / strongSwan connection (PLUTO_CONNECTION)
    device: str | None = None  # its tunnel device (else VTI_IFACE from the updown call)
    peers: tuple[str, ...] = ()  # on a shared device: only these BGP peers' routes
    teardown: bool = False  # on IPsec down, reset the BGP session (resync on return)


@dataclass(frozen=True, slots=True)
class LanPeerConfig:
    """A BGP peer on the LAN side (`export.lan_peers`): a LAN router or another gateway. It is
    told the cloud's prefixes that have a usable tunnel (next-hop self); what it sends is not
    used."""

    address: str
    peer_as: int
    local_address: str  # our address on the LAN, the session's source
    description: str = ""
    hold_time: int = 90


FALLBACKS = ("none", "unreachable", "blackhole")
WHEN_ALL_DOWN = ("auto", "keep", "withdraw")  # probe.when_all_down


@dataclass(frozen=True, slots=True)
class Config:
    source: str = "<defaults>"
    log_level: str = "info"
    syslog: bool = False
    table: int = defaults.TABLE
    protocol: int = defaults.PROTOCOL
    metric: int = 100
    max_paths: int = 4
    ecmp: bool = False
    batch: int = defaults.BATCH
    grace_time: float = 60.0
    resync: bool = True
    on_exit: str = "withdraw"
    accept_unconfigured_peers: bool = False
    metrics_listen: str | None = defaults.METRICS_LISTEN
    metrics_tls_cert: str | None = None  # serve /metrics over HTTPS with this certificate
    metrics_tls_key: str | None = None
    control_socket: str | None = defaults.CONTROL_SOCKET
    hold_down: float = 2.0
    # what stays for a prefix whose every tunnel is down (while its paths are held): nothing,
    # or a route of this type behind the real ones (see README "Routes follow the tunnel")
    fallback: str = "none"
    reconcile_interval: float = 30.0
    # the probe signal: echo requests through each tunnel every interval; down after
    # interval x multiplier without a reply, up after up_after replies in a row
    probe_enabled: bool = True
    probe_interval: float = 0.2
    probe_multiplier: int = 3
    probe_up_after: int = 3
    # when the probe alone says down on every tunnel of a prefix: keep its routes while
    # BGP is up (keep), remove them (withdraw), or auto: keep unless tunnel.fallback is set
    probe_when_all_down: str = "auto"
    # the return path: our networks announced to every peer (next-hop self), steered so the
    # cloud returns traffic through the tunnel vtibgp uses (see README "The return path")
    export_networks: tuple[str, ...] = ()
    export_steering: str = "symmetric"
    export_med: int | None = 100
    export_backup_med: int | None = 200
    export_backup_prepend: int = 1
    export_local_as: int | None = None
    # the LAN side: peers told the cloud's prefixes while a tunnel carries them, with this
    # MED and this many extra copies of our AS (a standby gateway's are worse)
    export_lan_peers: tuple[LanPeerConfig, ...] = ()
    export_lan_med: int | None = None
    export_lan_prepend: int = 0
    # networks announced only while the kernel has a route to them that is not ours
    export_reachable_only: bool = False
    nexthop_objects: str = "auto"  # "auto" (where the kernel has them), "on" or "off"
    peers: tuple[PeerConfig, ...] = field(default_factory=tuple)
    tunnels: tuple[TunnelConfig, ...] = field(default_factory=tuple)
    # `policy:` with each peer's `policy:`, `outside` and `max_prefix` under policy.peers
    policy: PolicySettings = field(default_factory=PolicySettings)

    def peer(self, address: str) -> PeerConfig | None:
        for p in self.peers:
            if p.address == address:
                return p
        return None


# ------------------------------------------------------------------ the schema, as data

_Check = Callable[[Any, str], Any]


class _Ctx:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, allowed: str, got: Any) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {allowed}, got {got!r}")


def _int_range(lo: int, hi: int) -> Callable[[_Ctx, str, Any], int]:
    def check(ctx: _Ctx, path: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ctx.fail(path, f"expected an integer from {lo} to {hi}", v)
        return v

    return check


def _number_range(lo: float, hi: float) -> Callable[[_Ctx, str, Any], float]:
    def check(ctx: _Ctx, path: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise ctx.fail(path, f"expected a number of seconds from {lo:g} to {hi:g}", v)
        return float(v)

    return check


def _boolean(ctx: _Ctx, path: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ctx.fail(path, "expected true or false", v)
    return v


def _choice(*allowed: str) -> Callable[[_Ctx, str, Any], str]:
    def check(ctx: _Ctx, path: str, v: Any) -> str:
        if v not in allowed:
            raise ctx.fail(path, "expected one of " + ", ".join(allowed), v)
        return str(v)

    return check


def _auto_or_boolean(ctx: _Ctx, path: str, v: Any) -> str:
    """`auto`, `true` or `false` (YAML also reads on/off/yes/no as booleans)."""
    if v == "auto":
        return "auto"
    if isinstance(v, bool):
        return "on" if v else "off"
    raise ctx.fail(path, "expected auto, true or false", v)


def _table(ctx: _Ctx, path: str, v: Any) -> int:
    if isinstance(v, str) and v in TABLE_NAMES:
        return TABLE_NAMES[v]
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 0xFFFFFFFF or v == 255:
        raise ctx.fail(path, "expected 'main', 'default' or a table number 1..4294967295 "
                       "other than 255 (local)", v)
    return v


def _listen(ctx: _Ctx, path: str, v: Any) -> str | None:
    if v is None or v is False:
        return None
    if isinstance(v, str):
        host, sep, port = v.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            ok = sep == ":" and 1 <= int(port) <= 65535
        except ValueError:
            ok = False
        if ok:
            return v
    raise ctx.fail(path, "expected ADDRESS:PORT (e.g. 127.0.0.1:10179, [::1]:10179) or null", v)


def _readable_file(ctx: _Ctx, path: str, v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise ctx.fail(path, "expected an absolute path to a PEM file", v)
    if not os.access(v, os.R_OK):
        raise ctx.fail(path, "expected a readable file (it is missing or unreadable)", v)
    return v


def _socket_path(ctx: _Ctx, path: str, v: Any) -> str | None:
    if v is None or v is False:
        return None
    if isinstance(v, str) and v.startswith("/") and len(v.encode()) < 108:
        return v
    raise ctx.fail(path, "expected an absolute path shorter than 108 bytes, or null", v)


def _address(ctx: _Ctx, path: str, v: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise ctx.fail(path, "expected an IPv4 or IPv6 address", v) from None


def _device(ctx: _Ctx, path: str, v: Any) -> str:
    if not isinstance(v, str) or not DEVICE_RE.match(v):
        raise ctx.fail(path, "expected a device name of 1-15 letters, digits or _.:-", v)
    return v


def _families(ctx: _Ctx, path: str, v: Any) -> tuple[Family, ...]:
    if not isinstance(v, list) or not v or any(f not in FAMILY_NAMES for f in v):
        raise ctx.fail(path, "expected a non-empty list of ipv4, ipv6", v)
    return tuple(FAMILY_NAMES[f] for f in dict.fromkeys(v))


def _text(ctx: _Ctx, path: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ctx.fail(path, "expected text", v)
    return v


# ------------------------------------------------------------------ import policy


def _prefix(ctx: _Ctx, path: str, v: Any) -> str:
    if isinstance(v, str) and "/" in v:
        try:
            return str(ipaddress.ip_network(v))
        except ValueError:
            pass
    raise ctx.fail(path, "expected a prefix such as 10.0.0.0/8 or fd00::/8 (no host bits set)",
                   v)


def _prefixes(ctx: _Ctx, path: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise ctx.fail(path, "expected a list of prefixes such as 10.0.0.0/8", v)
    return tuple(dict.fromkeys(_prefix(ctx, f"{path}[{i}]", p) for i, p in enumerate(v)))


def _no_default(ctx: _Ctx, path: str, nets: tuple[str, ...], allowed: str) -> tuple[str, ...]:
    """`nets`, unless one of them is a /0 (then the error says what is `allowed`)."""
    for i, p in enumerate(nets):
        if p.endswith("/0"):
            raise ctx.fail(f"{path}[{i}]", allowed, p)
    return nets


def _protected(ctx: _Ctx, path: str, v: Any) -> tuple[str, ...]:
    return _no_default(ctx, path, _prefixes(ctx, path, v), "a network narrower than /0 (a "
                       "protected /0 would refuse every route)")


def _martians(ctx: _Ctx, path: str, v: Any) -> tuple[Martian, ...]:
    if isinstance(v, str) and v == "default":
        return MARTIANS
    if not isinstance(v, list):
        raise ctx.fail(path, "expected 'default' or a list of prefixes (each a prefix, or "
                       "{prefix: P, exact: true} to refuse only P itself)", v)
    out = []
    for i, item in enumerate(v):
        ipath = f"{path}[{i}]"
        if isinstance(item, Mapping):
            e = _mapping(ctx, ipath, item, _MARTIAN, "")
            if "prefix" not in e:
                raise ctx.fail(ipath, "missing required key 'prefix'", dict(item))
            out.append(Martian(e["prefix"], "configured", not e.get("exact", False)))
        else:
            out.append(Martian(_prefix(ctx, ipath, item), "configured"))
    return tuple(out)


_MARTIAN: dict[str, Any] = {"prefix": _prefix, "exact": _boolean}
_RULE: dict[str, Any] = {
    "prefix": _prefix,
    "action": _choice("permit", "deny"),
    "ge": _int_range(0, 128),
    "le": _int_range(0, 128),
}


def _prefix_list(ctx: _Ctx, path: str, v: Any) -> tuple[PrefixRule, ...]:
    """FRR-like entries, tried in order. Refused: lengths outside prefix length..width, ge
    above le, an entry that an earlier one makes unreachable, and a family with only deny
    entries (the implicit deny at the end would refuse every prefix of it)."""
    if not isinstance(v, list):
        raise ctx.fail(path, "expected a list of entries {prefix, action, ge, le}", v)
    rules: list[PrefixRule] = []
    seen: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int, int]] = []
    for i, item in enumerate(v):
        ipath = f"{path}[{i}]"
        e = _mapping(ctx, ipath, item, _RULE, "expected a mapping with prefix and action "
                     "(permit or deny), optionally ge and le")
        for k in ("prefix", "action"):
            if k not in e:
                raise ctx.fail(ipath, f"missing required key '{k}'", dict(item))
        net = ipaddress.ip_network(e["prefix"])
        for k in ("ge", "le"):
            if k in e and not net.prefixlen <= e[k] <= net.max_prefixlen:
                raise ctx.fail(f"{ipath}.{k}", f"expected a length from {net.prefixlen} (the "
                               f"prefix's) to {net.max_prefixlen}", e[k])
        if e.get("ge", 0) > e.get("le", 128):
            raise ctx.fail(ipath, "ge at most le (the entry matches lengths ge to le)",
                           {"ge": e["ge"], "le": e["le"]})
        rule = PrefixRule(**e)
        lo, hi = rule.lengths()
        for j, (other, olo, ohi) in enumerate(seen):
            inside = net.version == other.version and \
                int(other.network_address) <= int(net.network_address) <= \
                int(net.broadcast_address) <= int(other.broadcast_address)
            if inside and olo <= lo <= hi <= ohi:
                raise ctx.fail(ipath, f"an entry that can match; {path}[{j}] before it already "
                               "matches every prefix this one would", e["prefix"])
        seen.append((net, lo, hi))
        rules.append(rule)
    for version, default, width in ((4, "0.0.0.0/0", 32), (6, "::/0", 128)):
        mine = [r for r in rules if ipaddress.ip_network(r.prefix).version == version]
        if mine and all(r.action == "deny" for r in mine):
            raise ctx.fail(path, f"at least one permit entry for IPv{version}: what no entry "
                           f"permits is refused, so deny entries alone refuse every IPv{version} "
                           f"prefix (end the list with {{prefix: {default}, le: {width}, "
                           "action: permit} to let the rest through)",
                           [r.prefix for r in mine])
    return tuple(rules)


def _max_length(ctx: _Ctx, path: str, v: Any) -> dict[str, int]:
    return _mapping(ctx, path, v, _MAX_LENGTH, "expected a mapping with ipv4 and/or ipv6")


_MAX_LENGTH: dict[str, Any] = {"ipv4": _int_range(1, 32), "ipv6": _int_range(1, 128)}

# keys of `policy:` and of `peers[].policy:` (martians is global only)
_PEER_POLICY: dict[str, Any] = {
    "allow_martians": _prefixes,
    "allow_default": _boolean,
    "max_length": _max_length,
    "prefix_list": _prefix_list,
    "first_as_must_be_peer": _boolean,
    "max_as_path_length": _int_range(1, 1000),
    "protected": _protected,
}
_POLICY: dict[str, Any] = {"martians": _martians, **_PEER_POLICY,
                           "med_missing_as_worst": _boolean}


def _policy_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Parsed policy keys as PolicySettings / PeerPolicySettings fields."""
    out = dict(values)
    for fam, n in out.pop("max_length", {}).items():
        out[f"max_length_{fam}"] = n
    return out


def _peer_policy(ctx: _Ctx, path: str, v: Any) -> dict[str, Any]:
    return _policy_fields(_mapping(ctx, path, v, _PEER_POLICY, "expected a mapping of keys"))


def _fraction(ctx: _Ctx, path: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
        raise ctx.fail(path, "expected a fraction of the limit above 0 and at most 1 "
                       "(0.8: warn at 80%)", v)
    return float(v)


_MAX_PREFIX: dict[str, Any] = {
    "limit": _int_range(1, 10_000_000),
    "warn_at": _fraction,
    "action": _choice("warn", "stop", "teardown"),
    "restart_delay": _number_range(0, 86400),
}


def _max_prefix(ctx: _Ctx, path: str, v: Any) -> MaxPrefixSettings:
    e = _mapping(ctx, path, v, _MAX_PREFIX, "expected a mapping with at least 'limit'")
    if "limit" not in e:
        raise ctx.fail(path, "missing required key 'limit'", dict(v))
    if "restart_delay" in e and e.get("action") != "teardown":
        raise ctx.fail(f"{path}.restart_delay", "only with action: teardown (how long a torn "
                       "down session stays down)", e["restart_delay"])
    return MaxPrefixSettings(**e)


def _outside(ctx: _Ctx, path: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, list) and v:
        return tuple(dict.fromkeys(_address(ctx, f"{path}[{i}]", a) for i, a in enumerate(v)))
    if isinstance(v, str):
        return (_address(ctx, path, v),)
    raise ctx.fail(path, "expected the tunnel's outside (public) IPsec endpoint address, or a "
                   "list of them", v)


def _check_allow_martians(ctx: _Ctx, path: str, allowed: tuple[str, ...],
                          martians: tuple[Martian, ...]) -> None:
    nets = [ipaddress.ip_network(m.prefix) for m in martians]
    for i, p in enumerate(allowed):
        net = ipaddress.ip_network(p)
        if not any(net.version == m.version and net.overlaps(m) for m in nets):
            raise ctx.fail(f"{path}[{i}]", "a prefix overlapping a martian range (see "
                           "policy.martians); others need no allowing", p)


def _policy(ctx: _Ctx, data: Any, peers: tuple[PeerConfig, ...],
            own: list[PeerPolicySettings | None]) -> PolicySettings:
    values = {} if data is None else _mapping(ctx, "policy", data, _POLICY,
                                              "expected a mapping of keys")
    settings = PolicySettings(
        **_policy_fields(values),
        peers={p.address: o for p, o in zip(peers, own, strict=True) if o is not None},
    )
    _check_allow_martians(ctx, "policy.allow_martians", settings.allow_martians,
                          settings.martians)
    for i, o in enumerate(own):
        if o is not None:
            _check_allow_martians(ctx, f"peers[{i}].policy.allow_martians", o.allow_martians,
                                  settings.martians)
    return settings


def _networks(ctx: _Ctx, path: str, v: Any) -> tuple[str, ...]:
    return _no_default(ctx, path, _prefixes(ctx, path, v), "one of this gateway's own "
                       "networks, not a default route")


def _med(ctx: _Ctx, path: str, v: Any) -> int | None:
    if v is None:
        return None
    return _int_range(0, 0xFFFFFFFF)(ctx, path, v)


def _hold_time(ctx: _Ctx, path: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not (v == 0 or 3 <= v <= 65535):
        raise ctx.fail(path, "expected a BGP hold time in seconds: 0 or 3 to 65535", v)
    return v


_LAN_PEER: dict[str, Any] = {
    "address": _address,
    "peer_as": _int_range(1, 0xFFFFFFFF),
    "local_address": _address,
    "description": _text,
    "hold_time": _hold_time,
}


def _lan_peers(ctx: _Ctx, path: str, v: Any) -> tuple[LanPeerConfig, ...]:
    out = []
    for i, item in enumerate(_items(ctx, path, v, _LAN_PEER, "address")):
        where = f"{path}[{i}]"
        for key in ("peer_as", "local_address"):
            if key not in item:
                raise ctx.fail(where, f"missing required key '{key}'", item)
        if ipaddress.ip_address(item["address"]).version != \
                ipaddress.ip_address(item["local_address"]).version:
            raise ctx.fail(f"{where}.local_address", "an address of the peer's family",
                           item["local_address"])
        if item["address"] == item["local_address"]:
            raise ctx.fail(f"{where}.local_address", "our own address, not the peer's",
                           item["local_address"])
        out.append(LanPeerConfig(**item))
    return tuple(out)


# key -> (Config field, check). Sections are nested dicts in YAML, flat fields here.
_TOP: dict[str, Any] = {
    "log_level": ("log_level", _choice(*LOG_LEVELS)),
    "syslog": ("syslog", _boolean),
    "on_exit": ("on_exit", _choice("withdraw", "retain")),
    "accept_unconfigured_peers": ("accept_unconfigured_peers", _boolean),
    "kernel": {
        "table": ("table", _table),
        "protocol": ("protocol", _int_range(1, 255)),
        "metric": ("metric", _int_range(1, 0xFFFFFF00)),
        "max_paths": ("max_paths", _int_range(1, 16)),
        "ecmp": ("ecmp", _boolean),
        "batch": ("batch", _int_range(1, 100_000)),
        "reconcile_interval": ("reconcile_interval", _number_range(0, 86400)),
        "nexthop_objects": ("nexthop_objects", _auto_or_boolean),
    },
    "startup": {
        "grace_time": ("grace_time", _number_range(0, 3600)),
        "resync": ("resync", _boolean),
    },
    "metrics": {
        "listen": ("metrics_listen", _listen),
        "tls_cert": ("metrics_tls_cert", _readable_file),
        "tls_key": ("metrics_tls_key", _readable_file),
    },
    "control": {
        "socket": ("control_socket", _socket_path),
    },
    "tunnel": {
        "hold_down": ("hold_down", _number_range(0, 600)),
        "fallback": ("fallback", _choice(*FALLBACKS)),
    },
    "export": {
        "networks": ("export_networks", _networks),
        "steering": ("export_steering", _choice(*STEERINGS)),
        "med": ("export_med", _med),
        "backup_med": ("export_backup_med", _med),
        "backup_prepend": ("export_backup_prepend", _int_range(0, 10)),
        "local_as": ("export_local_as", _int_range(1, 0xFFFFFFFF)),
        "reachable_only": ("export_reachable_only", _boolean),
        "lan_peers": ("export_lan_peers", _lan_peers),
        "lan_med": ("export_lan_med", _med),
        "lan_prepend": ("export_lan_prepend", _int_range(0, 10)),
    },
    "probe": {
        "enabled": ("probe_enabled", _boolean),
        "interval": ("probe_interval", _number_range(0.05, 10)),
        "multiplier": ("probe_multiplier", _int_range(2, 100)),
        "up_after": ("probe_up_after", _int_range(1, 100)),
        "when_all_down": ("probe_when_all_down", _choice(*WHEN_ALL_DOWN)),
    },
}

def _probe_target(ctx: _Ctx, path: str, v: Any) -> str | bool:
    """`peers[].probe`: an address, or false (not probed). True: the peer's address."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            pass
    raise ctx.fail(path, "expected the address to send echo requests to through the tunnel, "
                   "true (the peer's own address) or false (no probe)", v)

_PEER: dict[str, Any] = {
    "address": _address,
    "interface": _device,
    "preference": _int_range(0, 0xFFFFFFFF),
    "gateway": _choice("auto", "yes", "no"),
    "families": _families,
    "description": _text,
    "vpn": _text,
    "outside": _outside,
    "max_prefix": _max_prefix,
    "policy": _peer_policy,
    "probe": _probe_target,
}



def _connection(ctx: _Ctx, path: str, v: Any) -> str:
    if not isinstance(v, str) or not v or len(v) > 255 or any(c.isspace() for c in v):
        raise ctx.fail(path, "expected a connection name without spaces", v)
    return v


def _addresses(ctx: _Ctx, path: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise ctx.fail(path, "expected a non-empty list of peer addresses", v)
    return tuple(_address(ctx, f"{path}[{i}]", a) for i, a in enumerate(v))


_TUNNEL: dict[str, Any] = {
    "connection": _connection,
    "device": _device,
    "peers": _addresses,
    "teardown": _boolean,
}
_RESERVED_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static"}


def _walk(ctx: _Ctx, schema: dict[str, Any], data: Any, path: str, out: dict[str, Any]) -> None:
    if not isinstance(data, Mapping):
        raise ctx.fail(path or "(top level)", "expected a mapping of keys", data)
    for key, value in data.items():
        kpath = f"{path}.{key}" if path else str(key)
        spec = schema.get(key) if isinstance(key, str) else None
        if spec is None:
            raise ctx.fail(kpath, "unknown key; allowed here: " + ", ".join(schema), key)
        if isinstance(spec, dict):
            _walk(ctx, spec, value, kpath, out)
        else:
            name, check = spec
            out[name] = check(ctx, kpath, value)


def _mapping(ctx: _Ctx, path: str, data: Any, schema: dict[str, Any],
             expected: str) -> dict[str, Any]:
    """One mapping, each key checked by `schema[key]`; an unknown key is an error."""
    if not isinstance(data, Mapping):
        raise ctx.fail(path, expected, data)
    values: dict[str, Any] = {}
    for k, value in data.items():
        check = schema.get(k) if isinstance(k, str) else None
        if check is None:
            raise ctx.fail(f"{path}.{k}", "unknown key; allowed here: " + ", ".join(schema), k)
        values[k] = check(ctx, f"{path}.{k}", value)
    return values


def _items(ctx: _Ctx, name: str, data: Any, schema: dict[str, Any],
           key: str) -> list[dict[str, Any]]:
    """A list of mappings, each checked against `schema`, `key` required and unique."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ctx.fail(name, f"expected a list of {name}", data)
    raw: list[dict[str, Any]] = []
    seen: dict[Any, int] = {}
    for i, item in enumerate(data):
        path = f"{name}[{i}]"
        values = _mapping(ctx, path, item, schema, f"expected a mapping with at least '{key}'")
        if key not in values:
            raise ctx.fail(path, f"missing required key '{key}'", dict(item))
        if values[key] in seen:
            raise ctx.fail(f"{path}.{key}",
                           f"each {key} once; already configured at {name}[{seen[values[key]]}]",
                           values[key])
        seen[values[key]] = i
        raw.append(values)
    return raw


def _tunnels(ctx: _Ctx, data: Any, peers: tuple[PeerConfig, ...]) -> tuple[TunnelConfig, ...]:
    known = {p.address for p in peers}
    out = []
    for i, v in enumerate(_items(ctx, "tunnels", data, _TUNNEL, "connection")):
        for j, addr in enumerate(v.get("peers", ())):
            if addr not in known:
                raise ctx.fail(f"tunnels[{i}].peers[{j}]", "an address listed under peers:", addr)
        out.append(TunnelConfig(**v))
    return tuple(out)


def _peers(ctx: _Ctx, data: Any
           ) -> tuple[tuple[PeerConfig, ...], list[PeerPolicySettings | None]]:
    """The peers, and each one's policy settings (None: it has none of its own)."""
    raw = _items(ctx, "peers", data, _PEER, "address")
    own: list[PeerPolicySettings | None] = []
    for i, v in enumerate(raw):
        pol = {k: v.pop(k) for k in ("outside", "max_prefix") if k in v}
        pol.update(v.pop("policy", {}))
        if v["address"] in pol.get("outside", ()):
            raise ctx.fail(f"peers[{i}].outside", "the tunnel's outside (public) endpoint, not "
                           "the BGP neighbor's (inside) address", v["address"])
        own.append(PeerPolicySettings(**pol) if pol else None)
    sharing: dict[str, int] = {}
    for v in raw:
        if "interface" in v:
            sharing[v["interface"]] = sharing.get(v["interface"], 0) + 1
    peers = []
    for v in raw:
        gw = v.pop("gateway", "auto")
        shared = sharing.get(v.get("interface", ""), 0) > 1
        target = v.pop("probe", True)
        probe = v["address"] if target is True else target or None
        peers.append(PeerConfig(gateway=gw == "yes" or (gw == "auto" and shared), probe=probe,
                                **v))
    return tuple(peers), own


def parse(data: Any, source: str = "<config>") -> Config:
    """Validate already-loaded YAML data and build a Config, or raise ConfigError."""
    ctx = _Ctx(source)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ctx.fail("(top level)", "expected a mapping of keys", data)
    data = dict(data)
    peers, own = _peers(ctx, data.pop("peers", None))
    tunnels = _tunnels(ctx, data.pop("tunnels", None), peers)
    policy = _policy(ctx, data.pop("policy", None), peers, own)
    fields: dict[str, Any] = {}
    _walk(ctx, {**_TOP, "peers": None, "tunnels": None, "policy": None}, data, "", fields)
    cfg = Config(source=source, peers=peers, tunnels=tunnels, policy=policy, **fields)
    if cfg.protocol in _RESERVED_PROTOCOLS:
        raise ctx.fail("kernel.protocol", "a routing protocol id, not one the kernel reserves "
                       f"({cfg.protocol} is '{_RESERVED_PROTOCOLS[cfg.protocol]}')", cfg.protocol)
    if (cfg.metrics_tls_cert is None) != (cfg.metrics_tls_key is None):
        raise ctx.fail("metrics.tls_cert" if cfg.metrics_tls_cert is None else "metrics.tls_key",
                       "tls_cert and tls_key together (or neither)", None)
    for i, lp in enumerate(cfg.export_lan_peers):
        if cfg.peer(lp.address) is not None:
            raise ctx.fail(f"export.lan_peers[{i}].address", "a LAN-side peer, not one of the "
                           "cloud peers under peers:", lp.address)
    if not cfg.peers and not cfg.accept_unconfigured_peers:
        raise ctx.fail("peers", "at least one peer (or accept_unconfigured_peers: true)", [])
    return cfg


def load(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse(data, str(p))


__all__ = ["FAMILIES", "Config", "ConfigError", "LanPeerConfig", "PeerConfig", "TunnelConfig",
           "load", "parse"]
