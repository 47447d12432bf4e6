"""$HERD_CLOCK_OFFSET_SECONDS, read: a node whose clock is off (labs and
tests only, docs/LAB.md). A node run with it: tests/herd/test_clock_offset_node.py."""

from __future__ import annotations

import time

import pytest

from config.schema import ConfigError
from herd.clock import CLOCK_OFFSET_ENV, node_clock


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
