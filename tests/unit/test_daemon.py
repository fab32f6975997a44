"""The shell's loop without root: real captured ExaBGP streams through a pipe into the Daemon,
with a kernel stand-in that enforces the op contract; and `vtibgp run --dry-run` as a
subprocess on the captures."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from kernel_model import flush_device

from vtibgp.config.schema import load, parse
from vtibgp.core.engine import REPAIR_KINDS
from vtibgp.core.model import Announce, KernelRoute, NextHop, OpKind, OpResult, RouteOp
from vtibgp.exabgp.parse import LineKind, parse_line
from vtibgp.shell import metrics as m
from vtibgp.shell.daemon import Daemon, _Request

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "tests" / "data" / "captures"
PEER = "169.254.10.1"


class MemoryKernel:
    """Holds routes; refuses what the real kernel would (ADD over a route, delete of none)."""

    def __init__(self, routes: Sequence[KernelRoute] = (), nexthop_objects: bool = False) -> None:
        self.routes = {r.key: r for r in routes}
        self.foreign: set[tuple[str, int]] = set()
        self.ops: list[RouteOp] = []
        self.closed = False
        # with nexthop objects, a device going down takes its routes along (as Linux does)
        self.nexthop_objects = nexthop_objects
        self.flushes: list[str] = []

    def apply(self, ops: Sequence[RouteOp]) -> OpResult:
        res = OpResult()
        for op in ops:
            self.ops.append(op)
            key = op.route.key
            if op.kind is OpKind.ADD and (key in self.routes or key in self.foreign):
                res.failed.append((op, 17))
                continue
            if op.kind is OpKind.DELETE:
                self.routes.pop(key, None)
            else:
                self.routes[key] = op.route
            res.applied += 1
        return res

    def dump(self) -> list[KernelRoute]:
        return list(self.routes.values())

    def forget(self, name: str) -> None:
        pass

    def device_down(self, name: str) -> None:
        """What the kernel does to routes when device `name` goes down or away."""
        if self.nexthop_objects:
            flush_device(self.routes, name)

    def flush_device(self, name: str) -> bool:
        self.flushes.append(name)
        self.device_down(name)
        return self.nexthop_objects

    def note_device_gone(self, name: str) -> bool:
        return self.nexthop_objects

    def collect_garbage(self) -> int:
        return 0

    def release_nexthops(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def config(**kw: object) -> object:
    data = {"peers": [{"address": PEER, "interface": "vti01", "families": ["ipv4", "ipv6"]}],
            "metrics": {"listen": None},
            # the captures announce documentation prefixes, martians by default
            "policy": {"allow_martians": ["2001:db8::/32"]}}
    data.update(kw)
    return parse(data, "test.yaml")


def run_daemon(lines: Sequence[bytes], kernel: MemoryKernel, *, resync: bool = False,
               answers: Sequence[bytes] = (), **kw: object) -> tuple[Daemon, str]:
    cfg = config(**kw)
    commands = io.StringIO()
    daemon = Daemon(cfg, kernel, commands)  # type: ignore[arg-type]
    r, w = os.pipe()
    with os.fdopen(r, "rb") as rd:
        daemon.start_reader(rd)
        daemon.startup(resync=resync)

        def feed() -> None:
            with os.fdopen(w, "wb") as wr:
                if answers:  # ExaBGP answers once it was asked
                    deadline = time.monotonic() + 10
                    while "show adj-rib in extensive" not in commands.getvalue():
                        assert time.monotonic() < deadline, "the resync was never asked"
                        time.sleep(0.01)
                for line in (*answers, *lines):
                    wr.write(line)

        t = threading.Thread(target=feed)
        t.start()
        assert daemon.run() == 0
        t.join()
    return daemon, commands.getvalue()


def capture(version: str) -> list[bytes]:
    path = CAPTURES / version / "receiver.jsonl"
    return path.read_bytes().splitlines(keepends=True)


def until_first_down(lines: list[bytes]) -> list[bytes]:
    out = []
    for line in lines:
        if b'"state": "down"' in line:
            break
        out.append(line)
    return out


@pytest.mark.parametrize("version", ["5.0.15", "4.2.21"])
def test_capture_installs_what_is_announced_and_not_withdrawn(version: str) -> None:
    kernel = MemoryKernel()
    daemon, _ = run_daemon(until_first_down(capture(version)), kernel, on_exit="retain")
    got = {p for p, _ in kernel.routes}
    # What the sender announced and later withdrew in the capture (conf/sender-cmds.tsv):
    assert {"10.1.0.0/16", "10.2.0.0/24", "10.3.0.0/24", "10.4.2.0/24", "2001:db8:2::/48"} <= got
    # withdrawn by the sender before its teardown (conf/sender-cmds.tsv)
    assert not got & {"10.2.1.0/24", "10.4.0.0/24", "10.4.1.0/24", "2001:db8:1::/48"}
    assert all(r.nexthops == (NextHop("vti01"),) and r.metric == 100
               for r in kernel.routes.values())
    rib = daemon.core.rib[PEER]
    assert got == set(rib)  # one best route per prefix held, nothing else


@pytest.mark.parametrize("version", ["5.0.15", "4.2.21"])
def test_full_capture_ends_clean(version: str) -> None:
    """The whole stream: sessions go down and up, reload, shutdown; at EOF (on_exit withdraw)
    nothing of ours is left. (How many ops it took depends on how the reader thread's lines
    fell into batches: a batch's ops are folded per key, so one batch may need none.)"""
    kernel = MemoryKernel()
    before = m.INPUT_LINES.labels("update")._value.get()
    run_daemon(capture(version), kernel)
    assert kernel.routes == {} and kernel.closed
    updates = sum(parse_line(ln).kind is LineKind.UPDATE for ln in capture(version))
    assert m.INPUT_LINES.labels("update")._value.get() - before == updates


def test_resync_from_adj_rib_and_sweep_of_unconfirmed() -> None:
    """A respawned plugin: our routes are in the kernel, ExaBGP answers the resync commands;
    confirmed routes stay untouched, the unconfirmed one goes, and no route is re-added."""
    keep = KernelRoute("10.1.0.0/16", 100, (NextHop("vti01"),))
    stale = KernelRoute("10.99.0.0/16", 100, (NextHop("vti01"),))
    kernel = MemoryKernel([keep, stale])
    resync = (CAPTURES / "5.0.15" / "resync.jsonl").read_bytes().splitlines(True)
    extensive = [ln for ln in resync if ln.startswith(b"neighbor ") and b"local-ip" in ln]
    answers = [
        b"Peer            AS        up/down state       |     #sent     #recvd\n",
        PEER.encode() + b"    64512     0:00:03 established           2          7\n",
        b"done\n",
        *extensive,
        b"done\n",
    ]
    daemon, commands = run_daemon([], kernel, resync=True, answers=answers, on_exit="retain")
    assert commands.splitlines() == ["show neighbor summary", "show adj-rib in extensive"]
    assert daemon.core.synced
    assert {p for p, _ in kernel.routes} == {
        "10.1.0.0/16", "10.2.0.0/24", "10.2.1.0/24", "10.2.2.0/24", "192.168.50.7/32",
        "2001:db8:1::/48", "2001:db8:2::/48",
    }
    assert not [op for op in kernel.ops if op.route.prefix == "10.1.0.0/16"]  # no churn
    assert [str(op) for op in kernel.ops if op.kind is OpKind.DELETE] == [
        "delete 10.99.0.0/16 metric 100 dev vti01"
    ]


def test_bad_lines_are_counted_and_change_nothing() -> None:
    kernel = MemoryKernel()
    junk = [b"\xff\xfe garbage\n", b"{\"exabgp\": \"5.0.0\", \"type\": \n", b"[[[[[[[[\n",
            b"error\n", b"{" * 100000 + b"\n"]
    before = m.INPUT_LINES.labels("invalid")._value.get()
    run_daemon(junk, kernel)
    assert kernel.ops == []
    assert m.INPUT_LINES.labels("invalid")._value.get() - before >= 3


def test_every_known_label_set_exists_from_the_start() -> None:
    """rate() and absent() need each series before its first increment: the repair kinds the
    core counts, the op results and the signals exist once the daemon has started."""
    run_daemon([], MemoryKernel())
    sample = m.REGISTRY.get_sample_value
    for kind in REPAIR_KINDS:
        assert sample("vtibgp_kernel_repairs_total", {"kind": kind}) is not None, kind
    for result in m.OP_RESULTS:
        assert sample("vtibgp_kernel_route_operations_total",
                      {"op": "add", "result": result}) is not None, result
    for sig in m.TUNNEL_SIGNALS:
        assert sample("vtibgp_tunnel_signal_up", {"device": "vti01", "signal": sig}) == 1, sig


def test_foreign_route_is_left_alone_and_counted() -> None:
    kernel = MemoryKernel()
    kernel.foreign.add(("10.1.0.0/16", 100))
    before = m.ROUTE_OPS.labels("add", "conflict")._value.get()
    daemon, _ = run_daemon(until_first_down(capture("5.0.15")), kernel, on_exit="retain")
    assert ("10.1.0.0/16", 100) not in kernel.routes
    assert m.ROUTE_OPS.labels("add", "conflict")._value.get() == before + 1
    assert daemon.core.stats["route_conflicts"] == 1


def test_dry_run_prints_operations_and_exits_zero(tmp_path: Path) -> None:
    cfg = tmp_path / "vtibgp.yaml"
    cfg.write_text(f"peers:\n  - address: {PEER}\n    interface: vti01\n"
                   "metrics:\n  listen: null\non_exit: retain\n"
                   "policy:\n  allow_martians: [2001:db8::/32]\n")
    stream = b"".join(until_first_down(capture("4.2.21")))
    proc = subprocess.run(
        [sys.executable, "-m", "vtibgp", "run", "--dry-run", "--config", str(cfg)],
        input=stream, capture_output=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    table: dict[str, str] = {}
    for line in proc.stdout.decode().splitlines():
        kind, prefix, rest = line.split(" ", 2)
        assert kind in ("add", "replace", "delete"), line
        if kind == "delete":
            del table[prefix]
        else:
            assert (prefix in table) == (kind == "replace"), line
            table[prefix] = rest
    # What the capture's sender announced and had not withdrawn before its teardown. IPv6 is
    # not among this peer's families here: that only sets which End-of-RIBs complete the
    # start-up sync; its routes are installed all the same.
    assert table == {p: "metric 100 dev vti01" for p in (
        "10.1.0.0/16", "10.2.0.0/24", "10.2.2.0/24", "10.3.0.0/24", "10.4.2.0/24",
        "10.4.3.0/24", "192.168.50.7/32", "2001:db8:2::/48")}


def _update(peer: str, prefix: str) -> bytes:
    return (
        '{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "x", '
        f'"peer": "{peer}" }}, "direction": "receive", "message": {{ "update": {{ "attribute": '
        '{ "origin": "igp", "as-path": {"0": {"element": "as-sequence", "value": [64512]}} }, '
        f'"announce": {{ "ipv4 unicast": {{ "{peer}": [ {{ "nlri": "{prefix}" }} ] }} }} '
        '} } } }\n'
    ).encode()


def test_sighup_reload_applies_a_good_config_and_keeps_running_on_a_bad_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vtibgp.yaml"

    def write(pref_b: object) -> None:
        path.write_text(
            "metrics: {listen: null}\ncontrol: {socket: null}\npeers:\n"
            "  - {address: 169.254.10.1, interface: vti01}\n"
            f"  - {{address: 169.254.11.1, interface: vti02, preference: {pref_b}}}\n")

    write(90)
    kernel = MemoryKernel()
    daemon = Daemon(load(path), kernel, None)
    now = time.monotonic()
    daemon._process([("line", now, _update(p, "10.7.0.0/16"))
                     for p in ("169.254.10.1", "169.254.11.1")])
    assert kernel.routes[("10.7.0.0/16", 100)].nexthops == (NextHop("vti01"),)

    write(200)
    assert daemon.reload() and m.RELOAD_OK._value.get() == 1
    assert kernel.routes[("10.7.0.0/16", 100)].nexthops == (NextHop("vti02"),)
    assert kernel.routes[("10.7.0.0/16", 101)].nexthops == (NextHop("vti01"),)

    write("'high'")
    assert not daemon.reload() and m.RELOAD_OK._value.get() == 0
    assert daemon.cfg.peers[1].preference == 200  # the running config stays
    assert kernel.routes[("10.7.0.0/16", 100)].nexthops == (NextHop("vti02"),)


def _update_many(peer: str, prefixes: list[str], path: str = "64512") -> bytes:
    nlri = ", ".join(f'{{ "nlri": "{p}" }}' for p in prefixes)
    return (
        '{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "x", '
        f'"peer": "{peer}" }}, "asn": {{ "local": 65000, "peer": 64512 }}, "direction": '
        '"receive", "message": { "update": { "attribute": { "origin": "igp", "as-path": '
        f'{{"0": {{"element": "as-sequence", "value": [{path}]}}}} }}, "announce": {{ '
        f'"ipv4 unicast": {{ "{peer}": [ {nlri} ] }} }} }} }} }} }}\n'
    ).encode()


def test_import_policy_and_max_prefix_guard_the_kernel_and_count() -> None:
    """Martians, default routes, a wrong first AS, the loop guard and the prefix limit: none
    reaches the kernel, each is counted by reason, the rest is installed."""
    cfg = parse({
        "metrics": {"listen": None}, "control": {"socket": None},
        "peers": [{"address": PEER, "interface": "vti01", "outside": "198.18.7.1",
                   "max_prefix": {"limit": 3, "action": "stop"}}],
        "policy": {"allow_martians": ["198.18.0.0/15"]},
    }, "t.yaml")
    kernel = MemoryKernel()
    daemon = Daemon(cfg, kernel, None)  # type: ignore[arg-type]
    counter = m.PREFIXES_REJECTED.labels

    def rejected(reason: str) -> float:
        return float(counter(PEER, reason)._value.get())

    before = {r: rejected(r) for r in ("martian", "default_route", "as_path_first", "loop",
                                       "max_prefix")}
    now = time.monotonic()
    daemon._process([
        ("line", now, _update_many(PEER, ["127.0.0.0/8", "0.0.0.0/0", "10.1.0.0/16",
                                          "198.18.0.0/16"])),
        ("line", now, _update_many(PEER, ["10.9.0.0/16"], path="65999, 64512")),
        ("line", now, _update_many(PEER, ["10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"])),
    ])
    assert {p for p, _ in kernel.routes} == {"10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"}
    after = {r: rejected(r) - before[r] for r in before}
    assert after == {"martian": 1, "default_route": 1, "as_path_first": 1, "loop": 1,
                     "max_prefix": 1}
    assert m.MAX_PREFIX_EVENTS.labels(PEER, "limit")._value.get() >= 1


def test_sigterm_with_stdin_still_open_exits_cleanly(tmp_path: Path) -> None:
    """ExaBGP writes its shutdown line and sends SIGTERM while our stdin is still open: the
    process must run its exit policy and end with status 0, not abort."""
    cfg = tmp_path / "vtibgp.yaml"
    cfg.write_text(f"peers:\n  - address: {PEER}\n    interface: vti01\n"
                   "metrics:\n  listen: null\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vtibgp", "run", "--dry-run", "--config", str(cfg)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(b"".join(until_first_down(capture("5.0.15"))))
    proc.stdin.flush()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)  # stdin stays open until the process is gone
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    assert proc.returncode == 0, err.decode()
    assert b"Fatal Python error" not in err
    assert b"stopping on signal 15" in err
    assert out.decode().splitlines()[-1].startswith("delete ")  # on_exit: withdraw ran


def test_loop_guard_learns_the_outside_endpoint_from_updown() -> None:
    """PLUTO_PEER in an up-client call becomes the tunnel's outside endpoint: a held prefix
    covering it is removed from that tunnel and a new announcement of it is refused."""
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": PEER, "interface": "vti01"}],
                 "tunnels": [{"connection": "aws-1", "device": "vti01"}]}, "t.yaml")
    kernel = MemoryKernel()
    daemon = Daemon(cfg, kernel, None)  # type: ignore[arg-type]
    now = time.monotonic()
    daemon._process([("line", now, _update_many(PEER, ["100.64.0.0/16", "10.1.0.0/16"]))])
    assert {p for p, _ in kernel.routes} == {"100.64.0.0/16", "10.1.0.0/16"}
    before = m.PREFIXES_REJECTED.labels(PEER, "loop")._value.get()
    req = {"cmd": "tunnel", "state": "up", "connection": "aws-1", "outside": "100.64.1.1"}
    daemon._process([("request", now, _Request(req))])
    assert {p for p, _ in kernel.routes} == {"10.1.0.0/16"}
    daemon._process([("line", now, _update_many(PEER, ["100.64.0.0/10"]))])
    assert {p for p, _ in kernel.routes} == {"10.1.0.0/16"}
    assert m.PREFIXES_REJECTED.labels(PEER, "loop")._value.get() - before == 2


