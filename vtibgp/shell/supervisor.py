"""The relay `vtibgp run` is by default: the process ExaBGP starts, with the daemon below it.

Why: ExaBGP (4.2.21 and 5.0.x, `Processes.write`) marks its process *broken* when a write to
the process's stdin fails (EPIPE: the process died while ExaBGP was sending it updates), and
that mark is never cleared while ExaBGP runs: every peer's next turn (`Peer.run`) then stops
the peer for good ("ExaBGP lost the helper process for this peer - stopping"), whatever
process it respawns. A process that dies while ExaBGP is idle is only respawned. So the
process ExaBGP writes to must never die under load, and this one does nothing that can fail:

* it reads ExaBGP's stdin all the time and hands whole lines to the daemon child (through a
  pipe of its own), or drops them while no child runs (a new child asks ExaBGP for its state
  at start-up, `show neighbor summary` / `show adj-rib in extensive`);
* it hands the child's whole lines to ExaBGP: the partial line of a child that died is
  dropped, never completed by the next child's output;
* it starts a new child when one dies (after 0.25 s, doubling up to 15 s while children die
  young), forwards SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the child, and on SIGTERM
  or SIGINT waits for the child and exits with its status;
* on ExaBGP's EOF it ends the child's input, waits for it (the daemon's `on_exit` applies)
  and exits with its status. A first child that exits with status 2 (vtibgp cannot run
  here: no CAP_NET_ADMIN, ...) ends the relay with 2 as well.

The child must not take the relay's death for ExaBGP's EOF (it would withdraw its routes):
it holds a copy of the write end of its own input, so its input never ends by itself, and
reads a second pipe (`attach`): the byte FINISH there means "ExaBGP closed, your input ends
now" (the child closes its copy, then sees EOF); EOF there without it means the relay is
gone, and the child kills itself (SIGKILL, as if it had crashed: its routes stay in the
kernel for the next daemon to adopt). It also dies with the relay by PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("vtibgp.shell.supervisor")

ENV = "VTIBGP_RELAY"  # "relay pid:held write end of stdin:control read end", for the child
FINISH = b"E"  # on the control pipe: ExaBGP's input is over
CHUNK = 1 << 20
# ExaBGP writes and flushes every answer line on its own: a relay that wakes for each of a
# 100,000-line adj-rib-in spends more CPU than the daemon, and makes ExaBGP's writes dearer.
# In a burst (a small read soon after the previous one) it waits GATHER_SLEEP before reading
# again, so the next read takes what gathered meanwhile. What was read is passed on first: a
# lone line (a session going down) is never held back, a line of a burst at most 1 ms.
GATHER_BELOW = 1 << 16  # bytes: a read smaller than this ...
GATHER_GAP = 0.002  # seconds: ... this soon after the previous one is a burst
GATHER_SLEEP = 0.001
PIPE_SIZE = 1 << 20
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT)
REFUSED = 2  # vtibgp's "cannot run here" status


class LineFramer:
    """Cuts a byte stream at line ends: `feed` returns the whole lines so far (one bytes
    object, empty when none is complete) and keeps the unfinished rest for the next call."""

    def __init__(self) -> None:
        self._rest = bytearray()

    def feed(self, data: bytes) -> bytes:
        end = data.rfind(b"\n")
        if end < 0:
            self._rest += data
            return b""
        if self._rest:
            out = bytes(self._rest) + data[: end + 1]
            self._rest.clear()
        else:
            out = data[: end + 1]
        self._rest += data[end + 1:]
        return out

    @property
    def pending(self) -> int:
        """Bytes of the unfinished line held."""
        return len(self._rest)

    def drop(self) -> int:
        """Forget the unfinished line; returns its length."""
        n = len(self._rest)
        self._rest.clear()
        return n


@dataclass
class Backoff:
    """How long to wait before starting a child again: `initial` after a child that lived
    `settled` seconds or more, doubling (up to `maximum`) for each one that died sooner."""

    initial: float = 0.25
    maximum: float = 15.0
    settled: float = 60.0
    _next: float = field(default=0.0, init=False)

    def delay(self, lived: float) -> float:
        if lived >= self.settled or self._next == 0.0:
            self._next = self.initial
        wait = self._next
        self._next = min(self.maximum, self._next * 2)
        return wait


def exit_status(returncode: int) -> int:
    """A child's Popen return code as a process exit status (signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _widen(fd: int) -> None:
    with contextlib.suppress(OSError):
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Child:
    """One daemon child: its process, the pipe we write its input into, the control pipe."""

    def __init__(self, argv: Sequence[str]) -> None:
        read_in, self.write_in = os.pipe()
        ctl_read, self.ctl = os.pipe()
        _widen(self.write_in)
        env = dict(os.environ)
        env[ENV] = f"{os.getpid()}:{self.write_in}:{ctl_read}"
        try:
            self.proc = subprocess.Popen(list(argv), stdin=read_in, stdout=subprocess.PIPE,
                                         pass_fds=(self.write_in, ctl_read), env=env)
        except BaseException:
            for fd in (self.write_in, self.ctl):
                os.close(fd)
            raise
        finally:
            os.close(read_in)
            os.close(ctl_read)
        assert self.proc.stdout is not None
        self.out = self.proc.stdout.fileno()
        self.started = time.monotonic()
        self.lock = threading.Lock()  # the input and control fds: written and closed under it
        self.open = True

    def send(self, data: bytes) -> bool:
        """Write whole lines to the child; False (and nothing more) once it is gone."""
        with self.lock:
            if not self.open:
                return False
            try:
                _write_all(self.write_in, data)
                return True
            except OSError:  # EPIPE: it died; the rest of this is dropped
                self._close()
                return False

    def finish(self) -> None:
        """ExaBGP's input is over: tell the child its input ends, and end it."""
        with self.lock:
            if self.open:
                with contextlib.suppress(OSError):
                    os.write(self.ctl, FINISH)
                self._close()

    def close(self) -> None:
        with self.lock:
            if self.open:
                self._close()

    def _close(self) -> None:
        self.open = False
        for fd in (self.write_in, self.ctl):
            with contextlib.suppress(OSError):
                os.close(fd)


