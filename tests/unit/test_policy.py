"""Import policy without root: one test per guard, the prefix-list, martian and overlap logic
against naive ipaddress-based references (hypothesis), the loop guard and max-prefix
hysteresis."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtibgp.core.model import Family, PathAttrs
from vtibgp.core.policy import (
    MARTIANS,
    REASONS,
    Admission,
    Martian,
    MaxPrefix,
    MaxPrefixSettings,
    PeerPolicySettings,
    Policy,
    PolicySettings,
    PrefixRule,
    covers,
    parse_prefix,
)

P1, P2 = "169.254.10.1", "169.254.11.1"
AS = 64512
V4: Family = "ipv4 unicast"
V6: Family = "ipv6 unicast"
OK = PathAttrs(P1, as_path=(AS, 65001))


def check(pol: Policy, prefix: str, attrs: PathAttrs = OK, peer: str = P1,
          peer_as: int | None = AS) -> str | None:
    return pol.check(peer, peer_as, V6 if ":" in prefix else V4, prefix, attrs)


def policy(peers: dict[str, PeerPolicySettings] | None = None, **kw: object) -> Policy:
    return Policy(PolicySettings(peers=peers or {}, **kw))  # type: ignore[arg-type]


# ---------------------------------------------------------------- one test per guard


def test_what_vpns_carry_is_accepted_by_default() -> None:
    pol = policy()
    for prefix in ("10.0.0.0/8", "10.1.2.0/24", "172.16.0.0/12", "192.168.50.7/32",
                   "100.64.0.0/10", "52.95.0.0/16", "fd00:10::/32", "64:ff9b::/96",
                   "2600:1f00::/24", "1.2.3.4/32", "223.255.255.0/24"):
        assert check(pol, prefix) is None, prefix


@pytest.mark.parametrize("prefix", [
    "", "10.0.0.0", "10.0.0.0/", "10.0.0.0/33", "10.0.0.1/24", "10.0.0.0/08", "10.0.0.0/+8",
    "10.0.0.0/ 8", "10.0.0/8", "010.0.0.0/8", "fe80::1%eth0/128", "2001:db8::1/32",
    "::/129", "10.0.0.0/8/8", "10.0.0.0/\u0668", "x/8", "10.0.0.0\x00/8",
])
def test_invalid_prefix_text(prefix: str) -> None:
    assert check(policy(), prefix) == "invalid"


def test_prefix_of_the_other_family_or_an_unknown_family_is_invalid() -> None:
    pol = policy()
    assert pol.check(P1, AS, V6, "10.0.0.0/8", OK) == "invalid"
    assert pol.check(P1, AS, V4, "fd00::/8", OK) == "invalid"
    assert pol.check(P1, AS, "ipv4 flow", "10.0.0.0/8", OK) == "invalid"  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", [
    "0.0.0.0/8", "0.1.2.0/24", "127.0.0.1/32", "169.254.10.0/30", "169.254.0.0/16",
    "192.0.0.0/24", "192.0.2.0/25", "198.18.0.0/15", "198.19.255.0/24", "198.51.100.0/24",
    "203.0.113.10/32", "224.0.0.0/4", "239.1.1.0/24", "240.0.0.0/4", "255.255.255.255/32",
    "224.0.0.0/3",  # multicast + class E together: inside the union of two martian ranges
    "::/128", "::1/128", "::ffff:0:0/96", "::ffff:10.0.0.0/104", "100::/64", "2001:db8::/32",
    "2001:db8:1::/48", "3fff::/20", "fe80::/10", "fe80::/64", "ff00::/8", "ff02::1/128",
])
def test_martians_are_refused(prefix: str) -> None:
    assert check(policy(), prefix) == "martian"


def test_a_prefix_only_partly_martian_is_not_a_martian() -> None:
    pol = policy()
    # covering a martian range is not being inside it: 192.0.0.0/16 holds real space too
    for prefix in ("192.0.0.0/16", "198.0.0.0/8", "128.0.0.0/1", "2001:d00::/24", "fe00::/7",
                   "169.254.0.0/15"):
        assert check(pol, prefix) is None, prefix


def test_martians_can_be_replaced_or_allowed_explicitly() -> None:
    lab = ("2001:db8::/32", "203.0.113.0/24")
    allowed = policy(allow_martians=lab)
    assert check(allowed, "2001:db8:100::/56") is None
    assert check(allowed, "203.0.113.0/25") is None
    assert check(allowed, "198.51.100.0/24") == "martian"
    # allowing a more-specific leaves the rest of the range refused
    narrow = policy(allow_martians=("2001:db8:100::/48",))
    assert check(narrow, "2001:db8:100::/56") is None
    assert check(narrow, "2001:db8:200::/48") == "martian"
    assert check(narrow, "2001:db8::/32") == "martian"
    # per peer: only that peer's routes
    per_peer = policy(peers={P2: PeerPolicySettings(allow_martians=("192.0.2.0/24",))})
    assert check(per_peer, "192.0.2.0/24", peer=P2) is None
    assert check(per_peer, "192.0.2.0/24", peer=P1) == "martian"
    # a replaced list: nothing but what it names, exact entries only themselves
    own = policy(martians=(Martian("10.99.0.0/16"), Martian("10.0.0.0/8", covered=False)))
    assert check(own, "127.0.0.0/8") is None
    assert check(own, "10.99.1.0/24") == "martian"
    assert check(own, "10.0.0.0/8") == "martian"
    assert check(own, "10.1.0.0/16") is None
    assert check(policy(martians=()), "0.0.0.0/8") is None


def test_default_route_is_refused_unless_allowed() -> None:
    assert check(policy(), "0.0.0.0/0") == "default_route"
    assert check(policy(), "::/0") == "default_route"
    assert check(policy(allow_default=True), "0.0.0.0/0") is None
    per_peer = policy(peers={P2: PeerPolicySettings(allow_default=True)})
    assert check(per_peer, "::/0", peer=P2) is None
    assert check(per_peer, "::/0", peer=P1) == "default_route"
    # and the other way round: a peer can refuse it where the global policy allows it
    deny = policy(allow_default=True, peers={P2: PeerPolicySettings(allow_default=False)})
    assert check(deny, "0.0.0.0/0", peer=P2) == "default_route"
    assert check(deny, "0.0.0.0/0", peer=P1) is None


def test_max_length_per_family() -> None:
    pol = policy(max_length_ipv4=24, max_length_ipv6=48)
    assert check(pol, "10.1.2.0/24") is None
    assert check(pol, "10.1.2.0/25") == "max_length"
    assert check(pol, "fd00:1::/48") is None
    assert check(pol, "fd00:1::/64") == "max_length"
    peer = policy(max_length_ipv4=24, peers={P2: PeerPolicySettings(max_length_ipv4=32)})
    assert check(peer, "10.1.2.3/32", peer=P2) is None
    assert check(peer, "10.1.2.3/32", peer=P1) == "max_length"


def test_prefix_list_first_match_wins_and_implicit_deny_per_family() -> None:
    pol = policy(prefix_list=(
        PrefixRule("10.66.0.0/16", "deny", le=32),
        PrefixRule("10.0.0.0/8", "permit", le=24),
        PrefixRule("172.16.0.0/12", "permit", ge=20, le=24),
        PrefixRule("192.168.1.0/24", "permit"),
    ))
    assert check(pol, "10.66.1.0/24") == "prefix_list"  # the deny comes first
    assert check(pol, "10.1.0.0/16") is None
    assert check(pol, "10.0.0.0/8") is None
    assert check(pol, "10.1.2.0/25") == "prefix_list"  # beyond le
    assert check(pol, "172.16.0.0/12") == "prefix_list"  # below ge
    assert check(pol, "172.16.16.0/20") is None
    assert check(pol, "192.168.1.0/24") is None
    assert check(pol, "192.168.1.0/25") == "prefix_list"  # no ge/le: the exact length only
    assert check(pol, "11.0.0.0/8") == "prefix_list"  # implicit deny
    assert check(pol, "fd00::/8") is None  # no IPv6 entries: IPv6 is not filtered by it


def test_peer_prefix_list_narrows_the_global_one() -> None:
    pol = policy(
        prefix_list=(PrefixRule("10.0.0.0/8", "permit", le=24),),
        peers={P2: PeerPolicySettings(prefix_list=(PrefixRule("10.2.0.0/16", "permit", le=24),
                                                   PrefixRule("11.0.0.0/8", "permit")))},
    )
    assert check(pol, "10.1.0.0/16", peer=P1) is None
    assert check(pol, "10.1.0.0/16", peer=P2) == "prefix_list"  # not in the peer's list
    assert check(pol, "10.2.3.0/24", peer=P2) is None  # both permit
    assert check(pol, "11.0.0.0/8", peer=P2) == "prefix_list"  # the global list refuses


@pytest.mark.parametrize(("prefix", "reason"), [
    ("192.168.1.0/24", "protected"),  # equal
    ("192.168.1.128/25", "protected"),  # inside
    ("192.168.0.0/16", "protected"),  # covering
    ("192.168.2.0/24", None),
    ("10.200.0.0/16", None),
    ("10.255.0.0/24", "protected"),
    ("fd00:99::/64", "protected"),
    ("fd00:98::/64", None),
])
def test_protected_networks(prefix: str, reason: str | None) -> None:
    pol = policy(protected=("192.168.1.0/24", "10.255.0.0/24", "fd00:99::/48"),
                 allow_default=True)
    assert check(pol, prefix) == reason


def test_protected_covering_catches_the_default_route_too() -> None:
    pol = policy(protected=("192.168.1.0/24",), allow_default=True)
    assert check(pol, "0.0.0.0/0") == "protected"
    assert check(pol, "::/0") is None  # other family


@pytest.mark.parametrize(("prefix", "reason"), [
    ("0.0.0.0/0", "loop"),
    ("52.0.0.0/8", "loop"),
    ("52.1.0.0/16", "loop"),
    ("52.1.2.3/32", "loop"),
    ("52.1.2.4/32", None),
    ("53.0.0.0/8", None),
    ("52.1.2.0/31", None),  # .0 and .1: not the endpoint
    ("::/0", None),
])
def test_loop_guard_refuses_prefixes_covering_the_tunnels_outside_endpoint(
        prefix: str, reason: str | None) -> None:
    pol = policy(allow_default=True, peers={P1: PeerPolicySettings(outside=("52.1.2.3",))})
    assert check(pol, prefix) == reason
    # only into that tunnel: the other peer's tunnel may carry it
    assert check(pol, prefix, peer=P2) is None


def test_loop_guard_with_discovered_endpoints() -> None:
    pol = policy(allow_default=True, peers={P1: PeerPolicySettings(outside=("52.1.2.3",))})
    assert pol.set_outside(P2, ["198.100.7.9"]) is True  # an unconfigured peer works too
    assert check(pol, "198.100.0.0/16", peer=P2) == "loop"
    assert pol.set_outside(P2, ["198.100.7.9"]) is False  # unchanged
    assert pol.set_outside(P1, ["2600:1f18::1"]) is True  # adds to the configured one
    assert pol.outside(P1) == ("52.1.2.3", "2600:1f18::1")
    assert check(pol, "52.0.0.0/8") == "loop"
    assert check(pol, "2600::/12") == "loop"
    assert pol.set_outside(P1, []) is True
    assert check(pol, "2600::/12") is None
    assert check(pol, "52.0.0.0/8") == "loop"  # the configured one stays
    with pytest.raises(ValueError):
        pol.set_outside(P1, ["not-an-address"])


def test_covers() -> None:
    assert covers("0.0.0.0/0", "52.1.2.3")
    assert covers("52.0.0.0/8", "52.1.2.3")
    assert covers("52.1.2.3/32", "52.1.2.3")
    assert not covers("52.1.2.2/32", "52.1.2.3")
    assert not covers("53.0.0.0/8", "52.1.2.3")
    assert not covers("::/0", "52.1.2.3")  # another family never
    assert covers("::/0", "2600:1f18::1")
    assert covers("2600:1f18::/32", "2600:1f18::1")
    assert not covers("2600:1f19::/32", "2600:1f18::1")
    for bad in (("10.0.0.1/8", "10.0.0.1"), ("10.0.0.0/8", "x")):
        with pytest.raises(ValueError):
            covers(*bad)


def test_first_as_must_be_the_peers() -> None:
    pol = policy()
    assert check(pol, "10.0.0.0/16", PathAttrs(P1, as_path=(AS,))) is None
    assert check(pol, "10.0.0.0/16", PathAttrs(P1, as_path=(65001, AS))) == "as_path_first"
    assert check(pol, "10.0.0.0/16", PathAttrs(P1)) == "as_path_first"  # empty from eBGP
    assert check(pol, "10.0.0.0/16", PathAttrs(P1, as_set=(AS,))) == "as_path_first"
    # unknown peer AS (or iBGP): not checked
    assert check(pol, "10.0.0.0/16", PathAttrs(P1, as_path=(65001,)), peer_as=None) is None
    off = policy(first_as_must_be_peer=False)
    assert check(off, "10.0.0.0/16", PathAttrs(P1, as_path=(65001,))) is None
    per_peer = policy(peers={P2: PeerPolicySettings(first_as_must_be_peer=False)})
    assert check(per_peer, "10.0.0.0/16", PathAttrs(P1, as_path=(1,)), peer=P2) is None
    assert check(per_peer, "10.0.0.0/16", PathAttrs(P1, as_path=(1,)), peer=P1) \
        == "as_path_first"


def test_as_path_length_bound() -> None:
    pol = policy(max_as_path_length=3)
    assert check(pol, "10.0.0.0/16", PathAttrs(P1, as_path=(AS, 1, 2))) is None
    assert check(pol, "10.0.0.0/16", PathAttrs(P1, as_path=(AS, 1, 2, 3))) == "as_path_length"
    # an AS_SET counts as one hop, however many members
    assert check(pol, "10.0.0.0/16", PathAttrs(P1, as_path=(AS, 1), as_set=(5, 6, 7))) is None
    assert check(pol, "10.0.0.0/16",
                 PathAttrs(P1, as_path=(AS, 1, 2), as_set=(5,))) == "as_path_length"
    assert check(policy(), "10.0.0.0/16", PathAttrs(P1, as_path=(AS,) * 64)) is None
    assert check(policy(), "10.0.0.0/16", PathAttrs(P1, as_path=(AS,) * 65)) == "as_path_length"


def test_as_path_verdict_cache_follows_attrs_peer_as_and_peer() -> None:
    pol = policy(peers={P2: PeerPolicySettings(first_as_must_be_peer=False)})
    attrs = PathAttrs(P1, as_path=(65001,))
    assert check(pol, "10.0.0.0/16", attrs, peer_as=65001) is None
    assert check(pol, "10.0.1.0/24", attrs, peer_as=AS) == "as_path_first"  # same attrs
    assert check(pol, "10.0.1.0/24", attrs, peer=P2) is None  # other rules
    assert check(pol, "10.0.2.0/24", attrs) == "as_path_first"
    equal_but_new = PathAttrs(P1, as_path=(AS,))
    assert check(pol, "10.0.2.0/24", equal_but_new) is None


def test_the_first_guard_that_refuses_names_the_reason() -> None:
    pol = policy(max_length_ipv4=24, prefix_list=(PrefixRule("10.0.0.0/8", "permit", le=32),),
                 protected=("10.9.0.0/16",),
                 peers={P1: PeerPolicySettings(outside=("10.8.0.1",))})
    bad_path = PathAttrs(P1, as_path=(1,))
    assert check(pol, "127.0.0.0/8", bad_path) == "martian"
    assert check(pol, "10.1.2.0/25", bad_path) == "max_length"
    assert check(pol, "11.0.0.0/8", bad_path) == "prefix_list"
    assert check(pol, "10.9.0.0/24", bad_path) == "protected"
    assert check(pol, "10.8.0.0/16", bad_path) == "loop"
    assert check(pol, "10.7.0.0/16", bad_path) == "as_path_first"
    assert check(pol, "10.7.0.0/16") is None


def test_partition_splits_an_update() -> None:
    pol = policy()
    ok, refused = pol.partition(P1, AS, V4, ["10.0.0.0/16", "0.0.0.0/0", "127.0.0.0/8",
                                             "10.1.0.0/16"], OK)
    assert ok == ["10.0.0.0/16", "10.1.0.0/16"]
    assert refused == [("0.0.0.0/0", "default_route"), ("127.0.0.0/8", "martian")]


def test_martian_table_is_documented_and_leaves_vpn_space_alone() -> None:
    for m in MARTIANS:
        net = ipaddress.ip_network(m.prefix)
        assert str(net) == m.prefix and m.reason and m.covered
    pol = policy()
    for vpn in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7",
                "fd12:3456::/32"):
        assert check(pol, vpn) is None


def test_parse_prefix() -> None:
    assert parse_prefix("10.0.0.0/8") == (4, 10 << 24, 8)
    assert parse_prefix("::/0") == (6, 0, 0)
    assert parse_prefix("2001:db8::/32") == (6, 0x20010DB8 << 96, 32)
    for bad in ("10.0.0.1/8", "10.0.0.0/33", "10.0.0.0", "::/129", "10.0.0.0/08"):
        with pytest.raises(ValueError):
            parse_prefix(bad)


# ---------------------------------------------------------------- property tests


def _net(version: int, addr: int, length: int) -> str:
    width = 32 if version == 4 else 128
    mask = ((1 << length) - 1) << (width - length)
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return str(cls((addr & mask, length)))


INTERESTING = [m.prefix for m in MARTIANS] + [
    "10.0.0.0/8", "10.66.0.0/16", "172.16.0.0/12", "192.168.1.0/24", "52.1.2.3/32",
    "fd00::/8", "fd00:99::/48", "2600:1f18::1/128", "0.0.0.0/0", "::/0",
]


@st.composite
def prefixes(draw: st.DrawFn) -> str:
    """Canonical prefixes, half of them near the ranges the tests configure."""
    if draw(st.booleans()):
        base = ipaddress.ip_network(draw(st.sampled_from(INTERESTING)))
        width = base.max_prefixlen
        length = draw(st.integers(0, width))
        noise = draw(st.integers(0, (1 << (width - base.prefixlen)) - 1)) \
            if draw(st.booleans()) else 0
        return _net(base.version, int(base.network_address) | noise, length)
    version = draw(st.sampled_from([4, 6]))
    width = 32 if version == 4 else 128
    return _net(version, draw(st.integers(0, (1 << width) - 1)), draw(st.integers(0, width)))


@st.composite
def rules(draw: st.DrawFn) -> PrefixRule:
    net = ipaddress.ip_network(draw(prefixes()))
    w, n = net.max_prefixlen, net.prefixlen
    ge = draw(st.none() | st.integers(n, w))
    le = draw(st.none() | st.integers(ge if ge is not None else n, w))
    return PrefixRule(str(net), draw(st.sampled_from(["permit", "deny"])), ge, le)


def reference_prefix_list(rule_list: Sequence[PrefixRule], prefix: str) -> bool:
    """True if permitted: the FRR semantics, written the slow, obvious way."""
    p = ipaddress.ip_network(prefix)
    mine = [r for r in rule_list if ipaddress.ip_network(r.prefix).version == p.version]
    for r in mine:
        net = ipaddress.ip_network(r.prefix)
        if r.ge is None and r.le is None:
            lo = hi = net.prefixlen
        else:
            lo = r.ge if r.ge is not None else net.prefixlen
            hi = r.le if r.le is not None else net.max_prefixlen
        if p.subnet_of(net) and lo <= p.prefixlen <= hi:  # type: ignore[arg-type]
            return r.action == "permit"
    return not mine


def _inside(p: str, net: str) -> bool:
    a, b = ipaddress.ip_network(p), ipaddress.ip_network(net)
    return a.version == b.version and a.subnet_of(b)  # type: ignore[arg-type]


def _overlap(p: str, net: str) -> bool:
    a, b = ipaddress.ip_network(p), ipaddress.ip_network(net)
    return a.version == b.version and a.overlaps(b)


def reference_martian(prefix: str, martians: Sequence[Martian], allowed: Sequence[str]) -> bool:
    p = ipaddress.ip_network(prefix)
    covered = [ipaddress.ip_network(m.prefix) for m in martians if m.covered]
    same = [n for n in covered if n.version == p.version]
    inside_union = _covered_fully(p, same)  # every address of p is in one of them
    exact = any(m.prefix == prefix for m in martians if not m.covered)
    return (inside_union or exact) and not any(_inside(prefix, a) for a in allowed)


def _covered_fully(p: ipaddress.IPv4Network | ipaddress.IPv6Network,
                   nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Walk p's address range across the ranges (sorted), looking for a gap."""
    at, end = int(p.network_address), int(p.broadcast_address)
    for n in sorted(nets, key=lambda n: int(n.network_address)):
        lo, hi = int(n.network_address), int(n.broadcast_address)
        if lo <= at <= hi:
            at = hi + 1
        if at > end:
            return True
    return False


