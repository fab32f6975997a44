"""Every route-safety guard of issue 6 on the real kernel.

BIRD (the VGW) announces, through the real ExaBGP, prefixes each guard must refuse next to
prefixes it must let through; vtibgp runs as ExaBGP's process in the gateway namespace. Each
test checks, for its own guard, (a) the gateway namespace's routing table (`ip -j route`, our
protocol id 186 and anything else at the same prefixes) and (b) the counter vtibgp serves on
its Prometheus endpoint (and the refusal's log line, logged once).

Three labs, each built once for the module and only looked at by the tests (a test that changes
something changes only its own prefixes and reads counters as differences):

* the policy lab: tunnels 1 and 2, one BIRD config announcing every guard's prefixes on both
  sessions, a vtibgp config with every import-policy guard set, a static route placed at one
  prefix before vtibgp starts (ownership) and a reconcile pass every second;
* the limits lab: three sessions (the third shares vti01, as libreswan's vti-shared=yes), one
  max-prefix action per peer: warn, stop, teardown;
* for the one test that needs a lab without periodic reconciliation, a lab of its own.

BIRD always puts its own AS (64512) first on an eBGP session; to send a path that starts with
another AS, tunnel 2's session runs as a route-server client (`rs client`), which BIRD does not
prepend to, and :class:`PathBird` writes every path on it out in full.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from vtibgp.lab import parts as harness

T1, T2, T3 = (harness.ALL_TUNNELS[n] for n in (1, 2, 3))
P1, P2, P3 = T1.aws_v4, T2.aws_v4, T3.aws_v4
AWS = harness.AWS_ASN
PROTO = 186
METRICS = "127.0.0.1:10179"  # the default metrics.listen, inside the gateway namespace

# (prefix, metric) -> (device, protocol, gateway or None), every route of the main table at
# the prefixes a test looks at
Fib = dict[tuple[str, int], tuple[str, str, str | None]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ----------------------------------------------------------------------------- the prefixes

CONTROL = ["10.20.0.0/24", "fd10:20::/48"]  # nothing refuses these

# (BIRD itself will not originate multicast, loopback or link-local IPv6 prefixes)
MARTIANS = ["0.0.0.0/8", "169.254.99.0/24", "192.0.2.0/24", "198.18.0.0/15", "240.0.0.0/4",
            "2001:db8:1::/48"]
ALLOWED_MARTIAN = "198.18.5.0/24"  # policy.allow_martians

DEFAULTS = ["0.0.0.0/0", "::/0"]

# global list: 10.30.0.0/16 ge 24 le 26 deny, then everything permitted
PL_DENIED = ["10.30.1.0/24", "10.30.2.0/26"]  # the two ends of ge..le
PL_PASSED = ["10.30.0.0/20", "10.30.3.0/27"]  # shorter than ge, longer than le
PEER2_DENIED = "10.31.0.0/24"  # peer 2's own list denies it; the global one permits it

# max_length ipv4 28, ipv6 64
TOO_LONG = ["10.40.0.0/29", "fd10:40::/80"]
LONGEST = ["10.40.0.16/28", "fd10:40:1::/64"]

# tunnel 2 sends these with a path that does not start with the peer's AS (64512)
FIRST_AS = ["10.50.0.0/24", "10.50.1.0/24"]
FIRST_AS_PATHS: dict[str, tuple[int, ...]] = {"10.50.0.0/24": (65099,), "10.50.1.0/24": ()}

# max_as_path_length 4
PATH_TOO_LONG = "10.51.0.0/24"
PATH_LONGEST = "10.51.1.0/24"
LONG_PATHS = {PATH_TOO_LONG: (AWS, 65001, 65001, 65001, 65001),
              PATH_LONGEST: (AWS, 65001, 65001, 65001)}

PROTECTED_NET = "10.90.0.0/16"  # policy.protected
PROTECTED = [PROTECTED_NET, "10.90.5.0/24", "10.0.0.0/8"]  # equal, inside, covering
BESIDE_PROTECTED = "10.91.0.0/16"

# each tunnel's outside (public IPsec) endpoint, peers[].outside
OUTSIDE1, OUTSIDE2 = "100.64.1.10", "100.65.2.10"
LOOP1 = ["100.64.0.0/16", "100.64.1.0/24"]  # cover OUTSIDE1: never into tunnel 1
LOOP2 = ["100.65.0.0/16"]  # covers OUTSIDE2: never into tunnel 2
BESIDE_OUTSIDE = "100.64.2.0/24"  # inside LOOP1[0] but not covering the endpoint

CONFLICT = "10.60.0.0/24"  # a static route holds metric 100 before vtibgp starts
RECONCILED = "10.70.0.0/24"

# accepted from both peers: best via vti01 at 100, backup via vti02 at 101
BOTH_TUNNELS = [*CONTROL, ALLOWED_MARTIAN, *PL_PASSED, *LONGEST, PATH_LONGEST,
                BESIDE_PROTECTED, BESIDE_OUTSIDE, RECONCILED]
ANNOUNCED = [*BOTH_TUNNELS, *MARTIANS, *DEFAULTS, *PL_DENIED, PEER2_DENIED, *TOO_LONG,
             *FIRST_AS, PATH_TOO_LONG, *PROTECTED, *LOOP1, *LOOP2, CONFLICT]


def norm(prefix: str) -> str:
    return str(ipaddress.ip_network(prefix))


# ----------------------------------------------------------------------------- BIRD paths


class PathBird(harness.BirdPeer):
    """A :class:`harness.BirdPeer` that sends a chosen AS path per (tunnel, prefix).

    On a normal eBGP session BIRD puts 64512 in front of whatever the route carries, so a
    chosen path there must start with 64512 and the rest is set on the static route. Sessions
    in ``rs_client`` run as route-server clients: BIRD prepends nothing, and the whole path
    (by default just 64512, what the other session sends) is set on the static route. A path
    may then start with any AS, or be empty. (It rewrites what BirdPeer's config writers
    produce; the harness has no per-prefix AS paths of its own.)"""

    def __init__(
        self,
        topology: harness.Topology,
        workdir: Path,
        *,
        paths: Mapping[tuple[int, str], Sequence[int]],
        rs_client: Iterable[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(topology, workdir, **kwargs)
        self.rs_client = frozenset(rs_client)
        self.paths = {(n, norm(p)): tuple(path) for (n, p), path in paths.items()}
        for (n, p), path in self.paths.items():
            if n not in self.rs_client and path[:1] != (AWS,):
                raise ValueError(f"tunnel {n} is a normal eBGP session: BIRD puts {AWS} "
                                 f"first, so {p}'s path {path} cannot be sent there")

    def _main_conf(self) -> str:
        text = super()._main_conf()
        for n in sorted(self.rs_client):
            head = f"protocol bgp tun{n} {{\n"
            if head not in text:
                raise harness.HarnessError(f"no {head!r} in BIRD's config:\n{text}")
            text = text.replace(head, f"{head}  rs client;\n", 1)
        return text

    def _routes_conf(self) -> str:
        blocks: list[str] = []
        for n in self.tunnels:
            for fam in (4, 6):
                lines = []
                for prefix, (med, comms) in sorted(self.announced[n].items()):
                    if med is not None or comms:
                        raise ValueError("PathBird sends no MED or communities")
                    if ipaddress.ip_network(prefix).version != fam:
                        continue
                    path = self.paths.get((n, prefix), (AWS,))
                    sent = path if n in self.rs_client else path[1:]
                    # prepend() puts an AS in front: the last one prepended is the first
                    stmts = "".join(f" bgp_path.prepend({asn});" for asn in reversed(sent))
                    lines.append(f"  route {prefix} blackhole {{{stmts} }};")
                blocks.append(f"protocol static s{n}v{fam} {{ ipv{fam} {{ table t{n}v{fam}; }};\n"
                              + "\n".join(lines) + "\n}")
        return "\n".join(blocks) + "\n"


# ----------------------------------------------------------------------------- a lab


@dataclass
class Lab:
    topo: harness.Topology
    bird: harness.BirdPeer
    gw: harness.ExaBGPGateway
    control: Path | None = None  # vtibgp's control socket

    def fib(self, prefixes: Iterable[str]) -> Fib:
        """Every route of the main table (any protocol) at these prefixes."""
        want = {norm(p) for p in prefixes}
        out: Fib = {}
        for family in (4, 6):
            for r in self.topo.routes("gw", family=family):
                dst = r["dst"]
                if dst == "default":
                    dst = "0.0.0.0/0" if family == 4 else "::/0"
                dst = str(ipaddress.ip_network(dst, strict=False))
                if dst not in want:
                    continue
                assert "nexthops" not in r, r  # no multipath in these labs
                proto = str(r.get("protocol", "boot"))  # iproute2 leaves out the default
                out[(dst, int(r.get("metric", 0)))] = (r["dev"], proto, r.get("gateway"))
        return out

    def ours(self, prefixes: Iterable[str]) -> Fib:
        return {k: v for k, v in self.fib(prefixes).items() if v[1] in ("bgp", str(PROTO))}

    def samples(self) -> Samples:
        return scrape(self.topo)

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value; 0 for a labelled counter that has no series yet."""
        return sample(self.samples(), name, **labels)

    def polled(self, name: str, **labels: str) -> float | None:
        """:meth:`metric`, or None while the endpoint is not serving (yet)."""
        try:
            return self.metric(name, **labels)
        except MetricsDown:
            return None

    def wait_metric(self, name: str, want: float, timeout: float = 10.0, **labels: str) -> None:
        """Wait for a counter to reach ``want``, then insist it is exactly that."""
        last = [0.0]

        def reached() -> bool:
            last[0] = self.polled(name, **labels) or 0.0
            return last[0] >= want

        with contextlib.suppress(TimeoutError):
            self.gw.wait_for(reached, timeout, what=f"{name}{labels} >= {want}")
        assert last[0] == want, f"{name}{labels} = {last[0]}, expected {want}"

    def wait_fib(self, want: Fib, timeout: float = 20.0, ours_only: bool = True) -> None:
        prefixes = {p for p, _ in want}
        last: list[Fib] = [{}]
        read: Callable[[Iterable[str]], Fib] = self.ours if ours_only else self.fib

        def check() -> bool:
            last[0] = read(prefixes)
            return last[0] == want

        try:
            self.gw.wait_for(check, timeout, what="kernel routes")
        except TimeoutError as e:
            raise AssertionError(f"kernel routes {last[0]} != expected {want}") from e

    def settle(self, received: Mapping[str, int], timeout: float = 30.0) -> None:
        """Wait until vtibgp has read ``received[peer]`` prefixes from each peer, then until
        it has applied what they meant: its loop handles one batch at a time, so once it has
        answered a control request, the batch that read the last of them is in the kernel.
        (Nothing here assumes what a guard does with them: that is for the tests.)"""
        def read_all() -> bool:
            return all((self.polled("vtibgp_prefixes_received_total", peer=p) or 0) >= n
                       for p, n in received.items())

        self.gw.wait_for(read_all, timeout, what=f"prefixes read from each peer: {received}")
        assert self.control is not None, "settle() needs vtibgp's control socket"
        res = subprocess.run([sys.executable, "-m", "vtibgp", "status", "--socket",
                              str(self.control)], capture_output=True, text=True, timeout=30,
                             check=False)
        assert res.returncode == 0, res.stderr

    def refusals_logged(self, peer: str, prefix: str, reason: str) -> int:
        return self.gw.log_text().count(f"peer {peer}: refused {norm(prefix)} ({reason})")

    def reconcile_pass(self, stray: str) -> None:
        """Put a route of ours vtibgp does not hold at ``stray`` and wait until a reconcile
        pass has removed it: afterwards at least one whole pass has run."""
        self.topo.ip("gw", "route", "add", stray, "dev", T1.gw_dev, "metric", "100",
                     "proto", str(PROTO))
        self.gw.wait_for(lambda: not self.ours([stray]), 15, what=f"reconcile to remove {stray}")

    def dump_logs(self) -> None:
        print(f"--- ExaBGP + vtibgp log ({self.gw.log_path}) ---\n"
              f"{harness.tail(self.gw.log_text(), 80)}")
        print(f"--- BIRD log ({self.bird.workdir}) ---\n{harness.tail(self.bird.log_text(), 40)}")


