"""A node's two log streams (SPEC 6, "Logs: two streams").

- The event log, on stdout: start, ready, stop, links, Redis, every warning
  and error; one line per twisted.logger event with its level (debug, info,
  warning, error, critical), as text or as one JSON object per line whose
  keys are the event's fields. With ``prefix`` each line starts with the
  sd-daemon priority (``<4>`` for a warning ...), so journald stores each
  event with its own priority.
- The access log, in a file rotated by size (herd.rotating): every line
  received and sent on client and peer connections (heartbeats excepted)
  and every connection opened and closed, with timestamps. It bypasses
  twisted.logger: a client's IAMAT costs two of its lines, so they are
  formatted by one f-string each.

Both are buffered and written at most every 100 ms or every 64 KiB, so no
line costs a system call of its own.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from time import time_ns
from typing import IO, Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    PredicateResult,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

from config.schema import ConfigError, HerdConfig
from herd import systemd
from herd.rotating import RotatingFile

_FLUSH_BYTES = 1 << 16
FLUSH_INTERVAL = 0.1  # seconds between writes of the buffers
log = Logger(namespace="herd")

# twisted.logger's levels by the names operators know (syslog's, not "warn").
LEVEL_NAMES = {LogLevel.debug: "debug", LogLevel.info: "info", LogLevel.warn: "warning",
               LogLevel.error: "error", LogLevel.critical: "critical"}
LEVELS = {name: level for level, name in LEVEL_NAMES.items()}
# sd-daemon(3) priority prefixes (syslog priorities) for journald.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
# Keys of Twisted's legacy (twisted.python.log) events that are not fields.
_NOT_FIELDS = frozenset({"format", "isError", "system", "failure", "message", "time", "start_line"})


@dataclass(frozen=True)
class LogOptions:
    """How ``herd serve`` writes its event log: ``fmt`` text or json; events
    below ``level`` are dropped; ``prefix``: sd-daemon priority prefixes,
    None to add them only when stdout is journald's (herd.systemd)."""

    fmt: str = "text"
    level: str = "info"
    prefix: bool | None = None


@implementer(ILogObserver)
class EventLog:
    """The event log: formats twisted.logger events into lines and writes
    them to ``out`` in batches (``flush``)."""

    def __init__(self, out: IO[str], node: str, fmt: str = "text", prefix: bool = False):
        self._out = out
        self._node = node
        self._json = fmt == "json"
        self._prefix = prefix
        self._parts: list[str] = []
        self._size = 0

    def __call__(self, event: dict[str, Any]) -> None:
        level = LEVEL_NAMES.get(event_level(event), "info")
        stamp = timestamp(event.get("log_time") or time.time())
        text = formatEvent(event)
        failure = event.get("log_failure")
        if self._json:
            line = json.dumps(self._record(event, stamp, level, text), ensure_ascii=False)
        else:
            line = f"{stamp} [{self._node}] {level}: {text}"
            if failure is not None:
                line = f"{line}\n{failure.getTraceback().rstrip()}"
        if self._prefix:  # every line of a traceback too: each is a journal entry of its own
            mark = f"<{PRIORITIES[level]}>"
            line = mark + line.replace("\n", "\n" + mark)
        self._add(line + "\n")

    def _record(self, event: dict[str, Any], stamp: str, level: str, text: str) -> dict[str, Any]:
        """The JSON object of one event: time, node, level, message, then the
        event's own fields (keys not starting with ``log_`` whose values JSON
        can hold; bytes as they would be logged)."""
        record = json_record(stamp, self._node, level, text)
        for key, value in event.items():
            if key in record or key in _NOT_FIELDS or key.startswith("log_"):
                continue
            field = _field(value)
            if field is not _SKIP:
                record[key] = field
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        return record

    def _add(self, line: str) -> None:
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


_SKIP = object()


