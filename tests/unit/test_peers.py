"""herd.peer.links.PeerLinks: what goes to which peer, and when (no sockets)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from fakes import PeerConn
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from herd.node import _StoredWhole
from herd.peer.connection import PeerLineProtocol
from herd.peer.links import K_STEP, PeerLinks, Stored
from herd.wire.client import parse_at_line
from herd.wire.peer import Position
from storage.batch import StoredRun, StoreResult

Conn = PeerConn


def pos(n: int) -> Position:
    return Position(b"E", b"%d-0" % n)


def record(client: str, t: int):  # type: ignore[no-untyped-def]
    rec = parse_at_line(b"AT A +0.000000001 %s +1+1 %d.5" % (client.encode(), t))
    assert rec is not None
    return rec


def chained(*names: bytes) -> tuple[PeerLinks, dict[bytes, Conn]]:
    """Links to ``names``, each with a chain from position 0 (SYNC-END 0)."""
    links = PeerLinks(names)
    conns = {name: Conn() for name in names}
    for name, conn in conns.items():
        links.add(name, conn, "test")
        links.chain_from(name, conn, pos(0))
    return links, conns


def test_forward_goes_to_every_chained_peer_but_the_source() -> None:
    links, conns = chained(b"B", b"C", b"D")
    rec = record("x", 1)
    assert links.forward([rec.line], b"C") == {b"B", b"D"}
    assert conns[b"B"].take() == [b"F " + rec.line]
    assert conns[b"C"].take() == []
    assert conns[b"D"].take() == [b"F " + rec.line]


def test_updates_forwarded_together_go_in_order_and_count_once_per_peer() -> None:
    links, conns = chained(b"B", b"C")
    recs = [record("x", 1), record("y", 1), record("x", 2)]
    assert links.forward([rec.line for rec in recs], None) == {b"B", b"C"}
    assert conns[b"B"].take() == conns[b"C"].take() == [b"F " + rec.line for rec in recs]
    assert links.flooded == 6


def test_forward_skips_unchained_peers_which_get_the_update_once_stored() -> None:
    links = PeerLinks([b"B"])
    conn = Conn()
    links.add(b"B", conn, "test")  # no chain yet (no SYNC answered)
    rec = record("x", 1)
    assert links.forward([rec.line], None) == frozenset()
    links.flood(rec, pos(1), pos(0), None, frozenset())
    assert conn.take() == [b"U - E/1-0 " + rec.line]


def test_a_forwarded_update_sends_only_its_position_later_in_a_bare_k_line() -> None:
    links, conns = chained(b"B")
    a, b = record("a", 1), record("b", 2)
    for n, rec in enumerate((a, b), start=1):
        sent_to = links.forward([rec.line], None)
        links.flood(rec, pos(n), pos(n - 1), None, sent_to)
    assert conns[b"B"].take() == [b"F " + a.line, b"F " + b.line]
    assert links.send_log_moved() == 1
    assert conns[b"B"].take() == [b"K E/0-0 E/2-0"]
    assert links.send_log_moved() == 0


def test_a_u_line_after_forwarded_ones_steps_over_them() -> None:
    # Protocol 4: B knows whether it may lack an update forwarded between us,
    # so the U's step goes from the last position sent, with no K first.
    links, conns = chained(b"B")
    a, b = record("a", 1), record("b", 2)
    links.flood(a, pos(1), pos(0), None, links.forward([a.line], None))
    links.flood(b, pos(2), pos(1), None, frozenset())  # b took the slow path
    assert conns[b"B"].take() == [b"F " + a.line, b"U E/0-0 E/2-0 " + b.line]
    assert links.send_log_moved() == 0


def test_forwarded_updates_move_the_offset_every_k_step_entries_and_on_the_tick() -> None:
    # Under load the peer's offset stays at most K_STEP entries behind: what a
    # reconnect would send again.
    links, conns = chained(b"B")
    for n in range(1, 2 * K_STEP + 11):
        rec = record(f"c{n}", n)
        links.flood(rec, pos(n), pos(n - 1), None, links.forward([rec.line], None))
    assert [line for line in conns[b"B"].take() if not line.startswith(b"F ")] == [
        b"K E/0-0 E/%d-0" % K_STEP, b"K E/%d-0 E/%d-0" % (K_STEP, 2 * K_STEP)]
    links.send_log_moved()
    assert conns[b"B"].take() == [b"K E/%d-0 E/%d-0" % (2 * K_STEP, 2 * K_STEP + 10)]


def test_updates_from_a_peer_move_its_offset_with_a_bare_k_line() -> None:
    links, conns = chained(b"B", b"C")
    rec = record("a", 1)
    links.flood(rec, pos(1), pos(0), b"B", frozenset())  # from B as U: B stored it
    sent_to = links.forward([rec.line], b"B")  # from B as F: B may not have stored it yet
    links.flood(rec, pos(2), pos(1), b"B", sent_to)
    assert conns[b"B"].take() == []
    links.send_log_moved()
    assert conns[b"B"].take() == [b"K E/0-0 E/2-0"]
    assert conns[b"C"].take() == [b"U E/0-0 E/1-0 " + rec.line, b"F " + rec.line, b"K E/1-0 E/2-0"]


def test_an_entry_never_seen_stored_breaks_the_chain_with_pull() -> None:
    links, conns = chained(b"B")
    rec = record("a", 1)
    links.flood(rec, pos(3), pos(2), None, frozenset())  # entries 1 and 2 were never reported
    assert conns[b"B"].take() == [b"PULL", b"U - E/3-0 " + rec.line]
    assert links.forward([record("b", 2).line], None) == frozenset()  # unchained until a new SYNC


def test_an_idle_link_sends_one_heartbeat_a_second_and_a_busy_one_none() -> None:
    from herd.peer.links import BEAT_INTERVAL, QUIET_BEATS

    links = PeerLinks([b"B"])
    conn = PeerConn()
    links.add(b"B", conn, "test")
    beats_per_second = round(1 / BEAT_INTERVAL)
    for _ in range(4 * beats_per_second):
        conn.lines_in += 1  # the peer is alive
        links.beat()
    assert conn.take() == [b"HB"] * (4 * beats_per_second // QUIET_BEATS)
    for _ in range(4 * beats_per_second):
        conn.lines_in += 1
        conn.send_line(b"U - E/1-0 AT ...")  # traffic: no heartbeat needed
        links.beat()
    assert b"HB" not in conn.take()


def test_a_silent_connection_is_closed_after_three_seconds_unless_exempt() -> None:
    from herd.peer.links import BEAT_INTERVAL, DEAD_BEATS

    assert DEAD_BEATS * BEAT_INTERVAL == 3.0
    links = PeerLinks([b"B", b"C"])
    silent, paused = PeerConn(), PeerConn()
    links.add(b"B", silent, "test")
    links.add(b"C", paused, "test")
    for _ in range(DEAD_BEATS - 1):
        links.beat(exempt=[paused])
    assert not silent.aborted
    links.beat(exempt=[paused])
    assert silent.aborted and not paused.aborted


# -- flood_group: a group stored together, flooded in one pass per peer --------


def _group(first: int, count: int) -> list[Stored]:
    return [(record(f"g{n}", n), pos(n), pos(n - 1)) for n in range(first, first + count)]


Sent = dict[bytes, list[bytes]]


def _flooded(names: tuple[bytes, ...], live: tuple[bytes, ...], start: Position, group: Sequence[Stored],
             source: bytes | None, forwarded: bool, grouped: bool = True) -> Sent:
    """The lines each peer gets when ``group`` (stored together right after
    ``start``, where the ``live`` peers' chains stand) is flooded, with
    flood_group() or with flood() of each record, then a K tick."""
    links = PeerLinks(names)
    conns = {name: Conn() for name in names}
    for name, conn in conns.items():
        links.add(name, conn, "test")
        if name in live:
            links.chain_from(name, conn, start)
    to = links.forward([rec.line for rec, _, _ in group], source) if forwarded else frozenset()
    if grouped:
        links.flood_group(group, source, to)
    else:
        for rec, position, previous in group:
            links.flood(rec, position, previous, source, to)
    links.send_log_moved()
    return {name: conn.take() for name, conn in conns.items()}


def _one_by_one_and_grouped(names: tuple[bytes, ...], group: list[Stored], source: bytes | None,
                            forwarded: bool, live: tuple[bytes, ...]) -> tuple[Sent, Sent]:
    """The lines each peer gets from flood() of each record, and from flood_group()."""
    return (_flooded(names, live, pos(0), group, source, forwarded, grouped=False),
            _flooded(names, live, pos(0), group, source, forwarded))


def test_a_group_flood_sends_what_floods_one_by_one_send() -> None:
    names = (b"B", b"C", b"D")
    cases = [
        (None, True, names),  # our clients' updates, forwarded to every live peer
        (None, False, names),  # the slow path: U lines
        (b"B", True, names),  # forwarded by B before it stored them, and on to C and D
        (b"B", False, names),  # from B, stored there (U from B)
        (None, True, (b"B",)),  # C and D without a cursor: U - on their connection
    ]
    for source, forwarded, live in cases:
        one_by_one, grouped = _one_by_one_and_grouped(names, _group(1, 5), source, forwarded, live)
        assert grouped == one_by_one, (source, forwarded, live)


def test_a_group_stored_whole_floods_as_its_list_of_results_would() -> None:
    # A group stored whole comes back as a StoredRun, and is flooded through a
    # view made on demand (node._StoredWhole): the same records, positions and
    # lines as the list of StoreResults it replaces.
    names = (b"B", b"C", b"D")
    records = [record(f"w{n}", n) for n in range(1, 7)]
    start = Position(b"E", b"0-0")
    run = StoredRun(b"E", 1, len(records), start)
    eager = [(rec, Position(b"E", b"0-%d" % n), Position(b"E", b"0-%d" % (n - 1)))
             for n, rec in enumerate(records, 1)]
    lazy = _StoredWhole(records, run)
    assert list(lazy) == eager and lazy[-1] == eager[-1] and lazy[1:3] == eager[1:3] and len(lazy) == 6
    assert list(run) == [StoreResult(True, p, False, before) for _, p, before in eager]
    assert run[-1] == run[5] and run.position(5) == eager[5][1]
    with pytest.raises(IndexError):
        run[6]
    cases = [(None, True), (None, False), (b"B", True), (b"B", False)]
    for source, forwarded in cases:
        sent = [_flooded(names, names, start, group, source, forwarded) for group in (eager, lazy)]
        assert sent[0] == sent[1] and any(sent[0].values()), (source, forwarded)


def test_a_group_after_an_entry_never_seen_breaks_the_chain_as_one_by_one() -> None:
    links, conns = chained(b"B")
    group = _group(3, 2)  # the entry at 1-0..2-0 never reached us: covered is 0-0
    links.flood_group(group, None, frozenset())
    assert conns[b"B"].take() == [b"PULL"] + [b"U - %s %s" % (p.token, rec.line) for rec, p, _ in group]


def test_a_k_line_goes_with_the_next_f_lines_once_k_step_entries_wait() -> None:
    # With the F lines the K costs the peer no read of its own.
    links, conns = chained(b"B")
    group = _group(1, 3 * K_STEP)
    to = links.forward([rec.line for rec, _, _ in group], None)
    links.flood_group(group, None, to)
    assert [line for line in conns[b"B"].take() if not line.startswith(b"F ")] == []
    later = record("later", 1)
    links.forward([later.line], None)
    assert conns[b"B"].take() == [b"K E/0-0 E/%d-0" % len(group), b"F " + later.line]
    assert links.send_log_moved() == 0


class _Node:
    """What a peer connection needs of its node (herd.peer.connection.PeerMessageHandler)."""

    def __init__(self, links: PeerLinks, clock: Clock) -> None:
        self.links = links
        self.clock: IReactorTime = clock
        self.handled: list[bytes] = []

    def handle_peer_lines(self, lines: list[bytes], peer: bytes, conn: object) -> None:
        self.handled.extend(lines)


def test_a_connection_this_node_closes_carries_no_more_traffic() -> None:
    """Found by a review: a connection being closed stayed in the links until
    its end, so updates still went on it (a TLS transport drops what is
    written after its close) while the other connection to that peer idled."""
    links = PeerLinks([b"B"])
    closing, other = PeerLineProtocol(), Conn()
    clock = Clock()
    node = _Node(links, clock)
    closing.node, closing.peer_name, closing.who, closing.connected = node, b"B", "peer B", 1
    closing.transport = StringTransport()
    links.add(b"B", closing, "test")
    links.add(b"B", other, "test")
    links.chain_from(b"B", closing, pos(0))
    closing.close()
    assert closing.transport.disconnecting and links.open_connections(b"B") == 1
    links.flood(record("c", 1), pos(1), pos(0))
    clock.advance(0)  # (a turn's lines are written at its end)
    assert closing.transport.value() == b"" and [line[:2] for line in other.lines] == [b"U "]
    closing.dataReceived(b"SYNC -\n")  # (a SYNC here would chain the peer's updates onto it)
    assert node.handled == []
    links.remove(b"B", closing)  # its end, later: nothing more happens
    assert links.open_connections(b"B") == 1
