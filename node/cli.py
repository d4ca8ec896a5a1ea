"""The `ingestor` command: one console script, one subcommand per job.

What every sub-command gets from here: a usage mistake is one line on stderr naming the mistake
and where help is, exit 2 (`Parser`); `--version`; output into a closed pipe (`ingestor wal ls |
head`) ends quietly with 141, as a command killed by SIGPIPE would; Ctrl-C before a command
handles it itself ends quietly with 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn, cast

from cluster.operator import cli as operator_cli
from node import logformat, query_cli, serve_cli, status_cli, version, wal_cli

EXIT_SIGPIPE = 128 + 13
EXIT_SIGINT = 128 + 2


class Parser(argparse.ArgumentParser):
    """The parser of `ingestor` and of every sub-command (argparse makes sub-parsers of the
    parent's class): a usage error is one line, `PROG: error: MESSAGE (see PROG --help)`, exit 2,
    instead of the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog="ingestor", description="Telemetry ingestor node and tools")
    parser.add_argument("--version", action="version", version=f"ingestor {version()}")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the sub-command's parser, whose --help tells what it takes
        chosen(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    logformat.setup("text", logging.INFO)
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
