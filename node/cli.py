"""The `ingestor` command: one console script, one subcommand per job.

What every sub-command gets from here: a usage mistake is one line on stderr naming the mistake
and where help is, exit 2 (`Parser`); `--version`; output into a closed pipe (`ingestor wal ls |
head`) ends quietly with 141, as a command killed by SIGPIPE would; Ctrl-C before a command
handles it itself ends quietly with 130.

adx-mon's command line runs a node too (docs/adxmon-flags.md): flags without a sub-command are
`serve`'s (`ingestor --storage-dir /data --metrics-kusto-endpoints ...`), and a flag may be
spelt with one dash as Go's flag package allows (`-storage-dir`). Before `serve` starts, the
flags that contradict each other are one line, exit 2, and adx-mon's flags with no effect here
one WARNING line each (`node.config.warnings`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from typing import NoReturn, cast

from cluster.operator import cli as operator_cli
from node import config as node_config
from node import logformat, query_cli, serve_cli, status_cli, version, wal_cli

EXIT_SIGPIPE = 128 + 13
EXIT_SIGINT = 128 + 2
TOP_LEVEL_OPTIONS = ("-h", "--help", "-v", "--version", "--")
"""What `ingestor` itself takes before a sub-command; any other flag there starts `serve`."""

log = logging.getLogger("node.config")


class Parser(argparse.ArgumentParser):
    """The parser of `ingestor` and of every sub-command (argparse makes sub-parsers of the
    parent's class): a usage error is one line, `PROG: error: MESSAGE (see PROG --help)`, exit 2,
    instead of the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="ingestor", description="Telemetry ingestor node and tools",
                    epilog="Flags without a COMMAND run serve, as adx-mon's ingestor command line does: "
                    "ingestor --storage-dir /data ... is ingestor serve --storage-dir /data ...")
    parser.add_argument("-v", "--version", action="version", version=f"ingestor {version()}")
    sub = cast("argparse._SubParsersAction[argparse.ArgumentParser]",
               parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    serve_cli.add_parser(sub)
    status_cli.add_parser(sub)
    query_cli.add_parser(sub)
    wal_cli.add_parser(sub)
    operator_cli.add_parser(sub)
    return parser


def chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the sub-command `args` were parsed for (`wal ls`'s, not `ingestor`'s)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name is None or name not in subs[0].choices:
            return parser
        parser = subs[0].choices[name]


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: its reader is gone, and the interpreter's last flush must not
    complain about it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def serve_by_default(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """adx-mon's command line: flags without a sub-command are serve's. `ingestor` alone is serve
    when INGESTOR_STORAGE_DIR says where (a container configured by its environment), else the
    usage error that lists the commands."""
    if not argv:
        return ["serve"] if env.get(node_config.ENV_PREFIX + "STORAGE_DIR", "").strip() else argv
    if argv[0].startswith("-") and argv[0].split("=", 1)[0] not in TOP_LEVEL_OPTIONS:
        return ["serve", *argv]
    return argv


def long_dashes(args: list[str], options: set[str]) -> list[str]:
    """`-storage-dir /x` and `-storage-dir=/x` (Go's flag package, which adx-mon uses, takes one
    dash or two) as `--storage-dir`, for the long options in `options`; up to `--`."""
    out: list[str] = []
    for i, a in enumerate(args):
        if a == "--":
            return out + args[i:]
        if a.startswith("-") and not a.startswith("--") and "-" + a.split("=", 1)[0] in options:
            a = "-" + a
        out.append(a)
    return out


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = subs.choices["serve"]
    return serve


def before_serve(args: argparse.Namespace) -> None:
    """What `serve` is told, checked before it starts: flags that contradict each other (the
    backend and the endpoints, adx-mon's switches and their fields) are one line, exit 2; adx-mon's
    flags that mean nothing here are one WARNING line each, in the node's log format."""
    parser: argparse.ArgumentParser = args.serve_parser
    merged = serve_cli.with_environment(args, parser)
    if merged.storage_dir is None:
        return  # serve says it
    try:
        config = node_config.from_args(merged)
    except node_config.FlagError as e:
        parser.error(str(e))
    notes = node_config.warnings(args, merged, os.environ)
    if notes:
        logformat.setup(config.log_format, config.log_level)
        for note in notes:
            log.warning("%s", note)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = serve_by_default(list(sys.argv[1:] if argv is None else argv), os.environ)
    if argv[:1] == ["serve"]:
        options = {o for o in _serve_parser(parser)._option_string_actions if o.startswith("--")}
        argv = ["serve", *long_dashes(argv[1:], options)]
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the sub-command's parser, whose --help tells what it takes
        chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    logformat.setup("text", logging.INFO)
    if args.func is serve_cli.cmd_serve:
        before_serve(args)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_SIGPIPE
    except KeyboardInterrupt:
        return EXIT_SIGINT
    return code


if __name__ == "__main__":
    sys.exit(main())
