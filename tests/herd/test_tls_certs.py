"""ops/tls-certs.sh, the certificate recipe of docs/OPERATIONS.md "TLS
certificates for peer links": a CA and per-node certificates whose IP
subjectAltName is the node's host; nodes configured with them link over TLS;
a certificate that names another address is refused; running it again keeps
what exists, --renew replaces a node's certificate under the same CA."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cluster import Herd, talk
from harness import REPO, wait_until

SCRIPT = REPO / "ops" / "tls-certs.sh"
TLS = 'tls_cert = "tls/{node}.crt"\ntls_key = "tls/{node}.key"\ntls_ca = "tls/ca.crt"\n'

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def certs(config: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(SCRIPT), "--config", str(config), "--out", str(out), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def openssl(*args: str | Path) -> str:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=True,
                          timeout=30).stdout


def test_nodes_link_over_tls_with_the_recipes_certificates(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS)
    tls = tmp_path / "tls"
    made = certs(herd.config, tls)
    assert "node A, subjectAltName IP:127.0.0.1" in made.stdout
    assert "IP Address:127.0.0.1" in openssl("x509", "-in", tls / "A.crt", "-noout", "-ext", "subjectAltName")
    assert openssl("verify", "-CAfile", tls / "ca.crt", tls / "A.crt", tls / "B.crt").count(": OK") == 2
    assert (tls / "A.key").stat().st_mode & 0o077 == 0
    try:
        herd.start()
        herd.wait_links()
        assert all("peer link upgraded to TLS" in herd[n].access_log() for n in "AB")
        at_line = talk(herd["A"].port, "IAMAT tls.recipe +1+1 1700000000").rstrip(b"\n")
        wait_until(lambda: herd["B"].record("tls.recipe").get(b"at") == at_line, what="the flood over TLS")
    finally:
        herd.stop()


def test_a_certificate_naming_another_address_is_refused(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}, extra_herd=TLS)
    moved = tmp_path / "moved.toml"  # the same herd with B at 127.0.0.2: B's SAN names that
    moved.write_text(herd.config.read_text().replace('host = "127.0.0.1"', 'host = "127.0.0.2"', 2)
                     .replace('host = "127.0.0.2"', 'host = "127.0.0.1"', 1))
    certs(moved, tmp_path / "tls", "B")
    certs(herd.config, tmp_path / "tls", "A")
    assert "IP Address:127.0.0.2" in openssl("x509", "-in", tmp_path / "tls/B.crt", "-noout", "-ext",
                                             "subjectAltName")
    try:
        herd.start()
        # A dials B at 127.0.0.1 and finds a certificate for 127.0.0.2. (B's own
        # dial to A succeeds: a listener checks only that the dialler's
        # certificate comes from the herd's CA.)
        wait_until(lambda: "IPAddressMismatch" in herd["A"].log(), what="A refusing B's certificate")
        assert "peer B link up (dialled" not in herd["A"].log()
    finally:
        herd.stop()


def test_running_again_keeps_the_files_and_renew_replaces_a_nodes(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []})
    herd.stop()  # only its config is used
    tls = tmp_path / "tls"
    certs(herd.config, tls)
    before = {p.name: p.read_bytes() for p in tls.iterdir()}
    again = certs(herd.config, tls)
    assert "the CA exists, kept" in again.stdout and "A.crt exists, kept" in again.stdout
    assert {p.name: p.read_bytes() for p in tls.iterdir()} == before
    certs(herd.config, tls, "--renew", "A")
    after = {p.name: p.read_bytes() for p in tls.iterdir()}
    assert after["ca.crt"] == before["ca.crt"] and after["B.crt"] == before["B.crt"]
    assert after["A.crt"] != before["A.crt"] and after["A.key"] != before["A.key"]
    assert ": OK" in openssl("verify", "-CAfile", tls / "ca.crt", tls / "A.crt")


def test_an_unknown_node_is_one_line(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": []})
    herd.stop()  # only its config is used
    result = subprocess.run(["bash", str(SCRIPT), "--config", str(herd.config), "--out", str(tmp_path / "t"),
                             "Z"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"tls-certs: node 'Z' is not in {herd.config} (nodes: A)"]
