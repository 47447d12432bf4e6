"""``herd status [--once] [--json] [--timeout S]``: a live view of the whole herd.

Each frame asks every node for its ``/status`` on its admin endpoint (all at
once, see :mod:`herd.tools.survey`) and shows one row per node, as that node
sees itself: state (up, NO REDIS, UNREACHABLE with the reason), version,
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
from typing import Any

from config.schema import HerdConfig
from herd.tools.survey import DEFAULT_TIMEOUT, NodeReport, Surveyor, agreement, document, is_ok

REFRESH = 1.0  # seconds between frames (a frame waits for its slowest node, at most the timeout)
SHORT_DIGEST = 8  # hex digits of the digest shown in a row (the agreement line has them all)


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


def render(config: HerdConfig, reports: Sequence[NodeReport], now: float) -> str:
    """One frame of the view (pure: no I/O). ``now``: this machine's time."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
    lines = [f"herd status  {config.path}  {stamp} UTC", "",
             f"{'NODE':<10} {'STATE':<11} {'VERSION':<8} {'CLIENTS':>8} {'DIGEST':<8} {'REQ/S':>7} "
             f"{'LAST UPDATE':>11} {'SKEW':>8}  LINKS"]
    for r in reports:
        lines.append(_row(config, r))
        if r.error:
            lines.append(f"{'':<10} {r.error}")
    lines += ["", "agreement: " + agreement(reports).describe()]
    lines += [f"warning: {warning}" for warning in config.warnings()]
    return "\n".join(lines)


def run_status(config_path: str, once: bool, as_json: bool = False,
               timeout: float = DEFAULT_TIMEOUT) -> int:
    """Exit code: with ``once`` or ``as_json``, 0 when all is well (survey.is_ok)
    and 1 otherwise; the live view ends with 0 on Ctrl-C."""
    from twisted.internet.task import LoopingCall, react

    from config.loader import load_config

    config = load_config(config_path)
    outcome = [0]

    def show(reports: list[NodeReport], clear: bool) -> None:
        if as_json:
            print(json.dumps(document(reports, config.warnings()), indent=2), flush=True)
        else:
            home = "\x1b[H\x1b[2J" if clear and sys.stdout.isatty() else ""  # not into a file or pipe
            print(home + render(config, reports, time.time()), flush=True)
        outcome[0] = 0 if is_ok(reports) else 1

    def main(reactor: Any) -> Any:
        surveyor = Surveyor(reactor, config, timeout, persistent=not (once or as_json))
        if once or as_json:
            d = surveyor.survey().addCallback(show, False)
            return d.addBoth(lambda result: surveyor.close().addCallback(lambda _: result))
        # Ctrl-C stops the reactor under a survey in flight: its nodes would
        # show as unreachable, a guess; no frame is shown once stopping.
        stopping: list[bool] = []
        reactor.addSystemEventTrigger("before", "shutdown", stopping.append, True)
        return LoopingCall(lambda: surveyor.survey().addCallback(
            lambda reports: None if stopping else show(reports, True))).start(REFRESH)

    try:
        react(main)
    except SystemExit as done:
        if done.code not in (0, None):
            return 1
    return outcome[0] if once or as_json else 0