ATTRS = st.builds(
    PathAttrs,
    next_hop=st.just(P1),
    as_path=st.lists(st.integers(0, 2**32 - 1), max_size=70).map(tuple),
    as_set=st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(st.text(max_size=50), prefixes(), st.from_regex(
        r"\A[0-9a-fA-F:.]{0,40}/[0-9]{0,4}\Z")),
    family=st.sampled_from([V4, V6, "ipv4 flow"]),
    attrs=ATTRS,
    peer=st.sampled_from([P1, P2, "x"]),
    peer_as=st.none() | st.integers(0, 2**32 - 1),
)
def test_check_never_raises_and_answers_from_the_fixed_set(
        text: str, family: str, attrs: PathAttrs, peer: str, peer_as: int | None) -> None:
    pol = POL_ALL
    assert pol.check(peer, peer_as, family, text, attrs) in (None, *REASONS)  # type: ignore[arg-type]


POL_ALL = policy(
    prefix_list=(PrefixRule("10.0.0.0/8", "permit", le=24), PrefixRule("fd00::/8", "deny"),
                 PrefixRule("::/0", "permit", le=64)),
    protected=("192.168.1.0/24",), allow_martians=("2001:db8::/32",),
    peers={P1: PeerPolicySettings(outside=("52.1.2.3",), max_length_ipv6=64)},
)


