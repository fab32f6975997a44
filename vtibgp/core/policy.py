"""Import policy: which learned prefixes may be installed through which tunnel (pure, no I/O).

`Policy.check(peer, peer_as, family, prefix, attrs)` answers None (accept) or one reason from
`REASONS`. The guards, in the order they are tried (the first that refuses names the reason):

  invalid         the prefix text does not parse, has host bits set, or is not of `family`
  martian         inside a martian range (`MARTIANS`, or `policy.martians`) and not inside an
                  `allow_martians` entry
  default_route   0.0.0.0/0 or ::/0 while `allow_default` is false (the default)
  max_length      longer than `max_length` for its family
  prefix_list     refused by the global prefix list or by the peer's (both must permit)
  protected       overlaps a protected network: inside it, equal to it, or covering it
  loop            covers one of the peer's tunnel outside endpoints (the IPsec peer's public
                  address): the tunnel's own ESP packets would be routed into the tunnel
  as_path_first   `first_as_must_be_peer` and the AS path does not start with the peer's AS
  as_path_length  the AS path is longer than `max_as_path_length` (an AS_SET counts as one)

Prefix lists work like FRR's: entries are tried in order and the first that matches decides
(`permit` or `deny`). An entry matches a prefix P when P lies inside the entry's prefix and
P's length is in the entry's range: without `ge`/`le` only the exact length, `le: N` the
entry's length to N, `ge: N` N to the family's width, both: `ge` to `le`. The list is split by
family: for a family with entries, a prefix no entry matches is refused (implicit deny); a
family without entries is not filtered by that list.

Global and per-peer settings (`PolicySettings`, `PeerPolicySettings`) merge as: a per-peer
scalar (`allow_default`, `max_length`, `first_as_must_be_peer`, `max_as_path_length`) replaces
the global one; the per-peer prefix list is evaluated after the global one and both must
permit (a peer list can narrow, never widen); `allow_martians`, `protected` and `outside` add
to the global ones; `martians` is global only.

Everything is precomputed into integers per (peer, family), and the prefix guards into one
closure, so a check costs a few dict and integer operations (see tests/unit/test_policy.py
for the measured cost): the prefix lists are worked out in advance into one verdict per
piece of the address space and prefix length (one bisect); a prefix far from every
martian, protected and outside range, known from one table lookup for most prefixes, skips
those three guards. The AS-path verdict is judged once per UPDATE in `partition` (every
prefix of an UPDATE shares one PathAttrs) and remembered for the last PathAttrs in `check`.

`MaxPrefix` is the per-peer prefix limit as pure state: `admit()` says whether one more
prefix is accepted and reports each threshold crossing once.
"""

from __future__ import annotations

import ipaddress
import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Literal, TypeVar, get_args

from vtibgp.addresses import AF_INET, AF_INET6, inet_pton
from vtibgp.core.model import Family, PathAttrs, PeerAddr, Prefix

Reason = Literal[
    "invalid",
    "martian",
    "default_route",
    "max_length",
    "prefix_list",
    "protected",
    "loop",
    "as_path_first",
    "as_path_length",
]
REASONS: tuple[Reason, ...] = get_args(Reason)
Action = Literal["permit", "deny"]
MaxPrefixAction = Literal["warn", "stop", "teardown"]
MaxPrefixEvent = Literal["warn", "limit", "teardown"]

_T = TypeVar("_T")
_WIDTH = {4: 32, 6: 128}
_LENGTHS = {str(n): n for n in range(129)}
_FAMILY_VERSION: dict[str, int] = {"ipv4 unicast": 4, "ipv6 unicast": 6}


@dataclass(frozen=True, slots=True)
class Martian:
    """A range never installed. `covered`: the range and every prefix inside it; otherwise
    only the exact prefix."""

    prefix: Prefix
    reason: str = ""
    covered: bool = True


