"""Peer sources (static list, StatefulSet DNS names), the ring view over healthy peers, and the
cluster flags that `serve` refuses before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.health import PeerHealth
from cluster.membership import Peer, StatefulSetDns, StaticMembership, parse_peers, statefulset_of
from cluster.view import ClusterView
from node import config as node_config
from node.peers import ConfigError, check, membership_of


def test_parse_peers_sorted_from_one_or_several_flags() -> None:
    assert parse_peers("b=10.0.0.2:4317, a=host-a:4317") == (Peer("a", "host-a:4317"), Peer("b", "10.0.0.2:4317"))
    assert parse_peers(["a=h:1", "b=h:2,c=[::1]:3"])[2] == Peer("c", "[::1]:3")


@pytest.mark.parametrize(("text", "message"), [
    ("a", "not NAME=HOST:PORT"),
    ("a=host", "not HOST:PORT"),
    ("a=host:0", "not HOST:PORT"),
    ("a=:4317", "not HOST:PORT"),
    ("a=h:1,a=h:2", "given twice"),
    ("../x=h:1", "invalid peer name"),
    ("=h:1", "invalid peer name"),
])
def test_bad_peer_lists_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_peers(text)


def test_statefulset_of_a_pod_host_name() -> None:
    assert statefulset_of("ingestor-12") == ("ingestor", 12)
    assert statefulset_of("my-ingestor-0") == ("my-ingestor", 0)
    assert statefulset_of("laptop") is None


def test_statefulset_dns_keeps_the_names_that_resolve() -> None:
    up = {"ingestor-0.ingestor-headless", "ingestor-2.ingestor-headless"}
    dns = StatefulSetDns("ingestor", "ingestor-headless", 4317, replicas=3, resolve=up.__contains__)
    assert dns.refresh() == (Peer("ingestor-0", "ingestor-0.ingestor-headless:4317"),
                             Peer("ingestor-2", "ingestor-2.ingestor-headless:4317"))
    up.add("ingestor-1.ingestor-headless")
    assert [p.name for p in dns.refresh()] == ["ingestor-0", "ingestor-1", "ingestor-2"]
    assert dns.peers() == dns.refresh()


def test_statefulset_dns_probes_ordinals_without_a_replica_count() -> None:
    up = {f"ingestor-{i}.svc.monitoring.svc" for i in (0, 1, 3, 4)}  # 2 not ready: a gap, then more
    dns = StatefulSetDns("ingestor", "svc", 4317, namespace="monitoring", resolve=up.__contains__, probe_gap=3)
    assert [p.name for p in dns.refresh()] == ["ingestor-0", "ingestor-1", "ingestor-3", "ingestor-4"]
    assert dns.refresh()[0].address == "ingestor-0.svc.monitoring.svc:4317"


def test_the_view_drops_unhealthy_peers_and_takes_them_back() -> None:
    now = [0.0]
    health = PeerHealth(60, clock=lambda: now[0])
    view = ClusterView("a", "a:1", StaticMembership(parse_peers("a=a:1,b=b:1,c=c:1")), health)
    keys = [f"Metrics_T{i}" for i in range(300)]
    before = {k: view.owner(k) for k in keys}
    b_keys = [k for k in keys if before[k] == "b"]
    health.mark_unhealthy("b", "test")
    during = {k: view.owner(k) for k in keys}
    assert "b" not in during.values()
    assert all(during[k] == before[k] for k in keys if before[k] != "b")  # nothing else moves
    assert {during[k] for k in b_keys} == {"a", "c"}
    now[0] = 61.0
    assert {k: view.owner(k) for k in keys} == before
    assert not health.unhealthy()


def test_this_node_is_in_its_own_ring_even_when_the_source_does_not_list_it() -> None:
    view = ClusterView("me", "me:1", StaticMembership([Peer("other", "o:1")]), PeerHealth())
    assert view.ring().peers == ("me", "other")
    assert view.peer("me") == Peer("me", "me:1")


def cfg(*args: str) -> node_config.NodeConfig:
    return node_config.parse(["--storage-dir", "/tmp/x", "--node-name", "a", *args], env={})


@pytest.mark.parametrize(("args", "message"), [
    (["--peers", "a=h:1,b=h:2"], "credentials"),
    (["--peers", "b=h:1,c=h:2", "--peer-token", "t"], "does not list this node"),
    (["--peers", "a=h:1", "--service", "svc", "--peer-token", "t"], "choose one peer source"),
    (["--service", "svc", "--peer-token", "t"], "not <set>-<ordinal>"),
    (["--tls-cert", "/x.pem"], "go together"),
    (["--tls-ca", "/ca.pem"], "needs --tls-cert"),
])
def test_cluster_flags_that_cannot_work_are_refused_before_start(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check(cfg(*args))


def test_peer_sources_from_flags(tmp_path: Path) -> None:
    assert membership_of(cfg()) is None
    static = membership_of(cfg("--peers", "a=h:1,b=h:2", "--peer-token", "t"))
    assert isinstance(static, StaticMembership) and len(static.peers()) == 2
    dns = membership_of(node_config.parse(["--storage-dir", "/x", "--node-name", "ingestor-1", "--service", "hl",
                                           "--peer-token", "t"], env={}))
    assert isinstance(dns, StatefulSetDns) and dns.statefulset == "ingestor" and dns.port == 4317
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    assert cfg("--peer-token-file", str(token_file)).peer_token == "from-a-file"
    env = node_config.parse(["--storage-dir", "/x"], env={"INGESTOR_PEER_TOKEN": "env-token",
                                                          "INGESTOR_PEERS": "a=h:1,b=h:2"})
    assert env.peer_token == "env-token" and env.peers == ("a=h:1", "b=h:2")
    assert "env-token" not in repr(env)
