"""SPEC 6: a node's first log line carries herd's version and its peer protocol."""

from __future__ import annotations

import os
from pathlib import Path

from cluster import Herd
from harness import REPO, wait_until

from herd.version import VERSION
from herd.wire.peer import VERSION as PEER_VERSION

# A subprocess may run outside the checkout; it still imports this herd.
ENV = {k: v for k, v in os.environ.items() if k != "HERD_CONFIG"} | {"PYTHONPATH": str(REPO)}
CONFIG_COMMANDS = (("serve", "Bailey"), ("up",), ("check",), ("status", "--once"), ("places", "load"))
SMALL = """\
[herd]
secret_env = "HERD_TEST_SECRET"
[nodes.Bailey]
host = "127.0.0.1"
port = 10000
redis = "redis://127.0.0.1:6400/0"
peers = []
"""




def test_the_first_log_line_has_the_version(tmp_path: Path) -> None:
    solo = Herd(tmp_path, {"Solo": []})
    try:
        solo.start()
        node = solo["Solo"]
        wait_until(lambda: "listening on" in node.log(), what="the listening line in the log")
        first = node.log().splitlines()[0]
    finally:
        solo.stop()
    expected = f"herd {VERSION} node Solo starting (peer protocol {PEER_VERSION.decode()})"
    assert first.endswith(f" [Solo] info: {expected}"), first


# --- finding the config (SPEC 5) -------------------------------------------------------------