class MetricsDown(AssertionError):
    """vtibgp's metrics endpoint did not answer."""


_SCRAPE = ("import sys, urllib.request\n"
           "with urllib.request.urlopen(sys.argv[1], timeout=10) as r:\n"
           "    sys.stdout.write(r.read().decode())\n")


def scrape(topo: harness.Topology) -> Samples:
    """Everything vtibgp's metrics endpoint serves, scraped from inside the gateway
    namespace: (name, labels) -> value. MetricsDown if it does not answer."""
    res = topo.run("gw", sys.executable, "-c", _SCRAPE, f"http://{METRICS}/metrics",
                   check=False)
    if res.returncode != 0:
        raise MetricsDown(res.stderr.strip().splitlines()[-1:])
    out: Samples = {}
    for family in text_string_to_metric_families(res.stdout):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled counter that has no series yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def both(prefixes: Iterable[str]) -> Fib:
    """Best via vti01 at 100, backup via vti02 at 101 (equal paths: the lower peer wins)."""
    out: Fib = {}
    for p in prefixes:
        out[(norm(p), 100)] = (T1.gw_dev, "bgp", None)
        out[(norm(p), 101)] = (T2.gw_dev, "bgp", None)
    return out


def only(dev: str, prefixes: Iterable[str]) -> Fib:
    return {(norm(p), 100): (dev, "bgp", None) for p in prefixes}


