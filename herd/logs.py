"""Log output for a node: one line per event with a timestamp, as text (the
default) or as one JSON object per line (journald friendly).

Events are buffered and written at most every 100 ms or every 64 KiB, so
logging every line in and out does not cost a syscall per line.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

_FLUSH_BYTES = 1 << 16
_fallback = Logger(namespace="herd")


@implementer(ILogObserver)
class BufferedLineObserver:
    """Formats events into lines and writes them in batches."""

    def __init__(self, out: IO[str], node: str, fmt: str):
        self._out = out
        self._node = node
        self._json = fmt == "json"
        self._parts: list[str] = []
        self._size = 0

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        level = event.get("log_level", LogLevel.info).name
        self.write(event.get("log_time", 0), level, text, event.get("log_namespace", ""))

    def write(self, when: float, level: str, text: str, namespace: str = "herd") -> None:
        """Append one formatted line (the fast path for wire lines skips
        twisted.logger's event machinery)."""
        stamp = _timestamp(when)
        if self._json:
            record = {"time": stamp, "node": self._node, "level": level, "message": text,
                      "namespace": namespace}
            line = json.dumps(record, ensure_ascii=False) + "\n"
        else:
            line = f"{stamp} [{self._node}] {level}: {text}\n"
        self._parts.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._out.write("".join(self._parts))
            self._parts.clear()
            self._size = 0
        self._out.flush()


_second_cache: tuple[int, str] = (-1, "")


def _timestamp(when: float) -> str:
    """ISO 8601 UTC with microseconds; the date part is formatted once a second."""
    global _second_cache
    second = int(when)
    if second != _second_cache[0]:
        _second_cache = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_second_cache[1]}.{int((when - second) * 1_000_000):06d}+00:00"


_active: BufferedLineObserver | None = None


# What could end a log line, drive a terminal or reorder it (C0 and C1
# controls, DEL, line and paragraph separators, bidi and other format
# characters: whatever str.isprintable() refuses) is written as an escape,
# and so is a backslash, so a client can neither forge log lines nor pass
# text off as an escape; a multi-line reply stays one line.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROLS.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def loggable(data: bytes) -> str:
    """Bytes as they go into a log line: UTF-8 where possible, backslash escapes
    for other bytes, for backslashes and for the characters above (cheap when
    there are none, and when there are only controls: a WHATSAT reply)."""
    if b"\\" in data:
        data = data.replace(b"\\", b"\\\\")
    text = data.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    text = text.replace("\n", "\\n")  # all a WHATSAT reply has: quick
    if text.isprintable():
        return text
    text = text.translate(_CONTROLS)
    return text if text.isprintable() else "".join(map(_escape, text))


def wire(who: str, verb: str, data: bytes) -> None:
    """Log one line received or sent (``verb``: recv, sent) cheaply: straight
    into the node's buffered log when it runs, else through twisted.logger."""
    text = loggable(data)
    if _active is not None:
        _active.write(time.time(), "info", f"{who} {verb} {text}")
    else:
        _fallback.info("{who} {verb} {text}", who=who, verb=verb, text=text)


class Throttle:
    """At most ``limit`` events per ``window`` seconds get a log line of their
    own; the others are counted and summed up in one line when the window
    ends (a Redis outage under pipelined load refuses thousands of requests
    a second; each is still in the wire log as ``sent ? <line>``)."""

    def __init__(self, clock: Any, summary: Callable[[int, str], None], limit: int = 10,
                 window: float = 1.0):
        self._clock = clock
        self._summary = summary
        self._limit = limit
        self._window = window
        self._started = -math.inf
        self._logged = 0
        self._left_out = 0
        self._last_cause = ""  # of the events left out
        self._timer: Any = None  # sums up the current window

    def allow(self, cause: str) -> bool:
        """True when this event gets its own line; else it is counted."""
        now = self._clock.seconds()
        if now - self._started >= self._window:
            self._sum_up()  # the last window's, if its timer has not run yet
            self._started, self._logged = now, 0
        if self._logged < self._limit:
            self._logged += 1
            return True
        if not self._left_out:
            self._timer = self._clock.callLater(self._started + self._window - now, self._sum_up)
        self._left_out += 1
        self._last_cause = cause
        return False

    def _sum_up(self) -> None:
        """Say how many events the current window left out (if any)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        left_out, self._left_out = self._left_out, 0
        if left_out:
            self._summary(left_out, self._last_cause)


def start_logging(node: str, fmt: str, reactor: Any, out: IO[str] | None = None) -> BufferedLineObserver:
    """Route twisted.logger to ``out`` (stdout) for this node; flush every 100 ms
    and at shutdown."""
    from twisted.internet.task import LoopingCall

    global _active
    observer = BufferedLineObserver(out or sys.stdout, node, fmt)
    _active = observer
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    predicate.setLogLevelForNamespace("txredisapi", LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
    LoopingCall(observer.flush).start(0.1, now=False)
    reactor.addSystemEventTrigger("after", "shutdown", observer.flush)
    return observer
