"""The operator's I/O against `tests/kubeapi.py` (a small API server written for the tests; none can
run on these machines), with the real `kubernetes` client: what it reads, what it writes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.kube import api_client
from cluster.operator import controller
from cluster.operator.controller import Operator, WatchTrouble, cpu_cores, run
from tests.kubeapi import FakeKubeApi

NS = "adx-mon"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, Operator]]:
    api = FakeKubeApi().start()
    for i, cpu in enumerate(("1500m", "500m")):
        api.put("nodes", {"metadata": {"name": f"aks-{i}"}, "status": {"allocatable": {"cpu": "2"}}})
        api.put("nodemetrics", {"metadata": {"name": f"aks-{i}"}, "usage": {"cpu": cpu}})
    api.put("statefulsets", {"metadata": {"name": "ingestor", "namespace": NS},
                             "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ingestor"}},
                                      "serviceName": "ingestor-headless",
                                      "template": {"metadata": {"labels": {"app": "ingestor"}},
                                                   "spec": {"containers": [{"name": "c", "image": "i"}]}}},
                             "status": {"replicas": 2, "readyReplicas": 2}})
    for i in range(2):
        api.put("pods", {"metadata": {"name": f"ingestor-{i}", "namespace": NS, "labels": {"app": "ingestor"}},
                         "spec": {"nodeName": f"aks-{i}", "containers": [{"name": "c", "image": "i"}]}})
    client = api_client(api.write_kubeconfig(tmp_path / "kubeconfig", NS))
    try:
        yield api, Operator(client, namespace=NS)
    finally:
        client.close()
        api.stop()


def ingestor(api: FakeKubeApi, **autoscaler: Any) -> None:
    api.put("ingestors", {"metadata": {"name": "ingestor", "namespace": NS},
                          "spec": {"replicas": 2, "autoscaler": {"enabled": True, "minReplicas": 1, "maxReplicas": 4,
                                                                 "cpuWindow": "1s", "scaleInterval": "1s",
                                                                 **autoscaler}}})


def status(api: FakeKubeApi) -> dict[str, Any]:
    obj = api.get("ingestors", NS, "ingestor")
    assert obj is not None
    return dict(obj.get("status", {}).get("autoscaler", {}))


def test_cpu_is_the_mean_over_the_nodes_hosting_the_pods(world: tuple[FakeKubeApi, Operator]) -> None:
    _api, op = world
    assert op.node_cpu_percent({"aks-0", "aks-1"}) == pytest.approx(50.0)  # 75% and 25%
    assert op.node_cpu_percent({"aks-0"}) == pytest.approx(75.0)
    assert op.node_cpu_percent({"aks-9"}) is None  # no metrics for it: unavailable, not zero
    assert cpu_cores("250m") == 0.25 and cpu_cores("123456789n") == pytest.approx(0.123456789)
    assert cpu_cores("2") == 2.0


def test_dry_run_records_and_changes_nothing(world: tuple[FakeKubeApi, Operator]) -> None:
    api, op = world
    ingestor(api, dryRun=True, scaleDownCPUThreshold=60, scaleUpCPUThreshold=80)
    op.clock = lambda: 1_800_000_000.0
    op.reconcile_all()  # first sample: collecting
    op.clock = lambda: 1_800_000_001.0
    op.reconcile_all()
    st = status(api)
    assert st["lastAction"] == "ScaleDown" and st["reason"].startswith("dry run")
    assert st["lastObservedCpuPercentHundredths"] == 5000
    assert api.get("statefulsets", NS, "ingestor")["spec"]["replicas"] == 2  # type: ignore[index]
    assert not (api.get("pods", NS, "ingestor-1") or {})["metadata"].get("annotations")
    assert api.list("events", NS) == []


def test_an_invalid_spec_is_reported_and_nothing_scales(world: tuple[FakeKubeApi, Operator]) -> None:
    api, op = world
    ingestor(api, minReplicas=5, maxReplicas=3)
    op.reconcile_all()
    st = status(api)
    assert st["lastAction"] == "Skip" and "maxReplicas" in st["reason"]
    assert api.get("statefulsets", NS, "ingestor")["spec"]["replicas"] == 2  # type: ignore[index]


def test_disabled_keeps_spec_replicas(world: tuple[FakeKubeApi, Operator]) -> None:
    api, op = world
    api.put("ingestors", {"metadata": {"name": "ingestor", "namespace": NS}, "spec": {"replicas": 3}})
    op.reconcile_all()
    assert api.get("statefulsets", NS, "ingestor")["spec"]["replicas"] == 3  # type: ignore[index]
    assert status(api)["lastAction"] == "None"


async def test_a_spec_change_is_reconciled_at_once_not_at_the_next_interval(
        world: tuple[FakeKubeApi, Operator]) -> None:
    api, op = world
    api.put("ingestors", {"metadata": {"name": "ingestor", "namespace": NS}, "spec": {"replicas": 2}})
    stop = asyncio.Event()
    task = asyncio.create_task(run(op, 600.0, stop))  # the interval alone would wait ten minutes
    try:
        await asyncio.sleep(1.0)
        api.patch("ingestors", NS, "ingestor", {"spec": {"replicas": 4}})
        deadline = time.monotonic() + 10
        while api.get("statefulsets", NS, "ingestor")["spec"]["replicas"] != 4:  # type: ignore[index]
            assert time.monotonic() < deadline, "the change was not reconciled"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def _watch_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == controller.__name__ and "watch of Ingestor" in r.getMessage()]


def test_watch_errors_are_said_once_each_until_the_watch_works_again(caplog: pytest.LogCaptureFixture) -> None:
    from kubernetes.client.exceptions import ApiException

    caplog.set_level(logging.INFO, logger=controller.__name__)
    trouble = WatchTrouble()
    for _ in range(3):
        trouble.failed(ApiException(status=403, reason="Forbidden"))
        trouble.failed(ConnectionRefusedError(111, "Connection refused"))
        trouble.failed(RuntimeError("a bug"))
    lines = _watch_lines(caplog)
    assert [(r.levelno, r.exc_info is not None) for r in lines] == [
        (logging.WARNING, False), (logging.WARNING, False), (logging.WARNING, True)]
    assert "403 Forbidden" in lines[0].getMessage() and "Connection refused" in lines[1].getMessage()
    trouble.ended()
    trouble.failed(ApiException(status=403, reason="Forbidden"))  # failing again after it worked: said again
    assert [r.levelno for r in _watch_lines(caplog)[3:]] == [logging.INFO, logging.WARNING]


def test_a_watch_that_cannot_reach_the_api_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeKubeApi().start()
    client = api_client(api.write_kubeconfig(tmp_path / "kubeconfig", NS))
    api.stop()  # nothing listens there any more
    monkeypatch.setattr(controller, "WATCH_RETRY", 0.05)
    caplog.set_level(logging.DEBUG, logger=controller.__name__)
    stopping = threading.Event()
    watcher = threading.Thread(target=Operator(client, namespace=NS).watch_ingestors,
                               args=(lambda: None, stopping), daemon=True)
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        while sum(r.levelno == logging.DEBUG for r in _watch_lines(caplog)) < 3:  # it failed, then twice again
            assert time.monotonic() < deadline, "the watch did not retry"
            time.sleep(0.05)
    finally:
        stopping.set()
        watcher.join(10)
        client.close()
    warnings = [r for r in _watch_lines(caplog) if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None