@settings(max_examples=300, deadline=None)
@given(rule_list=st.lists(rules(), max_size=8), probes=st.lists(prefixes(), min_size=1,
                                                                max_size=20))
def test_prefix_list_matches_the_reference(rule_list: list[PrefixRule], probes: list[str]) \
        -> None:
    pol = policy(martians=(), allow_default=True, first_as_must_be_peer=False,
                 prefix_list=tuple(rule_list))
    for p in probes:
        want = None if reference_prefix_list(rule_list, p) else "prefix_list"
        assert check(pol, p) == want, (p, rule_list)


@settings(max_examples=300, deadline=None)
@given(
    martians=st.lists(st.builds(Martian, prefixes(), st.just(""), st.booleans()), max_size=6),
    allowed=st.lists(prefixes(), max_size=3),
    probes=st.lists(prefixes(), min_size=1, max_size=20),
    use_default=st.booleans(),
)
def test_martians_match_the_reference(martians: list[Martian], allowed: list[str],
                                      probes: list[str], use_default: bool) -> None:
    table = MARTIANS if use_default else tuple(martians)
    pol = policy(martians=table, allow_martians=tuple(allowed), allow_default=True,
                 first_as_must_be_peer=False)
    for p in probes:
        assert (check(pol, p) == "martian") == reference_martian(p, table, allowed), p