def plugin(config: Path) -> list[str]:
    return [sys.executable, "-m", "vtibgp", "run", "--config", str(config)]


@contextlib.contextmanager
def running_lab(
    workdir: Path,
    config: Mapping[str, Any],
    make_bird: Callable[[harness.Topology], harness.BirdPeer],
    announce: Callable[[harness.BirdPeer], None],
    tunnels: Sequence[int] = (1, 2),
    before_start: Callable[[harness.Topology], None] | None = None,
    plugin_delay: float = 0.0,
) -> Iterator[Lab]:
    """Topology, BIRD with everything announced, then ExaBGP running vtibgp; all removed
    afterwards, also when building fails half-way. With ``plugin_delay`` vtibgp starts that
    many seconds after ExaBGP has spawned it: the sessions are up by then and their first
    updates wait in its stdin, as when the plugin is slower to start than BGP."""
    with contextlib.ExitStack() as stack:
        topo = stack.enter_context(harness.Topology(tunnels=tunnels))
        bird = make_bird(topo)
        stack.callback(bird.stop)
        bird.start()
        announce(bird)
        if before_start is not None:
            before_start(topo)
        cfg = workdir / "vtibgp.yaml"
        cfg.write_text(yaml.safe_dump({**config,
                                       "control": {"socket": str(workdir / "ctl.sock")}}))
        command = plugin(cfg)
        if plugin_delay:
            command = ["/bin/sh", "-c", f'sleep {plugin_delay}; exec "$@"', "sh", *command]
        gw = harness.ExaBGPGateway(topo, command, workdir / "exabgp", tunnels=tunnels)
        stack.callback(gw.stop)
        gw.start()
        yield Lab(topo, bird, gw, workdir / "ctl.sock")