# Every default entry is covered: no more-specific of any of these ranges is a usable
# destination through a tunnel. RFC 1918 (10/8, 172.16/12, 192.168/16), 100.64.0.0/10
# (RFC 6598 shared space) and fc00::/7 (ULA, RFC 4193) are what VPNs carry and are NOT here;
# neither is 64:ff9b::/96 (NAT64) nor 2002::/16 (6to4).
MARTIANS: tuple[Martian, ...] = (
    Martian("0.0.0.0/8", "'this network', never a destination (RFC 791, RFC 1122 3.2.1.3)"),
    Martian("127.0.0.0/8", "loopback (RFC 1122 3.2.1.3)"),
    Martian("169.254.0.0/16", "link-local (RFC 3927); AWS tunnel inside addresses live here "
            "as connected /30s, a learned route would shadow them"),
    Martian("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"),
    Martian("192.0.2.0/24", "documentation TEST-NET-1 (RFC 5737)"),
    Martian("198.18.0.0/15", "benchmarking (RFC 2544)"),
    Martian("198.51.100.0/24", "documentation TEST-NET-2 (RFC 5737)"),
    Martian("203.0.113.0/24", "documentation TEST-NET-3 (RFC 5737)"),
    Martian("224.0.0.0/4", "multicast (RFC 5771); a unicast route here redirects multicast"),
    Martian("240.0.0.0/4", "reserved, former class E (RFC 1112)"),
    Martian("255.255.255.255/32", "limited broadcast (RFC 919, RFC 8190)"),
    Martian("::/128", "unspecified address (RFC 4291 2.5.2)"),
    Martian("::1/128", "loopback (RFC 4291 2.5.3)"),
    Martian("::ffff:0:0/96", "IPv4-mapped addresses (RFC 4291 2.5.5.2), never on the wire"),
    Martian("100::/64", "discard-only (RFC 6666)"),
    Martian("2001:db8::/32", "documentation (RFC 3849)"),
    Martian("3fff::/20", "documentation (RFC 9637)"),
    Martian("fe80::/10", "link-local (RFC 4291 2.5.6)"),
    Martian("ff00::/8", "multicast (RFC 4291 2.7)"),
)


@dataclass(frozen=True, slots=True)
class PrefixRule:
    """One prefix-list entry; see the module docstring for how it matches."""

    prefix: Prefix
    action: Action
    ge: int | None = None
    le: int | None = None

    def lengths(self) -> tuple[int, int]:
        """The (lowest, highest) prefix length this entry matches."""
        net = ipaddress.ip_network(self.prefix)
        if self.ge is None and self.le is None:
            return net.prefixlen, net.prefixlen
        lo = self.ge if self.ge is not None else net.prefixlen
        hi = self.le if self.le is not None else net.max_prefixlen
        return lo, hi


@dataclass(frozen=True, slots=True)
class MaxPrefixSettings:
    limit: int
    warn_at: float = 0.8  # fraction of limit: warn once the held count reaches it
    action: MaxPrefixAction = "stop"
    restart_delay: float = 60.0  # teardown only: seconds before the session may return


@dataclass(frozen=True, slots=True)
class PeerPolicySettings:
    """`peers[].policy`, `peers[].outside` and `peers[].max_prefix`. None: as globally."""

    allow_default: bool | None = None
    max_length_ipv4: int | None = None
    max_length_ipv6: int | None = None
    first_as_must_be_peer: bool | None = None
    max_as_path_length: int | None = None
    prefix_list: tuple[PrefixRule, ...] = ()  # after the global list; both must permit
    allow_martians: tuple[Prefix, ...] = ()  # added to the global ones
    protected: tuple[Prefix, ...] = ()  # added to the global ones
    outside: tuple[str, ...] = ()  # the tunnel's outside endpoint(s), for the loop guard
    max_prefix: MaxPrefixSettings | None = None


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The global `policy:` section, with each peer's additions under `peers`."""

    martians: tuple[Martian, ...] = MARTIANS
    allow_martians: tuple[Prefix, ...] = ()
    allow_default: bool = False
    max_length_ipv4: int = 32
    max_length_ipv6: int = 128
    first_as_must_be_peer: bool = True
    max_as_path_length: int = 64
    prefix_list: tuple[PrefixRule, ...] = ()
    protected: tuple[Prefix, ...] = ()
    med_missing_as_worst: bool = False  # a path without a MED ranks as if its MED were 2^32-1
    peers: Mapping[PeerAddr, PeerPolicySettings] = field(default_factory=dict)

    def for_peer(self, peer: PeerAddr) -> PolicySettings:
        """The settings that apply to `peer`'s routes, merged, with `peers` empty. Its
        `prefix_list` stays the global one: the peer's own list is a second list that must
        also permit (`Policy` evaluates both), not a continuation of the first."""
        own = self.peers.get(peer)
        if own is None:
            return replace(self, peers={})
        return replace(
            self,
            allow_martians=_union(self.allow_martians, own.allow_martians),
            allow_default=_pick(own.allow_default, self.allow_default),
            max_length_ipv4=_pick(own.max_length_ipv4, self.max_length_ipv4),
            max_length_ipv6=_pick(own.max_length_ipv6, self.max_length_ipv6),
            first_as_must_be_peer=_pick(own.first_as_must_be_peer, self.first_as_must_be_peer),
            max_as_path_length=_pick(own.max_as_path_length, self.max_as_path_length),
            protected=_union(self.protected, own.protected),
            peers={},
        )