@settings(max_examples=300, deadline=None)
@given(
    protected=st.lists(prefixes(), max_size=5),
    outside=st.lists(prefixes().map(lambda p: p.split("/")[0]), max_size=3),
    probes=st.lists(prefixes(), min_size=1, max_size=20),
)
def test_protected_and_loop_match_the_reference(protected: list[str], outside: list[str],
                                                probes: list[str]) -> None:
    pol = policy(martians=(), allow_default=True, first_as_must_be_peer=False,
                 protected=tuple(protected),
                 peers={P1: PeerPolicySettings(outside=tuple(outside))})
    for p in probes:
        if any(_overlap(p, n) for n in protected):
            want: str | None = "protected"
        elif any(covers(p, a) for a in outside):
            want = "loop"
        else:
            want = None
        assert check(pol, p) == want, p


def reference_check(s: PolicySettings, outside: Sequence[str], peer_as: int | None,
                    family: str, prefix: str, attrs: PathAttrs) -> str | None:
    """The whole policy for P1 (settings `s`, P1's own under `s.peers`), guard after guard in
    the documented order, written the slow, obvious way with ipaddress."""
    own = s.peers.get(P1, PeerPolicySettings())
    try:
        p = ipaddress.ip_network(prefix)
    except ValueError:
        return "invalid"
    if p.version != (6 if family == V6 else 4) or family not in (V4, V6):
        return "invalid"
    if reference_martian(prefix, s.martians, (*s.allow_martians, *own.allow_martians)):
        return "martian"
    allow_default = s.allow_default if own.allow_default is None else own.allow_default
    if p.prefixlen == 0 and not allow_default:
        return "default_route"
    max_length = (s.max_length_ipv4, own.max_length_ipv4) if p.version == 4 else \
        (s.max_length_ipv6, own.max_length_ipv6)
    if p.prefixlen > (max_length[0] if max_length[1] is None else max_length[1]):
        return "max_length"
    if not (reference_prefix_list(s.prefix_list, prefix)
            and reference_prefix_list(own.prefix_list, prefix)):
        return "prefix_list"
    if any(_overlap(prefix, n) for n in (*s.protected, *own.protected)):
        return "protected"
    if any(covers(prefix, a) for a in outside):
        return "loop"
    first_as = s.first_as_must_be_peer if own.first_as_must_be_peer is None \
        else own.first_as_must_be_peer
    if first_as and peer_as is not None and attrs.as_path[:1] != (peer_as,):
        return "as_path_first"
    max_path = s.max_as_path_length if own.max_as_path_length is None \
        else own.max_as_path_length
    if len(attrs.as_path) + bool(attrs.as_set) > max_path:
        return "as_path_length"
    return None