def peer(t: harness.Tunnel, **extra: Any) -> dict[str, Any]:
    return {"address": t.aws_v4, "interface": t.gw_dev, "families": ["ipv4", "ipv6"], **extra}


# ----------------------------------------------------------------------------- policy lab

POLICY_CONFIG: dict[str, Any] = {
    "log_level": "info",
    "peers": [
        peer(T1, outside=OUTSIDE1),
        peer(T2, outside=OUTSIDE2, policy={"prefix_list": [
            {"prefix": "10.31.0.0/16", "le": 32, "action": "deny"},
            {"prefix": "0.0.0.0/0", "le": 32, "action": "permit"}]}),
    ],
    "policy": {
        "allow_martians": [ALLOWED_MARTIAN],
        "max_length": {"ipv4": 28, "ipv6": 64},
        "max_as_path_length": 4,
        "protected": [PROTECTED_NET],
        "prefix_list": [
            {"prefix": "10.30.0.0/16", "ge": 24, "le": 26, "action": "deny"},
            {"prefix": "0.0.0.0/0", "le": 32, "action": "permit"}],
    },
    "kernel": {"reconcile_interval": 1},
    # No start-up resync: ExaBGP's sessions are up before it answers vtibgp's `show adj-rib
    # in`, so the answer replays every route the stream has just delivered, and vtibgp counts
    # each of them again (received, refused, and a conflicting add is retried and counted
    # again): the exact counts below would all be doubled.
    "startup": {"grace_time": 30, "resync": False},
}


@pytest.fixture(scope="module")
def policy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("policy-lab")
    paths: dict[tuple[int, str], Sequence[int]] = {}
    for p, path in FIRST_AS_PATHS.items():
        paths[(2, p)] = path
    for p, path in LONG_PATHS.items():
        paths[(1, p)] = paths[(2, p)] = path

    def make_bird(topo: harness.Topology) -> harness.BirdPeer:
        return PathBird(topo, workdir / "bird", paths=paths, rs_client=(2,))

    def foreign_route(topo: harness.Topology) -> None:
        topo.ip("gw", "route", "add", CONFLICT, "dev", T2.gw_dev, "metric", "100",
                "proto", "static")

    with running_lab(workdir, POLICY_CONFIG, make_bird,
                     lambda bird: bird.announce(ANNOUNCED), before_start=foreign_route) as lab:
        lab.settle({P1: len(ANNOUNCED), P2: len(ANNOUNCED)})
        yield lab


