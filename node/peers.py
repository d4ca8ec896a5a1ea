"""From the configuration to the node's cluster parts: membership, ring view, transfer client, peer
authentication and the gRPC port's TLS. Everything here is construction; nothing runs.

Peers come from exactly one source, chosen by the flags: `--peers` (static), `--kubernetes-peers`
(an API watch of the StatefulSet's pods), `--service` (the StatefulSet's DNS names; the set's name
from `--statefulset` or from this host's name `<set>-<ordinal>`). With none of them the node is
alone: it owns every table and transfers nothing.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import grpc

from cluster.addr import format_hostport, parse_hostport
from cluster.health import PeerHealth
from cluster.membership import Membership, StatefulSetDns, StaticMembership, parse_peers, statefulset_of
from cluster.view import ClusterView
from node.config import NodeConfig
from node.metrics import NodeMetrics
from node.transfer.client import TlsFiles, TransferClient
from node.transfer.router import Router
from node.transfer.service import PeerAuth


class ConfigError(ValueError):
    """A flag combination that cannot work; `serve` reports it as a usage error."""


def membership_of(config: NodeConfig) -> Membership | None:
    """The peer source the flags ask for, or None for a node alone. Raises ConfigError."""
    sources = [name for name, on in (("--peers", bool(config.peers)), ("--kubernetes-peers", config.kubernetes_peers),
                                     ("--service", config.service is not None)) if on]
    if len(sources) > 1 and sources != ["--kubernetes-peers", "--service"]:
        raise ConfigError(f"choose one peer source: {' and '.join(sources)} given")
    port = parse_hostport(config.grpc_addr, default_host="0.0.0.0", allow_port_zero=True)[1]
    if config.peers:
        try:
            peers = parse_peers(config.peers)
        except ValueError as e:
            raise ConfigError(f"--peers: {e}") from e
        if config.node_name not in {p.name for p in peers}:
            raise ConfigError(f"--peers does not list this node ({config.node_name!r}, from --node-name): every "
                              "node must compute the ring from the same list")
        return StaticMembership(peers)
    statefulset = config.statefulset
    if statefulset is None and (config.kubernetes_peers or config.service is not None):
        found = statefulset_of(config.node_name)
        if found is None:
            raise ConfigError(f"--statefulset not given and the node name {config.node_name!r} is not <set>-<ordinal>")
        statefulset = found[0]
    if config.kubernetes_peers:
        assert statefulset is not None
        from cluster.k8s import KubernetesMembership

        return KubernetesMembership(statefulset, port, namespace=config.namespace, kubeconfig=config.kubeconfig)
    if config.service is not None:
        assert statefulset is not None
        return StatefulSetDns(statefulset, config.service, port, replicas=config.replicas,
                              namespace=config.namespace)
    return None


def server_credentials(config: NodeConfig) -> grpc.ServerCredentials | None:
    """TLS of the gRPC port: none, server TLS (--tls-cert, --tls-key), or mutual TLS (plus --tls-ca)."""
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_ca is not None:
            raise ConfigError("--tls-ca needs --tls-cert and --tls-key")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ConfigError("--tls-cert and --tls-key go together")
    try:
        pair = (config.tls_key.read_bytes(), config.tls_cert.read_bytes())
        ca = config.tls_ca.read_bytes() if config.tls_ca is not None else None
    except OSError as e:
        raise ConfigError(f"TLS files: {e}") from e
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def peer_auth(config: NodeConfig) -> PeerAuth:
    return PeerAuth(token=config.peer_token, mtls=config.tls_ca is not None and config.tls_cert is not None)


@dataclass
class ClusterParts:
    membership: Membership
    view: ClusterView
    router: Router


def self_address(config: NodeConfig) -> str:
    """How peers reach this node's gRPC port, when the peer list does not say."""
    host, port = parse_hostport(config.grpc_addr, default_host="", allow_port_zero=True)
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return format_hostport(host, port)


def cluster_of(config: NodeConfig, membership: Membership | None, metrics: NodeMetrics) -> ClusterParts | None:
    """The node's cluster parts around `membership` (from `check`), or None when it has no peers."""
    if membership is None:
        return None
    tls = TlsFiles(config.tls_ca, config.tls_cert, config.tls_key) if config.tls_ca is not None else None
    address = self_address(config)
    for p in membership.peers():
        if p.name == config.node_name:
            address = p.address
    view = ClusterView(config.node_name, address, membership, PeerHealth(config.peer_unhealthy_timeout))
    client = TransferClient(config.node_name, token=config.peer_token, tls=tls)
    router = Router(view, client, config.transfers_config(), metrics)
    return ClusterParts(membership, view, router)


def check(config: NodeConfig) -> Membership | None:
    """Raise ConfigError for cluster flags that cannot work (before anything starts); return the
    membership they ask for."""
    server_credentials(config)
    membership = membership_of(config)
    if membership is not None:
        if not peer_auth(config).configured:
            raise ConfigError("peers need credentials for the transfer service: --peer-token (or "
                              "INGESTOR_PEER_TOKEN, or --peer-token-file) or mutual TLS (--tls-cert, --tls-key, "
                              "--tls-ca)")
        if config.tls_cert is not None and config.tls_ca is None:
            raise ConfigError("with --tls-cert, peers verify each other against --tls-ca: give it")
    return membership

