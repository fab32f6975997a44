"""The relay of `vtibgp run` (vtibgp.shell.supervisor): its line framing and backoff, then the real
relay with a small real child (a Python script using `attach`), no root needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtibgp.shell.supervisor import Backoff, LineFramer, exit_status

REPO = Path(__file__).resolve().parents[2]


def test_framer_returns_whole_lines_and_keeps_the_rest() -> None:
    f = LineFramer()
    assert f.feed(b"abc") == b""
    assert f.pending == 3
    assert f.feed(b"def\ngh") == b"abcdef\n"
    assert f.feed(b"i\nj\nk") == b"ghi\nj\n"
    assert f.drop() == 1
    assert f.feed(b"\n") == b"\n"  # what was dropped never completes a later line
    assert f.pending == 0


@given(st.lists(st.binary(max_size=40), max_size=30))
def test_framer_any_cut_gives_the_lines_unchanged(chunks: list[bytes]) -> None:
    f = LineFramer()
    out = b"".join(f.feed(c) for c in chunks)
    whole = b"".join(chunks)
    cut = whole.rfind(b"\n") + 1
    assert out == whole[:cut]
    assert f.pending == len(whole) - cut
    assert not out or out.endswith(b"\n")


def test_backoff_doubles_for_young_deaths_and_resets_after_a_settled_child() -> None:
    b = Backoff(initial=0.25, maximum=2.0, settled=60.0)
    assert [b.delay(1.0) for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert b.delay(61.0) == 0.25
    assert b.delay(0.0) == 0.5


def test_exit_status() -> None:
    assert exit_status(0) == 0 and exit_status(2) == 2
    assert exit_status(-signal.SIGKILL) == 137


# ------------------------------------------------------------------ the real relay

CHILD = """\
import os, signal, sys, time
from vtibgp.shell.supervisor import attach
attach()
mark = sys.argv[1]
with open(mark + ".pids", "a") as f:
    f.write(f"{os.getpid()}\\n")
signal.signal(signal.SIGHUP, lambda *_: print("hup", flush=True))
signal.signal(signal.SIGTERM, lambda *_: (open(mark + ".term", "w").close(), sys.exit(5)))
if os.environ.get("CHILD_STATUS") and not os.path.exists(mark + ".once"):
    open(mark + ".once", "w").close()
    sys.exit(int(os.environ["CHILD_STATUS"]))
print("hello", flush=True)
for line in sys.stdin:
    if line == "die\\n":
        sys.stdout.write("half a li")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    print("got " + line.strip(), flush=True)
open(mark + ".eof", "w").close()
sys.exit(3)
"""

RELAY = """\
import sys
from vtibgp.shell.supervisor import Backoff, Relay
sys.exit(Relay([sys.executable, sys.argv[1], sys.argv[2]],
               backoff=Backoff(initial=0.05, maximum=0.2)).run())
"""


class Running:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        (tmp / "child.py").write_text(CHILD)
        (tmp / "relay.py").write_text(RELAY)
        self.mark = tmp / "mark"
        self.out_path = tmp / "out"
        self.out = self.out_path.open("wb")
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, str(tmp / "relay.py"), str(tmp / "child.py"), str(self.mark)],
            stdin=subprocess.PIPE, stdout=self.out, stderr=subprocess.PIPE, env=full_env)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def output(self) -> list[str]:
        return self.out_path.read_text().splitlines()

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in Path(f"{self.mark}.pids").read_text().split()]
        except FileNotFoundError:
            return []

    def wait_for(self, what: str, cond: object) -> None:
        deadline = time.monotonic() + 20
        while not (cond() if callable(cond) else cond):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; output {self.output()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pid in self.pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.out.close()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def test_relay_survives_the_child_and_never_passes_half_a_line(relay: Running) -> None:
    relay.wait_for("the first child", lambda: relay.output() == ["hello"])
    relay.send("one\ntw")
    relay.send("o\n")
    relay.wait_for("two lines", lambda: relay.output()[-1:] == ["got two"])
    first = relay.pids()
    relay.send("die\n")  # the child writes half a line and is SIGKILLed
    relay.wait_for("the next child", lambda: len(relay.pids()) == 2 and
                   relay.output().count("hello") == 2)
    relay.send("three\n")
    relay.wait_for("a line through the next child", lambda: relay.output()[-1:] == ["got three"])
    assert relay.output() == ["hello", "got one", "got two", "hello", "got three"]
    assert not alive(first[0])
    assert relay.proc.poll() is None  # the relay, ExaBGP's process, is still there
    # ExaBGP's EOF: the child reads its input to the end, and its status is the relay's
    assert relay.proc.stdin is not None
    relay.proc.stdin.close()
    assert relay.proc.wait(10) == 3
    assert Path(f"{relay.mark}.eof").exists()


def test_signals_are_forwarded_and_sigterm_ends_both(relay: Running) -> None:
    relay.wait_for("the child", lambda: relay.output() == ["hello"])
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_for("SIGHUP in the child", lambda: relay.output() == ["hello", "hup"])
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(10) == 5  # the child's status, after its SIGTERM handler
    assert Path(f"{relay.mark}.term").exists()
    assert relay.pids() and not alive(relay.pids()[0])


def test_child_dies_with_the_relay_without_seeing_eof(relay: Running) -> None:
    relay.wait_for("the child", lambda: relay.output() == ["hello"])
    child = relay.pids()[0]
    relay.proc.kill()
    relay.proc.wait(10)
    relay.wait_for("the child to go", lambda: not alive(child))
    # its input never ended: a daemon would have withdrawn its routes on that EOF
    assert not Path(f"{relay.mark}.eof").exists()
    assert not Path(f"{relay.mark}.term").exists()


def test_a_first_child_refusing_with_status_2_ends_the_relay(tmp_path: Path) -> None:
    r = Running(tmp_path, env={"CHILD_STATUS": "2"})
    try:
        assert r.proc.wait(10) == 2
    finally:
        r.stop()


def test_a_first_child_failing_otherwise_is_started_again(tmp_path: Path) -> None:
    r = Running(tmp_path, env={"CHILD_STATUS": "1"})
    try:
        r.wait_for("the second child", lambda: r.output() == ["hello"])
        assert len(r.pids()) == 2 and r.proc.poll() is None
    finally:
        r.stop()
