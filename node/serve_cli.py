"""`ingestor serve`: run a node until SIGTERM or SIGINT (a second signal exits at once)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.addr import parse_hostport
from node import config as node_config
from node import debug, logformat
from node.errors import BindError

if TYPE_CHECKING:
    from cluster.membership import Membership
    from node.sinks.base import Sink

log = logging.getLogger("node")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run a node",
                       description="Run a node. Every flag is also the environment variable INGESTOR_<FLAG>.")
    node_config.add_serve_flags(p)
    p.set_defaults(func=cmd_serve, serve_parser=p)


def with_environment(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """`args` with `INGESTOR_<FLAG>` for every flag not on the command line. Read only when
    `serve` runs, so that a bad variable stops `serve` alone (one line, exit 2), not `ingestor
    wal ls` or `--version`."""
    env = type(parser)(prog=parser.prog, add_help=False)
    node_config.add_serve_flags(env)
    node_config.env_defaults(env, os.environ)
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(env.parse_args([])).items():
        if getattr(merged, key, None) is None:
            setattr(merged, key, value)
    return merged


def _conflict(config: node_config.NodeConfig) -> str | None:
    """Why the two ports cannot both be bound as given, whatever else runs on this host. (With
    --receivers > 1 both bind with SO_REUSEPORT and the kernel would let them share the port.)"""
    grpc_host, grpc_port = parse_hostport(config.grpc_addr, default_host="0.0.0.0", allow_port_zero=True)
    http_host, http_port = parse_hostport(config.http_addr, default_host="0.0.0.0", allow_port_zero=True)
    if grpc_port == 0 or grpc_port != http_port:
        return None
    a, b = _addresses(grpc_host, grpc_port), _addresses(http_host, http_port)
    if not (a & b or _covers(a, b) or _covers(b, a)):
        return None
    return f"--grpc-addr {config.grpc_addr} and --http-addr {config.http_addr} are the same port; give each its own"


def _covers(a: set[str], b: set[str]) -> bool:
    """A listener on `a` takes an address of `b`: `a` holds the wildcard of its family."""
    return ("0.0.0.0" in a and any(":" not in x for x in b)) or ("::" in a and any(":" in x for x in b))


def _addresses(host: str, port: int) -> set[str]:
    """The addresses a listener on `host` binds (none when the name does not resolve: check_ports
    says so)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}


def check_ports(config: node_config.NodeConfig) -> None:
    """Raise BindError when a port cannot be bound (another node, or anything else, listens on
    it): said before the WAL is recovered or anything starts. Bound without SO_REUSEPORT, so that
    another multi-process node on the port is found too. (The servers still map a failed bind to
    BindError themselves: the port may be taken between this check and their bind.)"""
    from node.receivers import listener

    for addr, port, flag in ((config.grpc_addr, "gRPC", "--grpc-addr"), (config.http_addr, "HTTP", "--http-addr")):
        host, number = parse_hostport(addr, default_host="0.0.0.0", allow_port_zero=True)
        if number == 0:
            continue
        try:
            socks = listener.bind(host, number, reuse_port=False)
        except OSError as e:
            raise BindError.of(addr, port, flag, e) from e
        for sock in socks:
            sock.close()


def check_storage(root: Path) -> str | None:
    """Why `--storage-dir` cannot hold the node's files (creating it when missing), or None."""
    if root.exists() and not root.is_dir():
        return f"--storage-dir {root} is not a directory; pass a directory (it is created when missing)"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create --storage-dir {root}: {_reason(e)}; pass a directory this user can create or write to"
    try:
        fd, name = tempfile.mkstemp(dir=root, prefix=".write-check-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return f"--storage-dir {root} is not writable: {_reason(e)}; fix its permissions or pass another directory"
    return None


def _reason(e: OSError) -> str:
    text = os.strerror(e.errno) if e.errno else str(e)
    return text[:1].lower() + text[1:]


class StartFailed(Exception):
    """The node could not start (an OSError before it served); what was started is stopped."""


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

    async def shutdown(grace: float) -> None:
        if receivers is not None:
            async def stop_receivers() -> None:
                await receivers.stop(grace)
                supervisor.siblings_stopped.set()

            await asyncio.gather(node.stop(grace), stop_receivers())
        else:
            await node.stop(grace)

    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, on_signal, s)
    debug.install_task_dump(loop)
    try:
        await node.start_wal()
    except OSError as e:  # nothing else runs yet
        raise StartFailed(f"cannot start on --storage-dir {config.storage_dir}: {e}") from e
    if receivers is not None:
        await receivers.start()
    try:
        await node.start_servers()
    except (BindError, OSError) as e:
        # The port was taken after check_ports, or is taken in a way it does not see: stop what
        # started (uploads, receiver processes, the server that did bind), then say it.
        await shutdown(0.0)
        if isinstance(e, BindError):
            raise
        raise StartFailed(f"cannot start serving: {e}") from e
    await stop.wait()
    await shutdown(config.shutdown_grace)


def cmd_serve(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.serve_parser
    args = with_environment(args, parser)
    if args.storage_dir is None:
        parser.error("--storage-dir (or INGESTOR_STORAGE_DIR) is required")
    config = node_config.from_args(args)
    conflict = _conflict(config)
    if conflict:
        parser.error(conflict)
    logformat.setup(config.log_format, config.log_level)
    why = check_storage(Path(config.storage_dir))
    if why:
        print(f"ingestor serve: {why}", file=sys.stderr)
        return 1
    try:
        check_ports(config)
    except BindError as e:
        log.debug("ingestor serve: %s", e, exc_info=True)
        print(f"ingestor serve: {e}", file=sys.stderr)
        return 1
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
        parser.error(str(e))
    from node.server import tune_malloc  # after the config: importing the node is not free
    from node.wal.openfiles import raise_descriptor_limit

    tune_malloc()
    raise_descriptor_limit()  # before the WAL sizes its pool of open segments from it
    debug.install()
    try:
        asyncio.run(run(config, sink, membership))
    except (BindError, StartFailed) as e:
        log.debug("ingestor serve: %s", e, exc_info=True)  # the traceback, with --log-level debug
        print(f"ingestor serve: {e}", file=sys.stderr)
        return 1
    finally:
        if config.multiprocess:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