def _pick(own: _T | None, glob: _T) -> _T:
    return glob if own is None else own


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*a, *b)))


# ---------------------------------------------------------------- parsing prefixes to ints


def parse_prefix(prefix: str) -> tuple[int, int, int]:
    """(version, network as an int, length) of a prefix text; ValueError if it is not one
    (also for host bits set). Much cheaper than ipaddress.ip_network."""
    addr, _, length = prefix.partition("/")
    plen = _LENGTHS.get(length)  # only plain decimal lengths, as ExaBGP prints them
    if plen is None:
        raise ValueError(f"not a prefix: {prefix!r}")
    version, net = _parse_address(addr)
    width = _WIDTH[version]
    if plen > width or net & ((1 << (width - plen)) - 1):
        raise ValueError(f"not a prefix: {prefix!r}")
    return version, net, plen


def _parse_address(addr: str) -> tuple[int, int]:
    try:
        if ":" in addr:
            return 6, int.from_bytes(inet_pton(AF_INET6, addr))
        return 4, int.from_bytes(inet_pton(AF_INET, addr))
    except (OSError, ValueError, TypeError):
        raise ValueError(f"not an address: {addr!r}") from None


def covers(prefix: str, address: str) -> bool:
    """Whether `address` lies inside `prefix` (a /0 covers every address of its family; other
    families never). ValueError if either text does not parse."""
    version, net, plen = parse_prefix(prefix)
    aversion, addr = _parse_address(address)
    if version != aversion:
        return False
    shift = _WIDTH[version] - plen
    return addr >> shift == net >> shift


# ---------------------------------------------------------------- the compiled policy

# The prefix guards of one (peer, family): the prefix text to None or the refusing reason.
_Screen = Callable[[Prefix], Reason | None]
# Prefixes at least this long lie inside one block of addresses sharing this many leading
# bits, which one byte of a table can describe (4 KiB for IPv4, 64 KiB for IPv6).
_BLOCK_BITS = {32: 12, 128: 16}


class _Family:
    """One peer's guards for one family, as integers, and `screen`: the prefix guards
    (invalid to loop) compiled into one function. The AS-path guards are left to `Policy`,
    which judges them once per PathAttrs."""

    __slots__ = (
        "af",
        "allow_default",
        "allowed",
        "aspath",
        "dirty",
        "exact",
        "h_ends",
        "h_starts",
        "hostmask",
        "lengths",
        "list_starts",
        "list_verdicts",
        "m_ends",
        "m_starts",
        "max_length",
        "outside",
        "p_ends",
        "p_starts",
        "screen",
        "width",
    )

    def __init__(self, version: int, s: PolicySettings, lists: tuple[tuple[PrefixRule, ...], ...],
                 outside: Iterable[str], aspath: tuple[bool, int]) -> None:
        self.af = AF_INET if version == 4 else AF_INET6
        self.width = width = _WIDTH[version]
        self.lengths = {str(n): n for n in range(width + 1)}  # the valid length texts
        self.hostmask = [(1 << (width - n)) - 1 for n in range(width + 1)]
        # Martian and protected ranges as merged address intervals: a prefix (itself an
        # interval) lies inside their union iff it lies inside one of them, and overlaps the
        # union iff it overlaps one; either is one bisect, however long the lists.
        covered = _nets((m.prefix for m in s.martians if m.covered), version)
        self.m_starts, self.m_ends = _spans(covered, width)
        self.exact: frozenset[tuple[int, int]] = frozenset(
            p[1:] for m in s.martians if not m.covered
            if (p := parse_prefix(m.prefix))[0] == version
        )
        self.allowed = _nets(s.allow_martians, version)
        self.allow_default = s.allow_default
        self.max_length = s.max_length_ipv4 if version == 4 else s.max_length_ipv6
        self.list_starts, self.list_verdicts = _prefix_lists(version, lists)
        protected = _nets(s.protected, version)
        self.p_starts, self.p_ends = _spans(protected, width)
        self.outside = sorted({a for v, a in map(_parse_address, outside) if v == version})
        # Every address for which the martian, protected or loop guard can refuse a prefix
        # holding it; a prefix that meets none of these "hot" spans passes all three.
        self.h_starts, self.h_ends = _spans(
            [*covered, *self.exact, *protected, *((a, width) for a in self.outside)], width)
        self.dirty = _dirty_blocks(width, tuple(self.h_starts), tuple(self.h_ends))
        self.aspath = aspath  # (first_as_must_be_peer, max_as_path_length), shared by families
        self.screen = _screen(self)


