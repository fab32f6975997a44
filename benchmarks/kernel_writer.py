#!/usr/bin/env python3
"""Route programming speed: `ip -batch` against KernelWriter, on the same routes.

Creates its own network namespaces (vtibgp-bench-<pid> with vti01/vti02, their veth peers in
vtibgp-bench-<pid>-peer), and for each N installs then removes N routes, first with
`ip -n NS -batch FILE`, then with KernelWriter.apply (every refusal answered, one ack per
datagram), then the kernel's own ceiling: the very datagrams the writer sends (its order,
batches, nexthops, the ack on each datagram's last request), packed before the clock starts
and sent over the writer's socket one after the other, each followed by reading what it
answered (recvmmsg). It prints routes/s, the ratio
to `ip -batch` and the writer's share of the ceiling (ceiling time / writer time). The medians
of --repeat runs are reported. Root only; both namespaces are deleted at the end, also on
error or Ctrl-C. No traffic is sent anywhere.

    python benchmarks/kernel_writer.py             # N = 10,000 and 100,000
    python benchmarks/kernel_writer.py --full      # and 1,000,000
    python benchmarks/kernel_writer.py --sizes 5000 --family 6 --repeat 1
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vtibgp.core.model import KernelRoute, NextHop, OpKind, RouteOp
from vtibgp.kernel import codec as nc
from vtibgp.kernel.nexthops import NotMade
from vtibgp.kernel.writer import KernelWriter, _send_order

DEVICES = ("vti01", "vti02")
PROTO = 186
IP_NHID = 7  # the nexthop object ip -batch's routes use with --nexthop-objects


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


class Lab:
    def __init__(self) -> None:
        self.ns = f"vtibgp-bench-{os.getpid()}"
        self.peer = f"{self.ns}-peer"
        self.made: list[str] = []

    def up(self) -> None:
        for name in (self.ns, self.peer):
            sh("ip", "netns", "add", name)
            self.made.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        for n, dev in enumerate(DEVICES, start=1):
            sh("ip", "-n", self.ns, "link", "add", dev, "type", "veth",
               "peer", "name", f"tun{n}", "netns", self.peer)
            sh("ip", "-n", self.ns, "addr", "add", f"169.254.{9 + n}.2/30", "dev", dev)
            sh("ip", "-n", self.peer, "addr", "add", f"169.254.{9 + n}.1/30", "dev", f"tun{n}")
            sh("ip", "-n", self.ns, "link", "set", dev, "up")
            sh("ip", "-n", self.peer, "link", "set", f"tun{n}", "up")

    def down(self) -> None:
        while self.made:
            subprocess.run(["ip", "netns", "del", self.made.pop()], stdin=subprocess.DEVNULL,
                           capture_output=True, check=False)


def prefixes(n: int, family: int) -> Iterator[str]:
    for i in range(n):
        if family == 4:
            yield f"{1 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24"
        else:
            yield f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::/64"


def routes(n: int, family: int, metric: int) -> list[KernelRoute]:
    hops = tuple((NextHop(d),) for d in DEVICES)
    return [KernelRoute(p, metric, hops[i & 1]) for i, p in enumerate(prefixes(n, family))]


def count_ours(ns: str, table: int, family: int) -> int:
    out = subprocess.run(
        ["ip", "-n", ns, f"-{family}", "route", "show", "table", str(table), "proto", str(PROTO)],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    ).stdout
    return sum(1 for line in out.splitlines() if line and not line.startswith("\t"))


def run_ip_batch(ns: str, path: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(["ip", "-n", ns, "-batch", str(path)], capture_output=True, text=True,
                         check=False, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"ip -batch {path.name} failed: {res.stderr.strip()[:500]}")
    return elapsed


def prebuilt(writer: KernelWriter, ops: list[RouteOp], batch: int) -> list[bytes]:
    """The datagrams the writer sends for `ops`: its send order, `batch` requests (or its byte
    cap) per datagram, its nexthops (objects made first where missing), one sequence number
    per request, the ack asked of each datagram's last request only. Uses the writer's parts
    (a benchmark's licence): the packer, link cache, pool."""
    nl, packer = writer._nl, writer._sender._packer
    links, pool = writer._links, writer._nh
    order = _send_order(ops)
    work = ops if order is None else [ops[i] for i in order]
    base = nl.take_seqs(len(work))
    out: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for i, op in enumerate(work):
        route = op.route
        via: nc.Via
        if op.kind is OpKind.DELETE:
            via = ()
        elif writer.nexthop_objects:
            while True:
                try:
                    via = pool.object_for(route.nexthops, ":" in route.prefix)
                    break
                except NotMade as exc:
                    pool.make(exc.key)
        else:
            via = links.hops(route.nexthops)
        msg = packer.pack(op.kind, route.prefix, route.metric, via, base + i)
        parts.append(msg)
        size += len(msg)
        if len(parts) >= batch or size >= nl.max_chunk_bytes:
            parts[-1] = nc.with_ack(parts[-1])
            out.append(b"".join(parts))
            parts, size = [], 0
    if parts:
        parts[-1] = nc.with_ack(parts[-1])
        out.append(b"".join(parts))
    return out


def send_prebuilt(writer: KernelWriter, datagrams: list[bytes]) -> float:
    """Seconds to send `datagrams` over the writer's socket, each followed by reading what it
    queued (its one ack); raises if an answer is an error or one is missing."""
    nl = writer._nl
    sock, mr = nl.sock, nl.mrecv
    if mr is None:
        raise RuntimeError("no recvmmsg here: the ceiling needs it")
    nl.discard_pending()
    ints, step = mr.ints, mr.step
    acks = errors = 0
    t0 = time.perf_counter()
    for data in datagrams:
        sock.send(data)
        while True:
            got = mr.recv()
            if got:
                acks += got
                errors += got - ints[4:got * step:step].tolist().count(0)
            if got < mr.vlen:
                break
    elapsed = time.perf_counter() - t0
    n = len(datagrams)
    while acks < n and nl.wait_readable(0.05):
        acks += mr.recv()
    if errors or acks != n:
        raise RuntimeError(f"prebuilt: {acks} answers for {n} datagrams, {errors} errors")
    return elapsed


def bench(lab: Lab, n: int, args: argparse.Namespace, tmp: Path) -> dict[str, list[float]]:
    rs = routes(n, args.family, args.metric)
    adds = [RouteOp(OpKind.ADD, r) for r in rs]
    dels = [RouteOp(OpKind.DELETE, r) for r in rs]
    tail = f"table {args.table} proto {PROTO} metric {args.metric}"
    add_file, del_file = tmp / f"add-{n}.txt", tmp / f"del-{n}.txt"
    if args.nexthop_objects:  # the same routes for ip: through a nexthop object of its own
        family = "-6" if args.family == 6 else "-4"
        sh("ip", "-n", lab.ns, family, "nexthop", "replace", "id", str(IP_NHID), "dev",
           DEVICES[0], "proto", "static")
    with add_file.open("w") as fa, del_file.open("w") as fd:
        for r in rs:
            via = (f"nhid {IP_NHID}" if args.nexthop_objects
                   else f"dev {r.nexthops[0].device}")
            line = f"{r.prefix} {via} {tail}\n"
            fa.write(f"route add {line}")
            fd.write(f"route del {r.prefix} {tail}\n")
    times: dict[str, list[float]] = {k: [] for k in ("ip_add", "ip_del", "kw_add", "kw_del",
                                                     "kw_dump", "pb_add", "pb_del")}
    with KernelWriter(table=args.table, proto=PROTO, batch=args.batch, netns=lab.ns,
                      pipeline=not args.no_pipeline) as writer:
        if args.nexthop_objects and not writer.enable_nexthop_objects():
            raise RuntimeError("this kernel has no nexthop objects")
        for _ in range(args.repeat):
            times["ip_add"].append(run_ip_batch(lab.ns, add_file))
            if count_ours(lab.ns, args.table, args.family) != n:
                raise RuntimeError("ip -batch did not install every route")
            times["ip_del"].append(run_ip_batch(lab.ns, del_file))

            t0 = time.perf_counter()
            res = writer.apply(adds)
            times["kw_add"].append(time.perf_counter() - t0)
            if res.failed or res.applied != n:
                raise RuntimeError(f"KernelWriter add: {len(res.failed)} failed, "
                                   f"first {res.failed[:1]}")
            t0 = time.perf_counter()
            found = writer.dump()
            times["kw_dump"].append(time.perf_counter() - t0)
            if len(found) != n:
                raise RuntimeError(f"dump found {len(found)} routes, not {n}")
            t0 = time.perf_counter()
            res = writer.apply(dels)
            times["kw_del"].append(time.perf_counter() - t0)
            if res.failed or res.applied != n:
                raise RuntimeError(f"KernelWriter delete: {len(res.failed)} failed")
            if count_ours(lab.ns, args.table, args.family) != 0:
                raise RuntimeError("routes left behind after the delete pass")

            if not args.no_ceiling:  # the same datagrams, packed in advance
                pb_adds, pb_dels = (prebuilt(writer, adds, args.batch),
                                    prebuilt(writer, dels, args.batch))
                times["pb_add"].append(send_prebuilt(writer, pb_adds))
                times["pb_del"].append(send_prebuilt(writer, pb_dels))
                del pb_adds, pb_dels
                if count_ours(lab.ns, args.table, args.family) != 0:
                    raise RuntimeError("routes left behind after the prebuilt delete pass")
        if writer.overruns:
            print(f"  (note: {writer.overruns} receive-queue overruns, resolved by resending)")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--full", action="store_true", help="also N = 1,000,000")
    ap.add_argument("--repeat", type=int, default=3, help="runs per N (median reported)")
    ap.add_argument("--family", type=int, choices=(4, 6), default=4)
    ap.add_argument("--table", type=int, default=254)
    ap.add_argument("--metric", type=int, default=100)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--nexthop-objects", action="store_true",
                    help="routes through a nexthop object, for both ip -batch and the writer "
                    "(as vtibgp run does where the kernel has them)")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="skip the prebuilt datagrams (the kernel's own ceiling)")
    ap.add_argument("--no-pipeline", action="store_true",
                    help="KernelWriter without its sender thread (for comparison)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = list(args.sizes) + ([1_000_000] if args.full else [])

    lab = Lab()
    atexit.register(lab.down)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    rows = []
    try:
        lab.up()
        with tempfile.TemporaryDirectory(prefix="vtibgp-bench-") as tmpdir:
            for n in sizes:
                t = bench(lab, n, args, Path(tmpdir))
                med = {k: statistics.median(v) for k, v in t.items() if v}
                rows.append((n, med))
                ceiling = (f" | prebuilt add {n / med['pb_add']:,.0f}/s del "
                           f"{n / med['pb_del']:,.0f}/s" if t["pb_add"] else "")
                print(f"N={n:,}: ip add {n / med['ip_add']:,.0f}/s del {n / med['ip_del']:,.0f}/s"
                      f" | writer add {n / med['kw_add']:,.0f}/s del {n / med['kw_del']:,.0f}/s"
                      f"{ceiling} | dump {med['kw_dump']:.3f}s", flush=True)
    finally:
        lab.down()

    print()
    print(f"IPv{args.family}, table {args.table}, batch {args.batch}, "
          f"{'no pipeline' if args.no_pipeline else 'pipelined'}, "
          f"{'nexthop objects' if args.nexthop_objects else 'inline nexthops'}, "
          f"median of {args.repeat}; routes/s")
    with_ceiling = not args.no_ceiling
    head = (f"{'N':>9} | {'ip add':>9} | {'ip del':>9} | {'kw add':>9} | {'kw del':>9} | "
            f"{'add x':>6} | {'del x':>6} | {'both x':>6} | {'dump s':>6}")
    if with_ceiling:
        head += (f" | {'pb add':>9} | {'pb del':>9} | {'share add':>9} | {'share del':>9} | "
                 f"{'share':>6}")
    print(head)
    print("-" * len(head))
    for n, med in rows:
        both = (med["ip_add"] + med["ip_del"]) / (med["kw_add"] + med["kw_del"])
        line = (f"{n:>9,} | {n / med['ip_add']:>9,.0f} | {n / med['ip_del']:>9,.0f} | "
                f"{n / med['kw_add']:>9,.0f} | {n / med['kw_del']:>9,.0f} | "
                f"{med['ip_add'] / med['kw_add']:>6.2f} | {med['ip_del'] / med['kw_del']:>6.2f} | "
                f"{both:>6.2f} | {med['kw_dump']:>6.3f}")
        if with_ceiling:
            share = (med["pb_add"] + med["pb_del"]) / (med["kw_add"] + med["kw_del"])
            line += (f" | {n / med['pb_add']:>9,.0f} | {n / med['pb_del']:>9,.0f} | "
                     f"{med['pb_add'] / med['kw_add']:>9.2f} | "
                     f"{med['pb_del'] / med['kw_del']:>9.2f} | {share:>6.2f}")
        print(line)
    if with_ceiling:
        print("pb: the writer's own datagrams, packed in advance and sent one after the other "
              "(the kernel's ceiling); share: the writer's rate as a fraction of it (goal "
              ">= 0.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
