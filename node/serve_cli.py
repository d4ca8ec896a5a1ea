"""`ingestor serve`: run a node until SIGTERM or SIGINT (a second signal exits at once)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from typing import TYPE_CHECKING

from node import config as node_config
from node import debug

if TYPE_CHECKING:
    from cluster.membership import Membership
    from node.sinks.base import Sink

log = logging.getLogger("node")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run a node",
                       description="Run a node. Every flag is also the environment variable INGESTOR_<FLAG>.")
    node_config.add_serve_flags(p)
    node_config.env_defaults(p, os.environ)
    p.set_defaults(func=cmd_serve)


async def run(config: node_config.NodeConfig, sink: Sink, membership: Membership | None) -> None:
    """Run the node `config` describes, around the sink and peer source `cmd_serve` built and
    checked, until SIGTERM or SIGINT."""
    from node.server import Node

    receivers = None
    if config.multiprocess:
        import multiprocessing

        from node.workers import Receivers, SlotUsage

        array = multiprocessing.get_context("spawn").Array("q", 2 * config.receivers, lock=False)
        node = Node.supervisor(config, sink, membership, shared=SlotUsage(array, 0, config.receivers))
        receivers = Receivers(config, array, node.wal.recover_active)
        node.state.add_check(receivers.not_ready_reason)
    else:
        node = Node.supervisor(config, sink, membership)
    supervisor = node.supervising
    assert supervisor is not None
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            # Every acknowledged row is already in a segment file: exiting now loses none of it.
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: shutting down (a second signal exits at once)", signal.Signals(signum).name)
        stop.set()

    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, on_signal, s)
    debug.install_task_dump(loop)
    await node.start_wal()
    if receivers is not None:
        await receivers.start()
    await node.start_servers()
    await stop.wait()
    if receivers is not None:
        async def stop_receivers() -> None:
            await receivers.stop(config.shutdown_grace)
            supervisor.siblings_stopped.set()

        await asyncio.gather(node.stop(), stop_receivers())
    else:
        await node.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    config = node_config.from_args(args)
    if config.multiprocess:
        # Before prometheus_client is imported (the checks below import it), here and in every
        # receiver process: otherwise this process counts in memory and /metrics misses its share.
        assert "prometheus_client" not in sys.modules, "prometheus_client imported before multiprocess mode"
        from node import metrics_files

        metrics_dir = metrics_files.directory(config.storage_dir)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        from node.peers import check
        from node.sinks.factory import make_sink

        sink = make_sink(config)  # a bad endpoint or DSN is a usage error, said before anything starts
        membership = check(config)  # so is a peer source without credentials, or half a TLS set
    except ValueError as e:
        print(f"ingestor serve: {e}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(config.log_level.upper())
    from node.server import tune_malloc  # after the config: importing the node is not free

    tune_malloc()
    debug.install()
    try:
        asyncio.run(run(config, sink, membership))
    finally:
        if config.multiprocess:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