def _nets(prefixes: Iterable[str], version: int) -> list[tuple[int, int]]:
    return [(net, plen) for v, net, plen in map(parse_prefix, prefixes) if v == version]


def _spans(nets: Iterable[tuple[int, int]], width: int) -> tuple[list[int], list[int]]:
    """The union of prefixes as sorted, disjoint, non-adjacent [start, end] intervals."""
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted((net, net | ((1 << (width - plen)) - 1)) for net, plen in nets):
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


@lru_cache(maxsize=32)
def _dirty_blocks(width: int, starts: tuple[int, ...], ends: tuple[int, ...]) -> bytes:
    """One byte per block of `_BLOCK_BITS[width]` leading bits: 1 if the block holds an
    address of one of the spans [starts[i], ends[i]]. Peers with the same spans share it."""
    shift = width - _BLOCK_BITS[width]
    table = bytearray(1 << _BLOCK_BITS[width])
    for start, end in zip(starts, ends, strict=True):
        first, last = start >> shift, end >> shift
        table[first:last + 1] = b"\x01" * (last + 1 - first)
    return bytes(table)


@lru_cache(maxsize=32)
def _prefix_lists(version: int, lists: tuple[tuple[PrefixRule, ...], ...]
                  ) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
    """The prefix lists' verdict for one family, worked out in advance for every prefix:
    (starts, verdicts), where a prefix (net, plen) is permitted by every list iff
    verdicts[i][plen] is 1 for the last starts[i] <= net. Both empty: no list has entries of
    this family, nothing is filtered.

    Exact: an entry matches (net, plen) when lo <= plen <= hi and net, the prefix's first
    address, lies in the entry's range (the configuration refuses lengths below the entry's
    own, so that is the prefix lying inside the entry). The address space is cut at every
    entry's first address and at the address after its last, so every net of one piece lies
    in the same entries, and the first match (in list order) for each length is the same for
    all of them. Neighbouring pieces with the same verdicts are merged. Cached: a set of
    lists is worked out once, whatever the peers sharing it."""
    width = _WIDTH[version]
    # per list with entries of this family: (entry prefix -> [(position, lengths, permit)],
    # the entry prefixes' lengths), with `lengths` a bit mask (bit n: prefix length n)
    parsed: list[tuple[dict[tuple[int, int], list[tuple[int, int, bool]]], list[int]]] = []
    cuts = {0}
    for rules in lists:
        by_prefix: dict[tuple[int, int], list[tuple[int, int, bool]]] = {}
        for position, r in enumerate(rules):
            v, net, plen = parse_prefix(r.prefix)
            if v == version:
                lo, hi = r.lengths()
                lo, hi = max(lo, 0), min(hi, width)
                lengths = (1 << (hi + 1)) - (1 << lo) if lo <= hi else 0
                by_prefix.setdefault((net, plen), []).append(
                    (position, lengths, r.action == "permit"))
                cuts.add(net)
                cuts.add(net + (1 << (width - plen)))
        if by_prefix:
            parsed.append((by_prefix, sorted({plen for _, plen in by_prefix})))
    if not parsed:
        return (), ()
    cuts.discard(1 << width)  # past the last address
    starts: list[int] = []
    verdicts: list[bytes] = []
    as_bytes: dict[int, bytes] = {}
    for cut in sorted(cuts):
        permitted = (1 << (width + 1)) - 1  # by every list so far: a mask of lengths
        for by_prefix, entry_lengths in parsed:
            # the entries holding `cut` (their prefixes hold it: one per entry length at
            # most) in list order; the first to match a length decides it
            holding = sorted(e for n in entry_lengths
                             for e in by_prefix.get((cut >> (width - n) << (width - n), n), ()))
            permit_mask = decided = 0  # undecided lengths: implicit deny
            for _, lengths, permit in holding:
                if permit:
                    permit_mask |= lengths & ~decided
                decided |= lengths
            permitted &= permit_mask
        piece = as_bytes.get(permitted)
        if piece is None:  # one bytes object per distinct verdict
            piece = as_bytes[permitted] = bytes(permitted >> n & 1 for n in range(width + 1))
        if not verdicts or piece is not verdicts[-1]:
            starts.append(cut)
            verdicts.append(piece)
    return tuple(starts), tuple(verdicts)


