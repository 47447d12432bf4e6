"""The five-node herd as real processes: flooding, exact ordering of updates,
forged updates, half-closing clients, over-long lines, WHATSAT through a
real HTTP server standing in for Google.

One herd serves the whole module; each test uses its own client ids.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from functools import partial

import pytest
from cluster import FIVE, Herd, LocalNode, talk
from harness import wait_until


@pytest.fixture(scope="module")
def herd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Herd]:
    h = Herd(tmp_path_factory.mktemp("five"), FIVE).start()
    try:
        h.wait_links()
        yield h
    finally:
        h.stop()


def at_everywhere(herd: Herd, client: str, at_line: bytes, timeout: float = 5.0) -> None:
    def holds(n: LocalNode) -> bool:
        return n.record(client).get(b"at") == at_line

    for node in herd.nodes.values():
        wait_until(partial(holds, node), timeout, what=f"{client} at {node.name}")


def test_iamat_floods_three_hops_with_original_at_line(herd: Herd) -> None:
    reply = talk(herd["Bailey"].port, "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503")
    assert reply.startswith(b"AT Bailey +") and reply.endswith(
        b" kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\n"
    )
    at_line = reply.rstrip(b"\n")
    at_everywhere(herd, "kiwi.cs.ucla.edu", at_line)  # Jaquez is three hops from Bailey
    record = herd["Jaquez"].record("kiwi.cs.ucla.edu")
    assert record[b"server"] == b"Bailey"
    assert record[b"location"] == b"+34.068930-118.445127"
    assert (record[b"lat"], record[b"lon"]) == (b"+34.068930", b"-118.445127")
    assert record[b"time"] == b"1621464827.959498503"
    assert record[b"skew"] == at_line.split()[2]
    members = herd["Jaquez"].redis.call(
        "GEOSEARCH", "herd:geo", "FROMLONLAT", "-118.445127", "34.068930", "BYRADIUS", "1", "km", "ASC"
    )
    assert members == [b"kiwi.cs.ucla.edu"]


def test_whatsat_at_a_far_node_answers_the_original_line(herd: Herd) -> None:
    at_line = talk(herd["Clark"].port, "IAMAT far.client -33.8688+151.2093 1700000000.5").rstrip(b"\n")
    at_everywhere(herd, "far.client", at_line)
    reply = talk(herd["Bailey"].port, "WHATSAT far.client 10 3")
    assert reply.startswith(at_line + b"\n{")
    assert reply.endswith(b"}\n\n") and not reply.endswith(b"\n\n\n")
    body = json.loads(reply[len(at_line) + 1 :])
    assert len(body["results"]) == 3 and body["status"] == "OK"
    assert b"\n\n" not in reply[:-2]
    request = herd.places.requests[-1]
    assert request["location"] == ["-33.8688,151.2093"] and request["radius"] == ["10000"]


def test_older_update_never_overwrites_newer_one_ns_apart(herd: Herd) -> None:
    newer, older = "1700000000.000000002", "1700000000.000000001"
    new_line = talk(herd["Bailey"].port, f"IAMAT ns.client +10.0-020.0 {newer}").rstrip(b"\n")
    at_everywhere(herd, "ns.client", new_line)
    # The older update reaches a node that already holds the newer one: it is
    # acknowledged with its own AT line but changes nothing and is not flooded.
    old_reply = talk(herd["Jaquez"].port, f"IAMAT ns.client +11.0-021.0 {older}")
    assert old_reply.startswith(b"AT Jaquez ") and old_reply.endswith(f" {older}\n".encode())
    equal_reply = talk(herd["Clark"].port, f"IAMAT ns.client +12.0-022.0 {newer}")
    assert equal_reply.startswith(b"AT Clark ")
    time.sleep(0.3)  # give a (wrong) flood time to show up; nothing to wait for
    for node in herd.nodes.values():
        assert node.record("ns.client")[b"at"] == new_line


def test_concurrent_updates_converge_on_the_newest(herd: Herd) -> None:
    lines = {name: f"IAMAT race +1.0+1.0 1700000001.00000000{i}" for i, name in enumerate(herd.nodes)}
    for name, line in lines.items():
        talk(herd[name].port, line)
    winner = herd["Jaquez"].record("race")  # Jaquez sent the newest time
    assert winner[b"time"] == b"1700000001.000000004"
    at_everywhere(herd, "race", winner[b"at"])


def test_forged_at_from_a_client_is_refused(herd: Herd) -> None:
    forged = b"AT Bailey +0.000000001 forged.client +1.0+1.0 1700000000.0"
    assert talk(herd["Bona"].port, forged) == b"? " + forged + b"\n"
    hello = b"HERD-HELLO Bailey Bona 00"
    assert talk(herd["Bona"].port, hello) == b"? " + hello + b"\n"
    time.sleep(0.2)
    for node in herd.nodes.values():
        assert node.record("forged.client") == {}


def test_errors_echo_the_line_byte_for_byte(herd: Herd) -> None:
    lines = [
        b"IAMAT x 34.0-118.0 1",
        b"WHATSAT nobody.known 10 5",
        b"\tHELLO  \xff\x00 x",
        b"WHATSAT kiwi.cs.ucla.edu 51 5",
        b"WHATSAT kiwi.cs.ucla.edu 10 21",
    ]
    reply = talk(herd["Campbell"].port, *lines, b"", b" \t ")
    assert reply == b"".join(b"? " + line + b"\n" for line in lines)


def test_half_closing_client_gets_every_reply_and_unterminated_last_line(herd: Herd) -> None:
    reply = talk(
        herd["Clark"].port,
        "IAMAT half.one +1+1 1700000000",
        "IAMAT half.two +1+1 1700000000\r",
        "WHATSAT half.one 1 1",
        terminate=False,
    )
    lines = reply.split(b"\n")
    assert lines[0].startswith(b"AT Clark ") and lines[0].endswith(b" half.one +1+1 1700000000")
    assert lines[1].startswith(b"AT Clark ") and lines[1].endswith(b" half.two +1+1 1700000000")
    assert lines[2] == lines[0]  # WHATSAT after IAMAT on the same connection sees it
    assert reply.endswith(b"}\n\n")


def test_the_iamats_of_one_read_are_answered_together_in_order(herd: Herd) -> None:
    """The IAMATs of one read are stored as one group; a bad line or a
    WHATSAT between them keeps its place, and an older update of a client in
    the same group is answered but does not win."""
    lines = [f"IAMAT group.{i} +1+1 1700000000.{i}" for i in range(200)]
    lines[50] = "IAMAT group.same +1+1 1700000002"
    lines[51] = "IAMAT group.same +2+2 1700000001"  # older: answered, not stored
    lines[100] = "IAMAT bad"
    lines[150] = "WHATSAT group.same 5 1"
    with socket.create_connection(("127.0.0.1", herd["Clark"].port), timeout=10) as sock:
        sock.sendall("".join(line + "\n" for line in lines).encode())  # one write: one or a few reads
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    answers = reply.split(b"\n")
    whatsat_at = answers[150]
    assert whatsat_at.endswith(b" group.same +1+1 1700000002")  # the newer of the two
    json_end = answers.index(b"", 151)  # the WHATSAT reply ends with an empty line
    answers = answers[:151] + answers[json_end + 1:]
    assert len(answers) == 201 and answers[-1] == b""
    for i, (line, answer) in enumerate(zip(lines, answers, strict=False)):
        if i == 100:
            assert answer == b"? IAMAT bad"
        elif i != 150:
            _, client_id, location, client_time = line.split()
            assert answer.startswith(b"AT Clark ") and answer.endswith(
                f" {client_id} {location} {client_time}".encode()), (i, answer)
    assert herd["Clark"].record("group.same")[b"time"] == b"1700000002"
    assert herd["Clark"].record("group.199")[b"time"] == b"1700000000.199"


def test_pipelined_whatsat_sees_earlier_updates_and_none_after_it(herd: Herd) -> None:
    reply = talk(
        herd["Campbell"].port,
        "IAMAT order.one +34.068930-118.445127 1700000000",
        "WHATSAT order.one 5 1",
        "WHATSAT order.two 5 1",
        "IAMAT order.one +40.7-074.0 1700000001",
        "IAMAT order.two +40.7-074.0 1700000001",
        "WHATSAT order.one 5 1",
    )
    first_whatsat, rest, end = reply.split(b"\n\n")  # each WHATSAT reply ends with an empty line
    first_at, whatsat_at, _json = first_whatsat.split(b"\n", 2)
    assert first_at.endswith(b" order.one +34.068930-118.445127 1700000000")
    assert whatsat_at == first_at  # not the update that came after it
    refused, second_at, third_at, last_whatsat_at, _json = rest.split(b"\n", 4)
    assert refused == b"? WHATSAT order.two 5 1"  # unknown when it was asked
    assert second_at.endswith(b" order.one +40.7-074.0 1700000001")
    assert third_at.endswith(b" order.two +40.7-074.0 1700000001")
    assert (last_whatsat_at, end) == (second_at, b"")


def test_crlf_and_any_white_space_between_fields(herd: Herd) -> None:
    reply = talk(herd["Bona"].port, b" \tIAMAT\x0bws.client\x0c+1+1 \t 1700000000.25\r")
    assert reply.endswith(b" ws.client +1+1 1700000000.25\n")


def test_over_long_line_gets_one_reply_and_closes(herd: Herd) -> None:
    ok = "IAMAT long.ok +1+1 1700000000"
    with socket.create_connection(("127.0.0.1", herd["Bailey"].port), timeout=10) as sock:
        sock.sendall(ok.encode() + b"\n" + b"x" * 5000 + b"\nIAMAT after.close +1+1 1700000000\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    first, second, rest = data.split(b"\n", 2)
    assert first.endswith(b" long.ok +1+1 1700000000")
    assert second == b"? line too long (limit 4096 bytes)" and rest == b""
    assert herd["Bailey"].record("after.close") == {}
    exact = "IAMAT " + "i" * 250 + " +1+1 1" + " " * (4096 - 6 - 250 - 7)
    assert len(exact) == 4096
    assert talk(herd["Bailey"].port, exact).startswith(b"AT Bailey ")


def test_every_line_and_connection_is_in_the_access_log(herd: Herd) -> None:
    talk(herd["Jaquez"].port, "IAMAT logged.client +1+1 1700000000")
    after = "recv IAMAT logged.client"
    wait_until(lambda: "connection closed" in herd["Jaquez"].access_log().partition(after)[2],
               what="access log lines")
    log = herd["Jaquez"].access_log()
    assert "connection opened" in log and "sent AT Jaquez" in log
    assert herd.secret not in log
    assert "logged.client" not in herd["Jaquez"].log()  # nothing per request in the event log


def test_log_lines_cannot_be_forged_and_a_reply_is_one_line(herd: Herd) -> None:
    """Control characters a client sends (CR, ESC, NUL) and the newlines of a
    WHATSAT reply are escaped: one event, one log line."""
    talk(herd["Jaquez"].port, b"hello\rFAKE [Jaquez] info: forged\x1b[31m\x00",
         "IAMAT oneline.client +45.0+007.0 1700000000", "WHATSAT oneline.client 5 2")
    after = "recv WHATSAT oneline.client"
    wait_until(lambda: "html_attributions" in herd["Jaquez"].access_log().partition(after)[2],
               what="log lines")
    lines = herd["Jaquez"].access_log().splitlines()
    forged = [line for line in lines if "FAKE" in line]
    assert len(forged) == 2, forged  # the line received and its "? <line>" reply
    assert forged[0].endswith(" recv hello\\rFAKE [Jaquez] info: forged\\x1b[31m\\x00"), forged
    assert forged[1].endswith(" sent ? hello\\rFAKE [Jaquez] info: forged\\x1b[31m\\x00"), forged
    [reply] = [line for line in lines if "sent AT Jaquez" in line and "oneline.client" in line
               and "html_attributions" in line]
    assert reply.endswith("\\n}"), reply
    assert all(line[:4].isdigit() for line in lines if line), "a line without a timestamp"


def test_repeated_whatsat_is_answered_from_the_cache(herd: Herd) -> None:
    talk(herd["Campbell"].port, "IAMAT cached.client +45.0+007.0 1700000000")
    before = len(herd.places.requests)
    first = talk(herd["Campbell"].port, "WHATSAT cached.client 5 2")
    second = talk(herd["Campbell"].port, "WHATSAT cached.client 5 20")
    assert len(herd.places.requests) == before + 1
    assert len(json.loads(first.split(b"\n", 1)[1])["results"]) == 2
    assert len(json.loads(second.split(b"\n", 1)[1])["results"]) == 20


def test_client_time_far_in_the_future_is_refused(herd: Herd) -> None:
    ahead = f"IAMAT future.client +1+1 {int(time.time()) + 2 * 3600}.5"
    assert talk(herd["Bona"].port, ahead) == f"? {ahead}\n".encode()
    near = f"IAMAT future.client +1+1 {int(time.time()) + 60}.5"  # within the default hour
    assert talk(herd["Bona"].port, near).startswith(b"AT Bona -")


def test_two_nodes_share_one_redis_with_their_own_prefixes(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("shared")
    shared = Herd(root, {"P": ["Q"], "Q": []})
    url = shared["P"].redis.url
    text = shared.config.read_text().replace(shared["Q"].redis.url, url)
    text = text.replace("[nodes.P]\n", '[nodes.P]\nprefix = "p:"\n').replace(
        "[nodes.Q]\n", '[nodes.Q]\nprefix = "q:"\n'
    )
    shared.config.write_text(text)
    try:
        shared["P"].redis.start()
        shared["P"].start()
        shared["Q"].start()
        shared.wait_links()
        at_line = talk(shared["P"].port, "IAMAT shared.redis +1+1 1700000000").rstrip(b"\n")
        redis = shared["P"].redis
        wait_until(lambda: redis.hgetall("q:client:shared.redis").get(b"at") == at_line, what="flood to Q")
        assert redis.hgetall("p:client:shared.redis")[b"at"] == at_line
        assert redis.call("EXISTS", "herd:client:shared.redis") == 0
        assert redis.call("ZCARD", "p:geo") == 1 and redis.call("ZCARD", "q:geo") == 1
    finally:
        shared.stop()
