"""TLS on peer links with a CA made at test time: TLS nodes link and flood,
a node with a certificate from another CA is refused, and a plain-text
handshake to a TLS node is refused."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cluster import Herd, talk
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import wait_until

from herd.wire import handshake as auth

TLS = 'tls_cert = "tls/{node}.crt"\ntls_key = "tls/{node}.key"\ntls_ca = "tls/ca.crt"\n'


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def make_ca(directory: Path, cn: str = "herd test CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "ca", cert, key)
    return cert, key


def make_node_cert(
    directory: Path, node: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(node))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    _write(directory / node, cert, key)


def test_tls_nodes_link_and_flood(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "tls")
    for node in ("A", "B", "C"):
        make_node_cert(tmp_path / "tls", node, ca)
    herd = Herd(tmp_path, {"A": ["B"], "B": ["C"], "C": []}, extra_herd=TLS).start()
    try:
        herd.wait_links()
        wait_until(lambda: all("peer link upgraded to TLS" in herd[n].access_log() for n in "ABC"),
                   what="the upgrades in the access logs")
        # The event log (journalctl) says so too (docs/OPERATIONS.md's check of a TLS rollout).
        wait_until(lambda: "peer B link up (dialled, TLS;" in herd["A"].log()
                   and "peer A link up (accepted, TLS;" in herd["B"].log(), what="TLS links logged")
        at_line = talk(herd["A"].port, "IAMAT tls.client +1+1 1700000000").rstrip(b"\n")
        wait_until(lambda: herd["C"].record("tls.client").get(b"at") == at_line, what="flood over TLS")
    finally:
        herd.stop()


def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "tls")
    make_node_cert(tmp_path / "tls", "A", ca)
    make_node_cert(tmp_path / "tls", "B", make_ca(tmp_path / "rogue", "rogue CA"))
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS).start()
    try:
        wait_until(
            lambda: "certificate verify failed" in herd["A"].log() + herd["B"].log(),
            what="TLS verification failure logged",
        )
        talk(herd["A"].port, "IAMAT from.a +1+1 1700000000")
        wait_until(lambda: "handshake did not complete" in herd["A"].log() + herd["B"].log(),
                   what="the failed handshake counted for back-off")
        logs = herd["A"].log() + herd["B"].log()
        assert "peer A link up" not in logs and "peer B link up" not in logs
        assert "retrying in 0.5s" in logs
        assert herd["B"].record("from.a") == {}
        # Both sides say so at warning level: the listener too (an audit found only info there).
        wait_until(lambda: all("warning: " in line for n in "AB" for line in herd[n].log().splitlines()
                               if "peer refused or gone during TLS" in line)
                   and all("peer refused or gone during TLS" in herd[n].log() for n in "AB"),
                   what="the listeners' warnings")
    finally:
        herd.stop()


def test_plain_text_handshake_to_a_tls_node_is_refused(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "tls")
    for node in ("A", "B"):
        make_node_cert(tmp_path / "tls", node, ca)
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS)
    herd["A"].redis.start()
    herd["A"].start()
    try:
        hello = b"HERD-HELLO B A " + auth.new_nonce() + b" " + auth.PROTOCOL
        with socket.create_connection(("127.0.0.1", herd["A"].ports.peer), timeout=5) as sock:
            sock.sendall(hello + b"\n")
            assert sock.recv(4096) == b"? " + hello + b"\n"
        wait_until(lambda: "TLS is required first" in herd["A"].log(), what="refusal logged")
        assert talk(herd["A"].port, "IAMAT plain.client +1+1 1700000000").startswith(b"AT A ")
    finally:
        herd.stop()


def test_missing_tls_file_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    import subprocess

    from harness import REPO, child_env

    ca = make_ca(tmp_path / "tls")
    make_node_cert(tmp_path / "tls", "A", ca)  # B's files are missing: only A may run here
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS)
    result = subprocess.run(herd["B"].argv, cwd=REPO, capture_output=True, text=True, timeout=30,
                            env=child_env(HERD_SECRET="s", GOOGLE_PLACES_KEY="k"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "herd.tls_cert: no such file" in result.stderr
    assert "(for node B)" in result.stderr and "Traceback" not in result.stderr
    herd.stop()


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (lambda d: (d / "B.crt").write_text("garbage\n"),
         "herd.tls_cert: {d}/B.crt: not usable (no start line)"),
        (lambda d: (d / "B.key").write_text("garbage\n"), "herd.tls_key: {d}/B.key: not usable"),
        (lambda d: (d / "B.key").write_bytes((d / "A.key").read_bytes()),
         "herd.tls_key: {d}/B.key: does not match the certificate in tls_cert"),
        (lambda d: (d / "ca.crt").write_text(""), "herd.tls_ca: {d}/ca.crt: not usable"),
    ],
)
def test_an_unusable_tls_file_is_one_line_from_serve_and_up(tmp_path: Path, spoil: Any,
                                                            fragment: str) -> None:
    """Found by an audit: garbage in a PEM file, or a key of another
    certificate, ended 'herd serve' with a traceback."""
    import subprocess

    from harness import REPO, child_env

    ca = make_ca(tmp_path / "tls")
    for node in ("A", "B"):
        make_node_cert(tmp_path / "tls", node, ca)
    spoil(tmp_path / "tls")
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS)
    try:
        env = child_env(HERD_SECRET="s", GOOGLE_PLACES_KEY="k")
        expected = fragment.format(d=tmp_path / "tls")
        up = [sys.executable, "-m", "herd", "up", "--config", str(herd.config), "--state-dir",
              str(tmp_path / "state")]
        serve, up_result = (subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30,
                                           env=env) for command in (herd["B"].argv, up))
        for result in (serve, up_result):
            assert result.returncode == 2, result.stderr
            assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
            assert result.stderr.endswith((" (node B)\n", " (node A)\n")) and "Traceback" not in result.stderr
        assert not (tmp_path / "state").exists()  # herd up started nothing
    finally:
        herd.stop()


def test_a_refused_handshake_over_tls_is_not_blamed_on_tls(tmp_path: Path) -> None:
    """Review: a dialler that passed TLS and then sent a wrong HERD-AUTH got
    'peer refused or gone during TLS' on top of 'peer handshake refused',
    pointing at the wrong cause."""
    import ssl

    ca = make_ca(tmp_path / "tls")
    for node in ("A", "B"):
        make_node_cert(tmp_path / "tls", node, ca)
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS)
    try:
        herd.start(["A"])  # this test speaks for B
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(tmp_path / "tls" / "ca.crt")
        context.load_cert_chain(tmp_path / "tls" / "B.crt", tmp_path / "tls" / "B.key")
        with socket.create_connection(("127.0.0.1", herd["A"].ports.peer), timeout=5) as raw:
            raw.sendall(b"HERD-STARTTLS\n")
            assert raw.recv(100) == b"HERD-TLS-OK\n"
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock:
                tls_sock.sendall(b"HERD-HELLO B A " + auth.new_nonce() + b" " + auth.PROTOCOL + b"\n")
                assert tls_sock.recv(200).startswith(b"HERD-CHALLENGE ")
                tls_sock.sendall(b"HERD-AUTH " + b"0" * 64 + b"\n")
                assert tls_sock.recv(200).startswith(b"? HERD-AUTH")
        refused = "peer handshake refused at HERD-AUTH: B's proof matches no secret"
        wait_until(lambda: refused in herd["A"].log()
                   and herd["A"].access_log().count("connection closed") >= 1,
                   what="the refusal and the close")
        assert "during TLS" not in herd["A"].log()
    finally:
        herd.stop()


def _logged(node: Any, text: str, times: int) -> bool:
    return bool(node.log().count(text) >= times)


def _tls_peer(herd: Herd, tmp_path: Path, peer: str, node: str) -> Any:
    """An authenticated TLS peer connection to ``node``, playing ``peer``."""
    import ssl

    from cluster import SECRET

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tmp_path / "tls" / "ca.crt")
    context.load_cert_chain(tmp_path / "tls" / f"{peer}.crt", tmp_path / "tls" / f"{peer}.key")
    raw = socket.create_connection(("127.0.0.1", herd[node].ports.peer), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall(b"HERD-STARTTLS\n")
    assert raw.recv(100) == b"HERD-TLS-OK\n"
    tls_sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    nonce = auth.new_nonce()
    tls_sock.sendall(b"HERD-HELLO %s %s %s %s\n" % (peer.encode(), node.encode(), nonce, auth.PROTOCOL))
    words = tls_sock.recv(400).split()
    assert words[0] == b"HERD-CHALLENGE", words
    mac = auth.mac(SECRET.encode(), b"dialler", peer.encode(), node.encode(), nonce, words[1])
    tls_sock.sendall(b"HERD-AUTH " + mac + b"\n")
    assert tls_sock.recv(100).startswith(b"HERD-OK"), "not authenticated"
    return tls_sock


def test_a_tls_peer_gone_in_the_middle_of_an_answer(tmp_path: Path) -> None:
    """Found by a review: an answer to SYNC waits while the peer reads slowly
    (a producer registered with the transport); when the TLS link was lost
    in the middle, letting go of the producer raised, an unhandled error."""
    import struct

    ca = make_ca(tmp_path / "tls")
    for node in ("A", "B"):
        make_node_cert(tmp_path / "tls", node, ca)
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS)
    try:
        herd.start(["A"])  # this test plays B
        lines = [f"IAMAT answer.{i} +1+1 1700000000.{i:09d}" for i in range(20_000)]
        assert talk(herd["A"].port, *lines, timeout=60).count(b"\n") == 20_000
        for attempt in range(3):
            peer = _tls_peer(herd, tmp_path, "B", "A")
            peer.sendall(b"SYNC -\n")  # a full transfer: 20 chunks or more
            while b"R AT " not in peer.recv(4096):
                pass  # the answer has begun; reset the link in its middle
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            wait_until(partial(_logged, herd["A"], "peer B connection", attempt + 1), what="link gone")
        wait_until(lambda: herd["A"].log().count("sync to B: full, cut short by the connection's end") == 3,
                   what="each answer ended")
        talk(herd["A"].port, "IAMAT after.answers +1+1 1700000000")  # A still serves
        log = herd["A"].log()
        assert "Unhandled" not in log and "Traceback" not in log, log[-3000:]
    finally:
        herd.stop()
