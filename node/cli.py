"""The `ingestor` command: one console script, one subcommand per job."""

from __future__ import annotations

import argparse
import logging
import sys

from cluster.operator import cli as operator_cli
from node import query_cli, serve_cli, status_cli, wal_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingestor", description="Telemetry ingestor node and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cli.add_parser(sub)
    status_cli.add_parser(sub)
    query_cli.add_parser(sub)
    wal_cli.add_parser(sub)
    operator_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
