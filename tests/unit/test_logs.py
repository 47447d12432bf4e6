"""herd.logs: escaping what comes from the wire, and throttling repeated errors."""

from __future__ import annotations

from twisted.internet.task import Clock

from herd.logs import Throttle, loggable


def test_loggable_escapes_what_could_end_a_line_or_drive_a_terminal() -> None:
    assert loggable(b"plain caf\xc3\xa9 \tTAB") == "plain caf\u00e9 \\tTAB"
    assert loggable(b"a\rb\nc\x1b[31m\x00\x7f\xff") == "a\\rb\\nc\\x1b[31m\\x00\\x7f\\xff"
    assert loggable("\u2028\u2029\u009b\u202e".encode()) == "\\u2028\\u2029\\x9b\\u202e"
    assert loggable(b"literal \\n, not a newline") == "literal \\\\n, not a newline"
    assert loggable(b"\\\xff") == "\\\\\\xff"  # a backslash, then a byte that is not UTF-8


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
    for i in range(4):
        throttle.allow(f"late {i}")
    clock.advance(0.999)  # its timer is due at 1.0 ...
    clock.advance(0.001)
    assert summaries == [(2, "cause 4"), (1, "late 3")]
    for i in range(4):
        throttle.allow(f"next {i}")  # ... one window's count never runs into the next one's
    clock.advance(1.0)
    assert summaries == [(2, "cause 4"), (1, "late 3"), (1, "next 3")]
