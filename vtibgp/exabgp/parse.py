"""Turn the lines ExaBGP writes to our stdin into events. Pure: no I/O, no clock, no globals
that change (apart from a small address cache).

ExaBGP (4.2 and 5.0, `encoder json`) writes one line per message: JSON objects for BGP
messages and peer changes, and plain text for command replies (`done`, `error`, `show …`
output). `parse_line` classifies every line and turns the ones vtibgp acts on into events;
`parse_adj_rib_line` reads one route line of `show adj-rib in extensive` (the resync path).

Contract:

* `parse_line` never raises. Whatever it is given, it returns a `Parsed` whose `kind` is one
  of `LineKind`, and whose `reason` (if set) is one of `REASONS`.
* A partly bad UPDATE keeps what is good: a prefix that is not a network of its family is
  dropped alone (reason "nlri"); a family other than IPv4/IPv6 unicast is skipped (reason
  "family"). `reason`/`error` describe the first problem; `error` also counts them.
* RFC 7606 treat-as-withdraw: announcements that cannot be used become withdrawals of their
  prefixes, so that no older path of them stays: an invalid ORIGIN (ExaBGP prints
  "invalid"), a missing ORIGIN, no next-hop (ExaBGP's key "no-nexthop") (reason
  "treat_as_withdraw"), or attributes / a next-hop that cannot be read (reason "attribute").
  A missing AS_PATH is not one: ExaBGP prints an empty AS_PATH (iBGP) the same way.
* Prefixes, peers and next-hops come out in the text form of vtibgp.addresses (inet_ntop's,
  which the kernel dump and ExaBGP use too). Text already in that form is accepted by a fast
  path; anything else is spelt again once. A prefix with host bits set is masked (RFC 4271
  4.3: the trailing bits are irrelevant; reason "host_bits").
* In one UPDATE, withdrawals are emitted before announcements: RFC 4271 4.3 says a prefix in
  both lists is to be treated as announced.
* ADD-PATH (RFC 7911): a prefix's `"path-information"` (ExaBGP prints the 32-bit id dotted,
  "0.0.0.1", in announce and withdraw lists alike) sets `path_id`; one Announce/Withdraw
  per distinct id (and one for the prefixes without an id, path_id None).
* IPv6 with a global and a link-local next-hop: each prefix goes via the global one, unless
  that is "::", then via the link-local one.
* ExaBGP 4.2 writes route-refresh lines that are not JSON (`"afi": ""ipv4""`). They are
  recognised by their text and returned as IGNORED (with `error` saying so) rather than
  INVALID: refreshes are routine and would otherwise look like a fault.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import lru_cache
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any, Final, Literal, TypeGuard

from vtibgp.addresses import address_text, canonical_address, packed_address
from vtibgp.core.model import (
    ORIGINS,
    Announce,
    EndOfRib,
    Event,
    ExabgpShutdown,
    Family,
    NotificationReceived,
    PathAttrs,
    PeerState,
    Withdraw,
)

__all__ = ["REASONS", "LineKind", "Parsed", "parse_adj_rib_line", "parse_line"]


class LineKind(StrEnum):
    """What a line was. A fixed set, used as a metric label. (StrEnum: a str, so
    `LineKind.UPDATE == "update"`, and str()/format() give the bare value.)"""

    UPDATE = "update"
    STATE = "state"
    EOR = "eor"
    NOTIFICATION = "notification"
    SHUTDOWN = "shutdown"
    IGNORED = "ignored"  # valid JSON of a type vtibgp does not act on (open, keepalive, …)
    ACK = "ack"  # the text "done" or "error"
    TEXT = "text"  # any other line that is not JSON (command output)
    INVALID = "invalid"  # began with '{' but did not decode, or had the wrong shape


# The machine reasons `Parsed.reason` can take (a fixed set, for metric labels).
REASON_ENCODING: Final = "encoding"  # bytes that are not UTF-8
REASON_JSON: Final = "json"  # began with '{' but is not JSON (or nests too deep)
REASON_SHAPE: Final = "shape"  # JSON, but a field is missing or of the wrong type
REASON_FAMILY: Final = "family"  # an address family vtibgp does not handle was skipped
REASON_NLRI: Final = "nlri"  # a prefix that is not a network of its family was dropped
REASON_ATTRIBUTE: Final = "attribute"  # unreadable path attributes / next-hop
# an announcement that cannot be used (invalid or missing ORIGIN, no usable next-hop, other
# unreadable attributes) withdraws its prefixes instead (RFC 7606 treat-as-withdraw)
REASON_TREAT_AS_WITHDRAW: Final = "treat_as_withdraw"
REASON_HOST_BITS: Final = "host_bits"  # a prefix with host bits set was masked (RFC 4271 4.3)
REASON_INTERNAL: Final = "internal"  # a bug in this module (caught so the reader survives)
REASONS: Final[tuple[str, ...]] = (
    REASON_ENCODING,
    REASON_JSON,
    REASON_SHAPE,
    REASON_FAMILY,
    REASON_NLRI,
    REASON_ATTRIBUTE,
    REASON_INTERNAL,
    REASON_TREAT_AS_WITHDRAW,
    REASON_HOST_BITS,
)


@dataclass(frozen=True, slots=True)
class Parsed:
    kind: LineKind
    events: tuple[Event, ...] = ()
    api_version: str | None = None  # the "exabgp" field, e.g. "5.0.0" / "4.0.1"
    error: str | None = None  # short human text for INVALID or partly bad lines
    reason: str | None = None  # one of REASONS
    text: str | None = None  # for ACK / TEXT: the stripped line


# ---------------------------------------------------------------- small helpers

_MAX_U32: Final = 0xFFFFFFFF
_MAX_ADDR_TEXT: Final = 100  # longer text is no address (and not worth handing to ipaddress)
_STATES: Final = frozenset({"connected", "up", "down"})
_ACKS: Final = frozenset({"done", "error"})
# ExaBGP 4.2's route-refresh line: `"route-refresh": { "afi": ""ipv4"", …`
_REFRESH_42: Final = re.compile(r'"type"\s*:\s*"refresh".*""')
# strict=False: 4.2 leaves control characters raw inside strings (see _json_line). One
# decoder for all lines: json.loads with an argument would build a new one every call.
_DECODER: Final = json.JSONDecoder(strict=False)
_JSON_ESCAPE: Final = re.compile(r'\\(["\\/bfnrt]|u[0-9A-Fa-f]{4})?')
_API_VERSION: Final = re.compile(r'\{\s*"exabgp"\s*:\s*"([0-9A-Za-z.\-]{1,20})"')


class _BadLine(Exception):
    """A part of the line cannot be used. Uncaught, it makes the whole line INVALID."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


