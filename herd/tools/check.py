"""``herd check [--json] [--timeout S]``: do all nodes hold the same state?

Asks every node for its ``/status`` over HTTP (:mod:`herd.tools.survey`; no
Redis, no secret) and compares the state digests the nodes keep of what
they hold (equal digests: equal state). Prints one line per node (name,
state, clients, digest, version) and a verdict. Exit 0 only when every node
answered, its Redis is up, and all digests and client counts are equal;
exit 1 otherwise, naming the nodes that differ or are unreachable.

Digests move while updates flow, so while the nodes disagree it reads them
again, up to ROUNDS reads PAUSE seconds apart, and reports the last read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from herd.tools.output import Interruption, print_out
from herd.tools.survey import DEFAULT_TIMEOUT, NodeReport, Surveyor, agreement, document, is_ok, problems

ROUNDS = 3  # reads at most, while the nodes disagree
PAUSE = 0.5  # seconds between them


def node_line(r: NodeReport) -> str:
    """``Bailey     up              12  00a1b2c3d4e5f607  0.2.0``, plus the
    reason for an unreachable node."""
    clients = "-" if r.clients is None else str(r.clients)
    line = f"{r.name:<10} {r.state:<11} {clients:>8}  {r.digest or '-':<16}  {r.version or '-'}"
    return f"{line}  ({r.error})" if r.error else line


def report(reports: Sequence[NodeReport], rounds: int = 1, warnings: Sequence[str] = ()) -> tuple[str, bool]:
    """The text ``herd check`` prints for the last read, and whether all is
    well (pure). ``rounds``: how many reads were made; ``warnings``: the
    config's (HerdConfig.warnings), printed before the verdict."""
    ok = is_ok(reports)
    again = f" (read {rounds} times, {PAUSE:g} s apart)" if rounds > 1 else ""
    if ok:
        verdict = f"agree: {agreement(reports).describe()}{again}"
    else:
        verdict = f"PROBLEM: {'; '.join(problems(reports))}{again}"
    said = [f"warning: {warning}" for warning in warnings]
    return "\n".join([*(node_line(r) for r in reports), *said, verdict]), ok


@inlineCallbacks
def settle(reactor: Any, surveyor: Surveyor, rounds: int = ROUNDS, pause: float = PAUSE) -> Any:
    """Deferred firing with (reports of the last read, reads made): reads
    again while the readable digests differ, at most ``rounds`` times."""
    for read in range(1, rounds + 1):
        reports = yield surveyor.survey()
        if agreement(reports).agree or read == rounds:
            return reports, read
        yield deferLater(reactor, pause)
    raise AssertionError("rounds must be at least 1")


def run_check(config_path: str, as_json: bool = False, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Exit code: 0 when all is well, 1 when a node is unreachable, has no
    Redis, or the nodes differ."""
    from twisted.internet.task import react

    from config.loader import load_config

    config = load_config(config_path)
    outcome = [1]

    def show(result: tuple[list[NodeReport], int], stop: Interruption) -> None:
        if stop.stopped:
            outcome[0] = Interruption.EXIT  # no verdict of reads the stop cut short
            return
        reports, rounds = result
        text, ok = report(reports, rounds, config.warnings())
        print_out(json.dumps(document(reports, config.warnings()), indent=2) if as_json else text)
        outcome[0] = 0 if ok else 1  # a reader gone from stdout changes no verdict
        stop.finished = True

    stops: list[Interruption] = []

    def main(reactor: Any) -> Any:
        surveyor = Surveyor(reactor, config, timeout)
        stops.append(Interruption(reactor))
        d = settle(reactor, surveyor).addCallback(show, stops[0])
        return d.addBoth(lambda result: surveyor.close().addCallback(lambda _: result))

    try:
        react(main)
    except SystemExit as done:  # react() always exits; our verdict is in outcome
        if stops and stops[0].stopped:  # (even when the stop came before any read ended)
            return Interruption.EXIT
        if done.code not in (0, None):
            return 1
    return outcome[0]