def _screen(f: _Family) -> _Screen:
    """`f`'s prefix guards, in the module docstring's order, as one closure: what it reads
    is bound once here, and a guard the settings leave with nothing to do costs a test of
    an empty or false local."""
    af, lengths, hostmask, width = f.af, f.lengths, f.hostmask, f.width
    dirty, h_starts, h_ends = f.dirty, f.h_starts, f.h_ends
    bits = _BLOCK_BITS[width]
    block_shift = width - bits
    m_starts, m_ends, exact, allowed = f.m_starts, f.m_ends, f.exact, f.allowed
    refuse_default, max_length = not f.allow_default, f.max_length
    list_starts, list_verdicts = f.list_starts, f.list_verdicts
    # a list set that cuts the address space into one piece decides by length alone
    by_length = list_verdicts[0] if len(list_starts) == 1 else None
    p_starts, p_ends, outside = f.p_starts, f.p_ends, f.outside
    from_bytes = int.from_bytes

    def screen(prefix: Prefix) -> Reason | None:
        # the prefix text, parsed: the address must be of the family, the length a plain
        # decimal within its width, the host bits zero
        try:
            addr, _, length = prefix.partition("/")
            plen = lengths[length]
            net = from_bytes(inet_pton(af, addr))
        except (KeyError, OSError, ValueError, TypeError, AttributeError):
            return "invalid"
        host = hostmask[plen]
        if net & host:
            return "invalid"  # host bits set
        last = net | host  # the prefix's last address
        # Whether the prefix meets a hot span (see _Family); far from all of them (most
        # prefixes), the martian, protected and loop guards have nothing to refuse. A prefix
        # of at least `bits` lies in one block: a clean block settles it with one lookup.
        # Otherwise the hot span starting last at or before `last` is the only one that
        # can reach back to `net` (they are disjoint and sorted).
        if plen >= bits and not dirty[net >> block_shift]:
            near = False
        else:
            i = bisect_right(h_starts, last) - 1
            near = i >= 0 and h_ends[i] >= net
        if near:
            i = bisect_right(m_starts, net) - 1
            if ((i >= 0 and last <= m_ends[i]) or (net, plen) in exact) \
                    and not _inside_any(net, plen, width, allowed):
                return "martian"
        if not plen and refuse_default:
            return "default_route"
        if plen > max_length:
            return "max_length"
        if by_length is not None:
            if not by_length[plen]:
                return "prefix_list"
        elif list_starts and not list_verdicts[bisect_right(list_starts, net) - 1][plen]:
            return "prefix_list"
        if near:
            if p_starts:
                i = bisect_right(p_starts, last) - 1  # the last range starting in or before
                if i >= 0 and p_ends[i] >= net:
                    return "protected"
            if outside:
                i = bisect_right(outside, last) - 1  # the highest endpoint up to `last`
                if i >= 0 and outside[i] >= net:
                    return "loop"
        return None

    return screen


def _compile(s: PolicySettings, lists: Sequence[tuple[PrefixRule, ...]],
             outside: Iterable[str]) -> dict[str, _Family]:
    outside = tuple(outside)
    aspath = (s.first_as_must_be_peer, s.max_as_path_length)
    return {"ipv4 unicast": _Family(4, s, tuple(lists), outside, aspath),
            "ipv6 unicast": _Family(6, s, tuple(lists), outside, aspath)}