@pytest.fixture(autouse=True)
def _logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    rep = getattr(request.node, "_vtb_rep_call", None)  # kept by conftest's report hook
    if rep is not None and rep.failed:
        for name in ("policy_lab", "limits_lab"):
            if name in request.fixturenames:
                lab = request.getfixturevalue(name)
                assert isinstance(lab, Lab)
                lab.dump_logs()


def rejected(lab: Lab, peer: str, reason: str) -> float:
    return lab.metric("vtibgp_prefixes_rejected_total", peer=peer, reason=reason)


def refused(lab: Lab, peers: Sequence[str], prefixes: Sequence[str], reason: str) -> None:
    """Each of `peers` had every one of `prefixes` refused for `reason`: counted, logged
    once each, and none of them is in the gateway's kernel."""
    for p in peers:
        lab.wait_metric("vtibgp_prefixes_rejected_total", len(prefixes), peer=p, reason=reason)
        for prefix in prefixes:
            assert lab.refusals_logged(p, prefix, reason) == 1, prefix
    assert lab.fib(prefixes) == {}


def test_pipeline_installs_what_no_guard_refuses(policy_lab: Lab) -> None:
    """The control: without it every "not installed" below could be a broken lab."""
    assert policy_lab.ours(CONTROL) == both(CONTROL)
    assert all(policy_lab.bird.established(n) for n in (1, 2))
    assert policy_lab.metric("vtibgp_prefixes_received_total", peer=P1) == len(ANNOUNCED)
    assert policy_lab.metric("vtibgp_prefixes_received_total", peer=P2) == len(ANNOUNCED)


def test_martians_are_refused_and_an_allowed_one_installed(policy_lab: Lab) -> None:
    refused(policy_lab, (P1, P2), MARTIANS, "martian")
    # policy.allow_martians: inside 198.18.0.0/15, explicitly allowed
    assert policy_lab.ours([ALLOWED_MARTIAN]) == both([ALLOWED_MARTIAN])


def test_default_routes_are_refused(policy_lab: Lab) -> None:
    refused(policy_lab, (P1, P2), DEFAULTS, "default_route")  # no default route at all


def test_prefix_list_ge_le_denies_inside_the_range_only(policy_lab: Lab) -> None:
    refused(policy_lab, (P1,), PL_DENIED, "prefix_list")
    # /20 is shorter than ge 24, /27 longer than le 26: the deny entry does not match them
    assert policy_lab.ours(PL_PASSED) == both(PL_PASSED)


def test_peer_prefix_list_narrows_the_global_one(policy_lab: Lab) -> None:
    # peer 2 also meets the global denials, plus its own
    policy_lab.wait_metric("vtibgp_prefixes_rejected_total", len(PL_DENIED) + 1, peer=P2,
                           reason="prefix_list")
    assert policy_lab.refusals_logged(P2, PEER2_DENIED, "prefix_list") == 1
    assert policy_lab.refusals_logged(P1, PEER2_DENIED, "prefix_list") == 0
    assert policy_lab.fib([PEER2_DENIED]) == only(T1.gw_dev, [PEER2_DENIED])


def test_prefixes_longer_than_max_length_are_refused(policy_lab: Lab) -> None:
    refused(policy_lab, (P1, P2), TOO_LONG, "max_length")
    assert policy_lab.ours(LONGEST) == both(LONGEST)  # exactly the maximum is fine


def test_path_not_starting_with_the_peers_as_is_refused(policy_lab: Lab) -> None:
    policy_lab.wait_metric("vtibgp_prefixes_rejected_total", len(FIRST_AS), peer=P2,
                           reason="as_path_first")
    assert rejected(policy_lab, P1, "as_path_first") == 0
    for prefix in FIRST_AS:  # 65099 first, and an empty path
        assert policy_lab.refusals_logged(P2, prefix, "as_path_first") == 1, prefix
    # peer 1 sent the same prefixes with 64512 first: only its tunnel carries them
    assert policy_lab.fib(FIRST_AS) == only(T1.gw_dev, FIRST_AS)


def test_path_longer_than_max_as_path_length_is_refused(policy_lab: Lab) -> None:
    refused(policy_lab, (P1, P2), [PATH_TOO_LONG], "as_path_length")
    assert policy_lab.ours([PATH_LONGEST]) == both([PATH_LONGEST])  # 4 ASes: the maximum


