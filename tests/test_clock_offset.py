"""$HERD_CLOCK_OFFSET_SECONDS: a node whose clock is off (labs and tests only,
docs/LAB.md), since a network namespace cannot change CLOCK_REALTIME."""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from cluster import Herd, talk
from harness import REPO, env_with, wait_until

from config.schema import ConfigError
from herd.service import CLOCK_OFFSET_ENV, node_clock


def test_no_offset_is_the_wall_clock() -> None:
    assert node_clock({}) == (time.time_ns, 0)
    assert node_clock({CLOCK_OFFSET_ENV: " "}) == (time.time_ns, 0)
    assert node_clock({CLOCK_OFFSET_ENV: "0.000"}) == (time.time_ns, 0)


@pytest.mark.parametrize("text, offset_ns", [("300", 300_000_000_000), ("-90.5", -90_500_000_000),
                                             ("+0.000000001", 1)])
def test_offset_shifts_the_clock(text: str, offset_ns: int) -> None:
    clock, offset = node_clock({CLOCK_OFFSET_ENV: text})
    assert offset == offset_ns
    before = time.time_ns()
    shifted = clock()
    assert before + offset_ns <= shifted <= time.time_ns() + offset_ns


@pytest.mark.parametrize("text", ["five", "1e", "nan", "inf", "--1"])
def test_a_bad_offset_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=CLOCK_OFFSET_ENV):
        node_clock({CLOCK_OFFSET_ENV: text})


def _skew(reply: bytes) -> Decimal:
    return Decimal(reply.split()[2].decode())


def test_a_node_with_its_clock_ten_minutes_behind(tmp_path: Path) -> None:
    """Skews and the client-time bound follow the shifted clock: a client-time
    now is ten minutes ahead of it, one 55 minutes ahead of real time is over
    the one-hour bound."""
    herd = Herd(tmp_path, {"A": []})
    try:
        herd["A"].redis.start()
        herd["A"].start(**{CLOCK_OFFSET_ENV: "-600"})
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
                                env=env_with(HERD_SECRET=herd.secret, GOOGLE_PLACES_KEY="k",
                                             **{CLOCK_OFFSET_ENV: "ten"}))
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == \
            f"herd: ${CLOCK_OFFSET_ENV}: 'ten' is not a number of seconds"
    finally:
        herd.stop()
