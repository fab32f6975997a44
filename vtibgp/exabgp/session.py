"""The conversation with ExaBGP over its process API, without I/O (as h11's `Connection`).

Lines in (`receive`, with the time each arrived) → events for the core, marked live (from a
peer) or replayed (from an answer of ExaBGP's, the adj-rib-in read at start, after a reload or
a max-prefix delay); commands out (`send`, `resync` queue them, `take_commands` hands them to
the shell to write). Inside: the commands waiting for their answer (ExaBGP answers in order,
each ended by `done` or `error`, with no request id), the quiet period before the start-up
resync (a respawned process receives the tail of an answer meant for the one before it),
which answer lines a live update read meanwhile has made stale, the sessions' states as
ExaBGP's summary and state messages tell them, and the JSON API version.

Must not know: the RIB's decisions, the kernel, metrics, logging (what is worth logging comes
back as notes), the clock (times come in).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from vtibgp.core.export import ExportChange
from vtibgp.core.model import Announce, Event, Family, PeerState, ResyncDone, Withdraw
from vtibgp.exabgp.parse import AdjRibReader, LineKind, answer_line, parse_line

# prefixes per announce/withdraw command (the LAN side's are the cloud's table; ExaBGP packs
# each command's prefixes into as few UPDATEs as fit)
EXPORT_CHUNK: Final = 500
RESYNC_QUIET: Final = 0.5  # seconds without stray answer lines before the resync is asked
# `show neighbor summary`: the FSM states ExaBGP prints (lower case), and what `status` calls
# them (the words of ExaBGP's `state` messages)
SUMMARY_STATES: Final = {"idle": "idle", "active": "idle", "connect": "idle",
                         "opensent": "connected", "openconfirm": "connected",
                         "established": "up"}
# The reason ExaBGP gives the sessions it closes because it is itself stopping
# (Peer.shutdown: "stop, message [shutting down]"); 4.2's JSON encoder turns the brackets of a
# reason into parentheses. Matched exactly: 4.2 also copies a peer's NOTIFICATION text into the
# reason of a session the peer closed, and that text may well say "shutting down".
EXABGP_SHUTDOWN_REASONS: Final = frozenset({"stop, message [shutting down]",
                                            "stop, message (shutting down)"})
# its up/down column: "down", or the up time as Python's timedelta prints it ("0:00:03",
# "1 day, 0:00:03", "12 days, 1:02:03")
_UP_TIME = re.compile(r"(?:(\d+) days?, )?(\d+):(\d\d):(\d\d)(?:\.\d+)?")

Note = tuple[Literal["debug", "info", "warning"], str]  # something worth a log line


def summary_row(text: str) -> tuple[str, str, int | None] | None:
    """One row of ExaBGP's `show neighbor summary` answer (both versions: peer, AS, up/down,
    state, #sent, #recvd) as (peer, state in lower case, seconds up or None); None for the
    header and anything else. The up/down column has spaces in it from a day up ("1 day,
    0:00:03"), so the columns are taken from both ends, not by position."""
    cols = text.split()
    if len(cols) < 6 or not cols[-1].isdigit() or not cols[-2].isdigit():
        return None
    state = cols[-3].lower()
    if state not in SUMMARY_STATES:
        return None
    try:
        peer = str(ipaddress.ip_address(cols[0]))
    except ValueError:
        return None
    up = _UP_TIME.fullmatch(" ".join(cols[2:-3]))
    if up is None:
        return peer, state, None  # "down"
    days, hours, minutes, seconds = up.groups()
    return peer, state, ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + int(
        seconds)


class Received:
    """What one line meant. `replayed` events come before `live` ones (the answer's paths
    read so far are older than the live line that follows them). Made for every line (the
    resync's answer has 100,000s): the lists are made only when something goes in."""

    __slots__ = ("api_version", "kind", "learned", "live", "notes", "problem", "replayed")

    def __init__(self, kind: LineKind, live: tuple[Event, ...] = ()) -> None:
        self.kind = kind
        self.live = live
        self.replayed: list[Event] | tuple[()] = ()
        self.problem: tuple[str, str] | None = None  # (reason, error) of a line not usable
        self.api_version: str | None = None  # set when the line told a new version
        self.notes: list[Note] | tuple[()] = ()
        # sessions the summary told for peers no state message has told about: (peer, state
        # as `status` names it, seconds up or None)
        self.learned: list[tuple[str, str, int | None]] | tuple[()] = ()

    def replay(self, events: list[Event]) -> None:
        if events:
            if isinstance(self.replayed, list):
                self.replayed += events
            else:
                self.replayed = list(events)

    def note(self, level: Literal["debug", "info", "warning"], text: str) -> None:
        if isinstance(self.notes, list):
            self.notes.append((level, text))
        else:
            self.notes = [(level, text)]

    def learn(self, peer: str, state: str, up: int | None) -> None:
        if isinstance(self.learned, list):
            self.learned.append((peer, state, up))
        else:
            self.learned = [(peer, state, up)]


@dataclass(slots=True)
class _Pending:
    """A command sent, collecting its answer until `done` / `error`."""

    command: str
    on_line: Callable[[str, Received], None]
    on_end: Callable[[bool, Received], None]
    resync: _Resync | None = None


@dataclass
class _Resync:
    """One resync in flight (`show neighbor summary`, then `show adj-rib in extensive`), with
    all of its own state: a second one may be asked while it runs (a reload).

    ExaBGP writes the adj-rib-in of each peer from a snapshot, in chunks, while the live
    UPDATEs and state changes go on between them: a live event is newer than any snapshot
    line that follows it. So a (peer, family, path id, prefix) a live event was about since
    the resync was asked takes no more answer lines, and a peer whose session changed state
    after the summary told its state takes none at all: its new session re-sends its routes
    and End-of-RIB itself. (A change read before the peer's summary row is in that row: ExaBGP
    writes the rows as it makes them, after what it wrote before.)"""

    reader: AdjRibReader  # gathers alike lines into one Announce (they are held back)
    sessions: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # the summary's
    established: set[str] = field(default_factory=set)  # ... sessions in state established
    live: dict[tuple[str, Family, int | None], set[str]] = field(default_factory=dict)
    summarized: bool = False  # the summary's answer is over
    moved: set[str] = field(default_factory=set)  # peers whose session changed state since
    superseded: int = 0  # answer lines left out for a newer live event

    def note(self, ev: Announce | Withdraw | PeerState) -> None:
        """A live event, read after the resync was asked."""
        if isinstance(ev, PeerState):
            if not self.summarized and ev.peer not in self.sessions:
                return  # its summary row, still to come, tells the new state
            self.moved.add(ev.peer)
            for key in [k for k in self.live if k[0] == ev.peer]:
                del self.live[key]
        elif ev.peer not in self.moved:
            key = (ev.peer, ev.family, ev.path_id)
            held = self.live.get(key)
            if held is None:
                self.live[key] = set(ev.prefixes)
            else:
                held.update(ev.prefixes)

    def newer_live(self, ann: Announce) -> Announce | None:
        """`ann` without the prefixes a live event has been about since: None if none is left."""
        live = self.live.get((ann.peer, ann.family, ann.path_id))
        if not live:
            return ann
        kept = tuple(p for p in ann.prefixes if p not in live)
        self.superseded += len(ann.prefixes) - len(kept)
        if not kept:
            return None
        return ann if len(kept) == len(ann.prefixes) else dataclasses.replace(ann, prefixes=kept)


class ExabgpSession:
    """Our side of ExaBGP's process API. Feed it every line ExaBGP writes (`receive`); write
    what `take_commands` returns, and report a command that could not be written (`unsent`)."""

    def __init__(self) -> None:
        self.api_version: str | None = None
        self.pending: deque[_Pending] = deque()  # sent, answer not ended yet, oldest first
        self.resyncs: list[_Resync] = []  # asked and not yet answered to the end
        self.states: dict[str, str] = {}  # each peer's session, as its last state message said
        # a session's state as the last summary told it, for a peer no state message has told
        # about (a respawned plugin hears no `up` for its established sessions)
        self.summary_states: dict[str, str] = {}
        self.stale_lines = 0  # answer lines not ours (before we asked) or no longer true
        self.ask_after: float | None = None  # the resync waits for quiet until then
        self._out: list[str] = []

    # ---------------------------------------------------------------- commands out

    def send(self, command: str) -> None:
        """A command whose answer is not needed (`neighbor … teardown N`)."""
        self._queue(_Pending(command, _ignore_line, _ignore_end))

    def export(self, change: ExportChange) -> None:
        """Announce (next-hop self) or withdraw some prefixes to one peer: one command per
        EXPORT_CHUNK prefixes (a few networks: one command, so one UPDATE). An `error`
        answer comes back as a warning note."""
        ann = change.announcement
        if ann is None:
            head = f"neighbor {change.peer} withdraw attributes next-hop self nlri"
        else:
            attrs = "next-hop self"
            if ann.med is not None:
                attrs += f" med {ann.med}"
            if ann.as_path:
                attrs += f" as-path [ {' '.join(map(str, ann.as_path))} ]"
            head = f"neighbor {change.peer} announce attributes {attrs} nlri"
        for i in range(0, len(change.prefixes), EXPORT_CHUNK):
            command = f"{head} {' '.join(change.prefixes[i:i + EXPORT_CHUNK])}"
            self._queue(_Pending(command, _ignore_line, _refused(command)))

    def teardown(self, peer: str, subcode: int) -> None:
        """Reset the BGP session with `peer` (a Cease with `subcode`)."""
        self.send(f"neighbor {peer} teardown {subcode}")

    def resync(self) -> None:
        """Ask which sessions are established and what their adj-rib-in holds; the answer's
        paths come back as replayed events, then ResyncDone for the established peers."""
        rs = _Resync(AdjRibReader(self.api_version))
        self.resyncs.append(rs)
        self._queue(_Pending("show neighbor summary", lambda t, r: self._summary_line(rs, t),
                             lambda ok, r: self._summary_end(rs, ok, r), rs))
        self._queue(_Pending("show adj-rib in extensive",
                             lambda t, r: r.replay(self._taken(rs, rs.reader.feed(t))),
                             lambda ok, r: self._adj_rib_end(rs, ok, r), rs))

    def take_commands(self) -> list[str]:
        """The command lines to write to ExaBGP now, in order (without newlines)."""
        out, self._out = self._out, []
        return out

    def unsent(self, command: str) -> None:
        """`command` could not be written: its answer will not come (nor, for a resync, the
        answer to the rest of it)."""
        for p in reversed(self.pending):
            if p.command == command:
                self.pending.remove(p)
                if p.resync is not None:
                    self._resync_over(p.resync)
                    for other in [q for q in self.pending if q.resync is p.resync]:
                        self.pending.remove(other)
                return

    @property
    def busy(self) -> bool:
        """Whether an answer is still arriving, or the start-up resync is still to be asked."""
        return bool(self.pending) or self.ask_after is not None

    def _queue(self, pending: _Pending) -> None:
        self.pending.append(pending)
        self._out.append(pending.command)

    # ---------------------------------------------------------------- the start-up quiet

    def stale_before_asking(self, raw: bytes, arrived: float, quiet_until: float) -> float | None:
        """Before the first resync is asked: if `raw` is answer text, it is the tail of an
        answer meant for the process before us (answers carry no request id): counted and
        to be dropped; returns the quiet deadline it pushes out. None for any other line."""
        if answer_line(raw) is None:
            return None
        self.stale_lines += 1
        return max(quiet_until, arrived + RESYNC_QUIET)

    def ask_when_quiet(self, deadline: float) -> None:
        """Ask for the resync once ExaBGP's output has been free of answer text until
        `deadline` (a later stray answer line pushes it out): see `due`."""
        self.ask_after = deadline

    def due(self, now: float) -> bool:
        """Whether the quiet wait is over; then the resync is asked (and True returned)."""
        if self.ask_after is None or now < self.ask_after:
            return False
        self.ask_after = None
        self.resync()
        return True

    # ---------------------------------------------------------------- lines in

    def receive(self, raw: bytes, now: float) -> Received:
        """One line ExaBGP wrote, read at `now`."""
        if self.pending:  # an answer to a command (the resync's 100,000s of lines) is text
            answer = answer_line(raw)
            if answer is not None:
                return self._text(answer[0], answer[1], now)
        parsed = parse_line(raw)
        got = Received(parsed.kind, parsed.events)
        if parsed.api_version and parsed.api_version != self.api_version:
            self.api_version = got.api_version = parsed.api_version
        if parsed.reason:
            got.problem = (parsed.reason, parsed.error or "")
        if parsed.kind in (LineKind.ACK, LineKind.TEXT):
            text = self._text(parsed.kind, parsed.text or "", now)
            text.api_version, text.problem = got.api_version, got.problem
            return text
        for rs in self.resyncs:  # the adj-rib-in paths read so far come first
            got.replay(self._taken(rs, rs.reader.flush()))
        for ev in parsed.events:
            if isinstance(ev, PeerState):
                self.states[ev.peer] = ev.state
            if self.resyncs and isinstance(ev, Announce | Withdraw | PeerState):
                for rs in self.resyncs:
                    rs.note(ev)
        return got

    def _text(self, kind: LineKind, text: str, now: float) -> Received:
        got = Received(kind)
        if not self.pending:
            if self.ask_after is not None:
                # the tail of an answer meant for the process before us: wait until it is over
                self.ask_after = now + RESYNC_QUIET
                self.stale_lines += 1
            elif kind is LineKind.TEXT:
                got.note("debug", f"ExaBGP said: {text[:200]}")
            return got
        head = self.pending[0]
        if kind is LineKind.ACK:
            self.pending.popleft()
            head.on_end(text == "done", got)
        else:
            head.on_line(text, got)
        return got

    # ---------------------------------------------------------------- the resync's answers

    def _summary_line(self, rs: _Resync, text: str) -> None:
        row = summary_row(text)
        if row is not None:
            peer, state, up = row
            rs.sessions[peer] = (state, up)
            if state == "established":
                rs.established.add(peer)
            else:
                rs.established.discard(peer)

    def _summary_end(self, rs: _Resync, ok: bool, got: Received) -> None:
        rs.summarized = True
        if not ok:
            return
        for peer, (state, up) in rs.sessions.items():
            if peer in rs.moved or peer in self.states:
                continue  # a state message is newer
            named = SUMMARY_STATES[state]
            self.summary_states[peer] = named
            got.learn(peer, named, up)

    def _adj_rib_end(self, rs: _Resync, ok: bool, got: Received) -> None:
        got.replay(self._taken(rs, rs.reader.flush()))
        self._resync_over(rs)
        if rs.superseded:
            got.note("info", f"resync: {rs.superseded} paths of ExaBGP's answer were older "
                             "than a live update read meanwhile; the live one stays")
        if not ok:
            got.note("warning", "resync: ExaBGP refused 'show adj-rib in extensive'; waiting "
                                "for End-of-RIB or the grace timer")
            return
        established = rs.established - rs.moved
        for peer in sorted(rs.established & rs.moved):
            got.note("info", f"resync: the session with {peer} changed state during the "
                             "answer; it is synced by its own updates and End-of-RIB")
        got.note("info", f"resync: ExaBGP's adj-rib-in loaded ({len(established)} "
                         "established sessions)")
        got.replay([ResyncDone(frozenset(established))])

    def _resync_over(self, rs: _Resync) -> None:
        if rs in self.resyncs:
            self.resyncs.remove(rs)

    def _taken(self, rs: _Resync, anns: tuple[Announce, ...]) -> list[Event]:
        """The announcements of an answer that still stand."""
        if not anns:
            return []
        out: list[Event] = []
        established = rs.established
        for ann in anns:
            if (ann.peer not in established or ann.peer in rs.moved
                    or self.states.get(ann.peer) == "down"):
                # ExaBGP may still hold what a session that is down (or went down since the
                # summary) had sent, and a session that came back re-sends its routes: these
                # must not come back. (A live line flushes the run first, so this is as of
                # each line's arrival.)
                self.stale_lines += len(ann.prefixes)
            elif (kept := rs.newer_live(ann)) is not None:
                out.append(kept)
        return out


def _ignore_line(text: str, got: Received) -> None:
    pass


def _refused(command: str) -> Callable[[bool, Received], None]:
    def end(ok: bool, got: Received) -> None:
        if not ok:
            got.note("warning", f"ExaBGP refused the command {command!r}")

    return end


def _ignore_end(ok: bool, got: Received) -> None:
    pass
