"""The ICMP echo prober against a real kernel: the lab's topology (vti01/vti02 in the gateway
namespace, their veth peers tun1/tun2 at the "VGW", AWS-style inside addresses), a Prober in
the gateway namespace, failures made with the lab's nftables blackhole, device deletion and
silent targets; raw sockets (the namespace's default ping_group_range, "1 0", refuses ping
sockets) and ping sockets (a range that lets root's group in).

Every wait has a deadline; nothing asserts how fast anything is.
"""

from __future__ import annotations

import heapq
import socket
import struct
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from vtibgp.kernel.writer import in_netns
from vtibgp.lab import parts as harness
from vtibgp.shell.prober import Mode, Prober, ProbeTarget

INTERVAL = 0.05
LOSS_AFTER = 0.3
T1, T2 = harness.TUNNELS[1], harness.TUNNELS[2]
DEADLINE = 10.0
ALL_GROUPS = "0 2147483647"
MakeProber = Callable[..., Prober]


@dataclass
class Seen:
    """What the prober reported, per device (callbacks run on the prober's thread)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    replies: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list))
    sent: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def on_reply(self, device: str, rtt: float, at: float) -> None:
        with self.lock:
            self.replies[device].append((rtt, at))

    def on_sent(self, device: str, at: float) -> None:
        with self.lock:
            self.sent[device] += 1

    def on_lost(self, device: str, at: float) -> None:
        with self.lock:
            self.lost[device] += 1

    def on_error(self, device: str, message: str) -> None:
        with self.lock:
            self.errors[device].append(message)

    def count(self, device: str) -> int:
        with self.lock:
            return len(self.replies[device])

    def losses(self, device: str) -> int:
        with self.lock:
            return self.lost[device]

    def error_text(self, device: str) -> str:
        with self.lock:
            return "\n".join(self.errors[device])


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def make_prober(topology: harness.Topology, seen: Seen) -> Iterator[MakeProber]:
    """``make_prober(mode=...)``: a Prober in the gateway namespace reporting to ``seen``;
    every one made is closed afterwards."""
    made: list[Prober] = []

    def make(mode: Mode = "auto", loss_after: float = LOSS_AFTER) -> Prober:
        prober = Prober(seen.on_reply, on_sent=seen.on_sent, on_lost=seen.on_lost,
                        on_error=seen.on_error, interval=INTERVAL, loss_after=loss_after,
                        netns=topology.gw, mode=mode)
        made.append(prober)
        return prober

    try:
        yield make
    finally:
        for prober in made:
            prober.close()


def more_replies(seen: Seen, device: str, than: int, by: int = 3) -> int:
    return harness.wait_until(lambda: seen.count(device) >= than + by and seen.count(device),
                              DEADLINE, what=f"{by} more replies through {device}")


def v4(t: harness.Tunnel) -> ProbeTarget:
    return ProbeTarget(t.gw_dev, t.aws_v4)


def v6(t: harness.Tunnel) -> ProbeTarget:
    return ProbeTarget(t.gw_dev, t.aws_v6)


def ping_range(topology: harness.Topology) -> str:
    out = topology.run("gw", "sysctl", "-n", "net.ipv4.ping_group_range").stdout
    return " ".join(out.split())


# ------------------------------------------------------------------------------- the tests


def test_replies_over_ipv4_and_ipv6_with_raw_sockets(
    topology: harness.Topology, seen: Seen, make_prober: MakeProber
) -> None:
    assert ping_range(topology) == "1 0"  # a new namespace's default: no ping sockets
    assert Prober.check(socket.AF_INET, netns=topology.gw) is None  # root: raw sockets
    reason = Prober.check(socket.AF_INET6, netns=topology.gw, mode="ping")
    assert reason is not None and "ping_group_range 1 0 excludes gid 0" in reason
    prober = make_prober()
    prober.set_targets({T1.gw_dev: v4(T1), T2.gw_dev: v6(T2)})
    for dev in (T1.gw_dev, T2.gw_dev):
        more_replies(seen, dev, 0, by=5)
        assert prober.kind(dev) == "raw"
    counters = prober.counters()
    with seen.lock:
        for dev in (T1.gw_dev, T2.gw_dev):
            rtts = [rtt for rtt, _ in seen.replies[dev]]
            assert all(0 < rtt < LOSS_AFTER for rtt in rtts), rtts
            ats = [at for _, at in seen.replies[dev]]
            assert ats == sorted(ats) and ats[-1] <= time.monotonic()
            sent, replies, _lost = counters[dev]
            assert replies <= sent and replies >= 5 and seen.sent[dev] >= sent
    assert not seen.errors


def test_ping_sockets_when_the_group_range_allows_them(
    topology: harness.Topology, seen: Seen, make_prober: MakeProber
) -> None:
    refused = make_prober(mode="ping")
    refused.set_targets({T1.gw_dev: v4(T1)})
    harness.wait_until(lambda: seen.error_text(T1.gw_dev), DEADLINE, what="an error")
    assert "ping_group_range 1 0" in seen.error_text(T1.gw_dev)
    assert seen.count(T1.gw_dev) == 0
    refused.close()

    topology.sysctl("gw", "net.ipv4.ping_group_range", ALL_GROUPS)
    assert Prober.check(socket.AF_INET6, netns=topology.gw, mode="ping") is None
    prober = make_prober()  # auto: ping sockets first
    prober.set_targets({T1.gw_dev: v4(T1), T2.gw_dev: v6(T2)})
    for dev in (T1.gw_dev, T2.gw_dev):
        more_replies(seen, dev, 0, by=5)
        assert prober.kind(dev) == "ping"
    # the blackhole works the same with ping sockets
    topology.blackhole(1, True)
    before = seen.losses(T1.gw_dev)
    harness.wait_until(lambda: seen.losses(T1.gw_dev) >= before + 3, DEADLINE,
                       what="requests through the blackholed vti01 lost")
    topology.blackhole(1, False)
    more_replies(seen, T1.gw_dev, seen.count(T1.gw_dev))


@pytest.mark.parametrize("mode", ["raw", "ping"])
def test_a_blackholed_tunnel_loses_its_replies_and_only_its_own(
    topology: harness.Topology, seen: Seen, make_prober: MakeProber, mode: Mode
) -> None:
    if mode == "ping":
        topology.sysctl("gw", "net.ipv4.ping_group_range", ALL_GROUPS)
    prober = make_prober(mode=mode)
    prober.set_targets({T1.gw_dev: v4(T1), T2.gw_dev: v4(T2)})
    for dev in (T1.gw_dev, T2.gw_dev):
        more_replies(seen, dev, 0)

    topology.blackhole(1, True)
    assert topology.blackholed() == {1}
    lost0 = seen.losses(T1.gw_dev)
    harness.wait_until(lambda: seen.losses(T1.gw_dev) >= lost0 + 3, DEADLINE,
                       what="requests through the blackholed vti01 lost")
    # from now on (everything sent before the blackhole has had its loss_after) no reply
    # comes through vti01, while vti02 goes on answering every request
    stuck = seen.count(T1.gw_dev)
    lost1 = seen.losses(T1.gw_dev)
    more_replies(seen, T2.gw_dev, seen.count(T2.gw_dev), by=10)
    assert seen.count(T1.gw_dev) == stuck
    assert seen.losses(T1.gw_dev) > lost1
    assert seen.losses(T2.gw_dev) == 0
    assert link_up(topology, T1.gw_dev)  # carrier kept: only the traffic is gone
    sent, replies, lost = prober.counters()[T1.gw_dev]
    assert replies == stuck and lost >= lost1 and sent >= replies + lost

    topology.blackhole(1, False)
    assert topology.blackholed() == set()
    more_replies(seen, T1.gw_dev, stuck)
    assert seen.losses(T2.gw_dev) == 0


def link_up(topology: harness.Topology, dev: str) -> bool:
    info = topology.link("gw", dev)
    return info is not None and info.get("operstate") == "UP"


def test_a_device_deleted_and_created_again_is_probed_again(
    topology: harness.Topology, seen: Seen, make_prober: MakeProber
) -> None:
    prober = make_prober()
    prober.set_targets({T1.gw_dev: v4(T1), T2.gw_dev: v6(T2)})
    more_replies(seen, T1.gw_dev, 0)
    more_replies(seen, T2.gw_dev, 0)
    topology.delete_link(T1.gw_dev)
    topology.delete_link(T2.gw_dev)
    for dev in (T1.gw_dev, T2.gw_dev):
        harness.wait_until(lambda d=dev: "ENODEV" in seen.error_text(d),  # type: ignore[misc]
                           DEADLINE, what=f"ENODEV reported for {dev}")
    # an error is reported once per run of it, not at every interval
    time.sleep(5 * INTERVAL)
    assert len(seen.errors[T1.gw_dev]) <= 2, seen.errors[T1.gw_dev]
    stuck = seen.count(T1.gw_dev), seen.count(T2.gw_dev)
    topology.recreate_link(1)
    topology.recreate_link(2)
    more_replies(seen, T1.gw_dev, stuck[0])
    more_replies(seen, T2.gw_dev, stuck[1])


def test_targets_that_never_answer(
    topology: harness.Topology, seen: Seen, make_prober: MakeProber
) -> None:
    prober = make_prober()
    # on the tunnels' subnets but nobody's, and an address no route leads to
    prober.set_targets({T1.gw_dev: ProbeTarget(T1.gw_dev, "fd00:10::99"),
                        T2.gw_dev: ProbeTarget(T2.gw_dev, "192.0.2.1")})
    for dev in (T1.gw_dev, T2.gw_dev):
        harness.wait_until(lambda d=dev: seen.losses(d) >= 3, DEADLINE,  # type: ignore[misc]
                           what=f"requests through {dev} lost")
    assert seen.count(T1.gw_dev) == 0 and seen.count(T2.gw_dev) == 0
    # the prober is still alive: a target that answers gets replies
    prober.set_targets({T1.gw_dev: v4(T1)})
    more_replies(seen, T1.gw_dev, 0)
    assert set(prober.counters()) == {T1.gw_dev}


def test_a_removed_device_stops_at_once_and_empty_targets_probe_nothing(
    topology: harness.Topology, seen: Seen, make_prober: MakeProber
) -> None:
    prober = make_prober()
    prober.set_targets({T1.gw_dev: v4(T1), T2.gw_dev: v4(T2)})
    more_replies(seen, T2.gw_dev, 0)
    prober.set_targets({T1.gw_dev: v4(T1)})
    with seen.lock:
        frozen = len(seen.replies[T2.gw_dev]), seen.sent[T2.gw_dev], seen.lost[T2.gw_dev]
    more_replies(seen, T1.gw_dev, seen.count(T1.gw_dev), by=10)
    with seen.lock:
        assert (len(seen.replies[T2.gw_dev]), seen.sent[T2.gw_dev],
                seen.lost[T2.gw_dev]) == frozen
    prober.set_targets({})
    assert prober.counters() == {}
    with seen.lock:
        sent = sum(seen.sent.values())
    time.sleep(5 * INTERVAL)
    with seen.lock:
        assert sum(seen.sent.values()) == sent


def test_other_pings_on_the_device_are_not_taken_for_ours(
    topology: harness.Topology, seen: Seen, make_prober: MakeProber
) -> None:
    """A `ping` through vti01 at the same time (its replies reach our raw socket too) and
    our own requests never count as replies: each reply answers one request of ours."""
    prober = make_prober(mode="raw")
    prober.set_targets({T1.gw_dev: v4(T1)})
    more_replies(seen, T1.gw_dev, 0)
    other = subprocess.Popen(
        ["ip", "netns", "exec", topology.gw, "ping", "-q", "-i", "0.01", "-c", "100",
         "-I", T1.gw_dev, T1.aws_v4], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, text=True)
    try:
        out, _ = other.communicate(timeout=DEADLINE * 3)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert "100 received" in out, out
    more_replies(seen, T1.gw_dev, seen.count(T1.gw_dev))
    sent, replies, lost = prober.counters()[T1.gw_dev]
    assert replies <= sent and lost == 0


class SlowResponder:
    """Answers the echo requests reaching ``dev`` in namespace ``ns`` itself (the kernel's
    own replies switched off there): request with sequence s is answered after
    ``delay(s)`` seconds, ``copies(s)`` times (None: never)."""

    def __init__(self, ns: str, dev: str, delay: Callable[[int], float | None],
                 copies: Callable[[int], int]) -> None:
        self.delay, self.copies = delay, copies
        self.sock = in_netns(ns, lambda: self._open(dev))
        self.due: list[tuple[float, int, bytes, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _open(dev: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
        sock.settimeout(0.01)
        return sock

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            now = time.monotonic()
            while self.due and self.due[0][0] <= now:
                _, _, reply, addr = heapq.heappop(self.due)
                self.sock.sendto(reply, (addr, 0))
            try:
                data, (addr, _) = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            icmp = data[(data[0] & 0x0F) * 4:]
            if icmp[0] != 8:
                continue
            seq = struct.unpack_from("!H", icmp, 6)[0]
            delay = self.delay(seq)
            if delay is None:
                continue
            head = bytes([0, 0, 0, 0]) + icmp[4:8]
            csum = checksum(head + icmp[8:])
            reply = bytes([0, 0]) + struct.pack("!H", csum) + icmp[4:]
            for _ in range(self.copies(seq)):
                n += 1
                heapq.heappush(self.due, (time.monotonic() + delay, n, reply, addr))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def checksum(data: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_late_duplicate_and_out_of_order_replies(
    topology: harness.Topology, seen: Seen, make_prober: MakeProber
) -> None:
    """Every third request is answered after loss_after (late: lost, not a reply), the next
    one after the request that follows it was answered (out of order: a reply), the third
    at once and twice (a duplicate: one reply)."""
    topology.sysctl("aws", "net.ipv4.icmp_echo_ignore_all", 1)

    def delay(seq: int) -> float | None:
        return (LOSS_AFTER * 2, LOSS_AFTER / 2, 0.0)[seq % 3]

    responder = SlowResponder(topology.aws, T1.aws_dev, delay, lambda seq: 1 + (seq % 3 == 2))
    try:
        prober = make_prober(mode="raw")
        prober.set_targets({T1.gw_dev: v4(T1)})
        harness.wait_until(lambda: seen.losses(T1.gw_dev) >= 6, DEADLINE, what="6 lost")
        prober.set_targets({})  # freeze the counts: nothing in flight is reported any more
    finally:
        responder.close()
    with seen.lock:
        rtts = [rtt for rtt, _ in seen.replies[T1.gw_dev]]
        lost = seen.lost[T1.gw_dev]
    assert rtts and all(rtt < LOSS_AFTER for rtt in rtts), rtts
    slow = [r for r in rtts if r >= LOSS_AFTER / 2]
    fast = [r for r in rtts if r < LOSS_AFTER / 2]
    # about as many of each kind: each request answered once at most, late ones not at all
    assert abs(len(slow) - len(fast)) <= 2 and abs(len(slow) - lost) <= 2, (rtts, lost)
