"""The ExaBGP conversation without a process: lines in, events and commands out."""

from __future__ import annotations

from vtibgp.core.model import Announce, PeerState, ResyncDone, Withdraw
from vtibgp.exabgp.parse import LineKind
from vtibgp.exabgp.session import RESYNC_QUIET, ExabgpSession, summary_row

P1, P2 = "169.254.10.1", "169.254.11.1"
HEADER = b"Peer            AS        up/down state       |     #sent     #recvd\n"


def row(peer: str, up: str, state: str) -> bytes:
    """A row as ExaBGP 5.0's formatter writes it (the header has a "|", the rows do not)."""
    return f"{peer:<15} 64512   {up:<10} {state:<11} {2:>9} {7:>10}\n".encode()


def adj_rib(peer: str, prefix: str, path: str = "64512") -> bytes:
    return (f"neighbor {peer} local-ip 169.254.10.2 local-as 65000 peer-as 64512 router-id "
            f"1.1.1.1 family-allowed in-open ipv4 unicast {prefix} next-hop {peer} origin igp "
            f"as-path ( {path} )\n").encode()


def update(peer: str, prefix: str, withdraw: bool = False) -> bytes:
    what = (f'"withdraw": {{ "ipv4 unicast": [ {{ "nlri": "{prefix}" }} ] }}' if withdraw else
            f'"announce": {{ "ipv4 unicast": {{ "{peer}": [ {{ "nlri": "{prefix}" }} ] }} }}')
    return ('{ "exabgp": "5.0.0", "type": "update", "neighbor": { "address": { "local": "x", '
            f'"peer": "{peer}" }}, "direction": "receive", "message": {{ "update": {{ '
            '"attribute": { "origin": "igp", "as-path": {"0": {"element": "as-sequence", '
            f'"value": [64512]}}}} }}, {what} }} }} }} }}\n').encode()


def state(peer: str, st: str) -> bytes:
    return ('{ "exabgp": "5.0.0", "type": "state", "neighbor": { "address": { "local": '
            f'"169.254.10.2", "peer": "{peer}" }}, "state": "{st}" }} }}\n').encode()


def feed(session: ExabgpSession, *lines: bytes, now: float = 0.0) -> list[object]:
    """Every event the lines meant, replayed ones marked, in the order the shell takes them."""
    out: list[object] = []
    for line in lines:
        got = session.receive(line, now)
        out += [("replay", ev) for ev in got.replayed]
        out += list(got.live)
    return out


def prefixes(events: list[object]) -> list[str]:
    return [p for ev in events if isinstance(ev, tuple) and isinstance(ev[1], Announce)
            for p in ev[1].prefixes]


def test_summary_rows_of_both_versions_whatever_the_up_time() -> None:
    assert summary_row(row(P1, "1 day, 0:00:03", "established").decode()) == (
        P1, "established", 86403)
    assert summary_row(row(P1, "12 days, 1:02:03", "ESTABLISHED").decode()) == (
        P1, "established", 12 * 86400 + 3723)
    assert summary_row(row(P2, "down", "active").decode()) == (P2, "active", None)
    assert summary_row(HEADER.decode()) is None
    assert summary_row("not-an-address 64512 0:00:01 established 1 2") is None
    # ExaBGP's own row (5.0.15's NeighborTemplate.summary)
    assert summary_row("169.254.10.1    64512   1 day, 0:00:03 established           2"
                       "          7") == (P1, "established", 86403)


def test_resync_asks_in_order_and_replays_the_answer_then_resync_done() -> None:
    s = ExabgpSession()
    s.resync()
    assert s.take_commands() == ["show neighbor summary", "show adj-rib in extensive"]
    assert s.take_commands() == []  # handed over once
    assert s.busy
    events = feed(s, HEADER, row(P1, "0:00:03", "established"), row(P2, "down", "idle"),
                  b"done\n", adj_rib(P1, "10.1.0.0/16"), adj_rib(P1, "10.2.0.0/16"),
                  adj_rib(P2, "10.3.0.0/16"), b"done\n")
    assert prefixes(events) == ["10.1.0.0/16", "10.2.0.0/16"]  # P2 is not established
    assert events[-1] == ("replay", ResyncDone(frozenset({P1})))
    assert s.stale_lines == 1 and not s.busy and not s.resyncs
    assert s.summary_states == {P1: "up", P2: "idle"}


