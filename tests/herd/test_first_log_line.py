"""SPEC 6: a node's first log line carries herd's version and its peer protocol;
the event log says when the node is ready."""

from __future__ import annotations

from pathlib import Path

from cluster import Herd
from harness import wait_until

from herd.version import VERSION
from herd.wire.peer import VERSION as PEER_VERSION


def test_the_first_log_line_has_the_version(tmp_path: Path) -> None:
    solo = Herd(tmp_path, {"Solo": []})
    try:
        solo.start()
        node = solo["Solo"]
        wait_until(lambda: "listening on" in node.log(), what="the listening line in the log")
        first = node.log().splitlines()[0]
        # Found by a review: "ready" was said only to systemd (and logged only under it).
        ready = f" [Solo] info: ready: serving clients on 127.0.0.1:{node.port}, Redis answers"
        wait_until(lambda: any(line.endswith(ready) for line in node.log().splitlines()), what="ready")
    finally:
        solo.stop()
    protocol = PEER_VERSION.decode()
    expected = f"herd {VERSION} node Solo starting (peer protocol {protocol}, config {solo.config})"
    assert first.endswith(f" [Solo] info: {expected}"), first

