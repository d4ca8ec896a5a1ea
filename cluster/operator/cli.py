"""`ingestor operator`: the command line of the autoscaler operator (`cluster/operator/controller.py`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("operator", help="run the autoscaler operator of Ingestor resources")
    p.add_argument("--kubeconfig", type=Path, default=None, help="kubeconfig (default: in-cluster configuration)")
    p.add_argument("--namespace", default=None, help="watch one namespace (default: all)")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between reconciles (default %(default)s)")
    p.add_argument("--cluster-labels", action="append", default=[], metavar="KEY=VALUE",
                   help="a label of this cluster, for the Ingestors' spec.criteriaExpression (adx-mon's flag); "
                        "repeat it, or separate labels with commas")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.set_defaults(func=cmd_operator)


def cmd_operator(args: argparse.Namespace) -> int:
    from cluster.kube import api_client
    from cluster.operator.controller import Operator, run
    from cluster.operator.criteria import parse_labels

    logging.getLogger().setLevel(args.log_level.upper())
    try:
        labels = parse_labels(args.cluster_labels)
    except ValueError as e:
        print(f"ingestor operator: --cluster-labels: {e}", file=sys.stderr)
        return 2
    try:
        api = api_client(args.kubeconfig)
    except Exception as e:
        print(f"ingestor operator: cannot configure the Kubernetes client: {e}", file=sys.stderr)
        return 2
    operator = Operator(api, namespace=args.namespace, cluster_labels=labels)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        log.info("operator: reconciling Ingestor resources every %.0fs (%s; cluster labels: %s)", args.interval,
                 f"namespace {args.namespace}" if args.namespace else "all namespaces",
                 ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none")
        await run(operator, args.interval, stop)

    asyncio.run(main())
    api.close()
    return 0