PEER2 = "169.254.11.1"


def _two_tunnels(nexthop_objects: bool, ecmp: bool = False) -> tuple[Daemon, MemoryKernel]:
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "kernel": {"ecmp": ecmp},
                 "peers": [{"address": PEER, "interface": "vti01"},
                           {"address": PEER2, "interface": "vti02"}],
                 "tunnels": [{"connection": "aws-1", "device": "vti01"}],
                 "tunnel": {"hold_down": 0}}, "t.yaml")
    kernel = MemoryKernel(nexthop_objects=nexthop_objects)
    daemon = Daemon(cfg, kernel, None)  # type: ignore[arg-type]
    now = time.monotonic()
    prefixes = [f"10.{i}.0.0/16" for i in range(20)]
    daemon._process([("line", now, _update_many(PEER, prefixes)),
                     ("line", now, _update_many(PEER2, prefixes, "64512" if ecmp else
                                                "64512, 64512"))])
    return daemon, kernel


def _errors() -> float:
    return sum(s.value for metric in m.KERNEL_ERRORS.collect() for s in metric.samples
               if s.name.endswith("_total"))


@pytest.mark.parametrize("nexthop_objects", [False, True])
def test_ipsec_down_flushes_the_device_first_and_the_core_follows(
        nexthop_objects: bool) -> None:
    """An updown `down` for vti01: with nexthop objects the shell deletes them first (the
    kernel drops every route through vti01 in one step, the backups via vti02 carry on) and
    the core believes it, so its ops meet no error; without, the ops do the same work."""
    daemon, kernel = _two_tunnels(nexthop_objects)
    assert {(r.metric, r.nexthops[0].device) for r in kernel.routes.values()} == {
        (100, "vti01"), (101, "vti02")}
    errors = _errors()
    req = {"cmd": "tunnel", "state": "down", "connection": "aws-1", "verb": "down-client"}
    request = _Request(req)
    sent = len(kernel.ops)
    daemon._process([("request", time.monotonic(), request)])
    assert request.answer.get("ok"), request.answer
    assert kernel.flushes == ["vti01"]
    # with the flush the core knows the metric-100 routes are gone: it adds, never replaces
    kinds = {(op.kind, op.route.metric) for op in kernel.ops[sent:]}
    assert kinds == ({(OpKind.ADD, 100), (OpKind.DELETE, 101)} if nexthop_objects
                     else {(OpKind.REPLACE, 100), (OpKind.DELETE, 101)})
    assert {(r.metric, r.nexthops[0].device) for r in kernel.routes.values()} == {
        (100, "vti02")}
    assert len(kernel.routes) == 20
    assert _errors() == errors
    assert {r.key: r for r in daemon.core.routes()} == kernel.routes
    # and back: the best path returns through vti01, the backup through vti02
    req = {"cmd": "tunnel", "state": "up", "connection": "aws-1", "verb": "up-client"}
    daemon._process([("request", time.monotonic(), _Request(req))])
    daemon._timers()
    daemon._process([])
    assert {(r.metric, r.nexthops[0].device) for r in kernel.routes.values()} == {
        (100, "vti01"), (101, "vti02")}
    assert _errors() == errors