class Relay:
    """ExaBGP's process: relays whole lines between ExaBGP (`stdin`, `stdout`) and a daemon
    child started from `argv`, and starts the child again when it dies."""

    def __init__(self, argv: Sequence[str], *, stdin: int = 0, stdout: int = 1,
                 backoff: Backoff | None = None) -> None:
        self.argv = list(argv)
        self.stdin, self.stdout = stdin, stdout
        self.backoff = backoff or Backoff()
        self.child: _Child | None = None
        self.child_lock = threading.Lock()
        self.wake = threading.Event()  # EOF or a stop signal: end a wait between children
        self.eof = False
        self.stop_signal: int | None = None
        self.dropped = 0  # bytes of ExaBGP's whole lines that arrived while no child ran
        self.children = 0

    # ---------------------------------------------------------------- ExaBGP -> child

    def _from_exabgp(self) -> None:
        framer = LineFramer()
        last = 0.0
        while True:
            try:
                data = os.read(self.stdin, CHUNK)
            except InterruptedError:  # pragma: no cover (PEP 475 retries)
                continue
            except OSError as e:
                log.error("relay: reading ExaBGP failed: %s", e)
                data = b""
            if not data:
                break
            now = time.monotonic()
            lines = framer.feed(data)
            if lines:
                with self.child_lock:
                    child = self.child
                if child is None or not child.send(lines):
                    self.dropped += len(lines)
            if len(data) < GATHER_BELOW and now - last < GATHER_GAP:
                time.sleep(GATHER_SLEEP)
            last = now
        with self.child_lock:
            self.eof = True
            child = self.child
        if child is not None:
            child.finish()
        self.wake.set()

    # ---------------------------------------------------------------- child -> ExaBGP

    def _to_exabgp(self, child: _Child) -> None:
        framer = LineFramer()
        exabgp_open = True
        while True:
            try:
                data = os.read(child.out, CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            lines = framer.feed(data)
            if lines and exabgp_open:
                try:
                    _write_all(self.stdout, lines)
                except OSError:  # ExaBGP is gone: keep reading, so the child never blocks
                    exabgp_open = False
        if framer.pending:
            log.warning("relay: dropped an unfinished line (%d bytes) of the daemon that "
                        "ended", framer.drop())

    # ---------------------------------------------------------------- signals

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum in STOPPING:
            self.stop_signal = signum
            self.wake.set()
        child = self.child
        if child is not None and child.proc.returncode is None:
            with contextlib.suppress(OSError):
                child.proc.send_signal(signum)

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        for sig in FORWARDED:
            signal.signal(sig, self._signal)
        _widen(self.stdin)
        reading = threading.Thread(target=self._from_exabgp, name="relay-in", daemon=True)
        while True:
            if self.stop_signal is not None or self.eof:
                return 0
            child = self._start()
            if reading.ident is None:
                # only now: nothing ExaBGP sends before the first daemon is there is dropped
                reading.start()
            if child is None:
                status, lived = 127, 0.0
            else:
                reader = threading.Thread(target=self._to_exabgp, args=(child,),
                                          name="relay-out", daemon=True)
                reader.start()
                status = exit_status(child.proc.wait())
                lived = time.monotonic() - child.started
                reader.join(5.0)
                with self.child_lock:
                    self.child = None
                child.close()
                if child.proc.stdout is not None:
                    child.proc.stdout.close()
                if self.stop_signal is not None or self.eof:
                    return status
                if self.children == 1 and status == REFUSED:
                    log.error("relay: the daemon refused to run (status 2); exiting")
                    return status
            wait = self.backoff.delay(lived)
            log.error("relay: the daemon (pid %s) ended with status %d after %.1fs; starting "
                      "another in %gs", child.proc.pid if child else "-", status, lived, wait)
            self.wake.wait(wait)

    def _start(self) -> _Child | None:
        try:
            child = _Child(self.argv)
        except OSError as e:
            log.error("relay: cannot start the daemon %s: %s", self.argv, e)
            return None
        with self.child_lock:
            if self.eof:  # ExaBGP closed while we started it: end its input at once
                child.finish()
            self.child = child
            self.children += 1
        if self.stop_signal is not None:  # it came while the child was being started
            with contextlib.suppress(OSError):
                child.proc.send_signal(self.stop_signal)
        if self.dropped:
            log.info("relay: %d bytes from ExaBGP dropped while no daemon ran (the daemon "
                     "asks ExaBGP for its state at start)", self.dropped)
            self.dropped = 0
        return child


def child_command(config: str, log_level: str | None) -> list[str]:
    """How the relay starts the daemon: this Python, this package, `run --no-supervisor`."""
    argv = [sys.executable, "-m", "vtibgp", "run", "--no-supervisor",
            "--config", os.path.abspath(config)]
    return argv + (["--log-level", log_level] if log_level else [])


# -------------------------------------------------------------------- in the daemon child


def attach() -> None:
    """In a daemon started by the relay (ENV set; a no-op otherwise): die with the relay,
    without taking its death for ExaBGP's EOF (see the module's doc)."""
    spec = os.environ.pop(ENV, "")
    try:
        parent, held, ctl = (int(x) for x in spec.split(":"))
    except ValueError:
        return
    for fd in (held, ctl):
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    _die_with_parent()
    if os.getppid() != parent:  # the relay died before we could ask the kernel
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        try:
            said = os.read(ctl, 1)
        except OSError:
            said = b""
        if said == FINISH:
            os.close(held)  # the relay closes its end too: our input ends after its last line
            return
        os.kill(os.getpid(), signal.SIGKILL)  # the relay is gone

    threading.Thread(target=watch, name="vtibgp-relay-watch", daemon=True).start()


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