def test_protected_network_is_never_routed_into_a_tunnel(policy_lab: Lab) -> None:
    refused(policy_lab, (P1, P2), PROTECTED, "protected")  # equal, inside, covering
    assert policy_lab.ours([BESIDE_PROTECTED]) == both([BESIDE_PROTECTED])


def test_loop_guard_keeps_a_prefix_covering_the_outside_endpoint_out_of_its_tunnel(
    policy_lab: Lab,
) -> None:
    policy_lab.wait_metric("vtibgp_prefixes_rejected_total", len(LOOP1), peer=P1,
                           reason="loop")
    policy_lab.wait_metric("vtibgp_prefixes_rejected_total", len(LOOP2), peer=P2,
                           reason="loop")
    for p, prefixes in ((P1, LOOP1), (P2, LOOP2)):
        for prefix in prefixes:
            assert policy_lab.refusals_logged(p, prefix, "loop") == 1, prefix
    # each is carried by the other tunnel, whose ESP packets it does not capture
    assert policy_lab.fib(LOOP1) == only(T2.gw_dev, LOOP1)
    assert policy_lab.fib(LOOP2) == only(T1.gw_dev, LOOP2)
    assert policy_lab.ours([BESIDE_OUTSIDE]) == both([BESIDE_OUTSIDE])
    # and the kernel agrees: the endpoint is reached through the tunnel that may carry it
    got = json.loads(policy_lab.topo.ip("gw", "-j", "route", "get", OUTSIDE1))
    assert [r["dev"] for r in got] == [T2.gw_dev], got


def test_route_of_another_owner_is_not_overwritten_and_the_conflict_is_counted(
    policy_lab: Lab,
) -> None:
    static = (T2.gw_dev, "static", None)
    ops = "vtibgp_kernel_route_operations_total"
    policy_lab.wait_metric(ops, 1, op="add", result="conflict")
    assert policy_lab.metric("vtibgp_kernel_errors_total", errno="EEXIST") == 1
    # the best path (vti01) was refused at metric 100; the backup went in at 101
    assert policy_lab.fib([CONFLICT]) == {(CONFLICT, 100): static,
                                          (CONFLICT, 101): (T2.gw_dev, "bgp", None)}
    assert policy_lab.gw.log_text().count(
        f"a route of another owner holds {CONFLICT} metric 100") == 1
    # a reconcile pass neither retries the add nor touches the static route
    policy_lab.reconcile_pass("10.74.0.0/24")
    assert policy_lab.metric(ops, op="add", result="conflict") == 1
    assert policy_lab.fib([CONFLICT])[(CONFLICT, 100)] == static


def test_reconcile_repairs_our_routes_and_never_deletes_a_foreign_one(policy_lab: Lab) -> None:
    lab = policy_lab
    repairs = {k: lab.metric("vtibgp_kernel_repairs_total", kind=k) for k in ("missing", "stray")}
    foreign = {  # (prefix, metric, table, protocol): what reconcile must leave alone
        (RECONCILED, 102, "main", "static"),  # a prefix of ours, a metric we do not use
        ("10.72.0.0/24", 100, "main", "static"),  # nothing to do with us
        ("10.71.0.0/24", 100, "100", "bgp"),  # our protocol id (186, "bgp"), another table
        ("10.73.0.0/24", 100, "main", "kernel"),  # a daemon-less route (proto kernel)
    }
    for prefix, metric, table, proto in foreign:
        lab.topo.ip("gw", "route", "add", prefix, "dev", T2.gw_dev, "metric", str(metric),
                    "table", table, "proto", proto)
    # one of ours goes missing and one stray of ours appears
    lab.topo.ip("gw", "route", "del", RECONCILED, "metric", "101", "proto", str(PROTO))
    lab.topo.ip("gw", "route", "add", "10.71.0.0/24", "dev", T1.gw_dev, "metric", "100",
                "proto", str(PROTO))
    try:
        lab.wait_fib({**both([RECONCILED]), (RECONCILED, 102): (T2.gw_dev, "static", None)},
                     timeout=15, ours_only=False)
        lab.gw.wait_for(lambda: not lab.ours(["10.71.0.0/24"]), 15, what="stray removed")
        lab.wait_metric("vtibgp_kernel_repairs_total", repairs["missing"] + 1, kind="missing")
        lab.wait_metric("vtibgp_kernel_repairs_total", repairs["stray"] + 1, kind="stray")
        lab.reconcile_pass("10.75.0.0/24")  # and once more with everything in place
        for prefix, metric, table, proto in foreign:
            got = lab.topo.routes("gw", table=table, family=4)
            assert any(r["dst"] == prefix and int(r.get("metric", 0)) == metric
                       and str(r.get("protocol", "boot")) == proto for r in got), \
                (prefix, metric, table, proto, got)
    finally:
        for prefix, metric, table, proto in foreign:
            lab.topo.ip("gw", "route", "del", prefix, "metric", str(metric), "table", table,
                        "proto", proto, check=False)


