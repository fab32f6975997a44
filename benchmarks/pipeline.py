"""Pipeline benchmark: ExaBGP JSON lines -> parse -> decide -> kernel, end to end through the
daemon's own loop (reader thread, batching, coalescing, the kernel writer), replayed from a
file of lines in ExaBGP 5.0's exact format, over two peers.

Prints prefixes/s for:
  decide  parse + core, with a writer that accepts everything (no kernel)
  kernel  the same into a real kernel (network namespace with veths vti01/vti02), with the
          time spent inside the kernel writer and outside it, against the kernel's ceiling
          for the same routes: the writer's own datagrams of the batches it applied, packed
          in advance and sent one after the other (as in kernel_writer.py)
and, for decide, peak RSS per path (the memory target is <= 512 bytes per path). With
--repeat, each is run that many times and the best and the median are shown (the machine
is shared: compare figures of one run of this script).

  python benchmarks/pipeline.py                 # 100,000 prefixes x 2 peers
  python benchmarks/pipeline.py --prefixes 1000000 --mode decide
  python benchmarks/pipeline.py --mode decide --repeat 5
Run as root for --mode kernel (the default runs both).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # kernel_writer's ceiling

from vtibgp.config.schema import parse
from vtibgp.core.model import KernelRoute, OpResult, RouteOp
from vtibgp.shell.daemon import Daemon

PEERS = (("169.254.10.1", "169.254.10.2", "vti01", 1), ("169.254.11.1", "169.254.11.2", "vti02", 2))
PER_LINE = 16_000  # prefixes per UPDATE line (extended messages: ~500 KB lines)


def lines_for(n: int) -> list[bytes]:
    """State up + packed announcements for n /24s from each peer (peer 2 prepended)."""
    base = int(ipaddress.ip_address("20.0.0.0"))
    out: list[bytes] = []
    for counter, (peer, local, _dev, hops) in enumerate(PEERS, 1):
        head = (
            f'{{ "exabgp": "5.0.0", "time": 1.0, "host" : "b", "pid" : 1, "ppid" : 1, '
            f'"counter": {counter}, "type": "%s", "neighbor": {{ "address": {{ "local": '
            f'"{local}", "peer": "{peer}" }}, "asn": {{ "local": 65000, "peer": 64512 }}, '
            f'"router-id": "{local}" , '
        )
        out.append((head % "state" + '"state": "up" } }\n').encode())
        path = ", ".join(["64512"] * hops)
        for start in range(0, n, PER_LINE):
            nlri = ", ".join(
                f'{{ "nlri": "{ipaddress.ip_address(base + (i << 8))}/24" }}'
                for i in range(start, min(n, start + PER_LINE))
            )
            out.append((
                head % "update" + '"direction": "receive", "message": { "update": { '
                '"attribute": { "origin": "igp", "as-path": {"0": {"element": '
                f'"as-sequence", "value": [{path}]}}}} }}, "announce": {{ "ipv4 unicast": '
                f'{{ "{peer}": [ {nlri} ] }} }} }} }} }} }}\n'
            ).encode())
    return out


class NullWriter:
    def apply(self, ops: Sequence[RouteOp]) -> OpResult:
        return OpResult(applied=len(ops))

    def dump(self) -> list[KernelRoute]:
        return []

    def forget(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass


def run_daemon(data: Path, writer: object) -> float:
    cfg = parse({
        "peers": [{"address": p, "interface": d} for p, _l, d, _h in PEERS],
        "metrics": {"listen": None}, "control": {"socket": None}, "on_exit": "retain",
        "kernel": {"reconcile_interval": 0},
    }, "bench")
    daemon = Daemon(cfg, writer, None)  # type: ignore[arg-type]
    gc.collect()
    with data.open("rb") as f:
        t0 = time.perf_counter()
        daemon.startup(resync=False)
        daemon.start_reader(f)
        daemon.run()
        return time.perf_counter() - t0


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextlib.contextmanager
def bench_namespace() -> Iterator[str]:
    """A fresh namespace with vti01/vti02 (veths) and the peers' local addresses."""
    ns = f"vtibgp-bench-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        for k, (_p, local, dev, _h) in enumerate(PEERS, 1):
            sh("ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", f"p{k}")
            sh("ip", "-n", ns, "addr", "add", f"{local}/30", "dev", dev)
            for d in (dev, f"p{k}"):
                sh("ip", "-n", ns, "link", "set", d, "up")
        yield ns
    finally:
        sh("ip", "netns", "del", ns)


class TimedWriter:
    """A KernelWriter that adds up the time spent in `apply` and keeps the batches it got."""

    def __init__(self, writer: object) -> None:
        self.writer = writer
        self.seconds = 0.0
        self.batches: list[list[RouteOp]] = []

    def apply(self, ops: Sequence[RouteOp]) -> OpResult:
        self.batches.append(list(ops))
        t0 = time.perf_counter()
        try:
            return self.writer.apply(ops)  # type: ignore[attr-defined, no-any-return]
        finally:
            self.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str) -> object:
        return getattr(self.writer, name)


