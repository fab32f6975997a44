"""The link monitor's recovery from a real overflow of its netlink socket (ENOBUFS).

The kernel queues every link event on the monitor's socket; when the queue is full it drops
the event and the next read fails with ENOBUFS. Here the monitor's reader is held still (its
sink blocked, or the whole plugin stopped with SIGSTOP), a burst of link events fills its
queue until /proc/net/netlink counts drops on that very socket, and only then does tunnel 1
lose its carrier: that event is dropped too. Once the reader runs again the monitor must
reopen, resynchronise from a fresh snapshot, report vti01 down, and count the recovery in
``vtibgp_kernel_errors_total{errno="ENOBUFS"}``; end to end, no route may stay in vti01.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_guards_kernel import MetricsDown, sample, scrape
from test_plugin import V4, GatewayFactory, expect, plugin, vtibgp, wait_fib, write_config

from vtibgp.core.model import DeviceState
from vtibgp.kernel.links import LinkMonitor
from vtibgp.kernel.writer import in_netns
from vtibgp.lab import parts as harness
from vtibgp.shell import metrics

RTMGRP_LINK = 0x1
NETLINK_ROUTE = 0
ENOBUFS_SERIES = ("vtibgp_kernel_errors_total", {"errno": "ENOBUFS"})
HOLD = 0.5  # tunnel.hold_down
P1 = harness.TUNNELS[1].aws_v4


# ----------------------------------------------------------------------------- netlink sockets


@dataclass(frozen=True)
class NetlinkSocket:
    """One row of /proc/net/netlink."""

    inode: int
    protocol: int
    groups: int
    rmem: int
    drops: int


def netlink_table(text: str) -> list[NetlinkSocket]:
    # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        out.append(NetlinkSocket(inode=int(f[9]), protocol=int(f[1]), groups=int(f[3], 16),
                                 rmem=int(f[4]), drops=int(f[8])))
    return out


def socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                out.add(int(target[len("socket:["):-1]))
    return out


def link_socket(table: str, pid: int) -> NetlinkSocket:
    """The rtnetlink socket of process ``pid`` subscribed to link events (the monitor's)."""
    mine = socket_inodes(pid)
    found = [s for s in netlink_table(table) if s.inode in mine
             and s.protocol == NETLINK_ROUTE and s.groups & RTMGRP_LINK]
    assert len(found) == 1, (found, table)
    return found[0]


def overflow(topo: harness.Topology, read: Callable[[], NetlinkSocket]) -> NetlinkSocket:
    """Generate link events in the gateway namespace (a spare veth pair toggled up and down)
    until the socket ``read`` describes has dropped some; returns its state then."""
    topo.ip("gw", "link", "add", "burst0", "type", "veth", "peer", "name", "burst1")
    topo.ip("gw", "link", "set", "burst1", "up")
    toggles = "link set burst0 up\nlink set burst0 down\n" * 500
    for _round in range(40):
        sock = read()
        if sock.drops:
            return sock
        subprocess.run(["ip", "-n", topo.gw, "-batch", "-"], input=toggles, text=True,
                       capture_output=True, timeout=60, check=True)
    raise AssertionError(f"no overflow after 40 bursts of link events: {read()}")


def lose_carrier_unseen(topo: harness.Topology, read: Callable[[], NetlinkSocket],
                        before: NetlinkSocket) -> None:
    """Tunnel 1 loses its carrier while the socket is full: wait until the device shows it
    and the socket has dropped more since ``before`` (its event among them)."""
    topo.carrier_off(1)

    def no_carrier() -> bool:
        info = topo.link("gw", harness.TUNNELS[1].gw_dev)
        return info is not None and "NO-CARRIER" in info.get("flags", [])

    harness.wait_until(no_carrier, 5, what="vti01 without carrier")
    harness.wait_until(lambda: read().drops > before.drops, 5,
                       what="the carrier event to be dropped too")


# ----------------------------------------------------------------------------- in process


class Sink:
    """Collects what the monitor reports. ``hold(dev)``: the first report about ``dev``
    blocks the monitor's reader until ``release()``."""

    def __init__(self) -> None:
        self.states: list[DeviceState] = []
        self.cond = threading.Condition()
        self.hold_on: str | None = None
        self.holding = threading.Event()
        self.released = threading.Event()

    def __call__(self, state: DeviceState) -> None:
        with self.cond:
            self.states.append(state)
            self.cond.notify_all()
        if state.device == self.hold_on and not self.released.is_set():
            self.holding.set()
            self.released.wait(60)

    def release(self) -> None:
        self.released.set()

    def wait(self, want: Callable[[DeviceState], bool], timeout: float = 10.0) -> DeviceState:
        """The first report ``want`` accepts, waiting for it up to ``timeout`` seconds."""

        def first() -> DeviceState | None:
            return next((s for s in self.states if want(s)), None)

        with self.cond:
            found = self.cond.wait_for(first, timeout)
            if found is None:
                raise AssertionError(f"not reported within {timeout}s; reported: {self.states}")
            return found


@pytest.fixture
def monitor(topology: harness.Topology) -> Iterator[tuple[LinkMonitor, Sink]]:
    """A LinkMonitor started inside the topology's gateway namespace."""
    sink = Sink()
    # counted as the daemon counts what the monitor reports (run() in shell/daemon.py)
    mon = LinkMonitor(sink, on_error=lambda name: metrics.KERNEL_ERRORS.labels(name).inc())
    try:
        in_netns(topology.gw, lambda: mon.start({"vti01", "vti02"}))
        yield mon, sink
    finally:
        sink.release()
        mon.close()


def enobufs_counted() -> float:
    value = metrics.REGISTRY.get_sample_value(ENOBUFS_SERIES[0], ENOBUFS_SERIES[1])
    return value or 0.0


def test_overflow_resync_reports_the_change_the_overflow_lost(
    topology: harness.Topology, monitor: tuple[LinkMonitor, Sink],
) -> None:
    _mon, sink = monitor
    counted = enobufs_counted()

    def read() -> NetlinkSocket:
        return link_socket(topology.run("gw", "cat", "/proc/net/netlink").stdout, os.getpid())

    # hold the reader still: the report about a new device blocks it
    sink.hold_on = "gate0"
    topology.ip("gw", "link", "add", "gate0", "type", "veth", "peer", "name", "gate1")
    assert sink.holding.wait(10), sink.states
    full = overflow(topology, read)
    lose_carrier_unseen(topology, read, full)
    assert not any(s.device == "vti01" for s in sink.states)

    sink.release()
    lost = sink.wait(lambda s: s.device == "vti01")
    assert (lost.usable, lost.reason) == (False, "carrier lost")
    assert enobufs_counted() == counted + 1
    # the new socket follows changes again, from the state the snapshot gave
    topology.carrier_on(1)
    back = sink.wait(lambda s: s.device == "vti01" and s.usable)
    assert back.reason == "up"
    assert [s.usable for s in sink.states if s.device == "vti01"] == [False, True]
    assert enobufs_counted() == counted + 1


def test_close_stops_the_monitor_for_good(
    topology: harness.Topology, monitor: tuple[LinkMonitor, Sink],
) -> None:
    """close() pulls the socket from under the reader: that error must end the thread, not
    be taken for an overflow (reopen, resynchronise, go on reporting)."""
    mon, sink = monitor
    counted = enobufs_counted()
    topology.carrier_off(2)
    sink.wait(lambda s: s.device == "vti02" and not s.usable)
    mon.close()
    mon._thread.join(5)  # private, but the thread is exactly what must be gone
    assert not mon._thread.is_alive()
    seen = len(sink.states)
    topology.carrier_on(2)
    topology.wait_link_ready(2)
    topology.set_link("gw", "vti01", False)
    harness.wait_until(lambda: "UP" not in (topology.link("gw", "vti01") or {}).get("flags", []),
                       5, what="vti01 down")
    assert sink.states[seen:] == []
    assert enobufs_counted() == counted


# ----------------------------------------------------------------------------- end to end


def test_tunnel_down_lost_in_an_overflow_still_moves_the_routes(
    topology: harness.Topology, bird_peer: harness.BirdPeer, exabgp_gateway: GatewayFactory,
    tmp_path: Path,
) -> None:
    bird_peer.set_prepend(2, 2)
    bird_peer.announce(V4)
    cfg = write_config(tmp_path / "v.yaml", metrics={"listen": "127.0.0.1:10179"},
                       tunnel={"hold_down": HOLD})
    gw = exabgp_gateway(plugin(cfg))
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"))
    [relay] = gw.plugin_pids()
    # the daemon, with the netlink sockets, is the relay's child (vtibgp/shell/supervisor.py)
    [pid] = [int(x) for x in Path(f"/proc/{relay}/task/{relay}/children").read_text().split()]

    def read() -> NetlinkSocket:
        return link_socket(Path(f"/proc/{pid}/net/netlink").read_text(), pid)

    def enobufs() -> float | None:
        try:
            return sample(scrape(topology), ENOBUFS_SERIES[0], **ENOBUFS_SERIES[1])
        except MetricsDown:
            return None

    assert enobufs() == 0
    os.kill(pid, signal.SIGSTOP)  # vtibgp, link monitor included, reads nothing now
    try:
        full = overflow(topology, read)
        lose_carrier_unseen(topology, read, full)
    finally:
        os.kill(pid, signal.SIGCONT)

    # The kernel drops the routes through vti01 itself (their nexthop objects go with the
    # carrier); the best path moving to vti02 at metric 100 is vtibgp's doing, and only
    # happens if it learnt that vti01 is down. Without that it would go on holding vti01 as
    # usable, and its next reconcile would put the routes back into the dead tunnel.
    wait_fib(gw, topology, expect(V4, "vti02"), timeout=10)
    assert enobufs() == 1
    gw.wait_for_log("link monitor: ENOBUFS (events were lost); reopening and resynchronising")
    res = vtibgp("status", "--json", "--socket", str(tmp_path / "ctl.sock"))
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    vti01 = next(d for d in status["devices"] if d["device"] == "vti01")
    assert (vti01["usable"], vti01["down"], vti01["reason"]) == (False, ["link"],
                                                              "link: carrier lost")
    # it was the link signal: ExaBGP has not seen the session drop (hold timer 30 s)
    assert {p["peer"]: p["state"] for p in status["peers"]}[P1] == "up"
    # and the monitor goes on: carrier back, routes back after the hold-down
    topology.carrier_on(1)
    wait_fib(gw, topology, expect(V4, "vti01", "vti02"), timeout=10)
    assert enobufs() == 1