def _host_bits(prefix: str) -> str:
    """The prefix with its last address in place of its first: host bits set unless a host
    route."""
    net = ipaddress.ip_network(prefix)
    return f"{net.broadcast_address}/{net.prefixlen}"


PROBES = st.lists(st.one_of(prefixes(), prefixes().map(_host_bits)), min_size=1, max_size=25)


@st.composite
def policy_settings(draw: st.DrawFn) -> PolicySettings:
    """Random settings using every guard at once, P1 with its own part."""
    def some(strategy: st.SearchStrategy[str], n: int) -> tuple[str, ...]:
        return tuple(draw(st.lists(strategy, max_size=n)))

    own = PeerPolicySettings(
        allow_default=draw(st.none() | st.booleans()),
        max_length_ipv4=draw(st.none() | st.integers(1, 32)),
        max_length_ipv6=draw(st.none() | st.integers(1, 128)),
        first_as_must_be_peer=draw(st.none() | st.booleans()),
        max_as_path_length=draw(st.none() | st.integers(1, 4)),
        prefix_list=tuple(draw(st.lists(rules(), max_size=5))),
        allow_martians=some(prefixes(), 2),
        protected=some(prefixes(), 2),
        outside=some(prefixes().map(lambda p: p.split("/")[0]), 2),
    )
    martians = MARTIANS if draw(st.booleans()) else tuple(
        draw(st.lists(st.builds(Martian, prefixes(), st.just(""), st.booleans()), max_size=5)))
    return PolicySettings(
        martians=martians,
        allow_martians=some(prefixes(), 2),
        allow_default=draw(st.booleans()),
        max_length_ipv4=draw(st.integers(1, 32)),
        max_length_ipv6=draw(st.integers(1, 128)),
        first_as_must_be_peer=draw(st.booleans()),
        max_as_path_length=draw(st.integers(1, 4)),
        prefix_list=tuple(draw(st.lists(rules(), max_size=8))),
        protected=some(prefixes(), 3),
        peers={P1: own} if draw(st.booleans()) else {},
    )


