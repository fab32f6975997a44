"""The imperative shell of `vtibgp run`: stdin reader thread, event loop, kernel writer,
link monitor, resync with ExaBGP, start-up reconciliation, signals and exit.

Everything that decides lives in `core`; this module only moves data between the outside
world and the core and counts what happened.
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import fcntl
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import IO, Any, Protocol

from vtibgp.addresses import AF_INET, AF_INET6
from vtibgp.config.schema import Config, ConfigError, load
from vtibgp.control.server import ControlError, ControlServer
from vtibgp.core import view
from vtibgp.core.decision import Decision
from vtibgp.core.engine import Core
from vtibgp.core.export import ExportSettings
from vtibgp.core.lan import LanSettings
from vtibgp.core.model import (
    Announce,
    DeviceState,
    EndOfRib,
    Event,
    GraceExpired,
    KernelFlushed,
    KernelRoute,
    KernelRoutesFound,
    NetworksReachable,
    NotificationReceived,
    OpResult,
    OutsideLearned,
    PeerDevice,
    PeerState,
    ProbeReply,
    Reconcile,
    Reconfigure,
    RouteOp,
    Stopping,
    Tick,
    Withdraw,
)
from vtibgp.core.probe import ProbeSettings
from vtibgp.core.settings import CoreSettings, PeerSettings
from vtibgp.exabgp.parse import LineKind
from vtibgp.exabgp.session import EXABGP_SHUTDOWN_REASONS, RESYNC_QUIET, ExabgpSession
from vtibgp.kernel.reachability import IPRoute, NetlinkError, reachable
from vtibgp.shell import metrics as m
from vtibgp.shell.kernel_batches import KernelBatches
from vtibgp.shell.prober import Prober, ProbeTarget
from vtibgp.shell.report import Reporter
from vtibgp.shell.tunnel_request import CEASE_ADMIN_RESET, tunnel_request

log = logging.getLogger("vtibgp")

DRAIN_MAX = 512  # lines folded into one kernel batch at most
READ_CHUNK = 1 << 20
PIPE_SIZE = 1 << 20  # stdin's pipe buffer (Linux default 64 KiB; fs.pipe-max-size 1 MiB)
REQUEST_TIMEOUT = 5.0
GAUGE_INTERVAL = 1.0  # seconds between route-count gauge updates
LOGGED_REJECTIONS = 10_000  # (peer, prefix, reason) remembered so each is logged once
TICK = 0.25  # seconds: how often timers and signals are looked at when idle
START_WAIT = 1.0  # seconds start-up waits for that quiet at most (then the loop waits for it)
REACHABLE_INTERVAL = 2.0  # seconds between looks at our networks' routes (reachable_only)
APPLY_AT = 65_536  # route ops: a batch that has made this many goes to the kernel at once
_NEXT_HOP = attrgetter("next_hop")  # PathAttrs -> its BGP next-hop


@lru_cache(maxsize=1024)
def _child(metric: Any, label: str) -> Any:
    """`metric.labels(label)`, remembered: labels() validates and locks on every call, and
    the per-line and per-event metrics are always the same few series."""
    return metric.labels(label)


class Writer(Protocol):
    """What the shell needs of the kernel side (vtibgp.kernel.writer.KernelWriter; see there)."""

    def apply(self, ops: Sequence[RouteOp]) -> OpResult: ...
    def dump(self) -> list[KernelRoute]: ...
    def forget(self, name: str) -> None: ...
    def flush_device(self, name: str) -> bool: ...
    def note_device_gone(self, name: str) -> bool: ...
    def collect_garbage(self) -> int: ...
    def release_nexthops(self) -> int: ...
    def close(self) -> None: ...


class PrintWriter:
    """`--dry-run`: print each operation instead of making it; the kernel accepts all."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def apply(self, ops: Sequence[RouteOp]) -> OpResult:
        for op in ops:
            self.out.write(f"{op}\n")
        self.out.flush()
        return OpResult(applied=len(ops))

    def dump(self) -> list[KernelRoute]:
        return []

    def forget(self, name: str) -> None:
        pass

    def flush_device(self, name: str) -> bool:
        return False  # inline nexthops: the ops printed say what goes

    def note_device_gone(self, name: str) -> bool:
        return False

    def collect_garbage(self) -> int:
        return 0

    def release_nexthops(self) -> int:
        return 0

    def close(self) -> None:
        pass


def core_settings(cfg: Config) -> CoreSettings:
    return CoreSettings(
        metric=cfg.metric,
        max_paths=cfg.max_paths,
        ecmp=cfg.ecmp,
        accept_unconfigured_peers=cfg.accept_unconfigured_peers,
        peers={
            p.address: PeerSettings(p.interface, p.preference, p.gateway, p.families, p.probe,
                                    p.vpn)
            for p in cfg.peers
        },
        hold_down=cfg.hold_down,
        policy=cfg.policy,
        fallback=cfg.fallback != "none",
        probe=probe_settings(cfg),
        export=export_settings(cfg),
    )