def kernel_run(data: Path) -> tuple[float, float, list[list[RouteOp]]]:
    """(seconds end to end, seconds of them inside the writer's apply, the batches it
    applied)."""
    from vtibgp.kernel.writer import KernelWriter

    with bench_namespace() as ns:
        writer = TimedWriter(KernelWriter(netns=ns))
        try:
            return run_daemon(data, writer), writer.seconds, writer.batches
        finally:
            writer.writer.close()  # type: ignore[attr-defined]


def ceiling(batches: list[list[RouteOp]]) -> float:
    """Seconds the kernel alone takes for the writer's own datagrams of these batches (its
    order, batch size, nexthops), packed before the clock starts and sent one after the
    other in a fresh namespace, each followed by reading its answer (kernel_writer.py's
    ceiling, for the routes the daemon decided)."""
    from kernel_writer import prebuilt, send_prebuilt

    from vtibgp.core.model import NextHop, OpKind
    from vtibgp.kernel.writer import KernelWriter

    with bench_namespace() as ns, KernelWriter(netns=ns) as writer:
        probe = [KernelRoute(f"10.255.{k}.0/24", 100, (NextHop(dev),))
                 for k, (_p, _l, dev, _h) in enumerate(PEERS)]
        for kind in (OpKind.ADD, OpKind.DELETE):  # the devices into the link cache
            if writer.apply([RouteOp(kind, r) for r in probe]).failed:
                raise RuntimeError("ceiling: the probe routes were refused")
        datagrams = [prebuilt(writer, ops, writer.batch) for ops in batches]
        return sum(send_prebuilt(writer, d) for d in datagrams)


def ip_batch(n: int) -> float:
    """ip -batch adding the same 2n routes (n prefixes x 2 metrics) in a fresh namespace."""
    base = int(ipaddress.ip_address("20.0.0.0"))
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
        for i in range(n):
            p = ipaddress.ip_address(base + (i << 8))
            f.write(f"route add {p}/24 dev vti01 proto 186 metric 100 scope link\n")
            f.write(f"route add {p}/24 dev vti02 proto 186 metric 101 scope link\n")
    try:
        with bench_namespace() as ns:
            t0 = time.perf_counter()
            sh("ip", "-n", ns, "-batch", f.name)
            return time.perf_counter() - t0
    finally:
        os.unlink(f.name)


def spread(rates: list[float]) -> str:
    if len(rates) == 1:
        return ""
    return f"  (best of {len(rates)}; median {statistics.median(rates):,.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefixes", type=int, default=100_000, help="per peer")
    ap.add_argument("--mode", choices=("decide", "kernel", "both"), default="both")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each mode (default 1)")
    args = ap.parse_args()
    n = args.prefixes
    lines = lines_for(n)
    with tempfile.NamedTemporaryFile("wb", suffix=".jsonl", delete=False) as f:
        f.writelines(lines)
        data = Path(f.name)
    size = data.stat().st_size
    print(f"{n:,} prefixes x 2 peers = {2 * n:,} paths, {len(lines)} lines, "
          f"{size / 1e6:.1f} MB of ExaBGP 5.0 JSON")
    try:
        if args.mode in ("decide", "both"):
            # the peak is the process's: only the first run's growth is its own
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            runs = [run_daemon(data, NullWriter())]
            rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            runs += [run_daemon(data, NullWriter()) for _ in range(args.repeat - 1)]
            took = min(runs)
            print(f"decide: {took:6.2f} s  {2 * n / took:10,.0f} prefixes/s  "
                  f"peak RSS growth {(rss1 - rss0) / 1e6:.0f} MB = "
                  f"{(rss1 - rss0) / (2 * n):.0f} bytes/path"
                  f"{spread([2 * n / t for t in runs])}")
        if args.mode in ("kernel", "both"):
            if os.geteuid() != 0:
                print("kernel: skipped (needs root)")
                return 0
            kruns = [kernel_run(data) for _ in range(args.repeat)]
            took, in_writer, batches = min(kruns, key=lambda run: run[0])
            limit = ceiling(batches)
            ipb = ip_batch(n)
            print(f"kernel: {took:6.2f} s  {2 * n / took:10,.0f} prefixes/s end to end "
                  f"({2 * n:,} routes: best + backup)"
                  f"{spread([2 * n / run[0] for run in kruns])}")
            print(f"        of which the writer's apply {in_writer:6.2f} s "
                  f"({2 * n / in_writer:,.0f} routes/s), the rest {took - in_writer:6.2f} s "
                  f"({2 * n / (took - in_writer):,.0f} prefixes/s)")
            print(f"ceiling: the kernel alone on the writer's own datagrams of those "
                  f"{len(batches)} batches {limit:6.2f} s ({2 * n / limit:,.0f} routes/s) -> "
                  f"end to end / ceiling = {limit / took:.2f} (goal >= 0.9); the writer's "
                  f"apply / ceiling = {limit / in_writer:.2f}")
            print(f"ip -batch, same {2 * n:,} routes: {ipb:6.2f} s  {2 * n / ipb:10,.0f} routes/s"
                  f"  -> vtibgp end to end / ip -batch alone = {ipb / took:.2f}x")
    finally:
        data.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