@pytest.mark.parametrize("nexthop_objects", [False, True])
def test_session_down_flushes_its_device_when_alone_on_it(nexthop_objects: bool) -> None:
    """The session on vti01 ends (the tunnel stays up) right after announcing one more
    prefix: with nexthop objects, the ops decided so far reach the kernel first, then the
    device's objects go (every route through vti01 at once) and the core moves the prefixes
    to vti02 from there; without, its ops do it route by route. Same end, no error."""
    daemon, kernel = _two_tunnels(nexthop_objects)
    errors = _errors()
    sent = len(kernel.ops)
    daemon._process([("line", time.monotonic(), _update_many(PEER, ["10.99.0.0/16"])),
                     ("line", time.monotonic(), _state(PEER, "down"))])
    assert kernel.flushes == ["vti01"]  # (refused without nexthop objects)
    assert kernel.ops[sent] == RouteOp(OpKind.ADD, KernelRoute("10.99.0.0/16", 100,
                                                               (NextHop("vti01"),)))
    kinds = {(op.kind, op.route.metric) for op in kernel.ops[sent + 1:]}
    assert kinds == ({(OpKind.ADD, 100), (OpKind.DELETE, 101)} if nexthop_objects
                     else {(OpKind.REPLACE, 100), (OpKind.DELETE, 101), (OpKind.DELETE, 100)})
    assert {(r.metric, r.nexthops[0].device) for r in kernel.routes.values()} == {
        (100, "vti02")}
    assert len(kernel.routes) == 20
    assert {r.key: r for r in daemon.core.routes()} == kernel.routes
    assert _errors() == errors


