"""Log output for a node: one line per event with a timestamp, as text (the
default) or as one JSON object per line (journald friendly).

Events are buffered and written at most every 100 ms or every 64 KiB, so
logging every line in and out does not cost a syscall per line.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

_FLUSH_BYTES = 1 << 16


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
        line = self._format(event)
        self._parts.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def _format(self, event: dict[str, Any]) -> str:
        when = datetime.fromtimestamp(event.get("log_time", 0), UTC)
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        level = event.get("log_level", LogLevel.info).name
        if self._json:
            record = {"time": when.isoformat(timespec="microseconds"), "node": self._node,
                      "level": level, "message": text,
                      "namespace": event.get("log_namespace", "")}
            return json.dumps(record, ensure_ascii=False) + "\n"
        return f"{when.isoformat(timespec='microseconds')} [{self._node}] {level}: {text}\n"

    def flush(self) -> None:
        if self._parts:
            self._out.write("".join(self._parts))
            self._parts.clear()
            self._size = 0
        self._out.flush()


def start_logging(node: str, fmt: str, reactor: Any, out: IO[str] | None = None) -> BufferedLineObserver:
    """Route twisted.logger to ``out`` (stdout) for this node; flush every 100 ms
    and at shutdown."""
    from twisted.internet.task import LoopingCall

    observer = BufferedLineObserver(out or sys.stdout, node, fmt)
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    predicate.setLogLevelForNamespace("txredisapi", LogLevel.warn)
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [predicate])],
                                     redirectStandardIO=False)
    LoopingCall(observer.flush).start(0.1, now=False)
    reactor.addSystemEventTrigger("after", "shutdown", observer.flush)
    return observer