def export_settings(cfg: Config) -> ExportSettings | None:
    if not cfg.export_networks and not cfg.export_lan_peers:
        return None
    lan = LanSettings(tuple((p.address, p.peer_as) for p in cfg.export_lan_peers),
                      cfg.export_lan_med, cfg.export_lan_prepend) if cfg.export_lan_peers \
        else None
    return ExportSettings(cfg.export_networks, cfg.export_steering, cfg.export_med,
                          cfg.export_backup_med, cfg.export_backup_prepend, cfg.export_local_as,
                          cfg.export_reachable_only, lan)


def probe_settings(cfg: Config) -> ProbeSettings | None:
    if not cfg.probe_enabled:
        return None
    keep = cfg.probe_when_all_down == "keep" or (
        cfg.probe_when_all_down == "auto" and cfg.fallback == "none")
    return ProbeSettings(cfg.probe_interval, cfg.probe_multiplier, cfg.probe_up_after, keep)


class Probes(Protocol):
    """What the shell needs of the prober (vtibgp.shell.prober.Prober)."""

    def set_targets(self, targets: Mapping[str, ProbeTarget]) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Request:
    """A control-socket request waiting for the loop to answer it."""

    body: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    answer: dict[str, Any] = field(default_factory=dict)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        commands: IO[str] | None,
        *,
        discover: Callable[[str, str | None], str | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.core = Core(core_settings(cfg))
        # the core's clock starts now, not at 0.0: what it stamps before the loop's first
        # timer pass (a max-prefix teardown's restart delay) must be in the shell's time
        first = self.core.handle(Tick(time.monotonic()))
        self.writer = writer
        self.commands = commands  # ExaBGP reads our stdout as commands; None in dry-run
        self.discover = discover
        self.queue: queue.SimpleQueue[tuple[str, float, object]] = queue.SimpleQueue()
        self.session = ExabgpSession()  # the conversation with ExaBGP (commands, answers)
        self.grace_deadline: float | None = None
        self.after_answer: deque[Event] = deque()  # a control request's events (see ipsec)
        # input taken off the queue at start-up while waiting to ask ExaBGP (see _ask_when_quiet),
        # processed first by run()
        self.backlog: deque[tuple[str, float, object]] = deque()
        self.lines_seen: dict[LineKind, int] = {}  # this batch's input lines, by kind
        self.grace_waited = False
        # when a max-prefix restart delay ends for a peer whose session came back inside it:
        # its refused prefixes are then taken from ExaBGP's adj-rib-in (see _peer_state)
        self.limit_resync_at: float | None = None
        self.stop_signal: int | None = None
        self.reload_requested = False
        self._discovered: set[str] = set()
        self.next_reconcile = time.monotonic() + cfg.reconcile_interval
        self.next_reachable = 0.0  # (export.reachable_only: looked at from the first tick)
        self._route_lookup: IPRoute | None = None  # its socket, opened once
        self.next_gauges = 0.0
        self.report = Reporter(cfg, self.core)  # logs, metrics, status
        # the prober (run() makes it; none in dry-run and in tests), and what it should probe
        self.prober: Probes | None = None
        self.probe_targets: dict[str, str] = first.probes or {}
        self._seen = 0.0  # the arrival time of the newest input handed to the core
        # a full table arriving: the kernel applies one batch (on a helper thread) while the
        # loop decides the next; see _perform and _settle
        self.apply_at = APPLY_AT
        self.kernel = KernelBatches(writer, lambda ev: self.core.handle(ev))

    # ------------------------------------------------------------------ inputs

    def start_reader(self, stream: IO[bytes]) -> threading.Thread:
        """Read stdin in its own thread so kernel work never stalls ExaBGP's pipe."""

        # os.read on the descriptor, not the buffered reader: a thread blocked inside a
        # buffered read aborts the interpreter at exit (ExaBGP sends SIGTERM while our stdin
        # is still open), and lines may be 500 KB and more.
        fd = stream.fileno()
        _widen_pipe(fd)

        def run() -> None:
            pending = bytearray()
            try:
                while chunk := os.read(fd, READ_CHUNK):
                    pending += chunk
                    end = pending.rfind(b"\n")
                    if end < 0:
                        continue
                    now = time.monotonic()
                    for line in bytes(pending[: end + 1]).splitlines(keepends=True):
                        self.queue.put(("line", now, line))
                    del pending[: end + 1]
                if pending:
                    self.queue.put(("line", time.monotonic(), bytes(pending)))
            except OSError as e:
                log.error("stdin: read failed: %s", e)
            self.queue.put(("eof", time.monotonic(), None))

        t = threading.Thread(target=run, name="vtibgp-stdin", daemon=True)
        t.start()
        return t

    def attach_prober(self, prober: Probes) -> None:
        """From now on the core's probe targets go to `prober` (the ones decided so far at
        once)."""
        self.prober = prober
        self._probe_now()

    def _probe_now(self) -> None:
        """Give the prober the targets the core decided last."""
        if self.prober is not None:
            self.prober.set_targets({dev: ProbeTarget(dev, t)
                                     for dev, t in self.probe_targets.items()})

    def start_state(self, ev: DeviceState) -> None:
        """A tunnel device's state as the link monitor found it before the loop runs."""
        log.warning("device %s is %s at start", ev.device, ev.reason)
        self._perform(self.core.handle(ev))

    def post(self, event: Event) -> None:
        """Thread-safe: hand an event from another thread (link monitor) to the loop."""
        self.queue.put(("event", time.monotonic(), event))

    def ask(self, body: dict[str, Any]) -> dict[str, Any]:
        """Thread-safe: have the loop answer a control request (status, routes, …)."""
        req = _Request(body)
        self.queue.put(("request", time.monotonic(), req))
        if not req.done.wait(REQUEST_TIMEOUT):
            return {"error": "vtibgp is busy; try again"}
        return req.answer

    def install_signals(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            self.stop_signal = signum

        def reload(_signum: int, _frame: object) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def reload(self) -> bool:
        """SIGHUP: read the config file again. A config that does not load leaves the running
        one in place; one that does is applied to every held path at once. Settings that live
        outside the loop (metrics.listen, control.socket, kernel table/protocol/batch) need a
        restart and are reported."""
        self.reload_requested = False
        try:
            new = load(self.cfg.source)
        except ConfigError as e:
            m.RELOAD_OK.set(0)
            log.error("reload failed, keeping the running config: %s", e)
            return False
        fixed = [k for k in ("metrics_listen", "metrics_tls_cert", "metrics_tls_key",
                             "control_socket", "table", "protocol", "batch", "fallback",
                             "nexthop_objects", "probe_enabled", "probe_interval")
                 if getattr(new, k) != getattr(self.cfg, k)]
        if fixed:
            log.warning("reload: %s changed; that takes effect at the next start",
                        ", ".join(fixed))
            # the kernel writer was made with these: the running values stay until then
            new = dataclasses.replace(new, **{k: getattr(self.cfg, k) for k in fixed})
        old, self.cfg = self.cfg, new
        self.report.configure(new)
        self._perform(self.core.handle(Reconfigure(core_settings(new))))
        self.report.limit_gauges()
        m.RELOAD_OK.set(1)
        m.RELOAD_TIME.set(time.time())
        log.info("reloaded %s (%d peers)", new.source, len(new.peers))
        if self.commands is not None and self._may_accept_more(old, new):
            # paths refused (or dropped as from an unknown peer) under the old config are
            # not held: ask ExaBGP for its adj-rib-in again and judge them under the new one
            log.info("reload: import policy or peers changed; asking ExaBGP for its "
                     "adj-rib-in again")
            self._resync()
        return True

    @staticmethod
    def _may_accept_more(old: Config, new: Config) -> bool:
        # (per-peer policy, max-prefix and outside endpoints live in `policy` too)
        return (old.policy != new.policy
                or old.accept_unconfigured_peers != new.accept_unconfigured_peers
                or {p.address for p in old.peers} != {p.address for p in new.peers})

    # ------------------------------------------------------------------ start-up

    def startup(self, resync: bool) -> None:
        """Read our routes left in the kernel, ask ExaBGP what it already holds, then adopt
        the routes: the adoption overlaps ExaBGP's answer, which queues meanwhile (the
        reader should be started first; input is only processed by run())."""
        t0 = time.monotonic()
        self.report.zero_series()
        self.report.limit_gauges()
        m.RELOAD_OK.set(1)
        m.RELOAD_TIME.set(time.time())
        found = self.writer.dump()
        if found:
            log.info("start: %d routes of ours already in the kernel; keeping them until the "
                     "peers have re-sent their routes (grace %gs)", len(found), self.cfg.grace_time)
        if resync and self.commands is not None:
            self._ask_when_quiet(t0 + RESYNC_QUIET)
        self._perform(self.core.handle(KernelRoutesFound(tuple(found))))
        self.grace_deadline = time.monotonic() + self.cfg.grace_time

    def _ask_when_quiet(self, deadline: float) -> None:
        """Ask for ExaBGP's adj-rib-in once its output has been free of answer text for
        RESYNC_QUIET. A respawned process receives the rest of an answer ExaBGP was writing
        to the process before it, and answer lines carry no request id: the text that comes
        before we ask is not ours, and is discarded (the session tells which it is). The
        quiet time is counted from each line's arrival (the reader stamps it), so the kernel
        dump before this overlaps it. Everything else read meanwhile is kept, in order, for
        run(). Start-up waits for this at most START_WAIT: a long tail (ExaBGP's default
        api.chunk trickles for a minute) is left to the loop (the session's quiet wait, see
        _timers), so that updown requests and link events are not held up meanwhile."""
        limit = time.monotonic() + START_WAIT
        while True:
            try:
                item = self.queue.get(timeout=max(0.0, min(deadline, limit) - time.monotonic()))
            except queue.Empty:
                break
            kind, t, payload = item
            if kind == "line" and isinstance(payload, bytes):
                later = self.session.stale_before_asking(payload, t, deadline)
                if later is not None:
                    deadline = later
                    continue
            self.backlog.append(item)
            if kind == "eof":
                return
        if time.monotonic() < deadline:
            self.session.ask_when_quiet(deadline)  # still arriving: asked once it is over
            return
        self._ask_now()

    def _ask_now(self) -> None:
        self._stale_note()
        self._resync()

    def _stale_note(self) -> None:
        if self.session.stale_lines:
            log.info("start: discarded %d lines of an answer meant for the process before us",
                     self.session.stale_lines)

    def _resync(self) -> None:
        """Ask ExaBGP which sessions are established and what their adj-rib-in holds; the
        answer comes back through the session as replayed events."""
        log.info("resync: asking ExaBGP for its sessions and adj-rib-in")
        self.session.resync()
        self._write_commands()

    def _write_commands(self) -> None:
        """Write what the session has to say to ExaBGP (our stdout is its command input)."""
        assert self.commands is not None
        for cmd in self.session.take_commands():
            try:
                self.commands.write(cmd + "\n")
                self.commands.flush()
            except OSError as e:
                log.error("cannot write command %r to ExaBGP: %s", cmd, e)
                self.session.unsent(cmd)

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Process input until EOF or a stop signal; returns the exit status."""
        while True:
            if self.stop_signal is not None:
                log.info("stopping on signal %d", self.stop_signal)
                break
            if self.reload_requested:
                self.reload()
            if self.backlog:  # what start-up read before asking ExaBGP comes first
                batch = [self.backlog.popleft()
                         for _ in range(min(DRAIN_MAX, len(self.backlog)))]
            else:
                try:
                    item = self.queue.get(timeout=self._idle_wait())
                except queue.Empty:
                    self._timers()
                    continue
                batch = [item]
                while len(batch) < DRAIN_MAX:
                    try:
                        batch.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
            eof = self._process(batch)
            self._timers()
            if eof:
                log.info("stdin closed: ExaBGP is gone")
                break
        self._exit()
        return 0

    def _idle_wait(self) -> float:
        """How long the loop may wait for input: TICK, or less when the core needs a timer
        pass sooner (a probe's detect time, a hold-down)."""
        due = self.core.next_timer()
        if due is None:
            return TICK
        return min(TICK, max(0.0, due - time.monotonic()) + 0.001)

    def _process(self, batch: list[tuple[str, float, object]]) -> bool:
        # A batch builds a few objects per route, none of them in a reference cycle, and
        # keeps them until they are applied: the cyclic collector would only rescan the
        # RIB's tables again and again (a fifth of the time at 1,000,000 prefixes).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._batch(batch)
        finally:
            if collecting:
                gc.enable()

    def _batch(self, batch: list[tuple[str, float, object]]) -> bool:
        d = Decision()
        oldest_update: float | None = None
        eof = False
        applied = False
        for kind, t, payload in batch:
            self._seen = t
            if len(d.ops) >= self.apply_at:
                # a full table arriving: what is decided so far goes to the kernel (sooner
                # there, and the ops of the whole backlog are never held at once) while the
                # loop decides on
                self._perform(d, overlap=True)
                d = Decision()
                applied = True
            if kind == "line":
                assert isinstance(payload, bytes)
                is_update = self._line(payload, t, d)
                if is_update and oldest_update is None:
                    oldest_update = t
            elif kind == "request":
                assert isinstance(payload, _Request)
                self._settle(d)
                payload.answer = self._answer(payload.body, d)
                payload.done.set()
                # what the request set in motion is decided once its caller has the answer
                while self.after_answer:
                    d.merge(self.core.handle(self.after_answer.popleft()))
            elif kind == "event":
                assert not isinstance(payload, bytes | None)
                self._event(payload, d)  # type: ignore[arg-type]
            else:
                eof = True
        for line_kind, n in self.lines_seen.items():
            _child(m.INPUT_LINES, line_kind.value).inc(n)
        self.lines_seen.clear()
        decided = bool(d.ops)
        self._perform(d)
        if oldest_update is not None and (decided or applied):
            m.UPDATE_LATENCY.observe(time.monotonic() - oldest_update)
        return eof

    def _line(self, raw: bytes, t: float, d: Decision) -> bool:
        got = self.session.receive(raw, t)
        seen = self.lines_seen  # counted into INPUT_LINES once per batch (see _batch)
        seen[got.kind] = seen.get(got.kind, 0) + 1
        if got.api_version:
            m.set_build(got.api_version)
            log.info("ExaBGP JSON API version %s", got.api_version)
        if got.problem:
            reason, error = got.problem
            m.INPUT_REJECTED.labels(reason).inc()
            log.warning("input: %s line: %s (%s)", got.kind.value, error, _excerpt(raw))
        for level, text in got.notes:
            getattr(log, level)("%s", text)
        if got.learned:
            self.report.learned(got.learned)
        for ev in got.replayed:
            self._event(ev, d, replay=True)
        for ev in got.live:
            self._event(ev, d)
        if got.kind is LineKind.UPDATE:
            m.LAST_UPDATE.set(time.time())
            return True
        return False

    def _event(self, ev: Event, d: Decision, replay: bool = False) -> None:
        """One event into the core. `replay`: it comes from an answer of ExaBGP's (the
        adj-rib-in read at start or after a reload), not from the peer: not counted as
        received again."""
        flying = self.kernel.in_flight
        if flying is not None and not (isinstance(ev, Announce | Withdraw)
                                       and self.core.device_of(ev.peer) is not None
                                       and flying.isdisjoint(ev.prefixes)):
            # only the routes of other prefixes may be decided while a batch is in flight
            # (see _settle): anything else waits for its answer
            self._settle(d)
        match ev:
            case Announce(peer=peer):
                if peer in self.report.known_peers:
                    if not replay:
                        _child(m.PREFIXES_RECEIVED, peer).inc(len(ev.prefixes))
                elif not self.cfg.accept_unconfigured_peers:
                    m.PREFIXES_IGNORED.labels("unknown_peer").inc(len(ev.prefixes))
                    log.debug("ignoring %d prefixes from unconfigured peer %s",
                              len(ev.prefixes), peer)
                log.debug("peer %s announced %d %s prefixes via %s", peer, len(ev.prefixes),
                          ev.family, ev.attrs.next_hop)
            case Withdraw(peer=peer):
                if peer in self.report.known_peers:
                    _child(m.WITHDRAWS_RECEIVED, peer).inc(len(ev.prefixes))
                log.debug("peer %s withdrew %d %s prefixes", peer, len(ev.prefixes), ev.family)
            case PeerState():
                if ev.state == "down" and ev.reason in EXABGP_SHUTDOWN_REASONS and \
                        self.cfg.on_exit == "retain":
                    # ExaBGP itself is stopping: its sessions go down but our routes stay.
                    log.info("peer %s session down (%s): ExaBGP is stopping; keeping its "
                             "routes (on_exit: retain)", ev.peer, ev.reason)
                    return
                self._peer_state(ev, d)
                if ev.state == "down":
                    dev = self.core.session_flush(ev.peer)
                    if dev is not None and self._flush_device(dev, d):
                        log.info("peer %s session down: routes through %s taken out with its "
                                 "nexthop objects", ev.peer, dev)
            case EndOfRib(peer=peer):
                log.info("peer %s: End-of-RIB %s", peer, ev.family)
            case NotificationReceived(peer=peer):
                log.warning("peer %s sent NOTIFICATION %d/%d %s", peer, ev.code, ev.subcode,
                            ev.message)
            case DeviceState(device=dev):
                if not ev.usable and self.writer.note_device_gone(dev):
                    # the kernel took the routes through it away with its nexthop objects
                    d.merge(self.core.handle(KernelFlushed(dev)))
                self.writer.forget(dev)
                self.report.device(ev)
            case _:
                pass
        if isinstance(ev, Announce) and self.core.device_of(ev.peer) is None:
            self._discover(ev.peer, None, d)
        d.merge(self.core.handle(ev))
        if isinstance(ev, PeerState | Announce | Withdraw) and \
                ev.peer in self.report.known_peers:
            _child(m.PEER_PATHS, ev.peer).set(self.core.path_count(ev.peer))

    def _peer_state(self, ev: PeerState, d: Decision) -> None:
        self.report.session(ev)
        if ev.state == "up":
            self._discovered.discard(ev.peer)  # a new session: look again
            if self.core.device_of(ev.peer) is None:
                self._discover(ev.peer, ev.local, d)

    def _flush_device(self, dev: str, d: Decision) -> bool:
        """Take every route through `dev` out in one kernel step (deleting its nexthop
        objects) and tell the core, whose next decisions start from there. The ops decided
        so far go to the kernel first: none of them may land after the flush. False if it
        could not be done (inline nexthops, or the kernel refused): the core's ops then
        remove the routes one by one."""
        if d.ops:
            ops, d.ops = d.ops, []
            d.merge(self.kernel.apply(ops))
        if not self.writer.flush_device(dev):
            return False
        d.merge(self.core.handle(KernelFlushed(dev)))
        return True

    def _discover(self, peer: str, local: str | None, d: Decision) -> None:
        """Find the device of a peer configured without `interface` (once per session)."""
        if self.discover is None or peer in self._discovered or not self.core.known(peer):
            return
        self._discovered.add(peer)
        dev = self.discover(peer, local)
        if dev is None:
            log.warning("peer %s: no device holds local address %s or a subnet with the "
                        "peer; its routes are ignored until one does", peer, local)
        else:
            log.info("peer %s: discovered device %s", peer, dev)
        d.merge(self.core.handle(PeerDevice(peer, dev)))

    def _timers(self) -> None:
        now = time.monotonic()
        # input still queued (a busy loop) may hold probe replies: silence is judged only up
        # to the newest input handed in
        seen = now if self.queue.empty() else self._seen
        d = Decision()
        for dev in self.core.probe_due(seen):
            if self._flush_device(dev, d):
                log.info("probe %s: no echo reply for the detect time; routes through it "
                         "taken out with its nexthop objects", dev)
        d.merge(self.core.handle(Tick(now, seen)))
        if self.session.due(now):  # the start-up quiet wait is over: the resync is asked
            self._stale_note()
            self._write_commands()
        if self.grace_deadline is not None and now >= self.grace_deadline and \
                self.session.busy:
            # ExaBGP is still sending its adj-rib-in (100k paths can take a minute with its
            # default api.chunk): sweeping now would remove routes about to be confirmed
            if not self.grace_waited:
                self.grace_waited = True
                log.info("start: grace time over but ExaBGP's adj-rib-in is still arriving; "
                         "unconfirmed routes stay until it is in")
        elif self.grace_deadline is not None and now >= self.grace_deadline:
            self.grace_deadline = None
            if not self.core.synced:
                log.info("start: grace timer (%gs) ran out; removing unconfirmed routes",
                         self.cfg.grace_time)
            d.merge(self.core.handle(GraceExpired()))
        self._perform(d)
        if self.limit_resync_at is not None and now >= self.limit_resync_at:
            self.limit_resync_at = None
            if self.commands is not None:
                log.info("max-prefix restart delay over: asking ExaBGP for its adj-rib-in")
                self._resync()
        if self.cfg.export_reachable_only and now >= self.next_reachable:
            self.next_reachable = now + REACHABLE_INTERVAL
            self._look_reachable()
        if self.cfg.reconcile_interval and now >= self.next_reconcile:
            t0 = time.perf_counter()
            self.reconcile()
            # a dump of a million routes takes seconds: the scan takes at most ~5% of the
            # loop's time, however large the table
            self.next_reconcile = now + max(self.cfg.reconcile_interval,
                                            20 * (time.perf_counter() - t0))
        if now >= self.next_gauges:
            t0 = time.perf_counter()
            self.report.route_gauges()
            # they walk every route: at most ~5% of the loop's time on a large table
            self.next_gauges = now + max(GAUGE_INTERVAL, 20 * (time.perf_counter() - t0))

    def _look_reachable(self) -> None:
        """export.reachable_only: which of our networks the kernel has another route to (a
        lookup each); a netlink error keeps what was known (nothing is withdrawn on it)."""
        try:
            if self._route_lookup is None:
                self._route_lookup = IPRoute()
            found = reachable(self.cfg.export_networks, self.cfg.protocol, self._route_lookup)
        except (OSError, NetlinkError) as e:
            self._close_route_lookup()  # (a fresh socket next time)
            code = e.code if isinstance(e, NetlinkError) else e.errno
            m.KERNEL_ERRORS.labels(errno_mod.errorcode.get(code or 0, "EIO")).inc()
            log.warning("reachable_only: route lookup of our networks failed (%s); keeping "
                        "what was announced", e)
            return
        if found != self.core.reachable:
            gone = sorted(set(self.core.reachable or ()) - found)
            log.info("reachable_only: %s", "; ".join(filter(None, [
                f"reachable {' '.join(sorted(found))}" if found else "none reachable",
                f"no longer {' '.join(gone)}" if gone else ""])))
        self._perform(self.core.handle(NetworksReachable(found)))

    def _close_route_lookup(self) -> None:
        if self._route_lookup is not None:
            self._route_lookup.close()
            self._route_lookup = None

    def reconcile(self) -> None:
        """Periodic scan: repair what the kernel lost or someone else changed."""
        if not self.core.synced:
            return  # start-up adoption is still sorting the kernel out
        self._perform(self.core.handle(Reconcile(tuple(self.writer.dump()))))
        gone = self.writer.collect_garbage()
        if gone:
            log.info("reconcile: removed %d nexthop objects no route uses any more", gone)

    def ipsec(self, body: dict[str, Any], d: Decision) -> dict[str, Any]:
        """An updown notification: tell the core what it means (see tunnel_request)."""
        req = tunnel_request(body, self.cfg, self.core.device_of, time.monotonic())
        if isinstance(req, str):
            return {"error": req}
        log.info("%s (%s)", req.reason, ", ".join(e.device or "peers " + " ".join(e.peers)
                                                  for e in req.events))
        for ev in req.events:
            if ev.device and not ev.up:
                # at once, before anything else: the backups through the other tunnel carry
                # the traffic from then on
                self._flush_device(ev.device, d)
            self.after_answer.append(ev)  # decided after the caller is answered (_process)
        if req.outside is not None:
            # the loop guard learns the tunnel's public endpoint from the IPsec daemon
            for peer in req.peers:
                d.merge(self.core.handle(OutsideLearned(peer, (req.outside,))))
        if req.reset and self.commands is not None:
            # so that ExaBGP resyncs when the tunnel returns
            for peer in req.peers:
                log.info("tunnel down: resetting the BGP session with %s", peer)
                self.session.teardown(peer, CEASE_ADMIN_RESET)
            self._write_commands()
        return {"ok": True, "applied": len(req.events)}

    # ------------------------------------------------------------------ control requests

    def _answer(self, body: dict[str, Any], d: Decision) -> dict[str, Any]:
        cmd = body.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "routes":
            prefix = body.get("prefix")
            return self.route_table(prefix if isinstance(prefix, str) else None)
        if cmd == "tunnel":
            return self.ipsec(body, d)
        return {"error": f"unknown command {cmd!r}; known: status, routes, tunnel"}

    def _export(self, d: Decision) -> None:
        """Tell ExaBGP what the decision changed of our announced networks."""
        if not d.exports or self.commands is None:
            return
        for change in d.exports:
            self.session.export(change)
            ann = change.announcement
            what = " ".join(change.prefixes) if len(change.prefixes) <= 8 else \
                f"{len(change.prefixes)} prefixes ({' '.join(change.prefixes[:4])} ...)"
            side = "LAN side" if any(lp.address == change.peer
                                     for lp in self.cfg.export_lan_peers) else "return path"
            log.info("%s: %s %s %s%s", side, "announce" if ann else "withdraw",
                     what, f"to {change.peer}",
                     "" if ann is None else
                     f" ({'preferred' if ann.preferred else 'less preferred'}: med "
                     f"{ann.med if ann.med is not None else '-'}, as-path "
                     f"{' '.join(map(str, ann.as_path)) or 'default'})")
        self._write_commands()
        self.report.exports()

    def status(self) -> dict[str, Any]:
        return self.report.status(self.session.api_version, self.session.summary_states)

    def route_table(self, prefix: str | None) -> dict[str, Any]:
        return {"prefixes": view.route_table(self.core, prefix)}

    # ------------------------------------------------------------------ kernel

    def _perform(self, d: Decision, overlap: bool = False) -> None:
        """Carry out a decision: its route ops into the kernel, then its other effects. The
        changes of our announcements go to ExaBGP first: they are a few lines, and the cloud's
        return path should not wait for 10,000 route writes (the traffic already moved with
        the flush of the tunnel's nexthop objects, where there was one). With `overlap` the
        ops go to the kernel on the kernel thread and the rest waits for _settle."""
        self._settle(d)
        self._export(d)
        d.exports = []
        if overlap and d.ops:
            ops, d.ops = d.ops, []
            self.kernel.start(ops, d)
            return
        later = self.kernel.apply(d.ops)
        d.ops = []
        self._report(d)
        if later.effects():
            self._report(later)

    def _settle(self, pending: Decision) -> None:
        """Wait for the batch in flight, if any (see KernelBatches.settle), then carry out
        the rest of its decision and of the core's answers to its refusals."""
        got = self.kernel.settle(pending)
        if got is not None:
            effects, later = got
            self._report(effects)
            if later.effects():
                self._report(later)

    def _report(self, d: Decision) -> None:
        """The effects of a decision besides its route ops: the reporter's logs and metrics,
        the sessions to reset, when held-back peers are read again."""
        self.report.decision(d)
        if d.probes is not None:
            self.probe_targets = d.probes
            log.info("probing %s", ", ".join(f"{dev} -> {t}" for dev, t in sorted(
                d.probes.items())) or "no tunnel")
            self._probe_now()
        self._export(d)
        if d.resets and self.commands is not None:
            for peer, subcode in d.resets:
                self.session.teardown(peer, subcode)
            self._write_commands()
        for hb in d.held_back:
            at = self.limit_resync_at
            self.limit_resync_at = hb.until if at is None else min(at, hb.until)

    # ------------------------------------------------------------------ exit

    def _exit(self) -> None:
        if self.prober is not None:
            self.prober.close()
        self._close_route_lookup()
        if self.cfg.on_exit == "withdraw":
            d = self.core.handle(Stopping(withdraw=True))
            ops = d.ops
            log.info("exit: removing our %d routes (on_exit: withdraw)%s", len(ops),
                     " and withdrawing our networks" if d.exports else "")
            self._export(d)
            res = self.writer.apply(ops)
            if not res.failed:
                self.writer.release_nexthops()
        else:
            log.info("exit: leaving our %d routes in place (on_exit: retain)",
                     self.core.route_count())
        self.kernel.close()
        self.writer.close()


def _probe_or_not(cfg: Config) -> Config:
    """The probe needs CAP_NET_RAW or a ping_group_range with our group: without either it
    is off, with a warning (never a crash); the other signals work as before."""
    if not cfg.probe_enabled:
        return cfg
    families = {AF_INET6 if ":" in p.probe else AF_INET
                for p in cfg.peers if p.probe}
    for family in sorted(families):
        why = Prober.check(family)
        if why is not None:
            log.warning("%s: the probe is off: %s. Silent tunnel failures are then seen only "
                        "when BGP's hold timer runs out (README \"Privileges\")", cfg.source,
                        why)
            m.PROBE_AVAILABLE.set(0)
            return dataclasses.replace(cfg, probe_enabled=False)
    m.PROBE_AVAILABLE.set(1)
    return cfg


def start_prober(cfg: Config, post: Callable[[Event], None]) -> Prober:
    """The prober, its replies handed to the loop as events and counted in the metrics
    (its callbacks run on its own thread: quick, no core state)."""
    def reply(device: str, rtt: float, at: float) -> None:
        m.PROBE_REPLIES.labels(device).inc()
        m.PROBE_RTT.labels(device).observe(rtt)
        post(ProbeReply(device, rtt, at))

    def error(device: str, message: str) -> None:
        m.PROBE_ERRORS.labels(device).inc()
        log.warning("probe %s: %s", device, message)

    return Prober(reply, interval=cfg.probe_interval,
                  on_sent=lambda device, _at: m.PROBE_SENT.labels(device).inc(),
                  on_lost=lambda device, _at: m.PROBE_LOST.labels(device).inc(),
                  on_error=error)


def _widen_pipe(fd: int) -> None:
    """Let ExaBGP write up to PIPE_SIZE ahead of us. With the default 64 KiB a full table
    fills the pipe in a few milliseconds whenever the reader thread waits for the GIL, and
    ExaBGP then stalls on it (and spends more CPU polling). Not a pipe, or above the
    system's fs.pipe-max-size: left as it is."""
    try:
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError as e:
        log.debug("stdin: pipe size left as it is (%s)", e)


def _excerpt(raw: bytes, limit: int = 120) -> str:
    text = raw[:limit].decode("utf-8", "replace").rstrip("\n")
    return text + ("…" if len(raw) > limit else "")


def run(cfg: Config, *, dry_run: bool, stdin: IO[bytes] | None = None) -> int:
    """`vtibgp run`: wire the shell together and run until EOF or SIGTERM."""
    src = stdin if stdin is not None else sys.stdin.buffer
    if dry_run:
        daemon = Daemon(cfg, PrintWriter(sys.stdout), None)
        daemon.install_signals()
        daemon.start_reader(src)
        daemon.startup(resync=False)
        return daemon.run()

    from vtibgp.kernel.links import LinkMonitor, find_device
    from vtibgp.kernel.writer import KernelWriter

    writer = KernelWriter(table=cfg.table, proto=cfg.protocol, batch=cfg.batch,
                          fallback=None if cfg.fallback == "none" else cfg.fallback)
    try:
        writer.check_permission()
    except PermissionError as e:
        log.error("%s. vtibgp needs CAP_NET_ADMIN: run ExaBGP with exabgp.daemon.user=root, "
                  "or as its own user with AmbientCapabilities=CAP_NET_ADMIN (see README, "
                  "'Privileges')", e)
        writer.close()
        return 2
    if cfg.nexthop_objects != "off" and not writer.enable_nexthop_objects() and \
            cfg.nexthop_objects == "on":
        log.error("%s: kernel.nexthop_objects is true but %s (nexthop objects need Linux 5.3 "
                  "or later and net.ipv4.nexthop_compat_mode=1); set it to auto or false",
                  cfg.source, writer.nexthop_refusal)
        writer.close()
        return 2
    log.info("kernel writer: table %s, protocol %s, route requests packed %s", cfg.table,
             cfg.protocol, "in C" if writer.compiled_packer else "in Python (the compiled "
             "packer is not built; see vtibgp doctor)")
    cfg = _probe_or_not(cfg)
    daemon = Daemon(cfg, writer, sys.stdout, discover=find_device)
    if cfg.probe_enabled:
        daemon.attach_prober(start_prober(cfg, daemon.post))
    daemon.install_signals()
    if cfg.metrics_listen:
        m.serve(cfg.metrics_listen, cfg.metrics_tls_cert, cfg.metrics_tls_key)
    control = None
    if cfg.control_socket:
        control = ControlServer(cfg.control_socket, daemon.ask)
        try:
            control.start()
        except (OSError, ControlError) as e:
            log.error("control socket %s: %s; continuing without it", cfg.control_socket, e)
            control = None
    monitor = LinkMonitor(daemon.post,
                          on_error=lambda name: m.KERNEL_ERRORS.labels(name).inc())
    devices = {p.interface for p in cfg.peers if p.interface}
    for ev in monitor.start(devices):
        daemon.start_state(ev)
    daemon.start_reader(src)  # (lines queue up, stamped, while start-up reads the kernel)
    daemon.startup(resync=cfg.resync)
    try:
        return daemon.run()
    finally:
        monitor.close()
        if control is not None:
            control.close()