def _field(value: Any) -> Any:
    """``value`` as a JSON field, or _SKIP when JSON cannot hold it."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _SKIP  # NaN is not JSON (jq refuses it)
    if isinstance(value, bytes):
        return loggable(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return _SKIP
    return value


def open_access_log(config: HerdConfig, node: str, environ: Mapping[str, str]) -> RotatingFile | None:
    """``node``'s access log, opened for appending (its directories made), or
    None when it is off; ``environ`` is the node's (its state directory).
    ConfigError naming ``herd.access_log`` when it cannot be opened."""
    path = config.access_log_path(node, environ)
    if path is None:
        return None
    try:
        return RotatingFile(path, config.access_log_max_bytes, config.access_log_keep)
    except OSError as err:
        where = "" if config.access_log else ", by default in its state directory"
        raise ConfigError(f"{config.path}: herd.access_log: cannot open {path!r} (for node {node}{where}): "
                          f"{err.strerror or err}") from None


class AccessLog:
    """The access log: one line per line received or sent and per connection
    event, ``<time> <who> <what>``, buffered (``flush``) into a RotatingFile.
    A file that cannot be written is reported once in the event log (and
    once when it can be again); its lines are dropped meanwhile."""

    def __init__(self, file: RotatingFile):
        self.file = file
        self._parts: list[bytes] = []
        self._size = 0
        self._failing = False
        self._second = -1  # the second self._stamp is of
        self._stamp = ""  # its date and time up to the decimal point

    def _head(self, who: str, verb: str) -> str:
        """``<time> <who> <verb> ``, the time now; its date part made once a second."""
        us = time_ns() // 1000
        second = us // 1_000_000
        if second != self._second:
            self._second, self._stamp = second, _second_part(second)
        return f"{self._stamp}{us % 1_000_000:06d}+00:00 {who} {verb} "

    def line(self, who: str, verb: str, text: str) -> None:
        """``<time> <who> <verb> <text>``: a line received or sent."""
        self._add(f"{self._head(who, verb)}{text}\n".encode())

    def block(self, who: str, verb: str, data: bytes) -> None:
        """Lines received or sent at one moment (``data``: each ends with a
        newline), one log line each, escaped like :func:`loggable`. On the hot
        path: a read or a write of many lines costs a few calls, not a few per
        line, when it holds nothing to escape."""
        head = self._head(who, verb)
        if not data.translate(None, _PLAIN):  # nothing but plain characters and newlines
            head_bytes = head.encode()
            self._add(head_bytes + data[:-1].replace(b"\n", b"\n" + head_bytes) + b"\n")
        else:
            self._add("".join([f"{head}{loggable(line)}\n" for line in data[:-1].split(b"\n")]).encode())

    def note(self, who: str, what: str) -> None:
        """``<time> <who> <what>``: a connection event."""
        verb, _, text = what.partition(" ")
        self.line(who, verb, text)

    def _add(self, part: bytes) -> None:
        self._parts.append(part)
        self._size += len(part)
        if self._size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        try:
            self.file.write(data)
            self.file.flush()
        except (OSError, ValueError) as err:  # ValueError: a rotation could not reopen it
            if not self._failing:
                self._failing = True
                log.error("access log {path} not written ({why}); its lines are dropped until it can be",
                          path=self.file.path, why=str(err))
            return
        if self._failing:
            self._failing = False
            log.info("access log {path} written again", path=self.file.path)

    def close(self) -> None:
        self.flush()
        self.file.close()


def _second_part(second: int) -> str:
    """A timestamp up to its fraction: ``2026-12-05T10:00:00.``"""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def json_record(stamp: str, node: str | None, level: str, message: str) -> dict[str, Any]:
    """The fields every JSON line of herd's logs begins with."""
    return {"time": stamp, "node": node, "level": level, "message": message}


def error_line(text: str, as_json: bool = False, node: str | None = None, level: str = "error",
               prefix: bool | None = None) -> None:
    """Write ``text`` as one line on stderr, before the event log runs or
    after it stopped: a fatal error, said once (or with ``level`` "info", a
    note). It carries its priority as the event log's lines do (``prefix``,
    ``--log-prefix``; None: when stderr is journald's), so that ``journalctl
    -p err`` shows why a node did not start (journald stores unmarked lines
    as info). ``as_json`` (``--log-format json``): one JSON object with the
    event log's fields (json_record), so that a reader of the log as JSON
    reads this line too."""
    marked = systemd.is_journal(sys.stderr) if prefix is None else prefix
    mark = f"<{PRIORITIES[level]}>" if marked else ""
    if as_json:
        text = json.dumps(json_record(timestamp(time.time()), node, level, text), ensure_ascii=False)
    print(f"{mark}{text}", file=sys.stderr, flush=True)


def timestamp(when: float) -> str:
    """ISO 8601 UTC with microseconds (as in the access log)."""
    second = int(when)
    return f"{_second_part(second)}{int((when - second) * 1_000_000):06d}+00:00"


_access: AccessLog | None = None  # the running node's, if it has one


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


# What loggable() leaves as it is: printable ASCII but the backslash (and the
# newlines between the lines of a block).
_PLAIN = bytes(range(0x20, 0x5C)) + bytes(range(0x5D, 0x7F)) + b"\n"


def wire(who: str, verb: str, data: bytes) -> None:
    """Put one line received or sent (``verb``: recv, sent) in the access log,
    if there is one."""
    if _access is not None:
        _access.line(who, verb, loggable(data))


def wire_block(who: str, verb: str, data: bytes) -> None:
    """Put lines received or sent together (``data``: each line followed by a
    newline; verb recv or sent) in the access log, one log line each, if
    there is an access log."""
    if _access is not None and data:
        _access.block(who, verb, data)


def connection(who: str, what: str) -> None:
    """Put a connection event (``what``: "connection opened" ...) in the access
    log, if there is one."""
    if _access is not None:
        _access.note(who, what)


