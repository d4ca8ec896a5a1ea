"""`ingestor serve`: run a node until SIGTERM or SIGINT (a second signal exits at once)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
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
from node.storage import StorageLayout

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


def _conflict(config: node_config.NodeConfig, transfer_explicit: bool = True) -> str | None:
    """Why the ports cannot all be bound as given, whatever else runs on this host. (With
    --receivers > 1 gRPC and HTTP bind with SO_REUSEPORT and the kernel would let them share the
    port.) The transfer port counts only when given (a default that collides is `check_transfer_port`'s:
    taken, one warning)."""
    ports = [(config.grpc_addr, "--grpc-addr"), (config.http_addr, "--http-addr")]
    if config.transfer_addr and transfer_explicit:
        ports.append((config.transfer_addr, "--transfer-addr"))
    for i, (a, flag_a) in enumerate(ports):
        for b, flag_b in ports[i + 1:]:
            if _same_port(a, b):
                return f"{flag_a} {a} and {flag_b} {b} are the same port; give each its own"
    return None


def _same_port(a: str, b: str) -> bool:
    """Whether listeners on `a` and `b` (HOST:PORT) would take the same port."""
    host_a, port_a = parse_hostport(a, default_host="0.0.0.0", allow_port_zero=True)
    host_b, port_b = parse_hostport(b, default_host="0.0.0.0", allow_port_zero=True)
    if port_a == 0 or port_a != port_b:
        return False
    x, y = _addresses(host_a, port_a), _addresses(host_b, port_b)
    return bool(x & y or _covers(x, y) or _covers(y, x))


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


def check_transfer_port(config: node_config.NodeConfig, explicit: bool) -> node_config.NodeConfig:
    """The config to run with, once adx-mon's transfer port (--transfer-addr) was tried as
    `check_ports` tries the others. Taken (by anything, or by this node's own gRPC or HTTP port):
    BindError when the flag was given (`explicit`, on the command line or as INGESTOR_TRANSFER_ADDR),
    else one WARNING line and the config without the front door: the default, 9090, is also
    Prometheus's, and a user running one locally did not ask for the door."""
    from node.receivers import listener
    from node.transfer.door import FLAG, PORT_NAME, door_off_warning

    addr = config.transfer_addr
    if not addr:
        return config
    host, number = parse_hostport(addr, default_host="0.0.0.0", allow_port_zero=True)
    if number == 0:
        return config
    try:
        for other in (config.grpc_addr, config.http_addr):
            if _same_port(addr, other):
                raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        for sock in listener.bind(host, number, reuse_port=False):
            sock.close()
    except OSError as e:
        err = BindError.of(addr, PORT_NAME, FLAG, e)
        if explicit:
            raise err from e
        log.warning("%s", door_off_warning(addr, err))
        return dataclasses.replace(config, transfer_addr="")
    return config


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


def use_usable_temp_dir(layout: StorageLayout) -> Path | None:
    """Point temporary files (the transfer door's self-signed certificate, the ADX sink's upload
    files) at `<storage-dir>/tmp` when the system has no usable temporary directory: adx-mon's pods
    run with a read-only root file system and no /tmp, and the node would not start there. The
    receiver processes inherit it (TMPDIR). Returns the directory chosen, or None when the system's
    is usable."""
    try:
        with tempfile.TemporaryFile():
            return None
    except OSError:  # FileNotFoundError: "No usable temporary directory found"
        pass
    shutil.rmtree(layout.tmp, ignore_errors=True)  # only this node's leftovers
    layout.tmp.mkdir(mode=0o700)
    os.environ["TMPDIR"] = str(layout.tmp)
    tempfile.tempdir = str(layout.tmp)
    return layout.tmp


def _reason(e: OSError) -> str:
    text = os.strerror(e.errno) if e.errno else str(e)
    return text[:1].lower() + text[1:]


class StartFailed(Exception):
    """The node could not start (an OSError before it served); what was started is stopped."""


async def run(config: node_config.NodeConfig, sink: Sink, membership: Membership | None,
              door_optional: bool = False) -> None:
    """Run the node `config` describes, around the sink and peer source `cmd_serve` built and
    checked, until SIGTERM or SIGINT. `door_optional`: --transfer-addr is the default, and a port
    taken between the check and the bind is a warning, not a failure."""
    from node import runtime
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
    node.door_optional = door_optional
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
    runtime.freeze()
    await stop.wait()
    await shutdown(config.shutdown_grace)


def cmd_serve(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.serve_parser
    args = with_environment(args, parser)
    if args.storage_dir is None:
        parser.error("--storage-dir (or INGESTOR_STORAGE_DIR) is required")
    config = node_config.from_args(args)
    transfer_explicit = args.transfer_addr is not None  # given as a flag or INGESTOR_TRANSFER_ADDR
    conflict = _conflict(config, transfer_explicit)
    if conflict:
        parser.error(conflict)
    logformat.setup(config.log_format, config.log_level)
    why = check_storage(Path(config.storage_dir))
    if why:
        print(f"ingestor serve: {why}", file=sys.stderr)
        return 1
    tmp = use_usable_temp_dir(config.layout)
    if tmp is not None:
        log.info("no usable temporary directory (TMPDIR, /tmp, /var/tmp): temporary files go to %s", tmp)
    try:
        check_ports(config)
        config = check_transfer_port(config, transfer_explicit)
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
    from node import runtime  # after the config: importing the node is not free
    from node.wal.openfiles import raise_descriptor_limit

    runtime.tune()
    raise_descriptor_limit()  # before the WAL sizes its pool of open segments from it
    debug.install()
    try:
        asyncio.run(run(config, sink, membership, door_optional=not transfer_explicit))
    except (BindError, StartFailed) as e:
        log.debug("ingestor serve: %s", e, exc_info=True)  # the traceback, with --log-level debug
        print(f"ingestor serve: {e}", file=sys.stderr)
        return 1
    finally:
        if config.multiprocess:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