_CONTROLS: Final = dict.fromkeys([*range(32), 127])


def _clean(text: str) -> str:
    """Free text (a down reason, a notification message) without control characters."""
    return text.translate(_CONTROLS) if not text.isprintable() else text


def _short(value: object) -> str:
    """A value for an error message: short, escaped, and cheap even for huge input."""
    if isinstance(value, str):
        return repr(value[:50]) + ("..." if len(value) > 50 else "")
    if isinstance(value, dict | list):
        return f"<{type(value).__name__} of {len(value)}>"
    text = repr(value)  # None, bool, int, float
    return text if len(text) <= 50 else text[:47] + "..."


class _Issues:
    """Problems found in a line that is still used: the first one names the reason."""

    __slots__ = ("count", "error", "reason")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.error: str | None = None
        self.count = 0

    def add(self, reason: str, error: str) -> None:
        self.count += 1
        if self.reason is None:
            self.reason = reason
            self.error = error

    def summary(self) -> str | None:
        if self.error is None or self.count == 1:
            return self.error
        return f"{self.error} (+{self.count - 1} more)"


def _is_u8(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= 255


def _is_u32(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= _MAX_U32


@lru_cache(maxsize=4096)
def _canonical_address(text: str) -> str | None:
    # Cached: peers and next-hops repeat on every line. Only short text gets here.
    return canonical_address(text)


def _address(value: object) -> str | None:
    """An IPv4/IPv6 address in vtibgp's text form (vtibgp.addresses), or None."""
    if type(value) is not str or len(value) > _MAX_ADDR_TEXT:
        return None
    return _canonical_address(value)


# Host-bit masks and the canonical prefix-length texts ("0".."32" / "0".."128", no leading 0).
_HOST4: Final = tuple((1 << (32 - n)) - 1 for n in range(33))
_HOST6: Final = tuple((1 << (128 - n)) - 1 for n in range(129))
_PLEN4: Final = {str(n): n for n in range(33)}
_PLEN6: Final = {str(n): n for n in range(129)}


def _masked(packed: bytes, length: int, v6: bool) -> str:
    """The network of `packed`/`length` with its host bits cleared, as text."""
    host = (_HOST6 if v6 else _HOST4)[length]
    network = (int.from_bytes(packed, "big") & ~host).to_bytes(len(packed), "big")
    return f"{address_text(AF_INET6 if v6 else AF_INET, network)}/{length}"


def _slow_prefix(text: str, v6: bool) -> tuple[str, bool] | None:
    """(canonical text, host bits were set) for a prefix the fast path did not take as
    canonical, or None if it is no network of its family."""
    if len(text) > _MAX_ADDR_TEXT:
        return None
    addr, slash, plen = text.partition("/")
    if not slash or not plen.isascii() or not plen.isdigit() or len(plen) > 3:
        return None  # a netmask or a missing length: ExaBGP never prints those
    length = int(plen)
    if length > (128 if v6 else 32) or (":" in addr) != v6:
        return None
    found = packed_address(addr)  # (inet_pton: no scope ids, no leading zeros in IPv4)
    if found is None:
        return None
    packed = found[1]
    if int.from_bytes(packed, "big") & (_HOST6 if v6 else _HOST4)[length]:
        return _masked(packed, length, v6), True
    return f"{address_text(found[0], packed)}/{length}", False


def _path_id(value: object) -> int | None:
    """An ADD-PATH identifier as ExaBGP prints it ("0.0.0.1", dotted like an IPv4 address)."""
    if type(value) is not str or len(value) > 15:
        return None
    try:
        return int.from_bytes(inet_pton(AF_INET, value), "big")
    except (OSError, ValueError):
        return None


# The prefixes of one NLRI list: those without a path identifier, and those with one by id.
_Nlri = tuple[tuple[str, ...], dict[int, list[str]] | None]


def _nlri(items: object, v6: bool, issues: _Issues) -> _Nlri:
    """The valid prefixes of one NLRI list, in vtibgp's text form, host bits cleared (RFC 4271
    4.3: the trailing bits are irrelevant). The list holds {"nlri": "p"} objects (with
    "path-information" under ADD-PATH) or bare strings (`exabgp.api.compact`). This is the hot
    loop of a full table: keep it lean."""
    if type(items) is not list:
        issues.add(REASON_SHAPE, f"NLRI list is {type(items).__name__}, not a list")
        return (), None
    out: list[str] = []
    keep = out.append
    by_id: dict[int, list[str]] | None = None
    from_bytes = int.from_bytes
    host = _HOST6 if v6 else _HOST4
    plens = _PLEN6 if v6 else _PLEN4
    af = AF_INET6 if v6 else AF_INET
    for item in items:
        if type(item) is dict:
            text = item.get("nlri")
            # one key is the common case: no "path-information" to look for
            path_info = None if len(item) == 1 else item.get("path-information")
        else:
            text, path_info = item, None
        if type(text) is not str:
            issues.add(REASON_SHAPE, f"NLRI entry {_short(item)} has no prefix text")
            continue
        addr, _, plen = text.partition("/")
        length = plens.get(plen)
        prefix: str | None = None
        if length is not None:
            try:
                packed = inet_pton(af, addr)
            except (OSError, ValueError):
                packed = b""
            # inet_pton is strict for IPv4 (dotted quad, no leading zeros), so the text is
            # canonical; IPv6 text is canonical if inet_ntop prints it back unchanged.
            if packed and (not v6 or inet_ntop(af, packed) == addr):
                if not from_bytes(packed, "big") & host[length]:
                    prefix = text
                else:
                    prefix = _masked(packed, length, v6)
                    issues.add(REASON_HOST_BITS, f"host bits cleared: {_short(text)}")
        if prefix is None:
            found = _slow_prefix(text, v6)
            if found is None:
                family = "IPv6" if v6 else "IPv4"
                issues.add(REASON_NLRI, f"not an {family} network: {_short(text)}")
                continue
            prefix, masked = found
            if masked:
                issues.add(REASON_HOST_BITS, f"host bits cleared: {_short(text)}")
        if path_info is None:
            keep(prefix)
            continue
        path_id = _path_id(path_info)
        if path_id is None:
            issues.add(REASON_NLRI, f"bad path-information {_short(path_info)} of {_short(text)}")
            continue
        if by_id is None:
            by_id = {}
        group = by_id.get(path_id)
        if group is None:
            by_id[path_id] = [prefix]
        else:
            group.append(prefix)
    return tuple(out), by_id


def _prefixes(items: object, v6: bool, issues: _Issues) -> tuple[str, ...]:
    """The valid prefixes of a list of bare prefix texts (no path identifiers)."""
    return _nlri(items, v6, issues)[0]


def _by_path(nlri: _Nlri) -> list[tuple[int | None, tuple[str, ...]]]:
    """(path id, prefixes) of one NLRI list: those without an id first, then by first use."""
    plain, by_id = nlri
    groups: list[tuple[int | None, tuple[str, ...]]] = [(None, plain)] if plain else []
    if by_id:
        groups.extend((path_id, tuple(prefixes)) for path_id, prefixes in by_id.items())
    return groups


# ---------------------------------------------------------------- path attributes (JSON)


_SEQUENCE_ELEMENTS: Final = frozenset({"as-sequence"})
_SET_ELEMENTS: Final = frozenset({"as-set"})


def _asn_list(value: object, what: str) -> list[int]:
    if type(value) is not list or not all(_is_u32(asn) for asn in value):
        raise _BadLine(REASON_ATTRIBUTE, f"{what} is not a list of AS numbers: {_short(value)}")
    return value


def _as_path_50(segments: dict[str, Any]) -> tuple[list[int], list[int]]:
    """5.0: {"0": {"element": "as-sequence", "value": [...]}, "1": {...}}, in key order."""
    try:
        order = sorted(segments, key=int)
    except ValueError:
        raise _BadLine(
            REASON_ATTRIBUTE, f"as-path keys are not numbers: {_short(segments)}"
        ) from None
    sequence: list[int] = []
    as_set: list[int] = []
    for key in order:
        segment = segments[key]
        if type(segment) is not dict:
            raise _BadLine(REASON_ATTRIBUTE, f"as-path segment is not an object: {_short(segment)}")
        element = segment.get("element")
        if type(element) is not str:
            raise _BadLine(REASON_ATTRIBUTE, f"as-path element is not text: {_short(element)}")
        asns = _asn_list(segment.get("value"), "as-path segment")
        if element in _SEQUENCE_ELEMENTS:
            sequence.extend(asns)
        elif element in _SET_ELEMENTS:
            as_set.extend(asns)
        elif "confed" in element:
            # "as-confed-sequence" / "as-confed-set" (ExaBGP after 5.0): they do not count
            # toward the path length (RFC 5065 5.3). ExaBGP 5.0 labels both "as-sequence",
            # indistinguishable from an AS_SEQUENCE: see _text_as_path for the resync side.
            continue
        else:
            raise _BadLine(REASON_ATTRIBUTE, f"unknown as-path element {_short(element)}")
    return sequence, as_set


def _json_attrs(attribute: object) -> tuple[int, tuple[int, ...], tuple[int, ...], int | None,
                                           int | None]:
    """(origin, as_path, as_set, med, local_pref) from an update's "attribute" object, either
    API version. Raises _BadLine(REASON_ATTRIBUTE) if they cannot be read."""
    if attribute is None:
        attribute = {}
    if type(attribute) is not dict:
        raise _BadLine(REASON_ATTRIBUTE, f"attribute is not an object: {_short(attribute)}")
    origin_text = attribute.get("origin")
    if origin_text is None:  # a well-known mandatory attribute (RFC 7606 3.d)
        raise _BadLine(REASON_TREAT_AS_WITHDRAW, "no ORIGIN attribute")
    origin = ORIGINS.get(origin_text) if type(origin_text) is str else None
    if origin is None:  # ExaBGP prints "invalid" for an ORIGIN value other than 0-2
        raise _BadLine(REASON_TREAT_AS_WITHDRAW, f"invalid ORIGIN {_short(origin_text)}")

    path = attribute.get("as-path")
    if path is None:
        sequence: list[int] = []
        as_set: list[int] = []
    elif type(path) is dict:  # 5.0
        sequence, as_set = _as_path_50(path)
    else:  # 4.2: sequence ASNs, a separate "as-set", and "confederation-path" (ignored)
        sequence = _asn_list(path, "as-path")
        extra = attribute.get("as-set")
        as_set = [] if extra is None else _asn_list(extra, "as-set")

    med = attribute.get("med")
    if med is not None and not _is_u32(med):
        raise _BadLine(REASON_ATTRIBUTE, f"med is not a 32-bit number: {_short(med)}")
    local_pref = attribute.get("local-preference")
    if local_pref is not None and not _is_u32(local_pref):
        raise _BadLine(REASON_ATTRIBUTE, f"local-preference is not a number: {_short(local_pref)}")
    return origin, tuple(sequence), tuple(as_set), med, local_pref


# ---------------------------------------------------------------- message kinds


def _dict(value: object, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _BadLine(REASON_SHAPE, f"{what} is missing or not an object")
    return value


def _peer(neighbor: dict[str, Any]) -> str:
    address = neighbor.get("address")
    peer = _address(address.get("peer")) if type(address) is dict else None
    if peer is None:
        raise _BadLine(REASON_SHAPE, "neighbor.address.peer is missing or not an address")
    return peer


def _family(name: object) -> Family | None:
    if name == "ipv4 unicast":
        return "ipv4 unicast"
    if name == "ipv6 unicast":
        return "ipv6 unicast"
    return None


def _update(neighbor: dict[str, Any], api: str | None) -> Parsed:
    if neighbor.get("direction") == "send":
        return Parsed(LineKind.IGNORED, api_version=api)
    peer = _peer(neighbor)
    message = _dict(neighbor.get("message"), "neighbor.message")
    if "eor" in message:
        return _eor(peer, message["eor"], api)
    update = _dict(message.get("update"), "neighbor.message.update")

    issues = _Issues()
    withdraws: list[Event] = []
    announces: list[Event] = []

    withdraw = update.get("withdraw")
    if withdraw is not None:
        if type(withdraw) is not dict:
            issues.add(REASON_SHAPE, "withdraw is not an object")
        else:
            for name, items in withdraw.items():
                family = _family(name)
                if family is None:
                    issues.add(REASON_FAMILY, f"skipped family {_short(name)}")
                    continue
                nlri = _nlri(items, family == "ipv6 unicast", issues)
                if nlri[1] is None:  # no ADD-PATH: the common case
                    if nlri[0]:
                        withdraws.append(Withdraw(peer, family, nlri[0]))
                    continue
                for path_id, prefixes in _by_path(nlri):
                    withdraws.append(Withdraw(peer, family, prefixes, path_id))

    announce = update.get("announce")
    if announce is not None:
        if type(announce) is not dict:
            issues.add(REASON_SHAPE, "announce is not an object")
        else:
            _announces(peer, announce, update.get("attribute"), issues, announces, withdraws,
                       _peer_as(neighbor))

    events = tuple(withdraws + announces)
    if not events and issues.reason == REASON_SHAPE:
        return Parsed(LineKind.INVALID, (), api, issues.summary(), issues.reason)
    return Parsed(LineKind.UPDATE, events, api, issues.summary(), issues.reason)


def _peer_as(neighbor: dict[str, Any]) -> int | None:
    """The session's peer AS for eBGP checks; None if absent, malformed, or iBGP."""
    asn = neighbor.get("asn")
    if type(asn) is not dict:
        return None
    peer, local = asn.get("peer"), asn.get("local")
    if not _is_u32(peer) or peer == local:
        return None
    return peer


# The next-hop keys ExaBGP writes for an announcement without a next-hop: 5.0 and 4.2 print
# "no-nexthop" (str of their NoNextHop), 4.2 "null" when the NLRI has none at all.
_NO_NEXT_HOP: Final = frozenset({"no-nexthop", "null"})
_UNSPECIFIED: Final = frozenset({"::", "0.0.0.0"})


def _next_hop_order(by_next_hop: dict[str, Any]) -> list[tuple[str, Any]]:
    """The next-hop groups of one family, in the order their prefixes are to be kept. ExaBGP
    prints an MP_REACH with a global and a link-local next-hop as two keys holding the same
    prefixes, global first; a global of "::" (a peer that has none) goes after the link-local
    one, so that its prefixes go via the link-local address and not via "::"."""
    groups = list(by_next_hop.items())
    if any(key in _UNSPECIFIED for key, _ in groups):
        groups.sort(key=lambda group: group[0] in _UNSPECIFIED)  # (stable)
    return groups


def _announces(
    peer: str,
    announce: dict[str, Any],
    attribute: object,
    issues: _Issues,
    out: list[Event],
    withdrawn: list[Event],
    peer_as: int | None = None,
) -> None:
    """The announcements of an update into `out`; those that cannot be used (RFC 7606
    treat-as-withdraw: attributes that cannot be read, no usable next-hop) into `withdrawn`,
    as withdrawals of their prefixes."""
    values: tuple[int, tuple[int, ...], tuple[int, ...], int | None, int | None] | None = None
    bad_attrs: _BadLine | None = None
    for name, by_next_hop in announce.items():
        family = _family(name)
        if family is None:
            issues.add(REASON_FAMILY, f"skipped family {_short(name)}")
            continue
        if type(by_next_hop) is not dict:
            issues.add(REASON_SHAPE, f"announce {name} is not an object")
            continue
        if values is None and bad_attrs is None:
            try:
                values = _json_attrs(attribute)
            except _BadLine as bad:
                bad_attrs = bad
                issues.add(bad.reason, f"{bad.error}: its prefixes are withdrawn")
        v6 = family == "ipv6 unicast"
        several = len(by_next_hop) > 1
        groups = _next_hop_order(by_next_hop) if several else by_next_hop.items()
        # (path id, prefix) already kept under an earlier next-hop of this family
        seen: set[tuple[int | None, str]] | None = set() if several else None
        unusable: list[tuple[int | None, tuple[str, ...]]] = []
        for next_hop_text, items in groups:
            nlri = _nlri(items, v6, issues)
            next_hop = _address(next_hop_text)
            if next_hop is None and bad_attrs is None:
                if next_hop_text in _NO_NEXT_HOP:
                    issues.add(REASON_TREAT_AS_WITHDRAW, "no NEXT_HOP: its prefixes are withdrawn")
                else:
                    issues.add(REASON_ATTRIBUTE, f"next-hop is not an address: "
                               f"{_short(next_hop_text)}: its prefixes are withdrawn")
            if next_hop is None or values is None:
                unusable.extend(_by_path(nlri))
                continue
            origin, as_path, as_set, med, local_pref = values
            attrs = PathAttrs(next_hop, origin, as_path, as_set, med, local_pref)
            if nlri[1] is None and seen is None:  # one next-hop, no ADD-PATH: the common case
                if nlri[0]:
                    out.append(Announce(peer, family, attrs, nlri[0], peer_as))
                continue
            for path_id, prefixes in _by_path(nlri):
                if seen is not None:
                    prefixes = tuple(p for p in prefixes if (path_id, p) not in seen)
                    seen.update((path_id, p) for p in prefixes)
                if prefixes:
                    out.append(Announce(peer, family, attrs, prefixes, peer_as, path_id))
        for path_id, prefixes in unusable:
            if seen is not None:  # announced under a usable next-hop: not withdrawn
                prefixes = tuple(p for p in prefixes if (path_id, p) not in seen)
            if prefixes:
                withdrawn.append(Withdraw(peer, family, prefixes, path_id))


def _eor(peer: str, eor: object, api: str | None) -> Parsed:
    eor = _dict(eor, "neighbor.message.eor")
    afi, safi = eor.get("afi"), eor.get("safi")
    if type(afi) is not str or type(safi) is not str:
        raise _BadLine(REASON_SHAPE, "eor afi/safi are missing or not text")
    family = _family(f"{afi} {safi}")
    if family is None:
        return Parsed(LineKind.IGNORED, api_version=api)
    return Parsed(LineKind.EOR, (EndOfRib(peer, family),), api)


def _state(neighbor: dict[str, Any], api: str | None) -> Parsed:
    peer = _peer(neighbor)
    state = neighbor.get("state")
    if type(state) is not str:
        raise _BadLine(REASON_SHAPE, "state is missing or not text")
    if state not in _STATES:
        return Parsed(LineKind.IGNORED, api_version=api)
    issues = _Issues()
    reason = neighbor.get("reason", "")
    if type(reason) is not str:
        # a `down` must not be lost over its free-text reason
        issues.add(REASON_SHAPE, f"state reason is not text: {_short(reason)}")
        reason = ""
    local_text = neighbor["address"].get("local")
    local = None if local_text is None else _address(local_text)
    if local_text is not None and local is None:
        issues.add(REASON_SHAPE, f"neighbor.address.local is not an address: {_short(local_text)}")
    kind: Literal["connected", "up", "down"] = (
        "up" if state == "up" else "down" if state == "down" else "connected"
    )
    asn = neighbor.get("asn")
    local_as = asn.get("local") if isinstance(asn, dict) else None
    if type(local_as) is not int or not 0 < local_as <= _MAX_U32:
        local_as = None
    event = PeerState(peer, kind, _clean(reason), local, local_as)
    return Parsed(LineKind.STATE, (event,), api, issues.summary(), issues.reason)


def _notification(message: dict[str, Any], api: str | None) -> Parsed:
    own = message.get("notification")
    if type(own) is str:  # ExaBGP's own lifecycle: {"type": "notification", "notification": …}
        if own == "shutdown":
            return Parsed(LineKind.SHUTDOWN, (ExabgpShutdown(),), api)
        return Parsed(LineKind.IGNORED, api_version=api)
    neighbor = _dict(message.get("neighbor"), "neighbor")
    if neighbor.get("direction") == "send":
        return Parsed(LineKind.IGNORED, api_version=api)
    peer = _peer(neighbor)
    body = _dict(neighbor.get("notification"), "neighbor.notification")
    code, subcode = body.get("code"), body.get("subcode")
    if not _is_u8(code) or not _is_u8(subcode):
        raise _BadLine(REASON_SHAPE, "notification code/subcode are not numbers 0-255")
    text = body.get("message", "")  # 5.0 only
    event = NotificationReceived(peer, code, subcode, _clean(text) if type(text) is str else "")
    return Parsed(LineKind.NOTIFICATION, (event,), api)


def _escape_backslash(match: re.Match[str]) -> str:
    return match.group(0) if match.group(1) else "\\\\"


def _repair_42_state(text: str) -> object:
    """ExaBGP 4.2 writes a state's free-text reason escaping only '"': a backslash in it
    (the peer's shutdown text, say) breaks the line. A `down` must not be lost, so a state
    line that fails is retried once with lone backslashes escaped. None if that fails too."""
    if len(text) > 65536 or '"type": "state"' not in text:
        return None
    try:
        return _DECODER.decode(_JSON_ESCAPE.sub(_escape_backslash, text))
    except (ValueError, RecursionError):
        return None


def _json_line(text: str) -> Parsed:
    repaired = False
    try:
        # strict=False: 4.2 also leaves control characters raw in that reason (captured: the
        # 0x17 length byte of an RFC 8203 shutdown communication inside a `down` line).
        message = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        message = None if isinstance(exc, RecursionError) else _repair_42_state(text)
        if message is None:
            api_match = _API_VERSION.match(text)
            api = api_match.group(1) if api_match else None
            if len(text) < 4096 and _REFRESH_42.search(text):
                error = "ExaBGP 4.2 route-refresh (not JSON)"
                return Parsed(LineKind.IGNORED, api_version=api, error=error)
            what = "nested too deep" if isinstance(exc, RecursionError) else "not JSON"
            return Parsed(LineKind.INVALID, api_version=api, error=what, reason=REASON_JSON)
        repaired = True
    if type(message) is not dict:
        return Parsed(LineKind.INVALID, error="not a JSON object", reason=REASON_SHAPE)
    version = message.get("exabgp")
    api = version if type(version) is str else None
    kind = message.get("type")
    try:
        if type(kind) is not str:
            raise _BadLine(REASON_SHAPE, "type is missing or not text")
        if kind == "update":
            return _update(_dict(message.get("neighbor"), "neighbor"), api)
        if kind == "state":
            parsed = _state(_dict(message.get("neighbor"), "neighbor"), api)
            if repaired and parsed.error is None:
                return replace(parsed, error="bad escape in the reason text, repaired")
            return parsed
        if kind == "notification":
            return _notification(message, api)
        # open, keepalive, fsm, signal, refresh, negotiated, operational, …
        return Parsed(LineKind.IGNORED, api_version=api)
    except _BadLine as bad:
        return Parsed(LineKind.INVALID, api_version=api, error=bad.error, reason=bad.reason)


def answer_line(raw: bytes) -> tuple[LineKind, str] | None:
    """A line of ExaBGP's answer to a command, classified without building a Parsed (the
    resync reads 100,000s of them): (ACK, "done"/"error") or (TEXT, the stripped line). None
    for a JSON line, and for bytes that are not UTF-8 (parse_line reports those)."""
    if raw[:1] == b"{":
        return None
    try:
        stripped = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if stripped[:1] == "{":
        return None
    return (LineKind.ACK if stripped in _ACKS else LineKind.TEXT), stripped


def _parse_line(line: bytes | str) -> Parsed:
    if isinstance(line, str):
        text = line
    else:
        answer = answer_line(line)
        if answer is not None:
            return Parsed(answer[0], text=answer[1])
        try:
            text = bytes(line).decode("utf-8")
        except UnicodeDecodeError:
            return Parsed(LineKind.INVALID, error="not UTF-8", reason=REASON_ENCODING)
    stripped = text.strip()
    if stripped.startswith("{"):
        return _json_line(stripped)
    if not stripped.isascii():
        try:
            stripped.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates in a str
            return Parsed(LineKind.INVALID, error="not UTF-8", reason=REASON_ENCODING)
    if stripped in _ACKS:
        return Parsed(LineKind.ACK, text=stripped)
    return Parsed(LineKind.TEXT, text=stripped)


def parse_line(line: bytes | str) -> Parsed:
    """Classify one line of ExaBGP's output and return the events it carries. Never raises."""
    try:
        return _parse_line(line)
    except Exception as exc:  # a bug here must not stop the reader: report it instead
        return Parsed(
            LineKind.INVALID, error=f"parser error: {type(exc).__name__}", reason=REASON_INTERNAL
        )


# ---------------------------------------------------------------- show adj-rib in extensive

# One route line (both versions; 5.0 prints AS_SEQUENCE in ( ), 4.2 the sequence in [ ] with
# the AS_SET inside it in ( )):
#   neighbor 169.254.10.1 local-ip 169.254.10.2 local-as 65000 peer-as 64512 router-id
#   169.254.10.2 family-allowed in-open ipv4 unicast 10.1.0.0/16 next-hop 169.254.10.1
#   origin igp as-path ( 64512 64999 ) med 100 community [ 64512:100 64512:200 ]

_PATH_TOKEN: Final = re.compile(r"\{\(|\)\}|\{\[|\]\}|[()\[\]{}]|[^\s()\[\]{}]+")
_CLOSER: Final = {")": "(", "]": "[", ")}": "{(", "]}": "{["}
_OPENERS: Final = frozenset(_CLOSER.values())
_CONFED_OPENERS: Final = frozenset({"{(", "{["})
_TEXT_KEYS: Final = frozenset({"next-hop", "origin", "as-path", "med", "local-preference"})


class _Group:
    """One bracketed group of an as-path text: its opener, its ASNs and its inner groups."""

    __slots__ = ("asns", "inner", "opener")

    def __init__(self, opener: str) -> None:
        self.opener = opener
        self.asns: list[int] = []
        self.inner: list[_Group] = []


def _text_u32(token: str) -> int | None:
    if token.isascii() and token.isdigit() and len(token) <= 10:
        value = int(token)
        if value <= _MAX_U32:
            return value
    return None


def _text_groups(text: str) -> list[_Group] | None:
    top: list[_Group] = []
    stack: list[_Group] = []
    for token in _PATH_TOKEN.findall(text):
        if token in _OPENERS:
            group = _Group(token)
            (stack[-1].inner if stack else top).append(group)
            stack.append(group)
        elif token in _CLOSER:
            if not stack or stack[-1].opener != _CLOSER[token]:
                return None
            stack.pop()
        else:
            asn = _text_u32(token) if stack else None
            if asn is None:
                return None
            stack[-1].asns.append(asn)
    return None if stack else top


def _text_as_path(
    text: str, api_version: str | None
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(sequence, set) from the as-path text of either version, read as the same route's JSON
    is read (`_json_attrs`), so that a resync gives the paths the live stream gave."""
    groups = _text_groups(text)
    if groups is None:
        return None
    if api_version is not None:
        old = api_version.startswith(("3.", "4."))
    else:
        # 4.2 only ever prints "[" groups. A 5.0 path made of AS_SETs alone would look the
        # same; such paths are rare enough that without a version hint they are read as 4.2.
        old = all(group.opener == "[" for group in groups)
    sequence: list[int] = []
    as_set: list[int] = []
    if old:
        # "[ seq ( set ) ]" then, glued on, the same for the confederation part (skipped)
        if len(groups) > 2 or any(g.opener != "[" for g in groups):
            return None
        for position, group in enumerate(groups):
            if any(inner.opener != "(" or inner.inner for inner in group.inner):
                return None
            if position == 0:
                sequence.extend(group.asns)
                for inner in group.inner:
                    as_set.extend(inner.asns)
        return tuple(sequence), tuple(as_set)
    # "{(" / "{[" are AS_CONFED_SEQUENCE / AS_CONFED_SET. They do not count (RFC 5065 5.3)
    # where the JSON says what they are, but ExaBGP 5.0 labels both "as-sequence" in its JSON
    # (fixed after 5.0, in ExaBGP #1367): read from 5.0 (or an unknown version, which prints
    # braces only if it is 5.0 or later) they are taken as its JSON takes them, as sequence.
    confed_counts = api_version is None or api_version.startswith("5.")
    for group in groups:
        if group.inner:
            return None
        opener = group.opener
        if opener == "(" or (confed_counts and opener in _CONFED_OPENERS):
            sequence.extend(group.asns)
        elif opener == "[":
            as_set.extend(group.asns)
    return tuple(sequence), tuple(as_set)


def _depth(token: str) -> int:
    return (
        token.count("(") + token.count("[") + token.count("{")
        - token.count(")") - token.count("]") - token.count("}")
    )  # fmt: skip


def parse_adj_rib_line(text: str, *, api_version: str | None = None) -> Announce | None:
    """One line of `show adj-rib in extensive` output as a one-prefix Announce, or None if the
    line is not a valid IPv4/IPv6 unicast route line in that form (the short form without
    attributes, `done`, other families and malformed lines all give None).

    `api_version` ("4.0.1" / "5.0.0", as `Parsed.api_version` reports it) settles the one
    ambiguous case, an as-path made only of AS_SETs; without it the 4.2 reading is taken.

    A route the JSON reader would treat as withdrawn (no ORIGIN or an invalid one, no
    next-hop: ExaBGP keeps such routes in its adj-rib-in) gives None as well: not held."""
    tokens = text.split()
    if len(tokens) < 10 or tokens[0] != "neighbor":
        return None
    try:
        at = tokens.index("family-allowed")
    except ValueError:
        return None
    # family-allowed <session> <afi> <safi> <prefix> [path-information <id>] next-hop <nh> …
    if at + 4 >= len(tokens):
        return None
    family = _family(f"{tokens[at + 2]} {tokens[at + 3]}")
    peer = _address(tokens[1])
    if family is None or peer is None:
        return None
    issues = _Issues()
    prefixes = _prefixes([tokens[at + 4]], family == "ipv6 unicast", issues)
    if not prefixes:
        return None

    index = at + 5
    count = len(tokens)
    path_id: int | None = None
    if index + 1 < count and tokens[index] == "path-information":  # ADD-PATH
        path_id = _path_id(tokens[index + 1])
        if path_id is None:
            return None
        index += 2
    next_hop: str | None = None
    origin: int | None = None
    med: int | None = None
    local_pref: int | None = None
    path: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    depth = 0
    while index < count:
        token = tokens[index]
        if depth == 0 and index + 1 < count and token in _TEXT_KEYS:
            value = tokens[index + 1]
            if token == "as-path":
                end = index + 1
                level = 0
                while end < count and (level > 0 or tokens[end][:1] in "([{"):
                    level += _depth(tokens[end])
                    end += 1
                found = _text_as_path(" ".join(tokens[index + 1 : end]), api_version)
                if found is None:
                    return None
                path = found
                index = end
                continue
            if token == "next-hop":
                next_hop = _address(value)
                if next_hop is None:
                    return None
            elif token == "origin":
                if value not in ORIGINS:
                    return None
                origin = ORIGINS[value]
            else:
                number = _text_u32(value)
                if number is None:
                    return None
                if token == "med":
                    med = number
                else:
                    local_pref = number
            index += 2
            continue
        depth += _depth(token)
        index += 1
    if next_hop is None or origin is None:
        return None
    attrs = PathAttrs(next_hop, origin, path[0], path[1], med, local_pref)
    header = dict(zip(tokens[2:at:2], tokens[3:at:2], strict=False))
    peer_as = _text_u32(header.get("peer-as", ""))
    if peer_as is not None and peer_as == _text_u32(header.get("local-as", "")):
        peer_as = None  # iBGP
    return Announce(peer, family, attrs, prefixes, peer_as, path_id)


class AdjRibReader:
    """A whole `show adj-rib in extensive` answer, line by line, as announcements. ExaBGP
    lists the prefixes of one UPDATE one line each, the lines alike but for the prefix: a
    line like the one before it is not parsed again, its prefix is only set aside, and such
    a run of lines becomes one Announce (its prefixes checked together, as `_prefixes` checks
    an UPDATE's) when a line unlike it comes, when it reaches RUN_MAX prefixes (so that the
    core works while ExaBGP is still writing), or at `flush()`. The paths are those
    `parse_adj_rib_line` gives line by line, in order, at a fraction of the cost."""

    RUN_MAX: Final = 4096

    def __init__(self, api_version: str | None = None) -> None:
        self.api_version = api_version
        self._key: tuple[str, str] | None = None  # the last line parsed, but for its prefix
        self._proto: Announce | None = None  # ... and what it gave
        self._run: list[str] = []  # the prefix texts of the run so far, lines like _key

    def feed(self, text: str) -> tuple[Announce, ...]:
        """One line of the answer; returns what it completes: the run before it, when it
        starts another (and itself, when it cannot head one); mostly nothing."""
        start = text.find(" unicast ")  # family-allowed <session> <afi> unicast <prefix> …
        end = -1
        if start > 0:
            start += len(" unicast ")
            end = text.find(" ", start)
        key = (text[:start], text[end:]) if end > start > 0 else None
        if key is not None and key == self._key:
            run = self._run
            run.append(text[start:end])
            return self.flush() if len(run) >= self.RUN_MAX else ()
        ann = parse_adj_rib_line(text, api_version=self.api_version)
        if ann is None:
            return ()
        done = self.flush()
        if key is None:
            return (*done, ann)
        self._key, self._proto, self._run = key, ann, list(ann.prefixes)
        return done

    def flush(self) -> tuple[Announce, ...]:
        """The run read so far, as one Announce (nothing if there is none)."""
        proto, run = self._proto, self._run
        if proto is None or not run:
            return ()
        self._run = []
        prefixes = _prefixes(run, proto.family == "ipv6 unicast", _Issues())
        return (replace(proto, prefixes=prefixes),) if prefixes else ()