def test_a_live_update_during_the_answer_wins_over_the_older_answer_lines() -> None:
    s = ExabgpSession()
    s.resync()
    feed(s, row(P1, "0:00:03", "established"), b"done\n", adj_rib(P1, "10.1.0.0/16"))
    live = feed(s, update(P1, "10.2.0.0/16", withdraw=True))
    # the answer's paths read so far come first, then the live withdraw
    assert prefixes(live) == ["10.1.0.0/16"]
    assert isinstance(live[-1], Withdraw) and live[-1].prefixes == ("10.2.0.0/16",)
    rest = feed(s, adj_rib(P1, "10.2.0.0/16"), adj_rib(P1, "10.3.0.0/16"), b"done\n")
    assert prefixes(rest) == ["10.3.0.0/16"]  # 10.2 was withdrawn after ExaBGP's snapshot


def test_a_session_that_changes_state_during_the_answer_takes_none_of_it() -> None:
    s = ExabgpSession()
    s.resync()
    feed(s, row(P1, "0:00:03", "established"), b"done\n")
    assert feed(s, state(P1, "down")) == [PeerState(P1, "down", local="169.254.10.2")]
    rest = feed(s, adj_rib(P1, "10.1.0.0/16"), b"done\n")
    assert prefixes(rest) == [] and rest[-1] == ("replay", ResyncDone(frozenset()))


def test_the_summary_teaches_only_peers_no_state_message_told_about() -> None:
    s = ExabgpSession()
    feed(s, state(P2, "up"))
    s.resync()
    got = [s.receive(line, 0.0) for line in (row(P1, "1 day, 0:00:03", "established"),
                                             row(P2, "down", "idle"), b"done\n")]
    assert got[-1].learned == [(P1, "up", 86403)]
    assert s.summary_states == {P1: "up"}


def test_answer_text_before_asking_is_the_previous_process_tail() -> None:
    s = ExabgpSession()
    assert s.stale_before_asking(update(P1, "10.0.0.0/8"), 1.0, 1.5) is None  # a live line
    assert s.stale_before_asking(adj_rib(P1, "10.0.0.0/8"), 2.0, 1.5) == 2.0 + RESYNC_QUIET
    assert s.stale_before_asking(b"done\n", 2.1, 2.5) == 2.1 + RESYNC_QUIET
    assert s.stale_lines == 2
    s.ask_when_quiet(3.0)
    assert s.busy and not s.due(2.9)
    got = s.receive(adj_rib(P1, "10.9.0.0/16"), 2.95)  # still the tail: the wait goes on
    assert got.kind is LineKind.TEXT and got.replayed == () and s.stale_lines == 3
    assert not s.due(3.2) and s.take_commands() == []
    assert s.due(2.95 + RESYNC_QUIET)
    assert s.take_commands() == ["show neighbor summary", "show adj-rib in extensive"]


def test_a_resync_that_could_not_be_written_is_forgotten_whole() -> None:
    s = ExabgpSession()
    s.teardown(P1, 1)
    s.resync()
    assert s.take_commands() == ["neighbor 169.254.10.1 teardown 1", "show neighbor summary",
                                 "show adj-rib in extensive"]
    s.unsent("show neighbor summary")
    assert [p.command for p in s.pending] == ["neighbor 169.254.10.1 teardown 1"]
    assert not s.resyncs
    # the teardown's answer still ends its own command; an answer line then is no one's
    assert feed(s, b"done\n", adj_rib(P1, "10.1.0.0/16")) == []
    assert not s.busy


def test_api_version_and_bad_lines_are_reported_not_raised() -> None:
    s = ExabgpSession()
    got = s.receive(state(P1, "up"), 0.0)
    assert got.api_version == "5.0.0" and s.api_version == "5.0.0"
    assert s.receive(state(P1, "up"), 0.0).api_version is None  # told once
    bad = s.receive(b'{"exabgp": "5.0.0", "type": \n', 0.0)
    assert bad.kind is LineKind.INVALID and bad.problem is not None and bad.live == ()
    said = s.receive(b"some text ExaBGP printed\n", 0.0)
    assert said.notes == [("debug", "ExaBGP said: some text ExaBGP printed")]
