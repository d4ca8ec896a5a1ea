"""The settings of adx-mon's transfer front door (node/transfer/http.py) and what `ingestor serve`
says when its default port is taken; no I/O, and light to import: `serve` checks the port before
the node (and prometheus_client, which multi-process mode must set up first) is imported."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from cluster.addr import parse_hostport
from node.config import NodeConfig
from node.errors import BindError
from node.sinks.factory import allowed_databases

PORT_NAME = "adx-mon transfer"
"""How the port is named in BindError's text."""
FLAG = "--transfer-addr"


@dataclass(frozen=True)
class DoorConfig:
    """The front door's settings, from NodeConfig (`of`)."""

    addr: str
    """--transfer-addr: HOST:PORT to listen on (port 0: any free port)."""
    drop_prefix: tuple[str, ...] = ()
    """--drop-prefix: file names starting with one of these are answered 202 and thrown away."""
    databases: frozenset[str] | None = None
    """Databases a sink is configured for (None: any, the local sink)."""
    tls_cert: Path | None = None
    """--tls-cert / --tls-key: the node's certificate; None: a self-signed one made at start."""
    tls_key: Path | None = None
    names: tuple[str, ...] = ("localhost",)
    """Host names and addresses the self-signed certificate is valid for."""
    stall_timeout: float = NodeConfig.stall_timeout
    """--stall-timeout: a body that sends no byte for this long is cut (408)."""
    min_request_rate: int = NodeConfig.min_request_rate
    """--min-request-rate: bytes/s a body must average once it has lasted `stall_timeout`."""
    idle_timeout: float = NodeConfig.idle_timeout
    """--idle-timeout: a kept-alive connection with no request for this long is closed."""

    @classmethod
    def of(cls, config: NodeConfig) -> DoorConfig:
        host, _ = parse_hostport(config.transfer_addr, default_host="0.0.0.0", allow_port_zero=True)
        names = (config.node_name, socket.gethostname(), "localhost", "127.0.0.1", "::1",
                 *((host,) if host not in ("0.0.0.0", "::", "") else ()))
        return cls(config.transfer_addr, tuple(config.drop_prefix), allowed_databases(config), config.tls_cert,
                   config.tls_key, names, config.stall_timeout, config.min_request_rate, config.idle_timeout)


def door_off_warning(addr: str, err: BindError) -> str:
    """The one WARNING line of a node whose default --transfer-addr is taken (a local Prometheus
    listens on 9090): it runs without the front door."""
    return (f"adx-mon transfer front door off: its default address {addr} is taken ({err.reason}; a local "
            f"Prometheus listens on 9090); pass {FLAG} HOST:PORT to serve it elsewhere, or {FLAG}= to turn it "
            "off without this warning")