# ----------------------------------------------------------------------------- limits lab

LIMIT = 4  # per peer; warn_at 0.5: the warning comes with the second prefix
WARNED = [f"10.11.{i}.0/24" for i in range(6)]  # peer 1, action warn
STOPPED = [f"10.12.{i}.0/24" for i in range(6)]  # peer 2, action stop
TORN_DOWN = [f"10.13.{i}.0/24" for i in range(6)]  # peer 3 (shares vti01), action teardown


def limited(t: harness.Tunnel, action: str, **extra: Any) -> dict[str, Any]:
    return {"address": t.aws_v4, "interface": t.gw_dev,
            "max_prefix": {"limit": LIMIT, "warn_at": 0.5, "action": action, **extra}}


RESTART_DELAY = 60  # longer than the module runs

LIMITS_CONFIG: dict[str, Any] = {
    "log_level": "info",
    "peers": [limited(T1, "warn"), limited(T2, "stop"),
              limited(T3, "teardown", restart_delay=RESTART_DELAY)],
    "startup": {"grace_time": 30, "resync": False},  # as in the policy lab
}


@pytest.fixture(scope="module")
def limits_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("limits-lab")

    def make_bird(topo: harness.Topology) -> harness.BirdPeer:
        return harness.BirdPeer(topo, workdir / "bird", tunnels=(1, 2, 3))

    def announce(bird: harness.BirdPeer) -> None:
        bird.announce(WARNED, tunnels=(1,))
        bird.announce(STOPPED, tunnels=(2,))
        bird.announce(TORN_DOWN, tunnels=(3,))

    with running_lab(workdir, LIMITS_CONFIG, make_bird, announce, tunnels=(1, 2, 3),
                     plugin_delay=1.0) as lab:
        lab.settle({P1: len(WARNED), P2: len(STOPPED)})
        yield lab


def via(t: harness.Tunnel, prefixes: Iterable[str]) -> Fib:
    """Metric 100 through the tunnel's device; vti01 is shared in this lab, so its peers'
    routes go via their BGP next hop (onlink)."""
    gateway = t.aws_v4 if t.gw_dev == T1.gw_dev else None
    return {(norm(p), 100): (t.gw_dev, "bgp", gateway) for p in prefixes}


def events(lab: Lab, peer: str) -> dict[str, float]:
    return {e: lab.metric("vtibgp_peer_max_prefix_events_total", peer=peer, event=e)
            for e in ("warn", "limit", "teardown")}


def test_max_prefix_warn_installs_beyond_the_limit_and_counts(limits_lab: Lab) -> None:
    limits_lab.wait_metric("vtibgp_peer_max_prefix_events_total", 1, peer=P1, event="limit")
    assert events(limits_lab, P1) == {"warn": 1, "limit": 1, "teardown": 0}
    assert rejected(limits_lab, P1, "max_prefix") == 0
    assert limits_lab.ours(WARNED) == via(T1, WARNED)  # all six, over the limit of four
    assert limits_lab.metric("vtibgp_peer_max_prefixes", peer=P1) == LIMIT
    log = limits_lab.gw.log_text()
    assert log.count(f"peer {P1}: prefix limit {LIMIT} reached; warning only") == 1, log
    assert limits_lab.bird.established(1)


def test_max_prefix_stop_refuses_new_prefixes_beyond_the_limit(limits_lab: Lab) -> None:
    limits_lab.wait_metric("vtibgp_prefixes_rejected_total", len(STOPPED) - LIMIT, peer=P2,
                           reason="max_prefix")
    assert events(limits_lab, P2) == {"warn": 1, "limit": 1, "teardown": 0}
    held = limits_lab.ours(STOPPED)
    assert len(held) == LIMIT and all(v == (T2.gw_dev, "bgp", None) for v in held.values())
    assert limits_lab.fib(STOPPED) == held  # and nothing else holds the other two
    assert limits_lab.gw.log_text().count(
        f"peer {P2}: prefix limit {LIMIT} reached; refusing new prefixes") == 1
    assert limits_lab.bird.established(2)