def test_device_down_with_nexthop_objects_trusts_the_kernel_flush() -> None:
    """Carrier loss with nexthop objects: the kernel has removed the routes through the device
    (and the multipath routes lost that nexthop) before the link event arrives; the daemon's
    view follows and its repairs meet no error."""
    from vtibgp.core.model import DeviceState
    daemon, kernel = _two_tunnels(True, ecmp=True)
    assert {r.nexthops for r in kernel.routes.values()} == {
        (NextHop("vti01"), NextHop("vti02"))}
    errors = _errors()
    kernel.device_down("vti01")  # what Linux does on carrier loss, before we hear of it
    sent = len(kernel.ops)
    daemon._process([("event", time.monotonic(),
                      DeviceState("vti01", False, "carrier lost", time.monotonic()))])
    assert {r.nexthops for r in kernel.routes.values()} == {(NextHop("vti02"),)}
    assert {r.key: r for r in daemon.core.routes()} == kernel.routes
    assert _errors() == errors
    assert kernel.ops[sent:] == []  # the kernel already left what the core wants


SUMMARY = PEER.encode() + b"    64512     0:00:03 established           2          7\n"


def _adj_rib(prefix: str, path: str = "64512") -> bytes:
    """One line of ExaBGP's `show adj-rib in extensive` answer for PEER."""
    return (f"neighbor {PEER} local-ip 169.254.10.2 local-as 65000 peer-as 64512 "
            f"router-id 1.1.1.1 family-allowed in-open ipv4 unicast {prefix} "
            f"next-hop {PEER} origin igp as-path ( {path} )\n").encode()


def test_reload_that_loosens_the_policy_brings_refused_paths_back(tmp_path: Path) -> None:
    """A prefix refused under the old policy is not held; a reload that allows it asks
    ExaBGP for its adj-rib-in again, and the re-sent path is installed."""
    path = tmp_path / "vtibgp.yaml"

    def write(deny: bool) -> None:
        rule = ("  prefix_list: [{prefix: 10.9.0.0/16, action: deny},\n"
                "                {prefix: 0.0.0.0/0, le: 32, action: permit}]\n") if deny else ""
        path.write_text("metrics: {listen: null}\ncontrol: {socket: null}\n"
                        f"policy:\n  allow_default: false\n{rule}"
                        "peers:\n  - {address: 169.254.10.1, interface: vti01}\n")

    write(True)
    kernel = MemoryKernel()
    commands = io.StringIO()
    daemon = Daemon(load(path), kernel, commands)
    now = time.monotonic()
    daemon._process([("line", now, _update_many(PEER, ["10.9.0.0/16", "10.8.0.0/16"]))])
    assert {p for p, _ in kernel.routes} == {"10.8.0.0/16"}
    assert daemon.reload()  # nothing changed: no resync
    assert commands.getvalue() == ""
    write(False)
    assert daemon.reload()
    assert commands.getvalue().splitlines() == ["show neighbor summary",
                                                "show adj-rib in extensive"]
    answers = [SUMMARY, b"done\n", _adj_rib("10.9.0.0/16"), b"done\n"]
    daemon._process([("line", now, a) for a in answers])
    assert {p for p, _ in kernel.routes} == {"10.8.0.0/16", "10.9.0.0/16"}


def _state(peer: str, state: str) -> bytes:
    return ('{ "exabgp": "5.0.0", "type": "state", "neighbor": { "address": { "local": '
            f'"169.254.10.2", "peer": "{peer}" }}, "asn": {{ "local": 65000, "peer": 64512 }}, '
            f'"state": "{state}" }} }}\n').encode()


def test_max_prefix_teardown_once_per_restart_delay_then_resync() -> None:
    """Over the limit: one reset (Cease 1). ExaBGP reconnects at once; inside the restart
    delay that session is not reset again (no storm of Ceases): its prefixes are refused.
    When the delay is over, vtibgp reads ExaBGP's adj-rib-in again."""
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": PEER, "interface": "vti01",
                            "max_prefix": {"limit": 1, "action": "teardown",
                                           "restart_delay": 60}}]}, "t.yaml")
    kernel = MemoryKernel()
    commands = io.StringIO()
    daemon = Daemon(cfg, kernel, commands)  # type: ignore[arg-type]
    now = time.monotonic()
    daemon._process([("line", now, _state(PEER, "up")),
                     ("line", now, _update_many(PEER, ["10.1.0.0/16", "10.2.0.0/16"]))])
    assert commands.getvalue().splitlines() == [f"neighbor {PEER} teardown 1"]
    daemon._process([("line", now, _state(PEER, "down")), ("line", now, _state(PEER, "up")),
                     ("line", now, _update_many(PEER, ["10.1.0.0/16", "10.2.0.0/16"]))])
    assert commands.getvalue().splitlines() == [f"neighbor {PEER} teardown 1"]
    assert kernel.routes == {}
    assert daemon.limit_resync_at is not None and daemon.limit_resync_at > time.monotonic() + 50
    daemon._timers()
    assert len(commands.getvalue().splitlines()) == 1  # not yet
    daemon.limit_resync_at = time.monotonic() - 1
    daemon._timers()
    assert commands.getvalue().splitlines()[1:] == ["show neighbor summary",
                                                    "show adj-rib in extensive"]
    assert daemon.limit_resync_at is None


