"""``herd status [--once] [--json] [--timeout S]``: a live view of the whole herd.

Every node is asked for its ``/status`` on its admin endpoint (all at once,
see :mod:`herd.tools.survey`; in the live view each again a second after it
was last asked, :class:`LiveView`), and a frame shows one row per node, as
that node sees itself: state (up, NO REDIS, UNREACHABLE with the reason), version,
clients held, state digest, requests/s, age of its last stored update (by its
own clock), its clock's skew from this machine's, and each configured link
(+ up, - down, ? unknown); then whether the nodes' digests agree. Refreshed
every second until Ctrl-C; ``--once`` (or ``--json``) shows one frame and
exits 0 when every node is up and they agree, else 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from config.schema import HerdConfig
from herd.tools.output import Interruption, print_out
from herd.tools.survey import DEFAULT_TIMEOUT, NodeReport, Surveyor, agreement, document, is_ok

REFRESH = 1.0  # seconds between frames, and between two requests to one node
SHORT_DIGEST = 8  # hex digits of the digest shown in a row (the agreement line has them all)
ASKING = "asking"  # the live view's state of a node that has not answered yet since it began


@dataclass(frozen=True)
class _Asking(NodeReport):
    """A node the live view has asked and heard nothing from yet: no figures
    (none known), not UNREACHABLE (not timed out yet)."""

    @property
    def state(self) -> str:
        return ASKING


def _row(config: HerdConfig, r: NodeReport) -> str:
    s = r.status or {}
    version = s.get("version") or "-"
    clients = "-" if r.clients is None else str(r.clients)
    digest = (r.digest or "-")[:SHORT_DIGEST]
    rate = f"{s['rate']:.1f}" if "rate" in s else "-"
    age = r.update_age()
    if age is not None:
        last = f"{age:.1f}s ago"
    else:  # null: the node has stored no update yet; missing: it did not say
        last = "never" if "last_update" in s and s["last_update"] is None else "-"
    skew = "-" if r.skew is None else f"{r.skew:+.2f}s".replace("-0.00s", "+0.00s")  # no "-0.00s"
    links = " ".join(f"{peer}{r.link_mark(peer)}" for peer in config.neighbours(r.name))
    return (f"{r.name:<10} {r.state:<11} {version:<8} {clients:>8} {digest:<8} {rate:>7} "
            f"{last:>11} {skew:>8}  {links}")


def render(config: HerdConfig, reports: Sequence[NodeReport], now: float,
           current: Sequence[NodeReport] | None = None) -> str:
    """One frame of the view (pure: no I/O). ``now``: this machine's time;
    ``current``: the reports the agreement line compares (default ``reports``;
    the live view leaves out rows that are not of this moment)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
    lines = [f"herd status  {config.path}  {stamp} UTC", "",
             f"{'NODE':<10} {'STATE':<11} {'VERSION':<8} {'CLIENTS':>8} {'DIGEST':<8} {'REQ/S':>7} "
             f"{'LAST UPDATE':>11} {'SKEW':>8}  LINKS"]
    for r in reports:
        lines.append(_row(config, r))
        if r.error:
            lines.append(f"{'':<10} {r.error}")
    lines += ["", "agreement: " + agreement(reports if current is None else current).describe()]
    lines += [f"warning: {warning}" for warning in config.warnings()]
    return "\n".join(lines)


