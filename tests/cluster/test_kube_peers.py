"""Peers from a watch of the Kubernetes API, with the real `kubernetes` client against
`tests/kubeapi.py` (a small API server written for the tests: none can run on these machines)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest_asyncio

from cluster.k8s import KubernetesMembership
from cluster.membership import Peer
from tests.kubeapi import FakeKubeApi

NS = "adx-mon"


def pod(name: str, ip: str | None = "10.0.0.1", ready: bool = True, labels: dict[str, str] | None = None,
        deleting: bool = False) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "namespace": NS, "labels": labels or {"app": "ingestor"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T10:00:00Z"
    return {"metadata": meta, "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[FakeKubeApi, Path]]:
    api = FakeKubeApi().start()
    api.put("statefulsets", {"metadata": {"name": "ingestor", "namespace": NS},
                             "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "ingestor"}},
                                      "serviceName": "ingestor-headless",
                                      "template": {"metadata": {"labels": {"app": "ingestor"}},
                                                   "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    try:
        yield api, api.write_kubeconfig(tmp_path / "kubeconfig", NS)
    finally:
        api.stop()


async def test_ready_pods_of_the_set_are_the_peers_and_changes_follow(kube: tuple[FakeKubeApi, Path]) -> None:
    api, kubeconfig = kube
    api.put("pods", pod("ingestor-0", "10.0.0.10"))
    api.put("pods", pod("ingestor-1", "10.0.0.11", ready=False))
    api.put("pods", pod("other-0", "10.0.0.99", labels={"app": "other"}))
    api.put("pods", pod("ingestor-2", "fd00::2"))
    m = KubernetesMembership("ingestor", 4317, kubeconfig=kubeconfig)
    await m.start()
    try:
        assert m.namespace == NS
        assert m.peers() == (Peer("ingestor-0", "10.0.0.10:4317"), Peer("ingestor-2", "[fd00::2]:4317"))
        api.put("pods", pod("ingestor-1", "10.0.0.11"))  # turns Ready
        await until(lambda: [p.name for p in m.peers()] == ["ingestor-0", "ingestor-1", "ingestor-2"])
        api.put("pods", pod("ingestor-0", "10.0.0.10", ready=False))  # not Ready
        await until(lambda: [p.name for p in m.peers()] == ["ingestor-1", "ingestor-2"])
        api.put("pods", pod("ingestor-2", "fd00::2", deleting=True))  # being deleted
        await until(lambda: [p.name for p in m.peers()] == ["ingestor-1"])
        api.delete("pods", NS, "ingestor-1")
        await until(lambda: m.peers() == ())
    finally:
        t0 = time.monotonic()
        await m.stop()
        assert time.monotonic() - t0 < 8


async def test_an_expired_watch_relists_and_an_outage_keeps_the_last_view(kube: tuple[FakeKubeApi, Path]) -> None:
    api, kubeconfig = kube
    api.put("pods", pod("ingestor-0", "10.0.0.10"))
    m = KubernetesMembership("ingestor", 4317, kubeconfig=kubeconfig)
    await m.start()
    try:
        assert [p.name for p in m.peers()] == ["ingestor-0"]
        api.history = 1  # the watch's version falls out of the history: 410 Gone, then a new list
        for i in range(1, 4):
            api.put("pods", pod(f"ingestor-{i}", f"10.0.0.1{i}"))
        await until(lambda: len(m.peers()) == 4)
        # the API server is unreachable: the view stays as it was
        api.httpd.socket.close()
        await asyncio.sleep(1.5)
        assert len(m.peers()) == 4
    finally:
        await m.stop()