def test_adj_rib_replay_is_not_counted_as_received() -> None:
    """The same path live from the peer and again in ExaBGP's adj-rib-in answer: received
    once in the metric, installed once."""
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": PEER, "interface": "vti01"}]}, "t.yaml")
    kernel = MemoryKernel()
    commands = io.StringIO()
    daemon = Daemon(cfg, kernel, commands)  # type: ignore[arg-type]
    received = m.PREFIXES_RECEIVED.labels(PEER)
    before = received._value.get()
    now = time.monotonic()
    daemon._resync()
    replay = _adj_rib("10.5.0.0/16")
    daemon._process([("line", now, _update_many(PEER, ["10.5.0.0/16"])),
                     ("line", now, SUMMARY), ("line", now, b"done\n"), ("line", now, replay),
                     ("line", now, b"done\n")])
    assert received._value.get() - before == 1
    assert list(kernel.routes) == [("10.5.0.0/16", 100)]
    assert [op.kind for op in kernel.ops] == [OpKind.ADD]
    # the replay is older than the live update read after the resync was asked: left out
    # (not counted as a line of a session that is down)
    assert daemon.session.stale_lines == 0


def test_resync_skips_what_exabgp_holds_for_a_session_that_is_down() -> None:
    """ExaBGP's adj-rib-in can still hold a peer's routes after its session went down (or
    the session went down after the summary): a resync must not bring them back."""
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": PEER, "interface": "vti01"}]}, "t.yaml")
    kernel = MemoryKernel()
    daemon = Daemon(cfg, kernel, io.StringIO())  # type: ignore[arg-type]
    now = time.monotonic()
    line = _adj_rib("10.6.0.0/16")
    for before_answer in ([], [("line", now, _state(PEER, "down"))]):
        daemon._resync()
        head = [("line", now, SUMMARY), ("line", now, b"done\n")]
        if not before_answer:  # not established in the summary
            head = [("line", now, b"done\n")]
        daemon._process([*head, *before_answer, ("line", now, line), ("line", now, b"done\n")])
        assert kernel.routes == {}


def test_start_up_resync_ignores_an_answer_meant_for_the_process_before() -> None:
    """A respawned plugin receives the tail of the adj-rib-in answer ExaBGP was writing to
    its predecessor (and that answer's `done`). Taken for its own answer it would end the
    resync at once and, at the grace timer, sweep routes its real answer would confirm: the
    tail is discarded and the resync asked only once the input has been free of answer text
    for RESYNC_QUIET (from each line's arrival); a live UPDATE read meanwhile is kept."""
    from vtibgp.exabgp.session import RESYNC_QUIET
    keep = KernelRoute("10.1.0.0/16", 100, (NextHop("vti01"),))
    kernel = MemoryKernel([keep])
    commands = io.StringIO()
    daemon = Daemon(config(), kernel, commands)  # type: ignore[arg-type]
    now = time.monotonic()
    live = _update_many(PEER, ["10.7.0.0/16"])
    for t, line in ((now, _adj_rib("10.9.0.0/16")), (now, live), (now + 0.2, b"done\n")):
        daemon.queue.put(("line", t, line))  # as the reader stamps them on arrival
    daemon.startup(resync=True)
    assert time.monotonic() >= now + 0.2 + RESYNC_QUIET  # quiet after the last of the tail
    assert daemon.session.stale_lines == 2
    assert commands.getvalue().splitlines() == ["show neighbor summary",
                                                "show adj-rib in extensive"]
    assert [item[2] for item in daemon.backlog] == [live]  # for run(), in order
    daemon.grace_deadline = time.monotonic() - 1  # the grace time is over meanwhile
    daemon._timers()
    assert list(kernel.routes) == [keep.key]  # not swept while the answer is awaited
    assert daemon.grace_deadline is not None


def test_a_long_answer_tail_is_left_to_the_loop_so_start_up_is_not_held() -> None:
    """A predecessor's answer that goes on trickling (ExaBGP's default api.chunk) does not
    hold start-up beyond START_WAIT: the routes are adopted, an updown request that came
    meanwhile is answered by the loop, and the resync is asked once the tail is over."""
    from vtibgp.exabgp.session import RESYNC_QUIET
    from vtibgp.shell.daemon import START_WAIT, _Request
    keep = KernelRoute("10.1.0.0/16", 100, (NextHop("vti01"),))
    kernel = MemoryKernel([keep])
    commands = io.StringIO()
    daemon = Daemon(config(), kernel, commands)  # type: ignore[arg-type]
    now = time.monotonic()
    request = _Request({"cmd": "status"})
    daemon.queue.put(("request", now, request))
    daemon.queue.put(("line", now + 2 * START_WAIT, _adj_rib("10.9.0.0/16")))  # (stamped late)
    daemon.startup(resync=True)
    assert time.monotonic() - now < 2 * START_WAIT
    assert commands.getvalue() == "" and daemon.session.ask_after is not None
    assert daemon.core.stale == {keep.key}  # adopted
    daemon._process([daemon.backlog.popleft()])
    assert request.done.is_set() and "peers" in request.answer
    later = time.monotonic()
    daemon._process([("line", later, _adj_rib("10.8.0.0/16")), ("line", later, b"done\n")])
    assert commands.getvalue() == "" and daemon.session.stale_lines == 3
    assert daemon.session.ask_after >= later + RESYNC_QUIET - 0.05
    daemon.session.ask_after = time.monotonic() - 1  # quiet since
    daemon._timers()
    assert commands.getvalue().splitlines() == ["show neighbor summary",
                                                "show adj-rib in extensive"]


def test_resync_paths_held_back_come_before_a_live_update() -> None:
    """Replayed lines are gathered into one Announce per run; a live UPDATE for one of those
    prefixes that arrives in the middle of the answer must win over the older replayed path,
    and a run of alike lines must reach the core as one announcement."""
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": PEER, "interface": "vti01"}]}, "t.yaml")
    kernel = MemoryKernel()
    daemon = Daemon(cfg, kernel, io.StringIO())  # type: ignore[arg-type]
    now = time.monotonic()
    daemon._resync()
    seen: list[int] = []
    handle = daemon.core.handle

    def spy(ev: object) -> list[RouteOp]:
        from vtibgp.core.model import Announce
        if isinstance(ev, Announce):
            seen.append(len(ev.prefixes))
        return handle(ev)  # type: ignore[arg-type]

    daemon.core.handle = spy  # type: ignore[method-assign]
    daemon._process([("line", now, SUMMARY), ("line", now, b"done\n"),
                     *[("line", now, _adj_rib(f"10.{i}.0.0/16", "64512 64999")) for i in range(5)],
                     ("line", now, _update_many(PEER, ["10.1.0.0/16"], "64512")),
                     ("line", now, _adj_rib("10.9.0.0/16", "64512 64999")),
                     ("line", now, b"done\n")])
    assert seen == [5, 1, 1]  # the run of five, the live update, the last replayed path
    assert daemon.core.rib[PEER]["10.1.0.0/16"].as_path == (64512,)  # the live one won
    assert len(kernel.routes) == 6


def test_reader_widens_the_stdin_pipe() -> None:
    """ExaBGP may write a megabyte ahead of the reader thread instead of 64 KiB."""
    import fcntl

    from vtibgp.shell.daemon import PIPE_SIZE
    daemon = Daemon(config(), MemoryKernel(), None)  # type: ignore[arg-type]
    r, w = os.pipe()
    with os.fdopen(r, "rb") as rd:
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) < PIPE_SIZE
        thread = daemon.start_reader(rd)
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == PIPE_SIZE
        os.close(w)
        thread.join(5)
    assert daemon.queue.get(timeout=1)[0] == "eof"


