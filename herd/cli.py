"""The ``herd`` command line. Each subcommand lives in its own module, imported
only when chosen, so ``herd serve`` starts fast (SPEC: answer within 0.5 s)."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from config.schema import ConfigError

# Subcommands that read a herd file: --config, else the SPEC 5 lookup.
CONFIG_COMMANDS = ("serve", "up", "check", "status", "places", "backup", "restore")
CONFIG_HELP = "the herd file (default: $HERD_CONFIG, else /etc/herd/herd.toml, else ./config/herd.toml)"
EXIT_CODES = """\
exit codes (every command):
    0  all well
    1  the command ran and found a problem (a node down or unreadable, nodes
       that disagree, a '? ' reply to herd client, a port that cannot be opened)
    2  usage or configuration error (bad arguments, no or bad config file, a missing secret)
  130  interrupted by Ctrl-C before it finished (serve, up and the live
       status view stop on Ctrl-C with 0)
"""


class _VersionAction(argparse.Action):
    """``--version``: print ``herd <version>`` and exit 0. The version is looked
    up only when asked (package metadata costs start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from herd.version import VERSION

        print(f"herd {VERSION}")
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints its usage first), exit 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Tools with many options (bench, chaos) get theirs
    only when ``command`` names them, so ``herd serve`` does not import them."""
    parser = _Parser(
        prog="herd", description="An application server herd: nodes that learn where clients are "
        "(IAMAT), flood it to their peers, and answer what is near them (WHATSAT).",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run one node in the foreground")
    serve.add_argument("name", metavar="NAME", help="node name from the config")
    serve.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    _log_arguments(serve, "the systemd unit asks for json")
    serve.add_argument("--log-prefix", action="store_true", default=None,
                       help="start each event log line with its syslog priority (<4> warning, "
                            "<3> error ...) for journald; default: only when stdout is journald's")

    up = sub.add_parser("up", help="run a whole herd on this machine, with its Redis servers")
    up.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    up.add_argument("--state-dir", default="state", metavar="DIR",
                    help="where each node's Redis data and log go (default: ./state)")
    _log_arguments(up, "for every node")

    client = sub.add_parser("client", help="send lines to a node and print its replies")
    client.add_argument("address", metavar="HOST:PORT")
    client.add_argument("lines", nargs="*", default=[], metavar="LINE",
                        help="lines to send (none: read lines from stdin interactively)")
    client.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for more replies before giving up (default 10)")

    check = sub.add_parser(
        "check", help="do all nodes hold the same state? (exit 0 if so)",
        description="Read every node's /status on its admin endpoint over HTTP (no Redis, no "
        "secret) and compare their state digests. Digests change while updates flow: while the "
        "nodes disagree, check reads them again (up to 3 reads, 0.5 s apart) and reports the last. "
        "Exit 0 when every node answers, its Redis is up and all digests are equal; 1 otherwise; "
        "2 on a usage or configuration error.")
    check.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    _survey_arguments(check)

    places = sub.add_parser("places", help="manage the offline places data set")
    places_sub = places.add_subparsers(dest="places_command", required=True, metavar="ACTION")
    load = places_sub.add_parser("load", help="load the offline data set into nodes' Redis "
                                              "(a no-op where the same version is loaded, whole)")
    load.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    load.add_argument("nodes", nargs="*", default=[], metavar="NODE", help="nodes to load (default: all)")

    bench = sub.add_parser("bench", help="benchmark a local herd against the SPEC targets")
    if command == "bench":
        from herd.tools.bench import add_bench_arguments

        add_bench_arguments(bench)

    chaos = sub.add_parser("chaos", help="kill, pause and cut a local five-node herd under load; "
                                         "check nothing acknowledged is lost")
    if command == "chaos":
        from herd.tools.chaos import add_chaos_arguments

        add_chaos_arguments(chaos)

    lab = sub.add_parser("lab", help="a herd on network namespaces with real network faults "
                                     "(root; docs/LAB.md)")
    if command == "lab":
        from herd.tools.lab.command import add_lab_arguments

        add_lab_arguments(lab)

    status = sub.add_parser(
        "status", help="live view of nodes, links, counts and agreement",
        description="Every second, read every node's /status on its admin endpoint over HTTP (no "
        "Redis, no secret) and show each node as it reports itself, until Ctrl-C.")
    status.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    status.add_argument("--once", action="store_true",
                        help="print one frame and exit: 0 when every node is up (reachable, its "
                        "Redis up) and they agree, else 1")
    _survey_arguments(status)

    backup = sub.add_parser("backup", help="save a snapshot of a node's Redis while the node serves")
    backup.add_argument("node", metavar="NODE", help="node name from the config")
    backup.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    backup.add_argument("--out", default=".", metavar="DIR",
                        help="where the file (NODE-<UTC time>.rdb) goes (default: .)")
    restore = sub.add_parser("restore", help="put a backup into the Redis of a stopped node")
    restore.add_argument("node", metavar="NODE", help="node name from the config")
    restore.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    restore.add_argument("--from", dest="source", required=True, metavar="FILE", help="a herd backup file")
    for command_parser in (*sub.choices.values(), *places_sub.choices.values()):
        command_parser.add_argument("--version", action=_VersionAction)
    return parser


def _survey_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``herd status`` and ``herd check``."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (nodes, agree, ok, warnings) instead of text; "
                        "for status, one frame")
    parser.add_argument("--timeout", type=_positive_seconds, default=2.0, metavar="SECONDS",
                        help="how long each node has to answer (default 2)")


def _log_arguments(parser: argparse.ArgumentParser, note: str) -> None:
    """--log-format and --log-level of the event log (serve, and up for its nodes)."""
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help=f"event log format on stdout (default: text; {note})")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                        help="leave events below this level out of the event log (default: info; "
                             "the access log has every line regardless)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    from herd.tools.output import stdout_broken, stdout_gone

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    except BrokenPipeError:  # --version or --help read by `| head -c1`: printed all it could
        stdout_gone()
        return 0
    try:
        if args.command in CONFIG_COMMANDS:
            # (serve names its config in its first log line, beside the version; the
            # line is info, left out by up's --log-level warning or error)
            args.config, args.config_found = config_path(
                args.config, getattr(args, "log_format", "text") == "json",
                announce=args.command != "serve" and getattr(args, "log_level", "info") in ("debug", "info"),
                defer=args.command == "up")
        return _dispatch(args)
    except ConfigError as err:
        from herd.logs import error_line

        error_line(f"herd: {err}", getattr(args, "log_format", "text") == "json", getattr(args, "name", None),
                   prefix=getattr(args, "log_prefix", None))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not stdout_broken():
            raise  # a socket's: the command's own failure to report
        stdout_gone()  # the reader of stdout went away before the command's output ended
        return 1


def config_path(given: str | None, as_json: bool = False, announce: bool = True,
                defer: bool = False) -> tuple[str, Callable[[], None]]:
    """The herd file to use (config.loader.find_config), and a call that says
    which: when no --config named it and ``announce``, one line on stderr
    (stdout may be --json; with ``as_json``, a JSON object, as the event
    log's lines), once the file loads: a file that does not gets the one
    line of its error alone, which names it. Said here, unless ``defer``:
    then by the call, which the command makes once its own checks of the file
    passed (``up``: the secret, keys, TLS files); otherwise the call does
    nothing."""
    from config.loader import CONFIG_ENV, find_config, load_config
    from herd.logs import error_line

    choice = find_config(given, os.environ, os.getcwd())
    if not announce or choice.explicit:
        return choice.path, _nothing
    origin = f" (from ${CONFIG_ENV})" if choice.how == f"${CONFIG_ENV}" else ""

    def say() -> None:
        error_line(f"herd: using config {choice.path}{origin}", as_json, level="info")

    if defer:
        return choice.path, say
    load_config(choice.path)
    say()
    return choice.path, _nothing


def _nothing() -> None:
    pass


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from herd import systemd

        # Before Twisted is imported: importing its endpoints consumes $LISTEN_FDS.
        activation = systemd.activation_endpoint()
        # Imports make hundreds of thousands of long-lived objects: no
        # collections while they load (about 15% of start-up); serve() freezes
        # them and turns the collector back on.
        gc.disable()
        from herd.reactor import install

        install()  # before herd.service's imports bring in the default reactor
        from herd.logs import LogOptions
        from herd.service import serve

        return serve(args.name, args.config, LogOptions(args.log_format, args.log_level, args.log_prefix),
                     activation)
    if args.command == "up":
        from herd.tools.up import run_up

        return run_up(args.config, args.state_dir, ["--log-format", args.log_format,
                                                    "--log-level", args.log_level], args.config_found)
    if args.command == "client":
        from herd.tools.client import run_client

        return run_client(args.address, args.lines, args.timeout)
    if args.command == "check":
        from herd.tools.check import run_check

        return run_check(args.config, args.json, args.timeout)
    if args.command == "places":
        from herd.tools.places import run_places_load

        return run_places_load(args.config, args.nodes)
    if args.command == "bench":
        from herd.tools.bench import run_bench

        return run_bench(args)
    if args.command == "chaos":
        from herd.tools.chaos import run_chaos

        return run_chaos(args)
    if args.command == "lab":
        from herd.tools.lab.command import run_lab

        return run_lab(args)
    if args.command == "status":
        from herd.tools.status import run_status

        return run_status(args.config, args.once, args.json, args.timeout)
    if args.command in ("backup", "restore"):
        from herd.tools.backup import run_backup, run_restore

        if args.command == "backup":
            return run_backup(args.config, args.node, args.out)
        return run_restore(args.config, args.node, args.source)
    raise AssertionError(args.command)