class Throttle:
    """At most ``limit`` events per window get a log line of their own; the
    others are counted and summed up in one line when the window ends (a
    Redis outage under pipelined load refuses thousands of requests a second;
    each is still in the access log as ``sent ? <line>``). The window is
    ``window`` seconds, doubled (up to ``max_window``) for each window that
    follows at once one that left events out, so a day-long outage logs a
    few lines a minute, not ten a second.

    The sum is ``emit(summary, n=..., window=..., seconds=..., last=...,
    **fields)``: ``n`` events left out over the last ``seconds`` (``window``
    says it in words: "second", "60 seconds"), the last of them for the cause
    ``last`` given to :meth:`allow`."""

    def __init__(self, clock: Any, emit: Callable[..., None], summary: str, limit: int = 10,
                 window: float = 1.0, max_window: float = 60.0, **fields: Any):
        self._clock = clock
        self._emit = emit
        self._summary = summary
        self._fields = fields
        self._limit = limit
        self._base = self._window = window
        self._max_window = max_window
        self._started = -math.inf
        self._widen_before = -math.inf  # a window starting before then is a crowded one's successor
        self._logged = 0
        self._left_out = 0
        self._last_cause = ""  # of the events left out
        self._timer: Any = None  # sums up the current window
        self._closed = False

    def allow(self, cause: str) -> bool:
        """True when this event gets its own line; else it is counted."""
        if self._closed:  # (a stop: no timer any more; the first few get a line)
            self._logged += 1
            return self._logged <= self._limit
        now = self._clock.seconds()
        if now - self._started >= self._window:
            self._sum_up()  # the last window's, if its timer has not run yet
            crowded = now < self._widen_before
            self._window = min(self._window * 2, self._max_window) if crowded else self._base
            self._started, self._logged = now, 0
        if self._logged < self._limit:
            self._logged += 1
            return True
        if not self._left_out:
            self._timer = self._clock.callLater(self._started + self._window - now, self._sum_up)
        self._left_out += 1
        self._last_cause = cause
        return False

    def close(self) -> None:
        """Sum up now what the current window left out so far (at a stop);
        from then on ``limit`` more events get a line, the others none."""
        self._sum_up(min(self._clock.seconds() - self._started, self._window))
        self._closed, self._logged = True, 0

    def _sum_up(self, seconds: float | None = None) -> None:
        """Say how many events the current window left out (if any), over its
        length or the ``seconds`` it has lasted."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        left_out, self._left_out = self._left_out, 0
        if left_out:
            self._widen_before = self._started + 2 * self._window
            seconds = self._window if seconds is None else seconds
            words = "second" if seconds == 1 else f"{seconds:.3g} seconds"
            self._emit(self._summary, n=left_out, window=words, seconds=seconds, last=self._last_cause,
                       **self._fields)


def start_logging(node: str, reactor: Any, options: LogOptions = LogOptions(),
                  access: RotatingFile | None = None, out: IO[str] | None = None) -> EventLog:
    """Route twisted.logger to the event log on ``out`` (stdout) and wire lines
    to the access log in ``access`` (None: none); flush both every
    FLUSH_INTERVAL and at shutdown (which also closes ``access``)."""
    from twisted.internet.task import LoopingCall

    global _access
    out = out or sys.stdout
    prefix = options.prefix if options.prefix is not None else systemd.is_journal(out)
    events = EventLog(out, node, options.fmt, prefix)
    _access = AccessLog(access) if access is not None else None
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(events, event_filters(options.level))],
                                     redirectStandardIO=False)

    def flush() -> None:
        if _access is not None:
            _access.flush()
        events.flush()

    def close() -> None:
        global _access
        if _access is not None:
            _access.close()
            _access = None
        events.flush()

    LoopingCall(flush).start(FLUSH_INTERVAL, now=False)
    reactor.addSystemEventTrigger("after", "shutdown", close)
    return events


def event_filters(level: str) -> list[ILogFilterPredicate]:
    """What decides which events the event log shows, at ``--log-level level``."""
    return [cast(ILogFilterPredicate, start_line), level_filter(level)]


def start_line(event: dict[str, Any]) -> PredicateResult:
    """The line a node starts with (logged with ``start_line=True``) passes
    any --log-level: it names the version (SPEC 6: the first log line)."""
    return PredicateResult.yes if event.get("start_line") else PredicateResult.maybe


# Twisted's and txredisapi's own chatter (ports opened and closed, every redial
# of a peer that is down): below warning, it is debug, shown and filtered as
# such; except the line saying which signal stops the node (twisted.internet.base).
_CHATTER = ("twisted", "txredisapi", "log_legacy")


def event_level(event: dict[str, Any]) -> LogLevel:
    """The level an event is shown and filtered at (see _CHATTER)."""
    level: LogLevel = event.get("log_level", LogLevel.info)
    namespace = event.get("log_namespace") or ""
    if (level < LogLevel.warn and namespace.split(".", 1)[0] in _CHATTER
            and namespace != "twisted.internet.base"):
        return LogLevel.debug
    return level


def level_filter(level: str) -> ILogFilterPredicate:
    """Events at ``level`` (by event_level) and above pass."""
    threshold = LEVELS[level]

    def at_least(event: dict[str, Any]) -> PredicateResult:
        return PredicateResult.maybe if event_level(event) >= threshold else PredicateResult.no

    return cast(ILogFilterPredicate, at_least)