@settings(max_examples=300, deadline=None)
@given(
    s=policy_settings(),
    discovered=st.lists(prefixes().map(lambda p: p.split("/")[0]), max_size=2),
    probes=PROBES,
    peer_as=st.none() | st.sampled_from([AS, 65001]),
    as_path=st.lists(st.sampled_from([AS, 65001]), max_size=5).map(tuple),
    as_set=st.lists(st.just(7), max_size=1).map(tuple),
)
def test_check_and_partition_match_the_reference_with_every_guard_at_once(
        s: PolicySettings, discovered: list[str], probes: list[str], peer_as: int | None,
        as_path: tuple[int, ...], as_set: tuple[int, ...]) -> None:
    """The fast paths (one table lookup far from the martian, protected and loop ranges,
    the prefix lists worked out in advance, the AS path judged once per UPDATE) against the
    slow, obvious reading of the module docstring."""
    pol = Policy(s)
    pol.set_outside(P1, discovered)
    attrs = PathAttrs(P1, as_path=as_path, as_set=as_set)
    for family in (V4, V6):
        want = [reference_check(s, pol.outside(P1), peer_as, family, p, attrs) for p in probes]
        got = [pol.check(P1, peer_as, family, p, attrs) for p in probes]
        assert got == want, [(p, g, w) for p, g, w in zip(probes, got, want, strict=True)
                             if g != w]
        ok, refused = pol.partition(P1, peer_as, family, probes, attrs)
        assert ok == [p for p, r in zip(probes, want, strict=True) if r is None]
        assert refused == [(p, r) for p, r in zip(probes, want, strict=True) if r is not None]


