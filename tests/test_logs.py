"""herd.logs: escaping what comes from the wire, and throttling repeated errors."""

from __future__ import annotations

from twisted.internet.task import Clock

from herd.logs import Throttle, loggable


def test_loggable_escapes_what_could_end_a_line_or_drive_a_terminal() -> None:
    assert loggable(b"plain caf\xc3\xa9\tTAB") == "plain caf\u00e9\tTAB"
    assert loggable(b"a\rb\nc\x1b[31m\x00\x7f\xff") == "a\\rb\\nc\\x1b[31m\\x00\\x7f\\xff"
    assert loggable("\u2028\u2029\u009b".encode()) == "\\u2028\\u2029\\x9b"


def test_throttle_logs_the_first_events_of_a_window_and_sums_up_the_rest() -> None:
    clock = Clock()
    summaries: list[tuple[int, str]] = []
    throttle = Throttle(clock, lambda n, why: summaries.append((n, why)), limit=3, window=1.0)
    assert [throttle.allow(f"cause {i}") for i in range(5)] == [True, True, True, False, False]
    assert summaries == []
    clock.advance(1.0)
    assert summaries == [(2, "cause 4")]
    assert throttle.allow("again")  # a new window
    clock.advance(5.0)
    assert summaries == [(2, "cause 4")]  # nothing was left out since
