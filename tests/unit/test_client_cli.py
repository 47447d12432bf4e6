"""herd.tools.client.run_client against a tiny threaded TCP server (real sockets, no mocks)."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from herd.tools.client import parse_address, run_client

REPO = Path(__file__).resolve().parents[2]

Handler = Callable[[socket.socket], None]


def echo_until_eof(conn: socket.socket) -> None:
    """Answer ``ECHO <line>`` per line; at the client's EOF answer any unterminated
    last line too, then say BYE and close."""
    buffer = b""
    while data := conn.recv(4096):
        buffer += data
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            conn.sendall(b"ECHO " + line + b"\n")
    if buffer:
        conn.sendall(b"ECHO " + buffer + b"\n")
    conn.sendall(b"BYE\n")


def echo_first_line(conn: socket.socket) -> None:
    data = b""
    while b"\n" not in data and (chunk := conn.recv(4096)):
        data += chunk
    conn.sendall(b"ECHO " + data.split(b"\n")[0] + b"\n")


def echo_and_linger(conn: socket.socket) -> None:
    """Answer the first line, then keep the connection open and silent."""
    echo_first_line(conn)
    time.sleep(3)


class Server:
    """Accepts connections on a free port, each handled by ``handler`` in a thread."""

    def __init__(self, handler: Handler, family: socket.AddressFamily = socket.AF_INET) -> None:
        self.handler = handler
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.sock.listen()
        self.port: int = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            self.handler(conn)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo_server() -> Iterator[Server]:
    server = Server(echo_until_eof)
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_lines_are_sent_and_replies_printed(
    echo_server: Server, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    status = run_client(f"127.0.0.1:{echo_server.port}", ["IAMAT a +1.0+2.0 1", "WHATSAT a 10 5"], timeout=5)
    out, err = capfdbinary.readouterr()
    assert status == 0, err
    assert out == b"ECHO IAMAT a +1.0+2.0 1\nECHO WHATSAT a 10 5\nBYE\n"
    assert err == b""


def test_non_ascii_line_goes_out_as_utf8(
    echo_server: Server, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert run_client(f"localhost:{echo_server.port}", ["IAMAT caf\u00e9"], timeout=5) == 0
    assert capsysbinary.readouterr().out == "ECHO IAMAT caf\u00e9\nBYE\n".encode()


def test_a_timeout_without_data_ends_the_drain_with_status_1(
        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    server = Server(echo_and_linger)
    try:
        started = time.monotonic()
        assert run_client(f"127.0.0.1:{server.port}", ["hello"], timeout=0.5) == 1
        elapsed = time.monotonic() - started
    finally:
        server.close()
    printed = capsysbinary.readouterr()
    assert printed.out == b"ECHO hello\n"  # what came is printed; that something may not have, said
    assert printed.err == (f"herd client: 127.0.0.1:{server.port} sent nothing for 0.5 s and did not "
                           "close the connection (some replies may be missing)\n").encode()
    assert 0.4 < elapsed < 2.5


def echo_and_reset(conn: socket.socket) -> None:
    """Answer the first line, then drop the connection with a reset."""
    echo_first_line(conn)
    time.sleep(0.2)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def test_a_reset_connection_ends_with_status_1(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    server = Server(echo_and_reset)
    try:
        assert run_client(f"127.0.0.1:{server.port}", ["hello", "more"], timeout=5) == 1
    finally:
        server.close()
    printed = capsysbinary.readouterr()
    assert printed.out == b"ECHO hello\n"
    assert printed.err.startswith(f"herd client: connection to 127.0.0.1:{server.port} lost: ".encode())


def test_interactive_reads_stdin_until_eof(
    echo_server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    script = tmp_path / "input.txt"
    script.write_bytes(b"first\n\nsecond line\nlast, unterminated")
    with open(script, "rb") as stdin:  # a regular file: poll must cope with it
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        assert run_client(f"127.0.0.1:{echo_server.port}", [], timeout=5) == 0
    assert capsysbinary.readouterr().out == (
        b"ECHO first\nECHO \nECHO second line\nECHO last, unterminated\nBYE\n"
    )


def test_interactive_prints_replies_as_they_arrive(
    echo_server: Server, monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stdin", os.fdopen(read_end, "r"))
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(run_client(f"127.0.0.1:{echo_server.port}", [], timeout=5))
    )
    thread.start()
    try:
        os.write(write_end, b"one\n")
        deadline = time.monotonic() + 5
        seen = b""
        while b"ECHO one\n" not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
            seen += capfdbinary.readouterr().out
        assert seen == b"ECHO one\n"  # answered while stdin is still open
        os.write(write_end, b"two\n")
    finally:
        os.close(write_end)
    thread.join(10)
    assert result == [0]
    assert capfdbinary.readouterr().out == b"ECHO two\nBYE\n"
    sys.stdin.close()


def test_ipv6_address(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    try:
        server = Server(echo_until_eof, socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert run_client(f"[::1]:{server.port}", ["hi"], timeout=5) == 0
    finally:
        server.close()
    assert capsysbinary.readouterr().out == b"ECHO hi\nBYE\n"


def test_connect_failure(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    assert run_client(f"127.0.0.1:{port}", ["hi"], timeout=5) == 1
    out, err = capsys.readouterr()
    assert out == ""
    line = one_line(err)
    assert line.startswith(f"herd client: cannot connect to 127.0.0.1:{port}: ")
    assert "refused" in line.lower()


@pytest.mark.parametrize(
    "address",
    [
        "localhost",
        "localhost:",
        ":10000",
        "localhost:0",
        "localhost:65536",
        "localhost:http",
        "::1:10000",
        "[::1]",
        "[::1]10000",
        "a b:1",
        "host:1:2",
        "",
        "localhost:-1",
    ],
)
def test_bad_address(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_client(address, ["hi"], timeout=5) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert one_line(err).startswith(f"herd client: bad address {address!r}")


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan")])
def test_bad_timeout(echo_server: Server, timeout: float, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_client(f"127.0.0.1:{echo_server.port}", ["hi"], timeout=timeout) == 2
    assert one_line(capsys.readouterr().err).startswith("herd client: bad timeout")


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:10000") == ("127.0.0.1", 10000)
    assert parse_address("node-1.example.org:1") == ("node-1.example.org", 1)
    assert parse_address("[::1]:65535") == ("::1", 65535)
    assert parse_address("[fe80::1%eth0]:80") == ("fe80::1%eth0", 80)


def test_cli_entry_point(echo_server: Server, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    from herd.cli import main

    assert main(["client", f"127.0.0.1:{echo_server.port}", "IAMAT x", "--timeout", "3"]) == 0
    assert capfdbinary.readouterr().out == b"ECHO IAMAT x\nBYE\n"


# --- exit status 1 for a refusal (SPEC 6: a `? ` reply to herd client) --------------------


def answer_with(*chunks: bytes) -> Handler:
    """A handler that reads the request to EOF, then sends ``chunks`` as
    separate writes (a pause between them, so they arrive as separate reads)."""

    def handler(conn: socket.socket) -> None:
        while conn.recv(4096):
            pass
        for chunk in chunks:
            conn.sendall(chunk)
            time.sleep(0.05)

    return handler


@pytest.mark.parametrize(("chunks", "status"), [
    ((b"AT a +0.1 a +1+2 1\n",), 0),
    ((b"? IAMAT bad\n",), 1),
    ((b"AT a +0.1 a +1+2 1\n? WHATSAT b 10 5\n",), 1),
    ((b"AT a +0.1 a +1+2 1\n?", b" WHATSAT b 10 5\n"), 1),  # "? " split across reads
    ((b"AT a +0.1 a +1+2 1\n", b"?", b" x\n"), 1),
    ((b"? line too long (limit 4096 bytes)\n",), 1),
    ((b"AT a +0.1 a ? 1\n", b"? x"), 1),  # an unterminated last line counts too
    ((b"AT a +0.1 a ? 1\n",), 0),  # "? " inside a line is no refusal
    ((b"AT a +0.1 a", b"? 1\n"), 0),  # nor when a read ends mid-line
    ((b"?x\n", b"AT ?? \n"), 0),
])
def test_status_1_when_any_reply_is_a_refusal(
        chunks: tuple[bytes, ...], status: int, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    server = Server(answer_with(*chunks))
    try:
        assert run_client(f"127.0.0.1:{server.port}", ["anything"], timeout=5) == status
    finally:
        server.close()
    printed = capfdbinary.readouterr()
    assert printed.out == b"".join(chunks)  # printed as received, refusal or not
    cut_short = not printed.out.endswith(b"\n")  # (status 1 for that too)
    assert printed.err == (f"herd client: 127.0.0.1:{server.port} closed the connection in the middle "
                           "of a reply\n".encode() if cut_short else b"")


@pytest.mark.parametrize(("lines", "chunks", "status", "said"), [
    (["IAMAT a +1+1 1"], [], 1, "closed the connection without a reply"),
    (["IAMAT a +1+1 1"], [b"AT A +0.1 a +1+1"], 1, "closed the connection in the middle of a reply"),
    (["   "], [], 0, ""),  # a blank line asks nothing
    (["IAMAT a +1+1 1"], [b"AT A +0.1 a +1+1 1\n"], 0, ""),
])
def test_a_node_that_closes_without_a_whole_reply_is_status_1(
        lines: list[str], chunks: list[bytes], status: int, said: str,
        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """Found by a review: a server that read the request and closed without a
    word left herd client with status 0."""
    server = Server(answer_with(*chunks))
    try:
        assert run_client(f"127.0.0.1:{server.port}", lines, timeout=5) == status
    finally:
        server.close()
    assert said.encode() in capsysbinary.readouterr().err


def test_cli_exit_status_1_on_a_refusal() -> None:
    server = Server(answer_with(b"? WHATSAT nobody 10 5\n"))
    try:
        result = subprocess.run([sys.executable, "-m", "herd", "client", f"127.0.0.1:{server.port}",
                                 "WHATSAT nobody 10 5"], cwd=REPO, capture_output=True, timeout=30)
    finally:
        server.close()
    assert (result.returncode, result.stdout, result.stderr) == (1, b"? WHATSAT nobody 10 5\n", b"")


def test_cli_usage_error_is_status_2() -> None:
    result = subprocess.run([sys.executable, "-m", "herd", "client"], cwd=REPO, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr
