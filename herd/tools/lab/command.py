"""``herd lab ACTION``: build a lab, use it, tear it down (docs/LAB.md).

- ``up`` (the default): hosts up, a little load, ``herd status --once`` and
  ``herd check`` run from the observer, optionally held for a while (bounded),
  then torn down;
- ``chaos``: fault cycles under load, each heal measured (herd.tools.lab.chaos);
- ``scale``: figures per herd size (herd.tools.lab.scale);
- ``clean``: remove what an earlier run left (namespaces, cables) by name.

Whatever happens (success, failure, Ctrl-C, SIGTERM, SIGHUP), every process,
namespace, cable and bridge the lab made is removed before it returns.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from herd.tools.lab import netns, plan
from herd.tools.lab.hosts import Lab
from herd.tools.lab.plan import Edge, LabError

MAX_HOLD = 3600.0  # seconds `herd lab up --hold` may keep a lab


def add_lab_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``herd lab``."""
    parser.add_argument("action", nargs="?", default="up", choices=("up", "chaos", "scale", "clean"),
                        help="up (default): build, observe from outside, tear down; chaos: faults "
                             "under load; scale: figures per herd size; clean: remove leftovers")
    parser.add_argument("--hosts", type=int, default=5, metavar="N", help="hosts (up, chaos; default 5)")
    parser.add_argument("--degree", type=float, default=3.0, help="links per host (default 3)")
    parser.add_argument("--line", action="store_true", help="up, chaos: hosts in a line, not random")
    parser.add_argument("--seed", type=int, default=None, help="seed of topologies, faults and load "
                                                               "(default: random, printed)")
    parser.add_argument("--hold", type=float, default=0.0, metavar="SECONDS",
                        help=f"up: keep the lab up this long before tearing it down (at most {MAX_HOLD:g})")
    parser.add_argument("--faults", default=",".join(_chaos().FAULT_KINDS), metavar="KINDS",
                        help="chaos: comma-separated fault kinds, run in this order (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="chaos: times through --faults (default 1)")
    parser.add_argument("--rate", type=float, default=100.0, metavar="PER_S",
                        help="IAMAT updates per second (default 100)")
    parser.add_argument("--clients", type=int, default=200, help="chaos: client ids (default 200)")
    parser.add_argument("--converge-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="chaos: how long to wait for a heal to agree (default 30; a heal "
                             "slower than its kind's bound fails the run all the same)")
    parser.add_argument("--sizes", default="5,10,25", help="scale: random herd sizes (default 5,10,25)")
    parser.add_argument("--line-size", type=int, default=10, metavar="N",
                        help="scale: also a line of N hosts (default 10; 0: none)")
    parser.add_argument("--duration", type=float, default=10.0, metavar="SECONDS",
                        help="scale: seconds of propagation load per herd (default 10)")
    parser.add_argument("--partition", type=float, default=5.0, metavar="SECONDS",
                        help="scale: seconds the half/half partition lasts (default 5)")
    parser.add_argument("--down", type=float, default=60.0, metavar="SECONDS",
                        help="scale: seconds a node stays down (default 60)")
    parser.add_argument("--wait-lock", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long for another lab on this machine to finish (default 0)")
    parser.add_argument("--json", action="store_true", help="chaos, scale: the results as JSON on stdout")
    parser.add_argument("--keep", action="store_true", help="keep logs and Redis data even on success")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _chaos() -> Any:
    from herd.tools.lab import chaos

    return chaos


# -- the lab's life --------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _signals(handler: Any) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def lab_running(count: int, edges: Sequence[Edge], events: Callable[[str], None], keep: bool,
                wait_lock: float, appendfsync: str = "always") -> Iterator[Lab]:
    """A lab built and started (every link up), removed on the way out
    whatever happens; logs kept under a temporary directory when ``keep`` or
    on failure."""
    with netns.lab_lock(wait_lock):
        left = netns.clean_leftovers()
        if left:
            events(f"removed leftovers of an earlier run: {', '.join(left)}")
        root = Path(tempfile.mkdtemp(prefix=plan.PREFIX))
        lab = Lab(root, count, edges, events, appendfsync)
        ok = False
        try:
            with _signals(_interrupt):
                started = time.monotonic()
                lab.build()
                events(f"{count} hosts on {plan.BRIDGE} (in {plan.NET_NS}), observer {plan.OPS_NS}; "
                       f"links {plan.describe_edges(edges)}; config {lab.config}")
                lab.start()
                if not lab.wait_links(20.0 + count):
                    raise LabError("not every link came up within " f"{20 + count} s; see {root}")
                lab.ready_seconds = time.monotonic() - started
                events(f"every node listening and linked after {lab.ready_seconds:.1f} s")
                yield lab
                ok = True
        finally:
            with _signals(signal.SIG_IGN):  # a second Ctrl-C must not stop the clean-up
                problems = lab.teardown()
                leftovers = netns.lab_namespaces() + netns.stray_links()
            if problems or leftovers:
                print(f"herd lab: could not remove {'; '.join(problems + leftovers)} "
                      "(herd lab clean tries again)", file=sys.stderr)
            else:
                events("torn down: no lab namespace, cable or bridge left")
            if keep or not ok:
                events(f"logs and Redis data kept in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


def topology(args: argparse.Namespace, count: int, seed: int) -> list[Edge]:
    if args.line:
        return plan.line_topology(count)
    return plan.random_topology(count, args.degree, seed)


def _event_printer(quiet: bool) -> Callable[[str], None]:
    t0 = time.monotonic()

    def events(message: str) -> None:
        if not quiet:
            print(f"herd lab +{time.monotonic() - t0:6.1f}s: {message}", file=sys.stderr, flush=True)

    return events


# -- actions ------------------------------------------------------------------------


def outside_view(lab: Lab) -> tuple[str, str]:
    """``herd status --once`` and ``herd check`` from the observer namespace
    (they read each node's /status over HTTP): ``herd check``'s verdict
    (agree, or disagree: nodes differ or one is down or unreachable) and
    both outputs."""
    status = lab.observe("status --once")
    check = lab.observe("check")
    runs = (("status --once", status), ("check", check))
    text = "".join(f"$ herd {command}  (from {plan.OPS_NS}; exit {done.returncode})\n"
                   f"{done.stdout}{done.stderr}" for command, done in runs)
    return ("agree" if check.returncode == 0 and status.returncode == 0 else "disagree"), text


def run_up(args: argparse.Namespace, seed: int, events: Callable[[str], None]) -> int:
    from herd.tools.lab.chaos import verify, wait_agree
    from herd.tools.lab.load import Ledger, Load

    edges = topology(args, args.hosts, seed)
    with lab_running(args.hosts, edges, events, args.keep, args.wait_lock) as lab:
        ledger = Ledger()
        load = Load(ledger, lambda: lab.hosts, args.rate, 50, seed).start()
        time.sleep(2.0)
        load.stop()
        seconds = wait_agree(lab, time.monotonic(), 20.0)
        losses, bogus = verify(lab, ledger)
        verdict, text = outside_view(lab)
        print(text, end="")
        print(f"lab: {ledger.counts['acked']} updates acknowledged, every host "
              + ("agrees" if seconds is not None else "does NOT agree")
              + f"; lost {len(losses)}, bogus {len(bogus)}; herd check from outside: {verdict}")
        if args.hold > 0:
            hold = min(args.hold, MAX_HOLD)
            events(f"holding the lab for {hold:g} s (Ctrl-C ends it); from outside the hosts: "
                   f"ip netns exec {plan.OPS_NS} {sys.executable} -m herd status --config {lab.config}")
            time.sleep(hold)
        return 0 if seconds is not None and not losses and not bogus and verdict == "agree" else 1


def fault_kinds(text: str) -> list[str]:
    """The kinds ``--faults`` names, in order; LabError for an unknown one."""
    known = _chaos().FAULT_KINDS
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(known))
    if unknown or not kinds:
        raise LabError(f"--faults: unknown kind(s) {', '.join(unknown) or '(none given)'}; "
                       f"known: {', '.join(known)}")
    return kinds


def check_arguments(args: argparse.Namespace) -> None:
    """One LabError line for the first option out of range."""
    if args.hosts < 2:
        raise LabError("--hosts must be at least 2")
    plan.hosts(args.hosts)  # at most MAX_HOSTS
    for name, value, low in (("--rate", args.rate, 0.0), ("--duration", args.duration, 0.0),
                             ("--partition", args.partition, 0.0), ("--converge-timeout",
                             args.converge_timeout, 0.0), ("--degree", args.degree, 1.0)):
        if not value > low:
            raise LabError(f"{name} must be more than {low:g}")
    for name, count in (("--clients", args.clients), ("--rounds", args.rounds)):
        if count < 1:
            raise LabError(f"{name} must be at least 1")
    if args.down < 0 or args.hold < 0:
        raise LabError("--down and --hold cannot be negative")
    fault_kinds(args.faults)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise LabError(f"--sizes: {args.sizes!r} is not a list of numbers") from None
    if not sizes or min(sizes) < 2 or max(sizes) > plan.MAX_HOSTS:
        raise LabError(f"--sizes: each size must be within 2..{plan.MAX_HOSTS}")


def run_chaos(args: argparse.Namespace, seed: int, events: Callable[[str], None]) -> int:
    chaos = _chaos()
    kinds = fault_kinds(args.faults)
    edges = topology(args, args.hosts, seed)
    with lab_running(args.hosts, edges, events, args.keep, args.wait_lock) as lab:
        verdict, ledger = chaos.run_cycles(lab, kinds * args.rounds, random.Random(seed), args.rate,
                                           args.clients, args.converge_timeout, events)
        view, text = outside_view(lab)
    kinds_summary = chaos.per_kind(verdict.cycles)
    counts = ledger.counts
    within = all(c.within_bound for c in verdict.cycles)  # agreed, and within its kind's bound
    ok = (not verdict.losses and not verdict.bogus and within and counts["acked"] > 0
          and not counts["load_crashed"] and not counts["bad-reply"] and view == "agree")
    summary = {"seed": seed, "hosts": args.hosts, "edges": plan.describe_edges(edges),
               "acknowledged": ledger.counts["acked"], "sent": ledger.counts["sent"],
               "refused": ledger.counts["refused"], "errors": ledger.counts["error"],
               "lost": len(verdict.losses), "bogus": len(verdict.bogus), "herd_check": view,
               "cycles": [vars(c) for c in verdict.cycles], "per_kind": kinds_summary,
               "within_bounds": within, "ok": ok}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(text, end="")
        _print_chaos(summary, verdict)
    return 0 if ok else 1


def _print_chaos(summary: dict[str, Any], verdict: Any) -> None:
    print(f"herd lab chaos: seed {summary['seed']}, {summary['hosts']} hosts, links {summary['edges']}")
    print(f"{'KIND':<15} {'DETAIL':<28} {'LASTED':>6} {'ACKED':>6} {'AGREE_S':>8} {'BOUND':>6} "
          f"{'WIRE_B':>8} {'SYNC_B':>8} LOST")
    for c in verdict.cycles:
        agree = f"{c.seconds:.3f}" if c.seconds is not None else "never"
        print(f"{c.kind:<15} {c.detail[:28]:<28} {c.lasted:>6.1f} {c.acked:>6} {agree:>8} "
              f"{_chaos().BOUNDS[c.kind]:>6.1f} {c.wire_bytes:>8} {c.sync_bytes:>8} {c.lost}")
    for line in verdict.losses[:20]:
        print(f"LOST {line}")
    for line in verdict.bogus[:20]:
        print(f"BOGUS {line}")
    print(f"updates: {summary['sent']} sent, {summary['acknowledged']} acknowledged, {summary['refused']} "
          f"refused, {summary['errors']} failed; lost {summary['lost']}, bogus {summary['bogus']}; "
          f"herd check from outside: {summary['herd_check']}")
    print("every heal agreed within its kind's bound: " + ("yes" if summary["within_bounds"] else "NO"))
    print("result: " + ("OK" if summary["ok"] else "FAILED"))


def run_scale(args: argparse.Namespace, seed: int, events: Callable[[str], None]) -> int:
    from herd.tools.lab import scale

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    herds = [scale.Herd(f"random-{n}", n, plan.random_topology(n, args.degree, seed + n), seed + n)
             for n in sizes]
    if args.line_size > 1:
        herds.append(scale.Herd(f"line-{args.line_size}", args.line_size, plan.line_topology(args.line_size)))
    rows = []
    for herd in herds:
        events(f"{herd.name}: seed {herd.seed}, links {plan.describe_edges(herd.edges)}")
        with lab_running(herd.hosts, herd.edges, events, args.keep, args.wait_lock, "everysec") as lab:
            rows.append(scale.as_row(scale.measure(lab, herd, args.rate, args.duration,
                                                   args.partition, args.down, random.Random(seed), events)))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(json.dumps(row))
    return 0 if all(r["lost"] == 0 and r["bogus"] == 0 for r in rows) else 1


def run_lab(args: argparse.Namespace) -> int:
    """``herd lab``: 0 all well, 1 the run found a problem, 2 it could not run
    (not root, no nft...), 130 interrupted."""
    events = _event_printer(args.quiet)
    try:
        if args.action == "clean":
            with netns.lab_lock(args.wait_lock):
                removed = netns.clean_leftovers()
            print("herd lab: removed " + (", ".join(removed) if removed else "nothing (no leftovers)"))
            return 0
        check_arguments(args)
        why = netns.missing_tools()
        if why:
            raise LabError(why)
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
        events(f"seed {seed}")
        action: Callable[[argparse.Namespace, int, Callable[[str], None]], int] = {
            "up": run_up, "chaos": run_chaos, "scale": run_scale}[args.action]
        return action(args, seed, events)
    except LabError as err:
        print(f"herd lab: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("herd lab: interrupted; everything the lab made was removed", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herd lab", description=__doc__.split("\n\n")[0])
    add_lab_arguments(parser)
    return run_lab(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
