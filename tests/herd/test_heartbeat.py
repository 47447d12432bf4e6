"""Heartbeats on peer links (issue 20): a peer that goes silent while its TCP
connection stays up (here: its process stopped with SIGSTOP, so its kernel
still acknowledges every packet) is noticed within about 3 s and the
connection closed; once it runs again the link comes back and updates
stored meanwhile reach it."""

from __future__ import annotations

import time
from pathlib import Path

from cluster import Herd, talk
from harness import wait_until


def test_a_silent_peer_is_dropped_and_relinked(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": ["B"], "B": []}).start()
    try:
        herd.wait_links()
        herd["B"].pause()
        stopped = time.monotonic()
        wait_until(lambda: "peer B: nothing received for 3 s; closing the connection" in herd["A"].log(),
                   timeout=10, what="A to drop the silent link")
        # 3 s of silence, counted from B's last heartbeat (up to 1 s before its stop)
        assert 1.5 <= time.monotonic() - stopped < 6
        assert talk(herd["A"].port, "IAMAT while.away +1+1 1700000000").startswith(b"AT A ")
        herd["B"].resume()
        wait_until(lambda: herd["B"].record("while.away") != {}, timeout=10, what="B to catch up")
    finally:
        herd.stop()