class Policy:
    """The import policy of every peer, compiled from `PolicySettings`. Peers not listed in
    `settings.peers` get the global policy. The only state is the outside endpoints the shell
    discovers at run time (`set_outside`) and a one-entry AS-path cache."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self._discovered: dict[PeerAddr, tuple[str, ...]] = {}
        self._rules: dict[PeerAddr, dict[str, _Family]] = {}
        self._global = self._compile(None)
        for peer in settings.peers:
            self._rules[peer] = self._compile(peer)
        # the AS-path verdict of the last (attrs, AS-path rules, peer_as) seen
        self._c_attrs: PathAttrs | None = None
        self._c_rules: tuple[bool, int] | None = None
        self._c_as: int | None = None
        self._c_result: Reason | None = None

    def _compile(self, peer: PeerAddr | None) -> dict[str, _Family]:
        s = self.settings
        if peer is None:
            return _compile(s, [s.prefix_list], ())
        own = s.peers.get(peer)
        lists = [s.prefix_list, own.prefix_list if own else ()]
        return _compile(s.for_peer(peer), lists, self.outside(peer))

    # ---------------------------------------------------------------- queries

    def outside(self, peer: PeerAddr) -> tuple[str, ...]:
        """The peer's tunnel outside endpoints: configured, then discovered."""
        own = self.settings.peers.get(peer)
        return _union(own.outside if own else (), self._discovered.get(peer, ()))

    def max_prefix(self, peer: PeerAddr) -> MaxPrefixSettings | None:
        own = self.settings.peers.get(peer)
        return own.max_prefix if own else None

    def set_outside(self, peer: PeerAddr, addresses: Iterable[str]) -> bool:
        """Record the outside endpoint(s) discovered for the peer's tunnel (replacing earlier
        discoveries; configured ones stay). True if the loop guard changed: the caller must
        then re-check the peer's held prefixes. Unparsable addresses are ValueError."""
        found = tuple(dict.fromkeys(str(ipaddress.ip_address(a)) for a in addresses))
        before = self.outside(peer)
        self._discovered[peer] = found
        if self.outside(peer) == before:
            return False
        self._rules[peer] = self._compile(peer)
        return True

    # ---------------------------------------------------------------- the check

    def check(self, peer: PeerAddr, peer_as: int | None, family: Family, prefix: Prefix,
              attrs: PathAttrs) -> Reason | None:
        """None if the path may be installed into `peer`'s tunnel, else the reason it may not.
        `peer_as` is the session's remote AS (ExaBGP's neighbor.asn.peer); pass None when it is
        unknown or the session is iBGP, which skips `first_as_must_be_peer`. Never raises."""
        fam = self._rules.get(peer, self._global).get(family)
        if fam is None:
            return "invalid"
        reason = fam.screen(prefix)
        if reason is not None:
            return reason
        return self._path_verdict(fam.aspath, peer_as, attrs)

    def partition(self, peer: PeerAddr, peer_as: int | None, family: Family,
                  prefixes: Iterable[Prefix], attrs: PathAttrs
                  ) -> tuple[list[Prefix], list[tuple[Prefix, Reason]]]:
        """`check` over an UPDATE's prefixes: (accepted, [(refused, reason), ...]). What the
        prefixes share (their guards, the AS-path verdict) is looked up once."""
        ok: list[Prefix] = []
        refused: list[tuple[Prefix, Reason]] = []
        fam = self._rules.get(peer, self._global).get(family)
        if fam is None:
            refused.extend((prefix, "invalid") for prefix in prefixes)
            return ok, refused
        screen, accept = fam.screen, ok.append
        path_judged = False  # the AS-path verdict, judged when a prefix first gets that far
        path: Reason | None = None
        for prefix in prefixes:
            reason = screen(prefix)
            if reason is None:
                if not path_judged:
                    path = self._path_verdict(fam.aspath, peer_as, attrs)
                    path_judged = True
                if path is None:
                    accept(prefix)
                    continue
                reason = path
            refused.append((prefix, reason))
        return ok, refused

    def _path_verdict(self, rules: tuple[bool, int], peer_as: int | None,
                      attrs: PathAttrs) -> Reason | None:
        """`_as_path`, remembered for the last (attrs, rules, peer_as) seen."""
        if attrs is self._c_attrs and rules is self._c_rules and peer_as == self._c_as:
            return self._c_result
        result = _as_path(rules, peer_as, attrs)
        self._c_attrs, self._c_rules, self._c_as, self._c_result = attrs, rules, peer_as, result
        return result