# ---------------------------------------------------------------- issue 12: resync and views

VENVS = {"5.0.15": ROOT / ".venv" / "bin" / "python", "4.2.21": ROOT / ".venv42" / "bin" / "python"}

# Runs inside a venv's interpreter: ExaBGP's own `show neighbor summary` formatter (5.0 keeps it
# on NeighborTemplate, 4.2 on the command module's Neighbor) over the answers given as JSON,
# exactly as the command writes them: the header, then one row per peer.
_SUMMARY_SCRIPT = """
import json, sys
try:
    from exabgp.bgp.neighbor import NeighborTemplate as formatter
    formatter.summary
except (ImportError, AttributeError):
    from exabgp.reactor.api.command.neighbor import Neighbor as formatter
print(formatter.summary_header)
for answer in json.loads(sys.argv[1]):
    print(formatter.summary(answer))
"""

# (peer, seconds up, ExaBGP FSM state name): long up times and every state
SESSIONS = [
    ("169.254.10.1", 86403, "ESTABLISHED"),          # 1 day, 0:00:03
    ("169.254.11.1", 12 * 86400 + 3723, "ESTABLISHED"),  # 12 days, 1:02:03
    ("169.254.12.1", 3, "ESTABLISHED"),              # 0:00:03
    ("169.254.13.1", 0, "IDLE"),
    ("169.254.14.1", 7, "ACTIVE"),
    ("169.254.15.1", 0, "CONNECT"),
    ("169.254.16.1", 0, "OPENSENT"),
    ("169.254.17.1", 1, "OPENCONFIRM"),
]
ESTABLISHED = {p for p, _, s in SESSIONS if s == "ESTABLISHED"}


def exabgp_summary(version: str, sessions: Sequence[tuple[str, int, str]]) -> list[bytes]:
    """ExaBGP's `show neighbor summary` answer lines (without `done`), made by that version's
    own formatter."""
    import json
    python = VENVS[version]
    if not python.exists():
        pytest.skip(f"no ExaBGP {version} venv at {python.parent.parent}")
    answers = [{"peer-address": p, "peer-as": 64512, "duration": up, "state": state,
                "messages": {"update": (2, 7)}} for p, up, state in sessions]
    out = subprocess.run([str(python), "-c", _SUMMARY_SCRIPT, json.dumps(answers)],
                         capture_output=True, timeout=60, check=True)
    return out.stdout.splitlines(keepends=True)


def _adj_rib_of(peer: str, prefix: str, path: str = "64512", med: int | None = None) -> bytes:
    """One line of ExaBGP's `show adj-rib in extensive` answer for `peer`."""
    return (f"neighbor {peer} local-ip 169.254.10.2 local-as 65000 peer-as 64512 "
            f"router-id 1.1.1.1 family-allowed in-open ipv4 unicast {prefix} "
            f"next-hop {peer} origin igp as-path ( {path} )"
            + (f" med {med}" if med is not None else "") + "\n").encode()


def _many_peers() -> Daemon:
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": p, "interface": f"vti{i:02d}"}
                           for i, (p, _, _) in enumerate(SESSIONS, 1)]}, "t.yaml")
    return Daemon(cfg, MemoryKernel(), io.StringIO())  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["5.0.15", "4.2.21"])
def test_resync_summary_reads_exabgps_own_rows_whatever_the_up_time(version: str) -> None:
    """ExaBGP prints the up time as Python's timedelta does ("1 day, 0:00:03", "12 days,
    1:02:03"): a session up for a day or more is established all the same, its adj-rib-in is
    taken and it counts as synced; sessions in any other state are not."""
    summary = exabgp_summary(version, SESSIONS)
    assert any(b" day, " in ln for ln in summary) and any(b" days, " in ln for ln in summary)
    daemon = _many_peers()
    daemon._resync()
    rib = [_adj_rib_of(p, f"10.{i}.0.0/16") for i, (p, _, _) in enumerate(SESSIONS, 1)]
    read_lines(daemon, *summary, b"done\n", *rib, b"done\n")
    held = {peer for peer, paths in daemon.core.rib.items() if paths}
    assert held == ESTABLISHED
    assert not ESTABLISHED & daemon.core.pending_sync  # synced by the answer
    assert daemon.core.pending_sync == {p for p, _, _ in SESSIONS} - ESTABLISHED


@pytest.mark.parametrize("version", ["5.0.15", "4.2.21"])
def test_status_after_a_respawn_shows_the_sessions_the_summary_reported(version: str) -> None:
    """A respawned plugin hears no `up` for sessions already established: `status` takes
    their state (and since when) from the resync's summary instead of showing them idle."""
    daemon = _many_peers()
    now = time.monotonic()
    daemon._resync()
    before = time.time()
    daemon._process([("line", now, ln)
                     for ln in (*exabgp_summary(version, SESSIONS), b"done\n", b"done\n")])
    after = time.time()
    peers = {p["peer"]: p for p in daemon.status()["peers"]}
    for peer, up, state in SESSIONS:
        if state == "ESTABLISHED":
            assert peers[peer]["state"] == "up"
            assert before - up - 1 <= peers[peer]["since"] <= after - up + 1
            assert m.PEER_UP.labels(peer)._value.get() == 1
        else:
            assert peers[peer]["state"] == ("connected" if state.startswith("OPEN") else "idle")
    # a live state change wins over what the summary said
    daemon._process([("line", now, _state("169.254.10.1", "down"))])
    assert {p["peer"]: p["state"] for p in daemon.status()["peers"]}["169.254.10.1"] == "down"


def _withdraw(peer: str, prefixes: list[str]) -> bytes:
    nlri = ", ".join(f'{{ "nlri": "{p}" }}' for p in prefixes)
    return ('{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "x", '
            f'"peer": "{peer}" }}, "asn": {{ "local": 65000, "peer": 64512 }}, "direction": '
            f'"receive", "message": {{ "update": {{ "withdraw": {{ "ipv4 unicast": [ {nlri} ] '
            '} } } } }\n').encode()


def _update_med(peer: str, prefix: str, med: int) -> bytes:
    return ('{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "x", '
            f'"peer": "{peer}" }}, "asn": {{ "local": 65000, "peer": 64512 }}, "direction": '
            '"receive", "message": { "update": { "attribute": { "origin": "igp", "as-path": '
            '{"0": {"element": "as-sequence", "value": [64512]}}, '
            f'"med": {med} }}, "announce": {{ "ipv4 unicast": {{ "{peer}": [ '
            f'{{ "nlri": "{prefix}" }} ] }} }} }} }} }} }}\n').encode()