def test_partition_judges_the_as_path_only_for_prefixes_that_get_that_far() -> None:
    pol = policy()
    bad = PathAttrs(P1, as_path=(1,))
    ok, refused = pol.partition(P1, AS, V4, ["127.0.0.0/8", "10.0.0.0/8", "x"], bad)
    assert ok == []
    assert refused == [("127.0.0.0/8", "martian"), ("10.0.0.0/8", "as_path_first"),
                       ("x", "invalid")]
    assert pol.partition(P1, AS, "ipv4 flow", ["10.0.0.0/8"], OK) == (  # type: ignore[arg-type]
        [], [("10.0.0.0/8", "invalid")])


@pytest.mark.parametrize(("prefix", "reason"), [
    # each starts in an address block no guarded range touches and reaches one further on
    ("10.0.0.0/11", "protected"), ("10.0.0.0/12", None), ("10.16.0.0/12", "protected"),
    ("52.0.0.0/11", "loop"), ("52.0.0.0/12", None), ("fd00::/15", "protected"),
    ("fd00::/16", None), ("2600::/15", "loop"), ("2600::/16", None),
])
def test_a_short_prefix_reaching_a_guarded_range_from_a_clean_block(
        prefix: str, reason: str | None) -> None:
    pol = policy(protected=("10.16.0.0/24", "fd01::/64"),
                 peers={P1: PeerPolicySettings(outside=("52.31.255.255", "2601::1"))})
    assert check(pol, prefix) == reason


def test_long_prefix_lists_are_decided_like_short_ones() -> None:
    """A list of 2,000 entries, nested and overlapping, compiled into address pieces."""
    entries = [PrefixRule(f"10.{i >> 8}.{i & 255}.0/24", "deny" if i % 3 == 0 else "permit",
                          le=28) for i in range(2000)]
    entries.insert(1000, PrefixRule("10.0.0.0/8", "permit", ge=16, le=24))
    pol = policy(prefix_list=tuple(entries))
    for prefix, want in (("10.0.0.0/24", "prefix_list"), ("10.0.1.0/25", None),
                         ("10.0.1.0/29", "prefix_list"), ("10.7.207.0/24", None),
                         ("10.7.208.0/24", None), ("10.7.208.0/26", "prefix_list"),
                         ("10.3.231.0/24", "prefix_list"),  # a deny before the /8
                         ("10.3.234.0/24", None),  # a deny after the /8: the /8 decides
                         ("10.3.234.0/25", "prefix_list"), ("10.200.0.0/16", None),
                         ("11.0.0.0/24", "prefix_list"), ("fd00::/8", None)):
        assert check(pol, prefix) == want, prefix
        assert check(pol, prefix) == (None if reference_prefix_list(entries, prefix)
                                      else "prefix_list"), prefix