CEASE_1 = "tun3: Received: Maximum number of prefixes reached"
TEARDOWN_LOG = (f"peer {P3}: prefix limit {LIMIT} exceeded: resetting the session (Cease 1, "
                "maximum number of prefixes reached)")


def test_max_prefix_teardown_resets_the_session_with_cease_1(limits_lab: Lab) -> None:
    limits_lab.gw.wait_for(lambda: limits_lab.metric(
        "vtibgp_peer_max_prefix_events_total", peer=P3, event="teardown") >= 1, 10,
        what="a teardown event")
    harness.wait_until(lambda: CEASE_1 in limits_lab.bird.log_text(), 10,
                       what="BIRD to receive Cease 1 on session 3")
    limits_lab.gw.wait_for_log(TEARDOWN_LOG)
    # the session went down, and its paths with it: none of its prefixes is in the kernel
    limits_lab.gw.wait_for(lambda: limits_lab.fib(TORN_DOWN) == {}, 10,
                           what="peer 3's routes removed")
    # ExaBGP reconnects at once; inside restart_delay vtibgp does not reset it again (that
    # would be a storm of Ceases): the session stays up and what it sends is refused
    limits_lab.gw.wait_for_log(f"peer {P3}: session up inside the max-prefix restart delay")
    harness.wait_until(lambda: limits_lab.bird.established(3), 30,
                       what="session 3 back up")
    limits_lab.gw.wait_for(lambda: limits_lab.metric(
        "vtibgp_prefixes_rejected_total", peer=P3, reason="max_prefix") >= len(TORN_DOWN), 10,
        what="peer 3's prefixes refused inside the restart delay")
    assert limits_lab.bird.log_text().count(CEASE_1) == 1
    assert limits_lab.fib(TORN_DOWN) == {}
    assert limits_lab.metric("vtibgp_peer_max_prefix_events_total", peer=P3, event="limit") == 0
    # the other sessions never noticed
    assert limits_lab.bird.established(1) and limits_lab.bird.established(2)
    assert limits_lab.ours(WARNED) == via(T1, WARNED)


def test_max_prefix_restart_delay_holds_from_the_first_teardown(limits_lab: Lab) -> None:
    """The session that returns inside restart_delay is not reset again and nothing it sends
    is used: one teardown, however often ExaBGP reconnects."""
    limits_lab.gw.wait_for_log(f"peer {P3}: session up inside the max-prefix restart delay")
    log = limits_lab.gw.log_text()
    assert log.count(TEARDOWN_LOG) == 1, harness.tail(log)
    assert limits_lab.metric("vtibgp_peer_max_prefix_events_total", peer=P3,
                             event="teardown") == 1


# ----------------------------------------------------------------------------- a key taken over

TAKEN = "10.80.0.0/24"


def test_replace_never_overwrites_a_foreign_route_that_took_our_key(
    topology: harness.Topology, bird_peer: harness.BirdPeer,
    exabgp_gateway: Callable[..., harness.ExaBGPGateway], tmp_path: Path,
) -> None:
    bird_peer.announce([TAKEN])
    cfg = tmp_path / "vtibgp.yaml"
    cfg.write_text(yaml.safe_dump({
        "peers": [peer(T1), peer(T2)],
        "kernel": {"reconcile_interval": 0},  # nothing notices the swap below by itself
        "startup": {"resync": False},
        "control": {"socket": None},
    }))
    lab = Lab(topology, bird_peer, exabgp_gateway(plugin(cfg)))
    lab.wait_fib(both([TAKEN]))
    # someone else (an operator, another routing daemon) takes over our best route's key
    topology.ip("gw", "route", "del", TAKEN, "metric", "100", "proto", str(PROTO))
    topology.ip("gw", "route", "add", TAKEN, "dev", T1.gw_dev, "metric", "100",
                "proto", "static")
    ops_before = sum(v for (name, _), v in lab.samples().items()
                     if name == "vtibgp_kernel_route_operations_total")

    # tunnel 1 withdraws it: the path through tunnel 2 becomes the best, at metric 100
    bird_peer.withdraw([TAKEN], tunnels=(1,))

    def acted() -> bool:
        samples = lab.samples()
        ops = sum(v for (name, _), v in samples.items()
                  if name == "vtibgp_kernel_route_operations_total")
        return ops > ops_before

    lab.gw.wait_for(acted, 10, what="vtibgp's kernel operations for the withdraw")
    fib = lab.fib([TAKEN])
    assert fib.get((TAKEN, 100)) == (T1.gw_dev, "static", None), fib