def _eor(peer: str) -> bytes:
    return ('{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "x", '
            f'"peer": "{peer}" }}, "asn": {{ "local": 65000, "peer": 64512 }}, "direction": '
            '"receive", "message": { "eor": { "afi" : "ipv4", "safi" : "unicast" } } } }\n'
            ).encode()


def read_lines(daemon: Daemon, *lines: bytes) -> None:
    """Hand `lines` to the daemon's loop as one batch read from ExaBGP now."""
    daemon._process([("line", time.monotonic(), ln) for ln in lines])


def _one_peer() -> tuple[Daemon, MemoryKernel]:
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": PEER, "interface": "vti01"}]}, "t.yaml")
    kernel = MemoryKernel()
    return Daemon(cfg, kernel, io.StringIO()), kernel  # type: ignore[arg-type]


def test_resync_answer_lines_after_a_live_withdraw_or_change_do_not_undo_it() -> None:
    """ExaBGP answers from a snapshot while live UPDATEs go on: a snapshot line that arrives
    after a live withdraw of its prefix must not bring it back, nor one after a live MED
    change revert it; the other lines are taken."""
    daemon, kernel = _one_peer()
    daemon._resync()
    read_lines(
        daemon,
        SUMMARY, b"done\n",
        _adj_rib_of(PEER, "10.1.0.0/16"),
        _withdraw(PEER, ["10.2.0.0/16"]),
        _update_med(PEER, "10.3.0.0/16", 200),
        _adj_rib_of(PEER, "10.2.0.0/16"),  # the snapshot's, older than the live withdraw
        _adj_rib_of(PEER, "10.3.0.0/16", med=100),  # older than the live MED 200
        _adj_rib_of(PEER, "10.4.0.0/16"),
        b"done\n")
    assert {p for p, _ in kernel.routes} == {"10.1.0.0/16", "10.3.0.0/16", "10.4.0.0/16"}
    assert daemon.core.rib[PEER]["10.3.0.0/16"].med == 200
    assert "10.2.0.0/16" not in daemon.core.rib[PEER]


def test_a_session_that_flaps_mid_answer_drops_the_rest_of_its_old_snapshot() -> None:
    """The session goes down and up while ExaBGP is still writing its adj-rib-in: the rest of
    the old session's snapshot is not applied to the new one, and that peer is synced by its
    new session's own updates and End-of-RIB, not by the answer."""
    daemon, kernel = _one_peer()
    now = time.monotonic()
    daemon._resync()
    read_lines(
        daemon,
        SUMMARY, b"done\n",
        _adj_rib_of(PEER, "10.1.0.0/16"),
        _state(PEER, "down"), _state(PEER, "up"),
        _adj_rib_of(PEER, "10.2.0.0/16"),  # the old session's
        _update_many(PEER, ["10.5.0.0/16"]),  # the new session's
        _adj_rib_of(PEER, "10.3.0.0/16"),
        b"done\n")
    assert {p for p, _ in kernel.routes} == {"10.5.0.0/16"}
    assert PEER in daemon.core.pending_sync  # not synced by the answer
    daemon._process([("line", now, _eor(PEER))])
    assert PEER not in daemon.core.pending_sync


def test_a_session_that_came_up_before_its_summary_row_is_synced_by_the_answer() -> None:
    """A session that comes up after the resync was asked but before ExaBGP wrote its
    summary row is established in that row, and the snapshot is the new session's: the
    answer is taken and syncs it (a fresh ExaBGP whose sessions come up at once)."""
    daemon, kernel = _one_peer()
    daemon.core.pending_sync.add(PEER)
    daemon._resync()
    read_lines(
        daemon,
        _state(PEER, "up"), _update_many(PEER, ["10.5.0.0/16"]),
        SUMMARY, b"done\n", _adj_rib_of(PEER, "10.1.0.0/16"), b"done\n")
    assert {p for p, _ in kernel.routes} == {"10.1.0.0/16", "10.5.0.0/16"}
    assert PEER not in daemon.core.pending_sync


def test_two_resyncs_in_flight_keep_their_own_state() -> None:
    """A reload asks for the adj-rib-in while the start-up answer is still arriving: each
    answer keeps its own held-back paths and its own record of live changes, so a live
    withdraw is never overtaken by either answer's older lines."""
    daemon, kernel = _one_peer()
    daemon._resync()  # the first
    read_lines(
        daemon,
        SUMMARY, b"done\n",
        _withdraw(PEER, ["10.3.0.0/16"]),
        _adj_rib_of(PEER, "10.1.0.0/16"), _adj_rib_of(PEER, "10.2.0.0/16"))  # a run: held back
    daemon._resync()  # the second (a reload)
    read_lines(
        daemon,
        _withdraw(PEER, ["10.2.0.0/16"]),  # after the first answer's run above
        _adj_rib_of(PEER, "10.3.0.0/16"),  # the first snapshot's, older than its withdraw
        b"done\n",
        SUMMARY, b"done\n",
        _adj_rib_of(PEER, "10.1.0.0/16"), _adj_rib_of(PEER, "10.6.0.0/16"),
        _withdraw(PEER, ["10.6.0.0/16"]),
        b"done\n")
    assert {p for p, _ in kernel.routes} == {"10.1.0.0/16"}
    assert not daemon.session.pending


def _capture_line(version: str, needle: bytes) -> bytes:
    for name in ("receiver", "resync", "ack", "mixed-tx4.2"):
        for line in (CAPTURES / version / f"{name}.jsonl").read_bytes().splitlines(True):
            if needle in line:
                return line
    raise AssertionError(f"no {needle!r} in the {version} captures")


@pytest.mark.parametrize("version", ["5.0.15", "4.2.21"])
def test_retain_keeps_routes_only_over_exabgps_own_shutdown(version: str) -> None:
    """on_exit: retain keeps a peer's routes when ExaBGP itself stops (its exact reason, as
    captured from each version), not when the peer's own NOTIFICATION text (which 4.2 copies
    into the reason) merely says "shutting down": that is a real session loss."""
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None}, "on_exit": "retain",
                 "peers": [{"address": PEER, "interface": "vti01"}]}, "t.yaml")
    own = _capture_line(version, b'"state": "down", "reason": "stop, message')
    assert b"shutting down" in own
    # 4.2's real form of a peer's Cease, with the peer's text saying "shutting down"
    cease = _capture_line("4.2.21", b"Peer De-configured)").replace(
        b"Peer De-configured / Peer De-configured)",
        b"Peer De-configured / router shutting down for maintenance)")
    for line, kept in ((own, True), (cease, False)):
        kernel = MemoryKernel()
        daemon = Daemon(cfg, kernel, None)  # type: ignore[arg-type]
        now = time.monotonic()
        daemon._process([("line", now, _state(PEER, "up")),
                         ("line", now, _update_many(PEER, ["10.1.0.0/16"])),
                         ("line", now, line)])
        assert bool(kernel.routes) is kept, line