# ---------------------------------------------------------------- max-prefix


def run(mp: MaxPrefix, steps: str, start: int = 0) -> tuple[int, list[str]]:
    """'+' a new prefix, '=' a re-announcement, '-' a withdrawal (no admit). Returns the
    final count and a log of 'a'/'r' (accepted/refused) plus events."""
    count, log = start, []
    for s in steps:
        if s == "-":
            count -= 1
            continue
        d = mp.admit(count, s == "+")
        if d.accept and s == "+":
            count += 1
        log.append(("a" if d.accept else "r") + (f":{d.event}" if d.event else ""))
    return count, log


def test_max_prefix_warns_once_then_stop_refuses_new_prefixes() -> None:
    mp = MaxPrefix(MaxPrefixSettings(limit=10, warn_at=0.8, action="stop"))
    count, log = run(mp, "+" * 12)
    assert count == 10
    assert log == ["a"] * 7 + ["a:warn", "a", "a", "r:limit", "r"]
    # re-announcements of held prefixes and withdrawals still apply
    assert mp.admit(10, False) == Admission(True)
    count, log = run(mp, "-+" + "+", count)  # room for one after a withdrawal
    assert (count, log) == (10, ["a", "r"])  # no repeat of the limit event


def test_max_prefix_rearms_below_the_warn_threshold_only() -> None:
    mp = MaxPrefix(MaxPrefixSettings(limit=10, warn_at=0.7, action="stop"))
    assert mp.warn_count == 7  # 0.7 * 10 is 7.000000000000001 in floats
    count, log = run(mp, "+" * 11)
    assert log.count("a:warn") == 1 and log[-1] == "r:limit"
    count, log = run(mp, "--" + "++" + "+", count)  # down to 8: still above 7, not re-armed
    assert log == ["a", "a", "r"]
    count, log = run(mp, "----" + "+" * 5, count)  # down to 6, below 7: re-armed
    assert log == ["a:warn", "a", "a", "a", "r:limit"]


def test_max_prefix_warn_action_accepts_beyond_the_limit() -> None:
    mp = MaxPrefix(MaxPrefixSettings(limit=4, warn_at=1.0, action="warn"))
    count, log = run(mp, "+" * 6)
    assert count == 6 and log == ["a", "a", "a", "a:warn", "a:limit", "a"]


def test_max_prefix_teardown_then_restart_delay_and_reset() -> None:
    mp = MaxPrefix(MaxPrefixSettings(limit=3, action="teardown", restart_delay=30))
    assert mp.warn_count == 3  # 0.8 * 3 = 2.4, rounded up
    assert [mp.admit(n, True, now=100.0) for n in range(4)] == [
        Admission(True), Admission(True), Admission(True, "warn"), Admission(False, "teardown")]
    assert mp.admit(3, True, now=100.5) == Admission(False)  # no second teardown
    assert mp.admit(3, False, now=100.5) == Admission(True)
    assert mp.suppressed(129.9) and not mp.suppressed(130.0)
    mp.reset()  # the session went down
    assert mp.admit(0, True, now=120.0) == Admission(False)  # still inside the delay
    assert mp.admit(0, True, now=130.0) == Admission(True)
    assert [mp.admit(n, True, now=131.0).event for n in range(1, 4)] == [
        None, "warn", "teardown"]


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 20),
    warn_at=st.floats(0.05, 1.0),
    action=st.sampled_from(["warn", "stop"]),
    steps=st.lists(st.sampled_from("++=-"), max_size=80),
)
def test_max_prefix_events_fire_once_per_crossing(limit: int, warn_at: float, action: str,
                                                  steps: list[str]) -> None:
    mp = MaxPrefix(MaxPrefixSettings(limit=limit, warn_at=warn_at, action=action))  # type: ignore[arg-type]
    count = 0
    armed_warn = armed_limit = True
    for s in steps:
        if s == "-":
            count = max(0, count - 1)
            continue
        if count < mp.warn_count:
            armed_warn = armed_limit = True
        d = mp.admit(count, s == "+")
        if s == "=":
            assert d == Admission(True)
            continue
        if count + 1 > limit:
            assert d.accept == (action == "warn")
            assert d.event == ("limit" if armed_limit else None)
            armed_limit = armed_warn = False
        elif count + 1 >= mp.warn_count and armed_warn:
            assert d == Admission(True, "warn")
            armed_warn = False
        else:
            assert d == Admission(True)
        if d.accept:
            count += 1
        if action == "stop":
            assert count <= limit