def _as_path(rules: tuple[bool, int], peer_as: int | None, attrs: PathAttrs) -> Reason | None:
    first_as, max_path = rules
    try:
        # RFC 4271 6.3: the leftmost AS of an eBGP peer's path is its own, so an empty path
        # or one that is only an AS_SET fails too. (PathAttrs keeps AS_SET members apart
        # from the sequence: a set placed before a sequence is not seen here.)
        if first_as and peer_as is not None and (
                not attrs.as_path or attrs.as_path[0] != peer_as):
            return "as_path_first"
        if attrs.as_path_len > max_path:
            return "as_path_length"
    except (AttributeError, TypeError):
        return "invalid"
    return None


def _inside_any(net: int, plen: int, width: int, nets: list[tuple[int, int]]) -> bool:
    return any(plen >= alen and net >> (width - alen) == anet >> (width - alen)
               for anet, alen in nets)


# ---------------------------------------------------------------- max-prefix


@dataclass(frozen=True, slots=True)
class Admission:
    accept: bool
    event: MaxPrefixEvent | None = None


_ACCEPT = Admission(True)
_REFUSE = Admission(False)


class MaxPrefix:
    """One peer's prefix limit. The caller passes the count of prefixes it holds from the
    peer (all families, after policy) and whether the prefix is new (not held yet):

    * a re-announcement of a held prefix is always accepted (the count does not change);
    * a new prefix that brings the count to `warn_at * limit` reports "warn" (once);
    * a new prefix beyond `limit`: `warn` accepts it and reports "limit"; `stop` refuses it
      and reports "limit"; `teardown` refuses it and reports "teardown" (the shell tears the
      session down; until `reset()` every new prefix is refused, and `suppressed(now)` stays
      true for `restart_delay` seconds from the `now` given).

    Each event is reported once and re-armed when the count is below the warn threshold
    again (seen at the next `admit`, or `reset()` when the session goes down)."""

    def __init__(self, settings: MaxPrefixSettings) -> None:
        self.settings = settings
        # the lowest count that warns; the round() keeps 0.7 * 10 from becoming 8
        self.warn_count = max(1, math.ceil(round(settings.warn_at * settings.limit, 9)))
        self.warned = False
        self.limited = False
        self.torn_down = False
        self.suppressed_until: float | None = None

    def admit(self, count_held: int, is_new: bool, now: float = 0.0) -> Admission:
        if not is_new:
            return _ACCEPT
        if self.torn_down or self.suppressed(now):
            return _REFUSE
        if count_held < self.warn_count:
            self.warned = self.limited = False
        count = count_held + 1
        s = self.settings
        if count > s.limit:
            first = not self.limited
            self.limited = self.warned = True
            if s.action == "warn":
                return Admission(True, "limit") if first else _ACCEPT
            if s.action == "stop":
                return Admission(False, "limit") if first else _REFUSE
            self.torn_down = True
            self.suppressed_until = now + s.restart_delay
            return Admission(False, "teardown")
        if count >= self.warn_count and not self.warned:
            self.warned = True
            return Admission(True, "warn")
        return _ACCEPT

    def suppressed(self, now: float) -> bool:
        """After a teardown: whether the session must stay down (restart_delay not over)."""
        return self.suppressed_until is not None and now < self.suppressed_until

    def reset(self) -> None:
        """The session went down (its prefixes are gone): re-arm. A running restart delay
        stays."""
        self.warned = self.limited = self.torn_down = False


__all__ = [
    "MARTIANS",
    "REASONS",
    "Admission",
    "Martian",
    "MaxPrefix",
    "MaxPrefixSettings",
    "PeerPolicySettings",
    "Policy",
    "PolicySettings",
    "PrefixRule",
    "Reason",
    "covers",
    "parse_prefix",
]
