"""A node run with $HERD_CLOCK_OFFSET_SECONDS: a clock ten minutes behind
decides skews and the client-time bound; a bad value is one line. (Labs and
tests only, docs/LAB.md; the parsing: tests/unit/test_clock_offset.py.)"""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from cluster import Herd, talk
from harness import REPO, child_env, wait_until

from herd.clock import CLOCK_OFFSET_ENV


def _skew(reply: bytes) -> Decimal:
    return Decimal(reply.split()[2].decode())


def test_a_node_with_its_clock_ten_minutes_behind(tmp_path: Path) -> None:
    """Skews and the client-time bound follow the shifted clock: a client-time
    now is ten minutes ahead of it, one 55 minutes ahead of real time is over
    the one-hour bound."""
    herd = Herd(tmp_path, {"A": []})
    try:
        herd["A"].redis.start()
        herd["A"].start(env={CLOCK_OFFSET_ENV: "-600"})
        now = time.time()
        reply = talk(herd["A"].port, f"IAMAT kiwi +34.068930-118.445127 {now:.9f}")
        assert reply.startswith(b"AT A -"), reply
        assert -601 < _skew(reply) < -599
        late = f"IAMAT kiwi +34.068930-118.445127 {now + 55 * 60:.9f}"
        assert talk(herd["A"].port, late) == b"? " + late.encode() + b"\n"
        wait_until(lambda: "clock offset -600.000000000 s in effect" in herd["A"].log(),
                   what="the offset logged")
    finally:
        herd.stop()


def test_serve_refuses_a_bad_offset_in_one_line(tmp_path: Path) -> None:
    herd = Herd(tmp_path, {"A": []})
    try:
        result = subprocess.run([sys.executable, "-m", "herd", "serve", "A", "--config", str(herd.config)],
                                cwd=REPO, capture_output=True, text=True, timeout=30,
                                env=child_env(HERD_SECRET=herd.secret, GOOGLE_PLACES_KEY="k",
                                             **{CLOCK_OFFSET_ENV: "ten"}))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == \
            f"herd: ${CLOCK_OFFSET_ENV}: 'ten' is not a number of seconds"
    finally:
        herd.stop()