def _shared(gateway: str, next_hop: str | None = None) -> Daemon:
    """PEER and PEER2 on one device (vti-shared), PEER2's path longer."""
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": PEER, "interface": "vti01", "gateway": gateway},
                           {"address": PEER2, "interface": "vti01", "gateway": gateway}]},
                "t.yaml")
    daemon = Daemon(cfg, MemoryKernel(), None)  # type: ignore[arg-type]
    now = time.monotonic()
    first = _update_many(PEER, ["10.7.0.0/16"])
    if next_hop is not None:  # PEER's BGP next-hop is not its own address
        first = first.replace(f'"{PEER}": ['.encode(), f'"{next_hop}": ['.encode())
    daemon._process([("line", now, first),
                     ("line", now, _update_many(PEER2, ["10.7.0.0/16"], "64512, 64512"))])
    return daemon


@pytest.mark.parametrize("gateway", ["auto", "no"])
def test_routes_on_a_shared_device_name_each_peers_own_route(gateway: str) -> None:
    """Several peers on one device: `vtibgp routes` says which route is whose, by gateway or
    by rank, not every peer of the device at the lowest metric."""
    daemon = _shared(gateway)
    (entry,) = daemon.route_table("10.7.0.0/16")["prefixes"]
    assert [(p["peer"], p["role"], p["metric"]) for p in entry["paths"]] == [
        (PEER, "best", 100), (PEER2, "backup", 101)]


@pytest.mark.parametrize(("gateway", "next_hop"), [("auto", "169.254.10.5"), ("auto", None),
                                                   ("no", None)])
def test_status_and_peer_route_gauges_count_each_peers_own_routes(
        gateway: str, next_hop: str | None) -> None:
    """The best and backup routes per peer, in `status` and vtibgp_peer_routes, when the route
    goes via a BGP next-hop that is not the peer's address, and on a shared device."""
    daemon = _shared(gateway, next_hop)
    if next_hop is not None:
        assert daemon.core.installed["10.7.0.0/16"][100].nexthops == (
            NextHop("vti01", next_hop),)
    peers = {p["peer"]: p for p in daemon.status()["peers"]}
    assert (peers[PEER]["best"], peers[PEER]["backup"]) == (1, 0)
    assert (peers[PEER2]["best"], peers[PEER2]["backup"]) == (0, 1)
    daemon.report.route_gauges()
    assert m.PEER_ROUTES.labels(PEER, "best")._value.get() == 1
    assert m.PEER_ROUTES.labels(PEER, "backup")._value.get() == 0
    assert m.PEER_ROUTES.labels(PEER2, "best")._value.get() == 0
    assert m.PEER_ROUTES.labels(PEER2, "backup")._value.get() == 1


ADD_ = OpKind.ADD


class GatedKernel(MemoryKernel):
    """A MemoryKernel whose first apply waits (on the kernel thread) until `gate` is set:
    what the loop decides meanwhile is decided while that batch is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.first_done = False
        self.calls = 0

    def apply(self, ops: Sequence[RouteOp]) -> OpResult:
        self.calls += 1
        if self.calls == 1:
            assert self.gate.wait(10), "the loop never decided while the batch was in flight"
        try:
            return super().apply(ops)
        finally:
            self.first_done = True


def _gated(foreign: tuple[str, int] | None = None) -> tuple[Daemon, GatedKernel, list[str]]:
    """One peer, batches of 2 ops to the kernel thread; `seen`: for each Announce the core
    took, whether the first batch was still in flight (opens the gate at the third)."""
    cfg = parse({"metrics": {"listen": None}, "control": {"socket": None},
                 "peers": [{"address": PEER, "interface": "vti01"}]}, "t.yaml")
    kernel = GatedKernel()
    if foreign is not None:
        kernel.foreign.add(foreign)
    daemon = Daemon(cfg, kernel, io.StringIO())  # type: ignore[arg-type]
    daemon.apply_at = 2
    seen: list[str] = []
    handle = daemon.core.handle

    def watch(ev: object) -> object:
        if isinstance(ev, Announce):
            seen.append("in flight" if kernel.calls and not kernel.first_done else "idle")
            if len(seen) == 3:
                kernel.gate.set()
        return handle(ev)  # type: ignore[arg-type]

    daemon.core.handle = watch  # type: ignore[assignment,method-assign]
    return daemon, kernel, seen


def test_the_next_prefixes_are_decided_while_the_kernel_applies_a_batch() -> None:
    daemon, kernel, seen = _gated()
    read_lines(daemon, _update_many(PEER, ["10.1.0.0/16", "10.2.0.0/16"]),
               _update_many(PEER, ["10.3.0.0/16"]), _update_many(PEER, ["10.4.0.0/16"]))
    assert seen == ["idle", "in flight", "in flight"]
    assert sorted(p for p, _m in kernel.routes) == [
        "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"]
    assert daemon.kernel.in_flight is None and kernel.calls == 2  # settled at the batch end


def test_a_line_about_a_prefix_in_flight_waits_for_its_answer() -> None:
    """A refusal in flight reaches the core before anything about that prefix is decided:
    the conflict is known, so the re-announcement does not touch the other owner's route."""
    daemon, kernel, seen = _gated(foreign=("10.2.0.0/16", 100))
    kernel.gate.set()  # (the wait below is the loop's own)
    read_lines(daemon, _update_many(PEER, ["10.1.0.0/16", "10.2.0.0/16"]),
               _update_many(PEER, ["10.2.0.0/16"], path="64512, 64513"),
               _update_many(PEER, ["10.3.0.0/16"]))
    assert seen[1] == "idle"  # 10.2.0.0/16 again: decided after the first batch's answer
    # known before the change was decided: the changed path is tried again (an exclusive
    # ADD, refused again), as without a batch in flight
    assert daemon.core.stats["route_conflicts"] == 2
    assert [op.kind for op in kernel.ops if op.route.prefix == "10.2.0.0/16"] == [ADD_, ADD_]
    assert ("10.2.0.0/16", 100) in kernel.foreign and ("10.2.0.0/16", 100) not in kernel.routes
    assert sorted(p for p, _m in kernel.routes) == ["10.1.0.0/16", "10.3.0.0/16"]


def test_a_request_while_a_batch_is_in_flight_sees_it_applied() -> None:
    daemon, kernel, _seen = _gated()
    kernel.gate.set()
    answered_after: list[bool] = []
    answer = daemon._answer

    def watch(body: dict[str, object], d: object) -> dict[str, object]:
        answered_after.append(kernel.first_done)
        return answer(body, d)  # type: ignore[arg-type]

    daemon._answer = watch  # type: ignore[assignment,method-assign]
    req = _Request({"cmd": "routes"})
    daemon._process([("line", time.monotonic(),
                      _update_many(PEER, ["10.1.0.0/16", "10.2.0.0/16"])),
                     ("request", time.monotonic(), req)])
    assert answered_after == [True] and req.done.is_set() and "prefixes" in req.answer
    assert kernel.calls == 1 and len(kernel.routes) == 2