class LiveView:
    """The live view's latest report of each node. Each node is asked again
    REFRESH s after it was last asked, or as soon as it answers if that is
    later, so a slow node holds back its own row only: every frame shows the
    others' answers of the last second. A node asked for longer than REFRESH
    keeps the row of its last answer, with a line saying how long it has been
    asked since (it turns UNREACHABLE at the timeout, never before); one that
    has not answered once yet is shown as asking, with no figures."""

    def __init__(self, reactor: Any, surveyor: Surveyor, names: Sequence[str]):
        self._reactor = reactor
        self._surveyor = surveyor
        self._names = sorted(names)
        self.latest: dict[str, NodeReport] = {}
        self._asked: dict[str, float] = {}  # node -> when its unanswered request was sent
        self.stopped = False

    def start(self) -> Deferred[None]:
        """Ask every node; fires once each has answered (or timed out) once,
        or REFRESH s after asking, whichever is first: a node slow from the
        start holds back its own row only (shown as asking until it answers)."""
        first: Deferred[None] = Deferred()

        def show(_: object) -> None:
            if not first.called:
                first.callback(None)

        timer = self._reactor.callLater(REFRESH, show, None)
        everyone = gatherResults([self._ask(name) for name in self._names])
        everyone.addCallback(lambda _: timer.cancel() if timer.active() else None).addCallback(show)
        return first

    def _ask(self, name: str) -> Any:
        asked = self._asked[name] = self._reactor.seconds()

        def answered(report: NodeReport) -> None:
            del self._asked[name]
            if self.stopped:
                return  # a request Ctrl-C cut short: no guess shown, none asked again
            self.latest[name] = report
            wait = max(0.0, asked + REFRESH - self._reactor.seconds())
            self._reactor.callLater(wait, lambda: None if self.stopped else self._ask(name))

        return self._surveyor.report(name).addCallback(answered)

    def reports(self) -> tuple[list[NodeReport], list[NodeReport]]:
        """Each node's latest report, with a note on those asked for over
        REFRESH s; and the same with those unread (status None), for the
        agreement line: a digest of seconds ago is not compared with others
        of now."""
        now = self._reactor.seconds()
        rows: list[NodeReport] = []
        current: list[NodeReport] = []
        for name in self._names:
            waiting = now - self._asked.get(name, now)
            if name not in self.latest:  # asked, never answered yet
                asking = _Asking(name, None, f"(asked {waiting:.1f} s ago, no answer yet)")
                rows.append(asking)
                current.append(asking)
                continue
            report = self.latest[name]
            if waiting > REFRESH:
                note = f"(asked again {waiting:.1f} s ago, no answer yet; the row is its last answer)"
                report = NodeReport(report.name, report.status, note if report.error is None
                                    else f"{report.error} {note}", report.skew)
                current.append(NodeReport(name, None, note))
            else:
                current.append(report)
            rows.append(report)
        return rows, current


def run_status(config_path: str, once: bool, as_json: bool = False,
               timeout: float = DEFAULT_TIMEOUT) -> int:
    """Exit code: with ``once`` or ``as_json``, 0 when all is well (survey.is_ok)
    and 1 otherwise; the live view ends with 0 on Ctrl-C."""
    from twisted.internet.task import LoopingCall, react

    from config.loader import load_config

    config = load_config(config_path)
    outcome = [0]

    def show(reports: list[NodeReport], clear: bool, current: list[NodeReport] | None = None) -> bool:
        """Print a frame; False when the reader of stdout went away."""
        outcome[0] = 0 if is_ok(reports) else 1
        if as_json:
            return print_out(json.dumps(document(reports, config.warnings()), indent=2))
        home = "\x1b[H\x1b[2J" if clear and sys.stdout.isatty() else ""  # not into a file or pipe
        return print_out(home + render(config, reports, time.time(), current))

    stops: list[Interruption] = []

    def main(reactor: Any) -> Any:
        surveyor = Surveyor(reactor, config, timeout, persistent=not (once or as_json))
        if once or as_json:
            stop = Interruption(reactor)
            stops.append(stop)

            def once_shown(reports: list[NodeReport]) -> None:
                if stop.stopped:
                    outcome[0] = Interruption.EXIT  # no frame of reads the stop cut short
                    return
                show(reports, False)
                stop.finished = True

            d = surveyor.survey().addCallback(once_shown)
            return d.addBoth(lambda result: surveyor.close().addCallback(lambda _: result))
        # Ctrl-C stops the reactor under requests in flight: their nodes would
        # show as unreachable, a guess; no frame is shown once stopping.
        view = LiveView(reactor, surveyor, list(config.nodes))
        reactor.addSystemEventTrigger("before", "shutdown", setattr, view, "stopped", True)

        def frame() -> None:
            if view.stopped:
                return
            rows, current = view.reports()
            if not show(rows, True, current):
                frames.stop()  # the reader went away (`| head`): the view ends, as on Ctrl-C

        frames = LoopingCall(frame)
        return view.start().addCallback(lambda _: frames.start(REFRESH))

    try:
        react(main)
    except SystemExit as done:
        if stops and stops[0].stopped:  # (even when the stop came before any read ended)
            return Interruption.EXIT
        if done.code not in (0, None):
            return 1
    return outcome[0] if once or as_json else 0
