"""The configuration schema: the one place that says which keys exist, their types, defaults
and allowed values. Loading validates everything before anything is touched, and every error
names the file, the key path and what is allowed."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .model import FAMILIES, Family

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


@dataclass(frozen=True, slots=True)
class TunnelConfig:
    """An IPsec connection as its daemon names it in updown calls, and what it carries."""

    connection: str  # libreswan conn name / strongSwan connection (PLUTO_CONNECTION)
    device: str | None = None  # its tunnel device (else VTI_IFACE from the updown call)
    peers: tuple[str, ...] = ()  # on a shared device: only these BGP peers' routes
    teardown: bool = False  # on IPsec down, reset the BGP session (resync on return)


@dataclass(frozen=True, slots=True)
class Config:
    source: str = "<defaults>"
    log_level: str = "info"
    syslog: bool = False
    table: int = 254
    protocol: int = 186
    metric: int = 100
    max_paths: int = 4
    ecmp: bool = False
    batch: int = 2000
    grace_time: float = 60.0
    resync: bool = True
    on_exit: str = "withdraw"
    accept_unconfigured_peers: bool = False
    metrics_listen: str | None = "127.0.0.1:10179"
    control_socket: str | None = "/run/vtibgp/vtibgp.sock"
    hold_down: float = 2.0
    reconcile_interval: float = 30.0
    peers: tuple[PeerConfig, ...] = field(default_factory=tuple)
    tunnels: tuple[TunnelConfig, ...] = field(default_factory=tuple)

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
    },
    "startup": {
        "grace_time": ("grace_time", _number_range(0, 3600)),
        "resync": ("resync", _boolean),
    },
    "metrics": {
        "listen": ("metrics_listen", _listen),
    },
    "control": {
        "socket": ("control_socket", _socket_path),
    },
    "tunnel": {
        "hold_down": ("hold_down", _number_range(0, 600)),
    },
}

_PEER: dict[str, Any] = {
    "address": _address,
    "interface": _device,
    "preference": _int_range(0, 0xFFFFFFFF),
    "gateway": _choice("auto", "yes", "no"),
    "families": _families,
    "description": _text,
    "vpn": _text,
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
        if not isinstance(item, Mapping):
            raise ctx.fail(path, f"expected a mapping with at least '{key}'", item)
        values: dict[str, Any] = {}
        for k, value in item.items():
            check = schema.get(k) if isinstance(k, str) else None
            if check is None:
                raise ctx.fail(f"{path}.{k}", "unknown key; allowed here: " + ", ".join(schema),
                               k)
            values[k] = check(ctx, f"{path}.{k}", value)
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


def _peers(ctx: _Ctx, data: Any) -> tuple[PeerConfig, ...]:
    raw = _items(ctx, "peers", data, _PEER, "address")
    sharing: dict[str, int] = {}
    for v in raw:
        if "interface" in v:
            sharing[v["interface"]] = sharing.get(v["interface"], 0) + 1
    peers = []
    for v in raw:
        gw = v.pop("gateway", "auto")
        shared = sharing.get(v.get("interface", ""), 0) > 1
        peers.append(PeerConfig(gateway=gw == "yes" or (gw == "auto" and shared), **v))
    return tuple(peers)


def parse(data: Any, source: str = "<config>") -> Config:
    """Validate already-loaded YAML data and build a Config, or raise ConfigError."""
    ctx = _Ctx(source)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ctx.fail("(top level)", "expected a mapping of keys", data)
    data = dict(data)
    peers = _peers(ctx, data.pop("peers", None))
    tunnels = _tunnels(ctx, data.pop("tunnels", None), peers)
    fields: dict[str, Any] = {}
    _walk(ctx, {**_TOP, "peers": None, "tunnels": None}, data, "", fields)
    cfg = Config(source=source, peers=peers, tunnels=tunnels, **fields)
    if cfg.protocol in _RESERVED_PROTOCOLS:
        raise ctx.fail("kernel.protocol", "a routing protocol id, not one the kernel reserves "
                       f"({cfg.protocol} is '{_RESERVED_PROTOCOLS[cfg.protocol]}')", cfg.protocol)
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


__all__ = ["FAMILIES", "Config", "ConfigError", "PeerConfig", "TunnelConfig", "load", "parse"]
