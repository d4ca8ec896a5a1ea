"""End to end on loopback: the real operator process and real `ingestor serve` processes acting as
the StatefulSet's pods.

No Kubernetes API server can run on these machines: the API is `tests/kubeapi.py`, a small
server written for the tests, and this test plays the StatefulSet controller (it starts a node
process for each ordinal below `spec.replicas`, keeps the pods' Ready condition and the set's
status, and stops the pods above it). CPU is simulated through `metrics.k8s.io` NodeMetrics. The
nodes run alone (no peers: pods share one loopback address here), each with the local sink.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from cluster.annotations import SHUTDOWN_COMPLETED, SHUTDOWN_REQUESTED
from tests.deploy.render import KUBECTL_MISSING, KUBECTL_REASON
from tests.deploy.test_adxmon import SAMPLES
from tests.harness import ROOT, NodeProcess
from tests.kubeapi import FakeKubeApi
from tests.node.test_grpc import gauge_request
from tests.upload.test_e2e import PARTS_SQL, query

NS = "adx-mon"
pytestmark = pytest.mark.slow


class Controller:
    """The StatefulSet controller, as far as this test needs one."""

    def __init__(self, api: FakeKubeApi, root: Path, kubeconfig: Path) -> None:
        self.api = api
        self.root = root
        self.kubeconfig = kubeconfig
        self.nodes: dict[int, NodeProcess] = {}
        self.stopped: list[NodeProcess] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start_pod(self, i: int) -> None:
        name = f"ingestor-{i}"
        self.api.put("pods", {
            "metadata": {"name": name, "namespace": NS, "labels": {"app": "ingestor"}, "annotations": {}},
            "spec": {"nodeName": "aks-1", "containers": [{"name": "ingestor", "image": "ingestor:test"}]},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "False"}]}})
        node = NodeProcess(self.root / name, "--drain-on-annotation", "--kubeconfig", str(self.kubeconfig),
                           "--namespace", NS, "--max-segment-age", "1h", "--upload-interval", "0.5s", name=name)
        node.start()
        self.api.patch("pods", NS, name, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        with self._lock:
            self.nodes[i] = node

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                want = int(self.api.get("statefulsets", NS, "ingestor")["spec"]["replicas"])  # type: ignore[index]
                for i in range(want):
                    if i not in self.nodes:
                        self.start_pod(i)
                for i in sorted(self.nodes):
                    if i >= want:  # scale-down: SIGTERM, then the pod is gone
                        with self._lock:
                            node = self.nodes.pop(i)
                        node.stop()
                        self.stopped.append(node)
                        self.api.delete("pods", NS, node.name)
                ready = sum(1 for n in self.nodes.values() if n.ready())
                self.api.patch("statefulsets", NS, "ingestor", {"status": {"replicas": len(self.nodes),
                                                                           "readyReplicas": ready}})
                time.sleep(0.2)
        except BaseException as e:  # surfaced by the test
            self.error = e

    def running(self) -> list[NodeProcess]:
        with self._lock:
            return list(self.nodes.values())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for node in self.running():
            node.stop()


def cluster(tmp_path: Path, ingestor: bool) -> Iterator[tuple[FakeKubeApi, Controller, Path]]:
    """The API with a node, its metrics, the StatefulSet `ingestor` (2 replicas, the test's
    Controller running its pods) and, with `ingestor`, an Ingestor of the same name."""
    api = FakeKubeApi().start()
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", NS)
    api.put("nodes", {"metadata": {"name": "aks-1"}, "status": {"capacity": {"cpu": "2"},
                                                                "allocatable": {"cpu": "2"}}})
    api.put("nodemetrics", {"metadata": {"name": "aks-1"}, "usage": {"cpu": "1800m", "memory": "1Gi"}})
    api.put("statefulsets", {
        "metadata": {"name": "ingestor", "namespace": NS},
        "spec": {"replicas": 2, "serviceName": "ingestor-headless", "selector": {"matchLabels": {"app": "ingestor"}},
                 "template": {"metadata": {"labels": {"app": "ingestor"}},
                              "spec": {"containers": [{"name": "ingestor", "image": "ingestor:test",
                                                       "args": ["serve", "--drain-on-annotation"]}]}}},
        "status": {"replicas": 0, "readyReplicas": 0}})
    if ingestor:
        api.put("ingestors", {"metadata": {"name": "ingestor", "namespace": NS}, "spec": {
            "replicas": 2, "autoscaler": {"enabled": True, "minReplicas": 2, "maxReplicas": 3, "scaleInterval": "1s",
                                          "cpuWindow": "2s", "scaleUpCPUThreshold": 70,
                                          "scaleDownCPUThreshold": 40}}})
    controller = Controller(api, tmp_path, kubeconfig)
    controller.start()
    try:
        yield api, controller, kubeconfig
    finally:
        controller.stop()
        api.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, Controller, Path]]:
    yield from cluster(tmp_path, ingestor=True)


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, Controller, Path]]:
    """No Ingestor: the test applies one. The API holds our CRD, so that what kubectl applies and
    what the operator writes is admitted by its schema, as a real server would admit it."""
    for world in cluster(tmp_path, ingestor=False):
        world[0].put("customresourcedefinitions", yaml.safe_load((ROOT / "deploy/base/crd.yaml").read_text()))
        yield world


def wait(cond: Callable[[], bool], what: str, timeout: float = 60.0, during: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if during is not None:
            during()
        time.sleep(0.2)


def test_high_cpu_scales_up_low_cpu_drains_the_highest_ordinal_and_scales_down(
        world: tuple[FakeKubeApi, Controller, Path], tmp_path: Path) -> None:
    api, controller, kubeconfig = world
    acked = [0]

    def send() -> None:
        for node in controller.running():
            try:
                with grpc.insecure_channel(node.grpc_addr) as ch:
                    metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(
                        gauge_request("scaling", points=10, start=acked[0]), timeout=5)
                acked[0] += 10
            except grpc.RpcError:
                pass  # a draining node refuses: not acknowledged, not counted

    wait(lambda: len(controller.running()) == 2, "the two first pods")
    log = (tmp_path / "operator.log").open("wb")
    operator = subprocess.Popen([sys.executable, "-m", "node.cli", "operator", "--kubeconfig", str(kubeconfig),
                                 "--namespace", NS, "--interval", "0.5"], stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
    try:
        # high CPU (90%): 2 -> 3 replicas (+ceil(2 x 25%) = 1)
        wait(lambda: len(controller.running()) == 3, "a scale-up to 3", during=send)
        status = api.get("ingestors", NS, "ingestor")["status"]["autoscaler"]  # type: ignore[index]
        assert status["lastObservedCpuPercentHundredths"] == 9000 and "lastScaleTime" in status, status
        [up] = [e for e in api.list("events", NS) if e.get("reason") == "ScaledUp"]
        assert "2 -> 3" in up["message"] and up["involvedObject"]["kind"] == "Ingestor"
        for _ in range(5):
            send()
        # low CPU (10%): the highest ordinal is asked to drain, drains, and the set shrinks to 2
        api.put("nodemetrics", {"metadata": {"name": "aks-1"}, "usage": {"cpu": "200m", "memory": "1Gi"}})
        wait(lambda: SHUTDOWN_REQUESTED in ((api.get("pods", NS, "ingestor-2") or {}).get("metadata", {})
                                            .get("annotations") or {}), "the shutdown request", during=send)
        wait(lambda: len(controller.running()) == 2 and len(controller.stopped) == 1, "the scale-down to 2",
             during=send)
        assert controller.error is None, controller.error
        [gone] = controller.stopped
        assert gone.name == "ingestor-2"
        assert "drained; shutdown-completed set" in gone.log()
        assert SHUTDOWN_COMPLETED in gone.log()
        reasons = [e.get("reason") for e in api.list("events", NS)]
        assert "ScaleDownStarted" in reasons and "ScaledDown" in reasons, reasons
        assert api.get("statefulsets", NS, "ingestor")["spec"]["replicas"] == 2  # type: ignore[index]
    finally:
        operator.terminate()
        operator.wait(30)
        log.close()
    # every acknowledged row is in a local store: the drained node's included
    for node in controller.running():
        node.stop()
    total = 0
    for node in [*controller.running(), *controller.stopped]:
        total += sum(int(str(r["n"])) for r in query(node.storage_dir, PARTS_SQL.format(db="Metrics")))
    assert acked[0] > 0 and total == acked[0], (total, acked[0], (tmp_path / "operator.log").read_text()[-3000:])


@pytest.mark.skipif(KUBECTL_MISSING, reason=KUBECTL_REASON)
def test_adxmons_ingestor_applied_with_kubectl_runs_the_statefulset(
        bare: tuple[FakeKubeApi, Controller, Path], tmp_path: Path) -> None:
    """adx-mon's sample Ingestor (prod-ingestor: replicas 3, endpoint, adxClusterSelector), with an
    image of this project and a criteriaExpression, applied with kubectl: the operator, started
    with adx-mon's --cluster-labels, runs the StatefulSet `ingestor` (adx-mon's name for it) at 3
    replicas with that image, says in adx-mon's conditions what it did and what it kept; once the
    expression is false, it leaves the set alone, whatever the spec says."""
    api, controller, kubeconfig = bare
    wait(lambda: len(controller.running()) == 2, "the two first pods")
    doc = copy.deepcopy(SAMPLES[0])
    doc["spec"]["image"] = "registry.example.com/telemetry-ingestor:0.2.0"
    doc["spec"]["criteriaExpression"] = "environment == 'prod' && region == 'eastus'"
    applied = tmp_path / "ingestor.yaml"

    def apply(spec_changes: dict[str, object]) -> None:
        doc["spec"].update(spec_changes)
        applied.write_text(yaml.safe_dump(doc))
        r = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"),
                            "apply", "--validate=false", "-n", NS, "-f", str(applied)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "ingestor.adx-mon.azure.com/prod-ingestor" in r.stdout, r.stderr

    def condition(type_: str) -> dict[str, object]:
        found = [c for c in ((api.get("ingestors", NS, "prod-ingestor") or {}).get("status") or {})
                 .get("conditions", []) if c["type"] == type_]
        return found[0] if found else {}

    log = (tmp_path / "operator.log").open("wb")
    operator = subprocess.Popen([sys.executable, "-m", "node.cli", "operator", "--kubeconfig", str(kubeconfig),
                                 "--namespace", NS, "--interval", "0.5",
                                 "--cluster-labels", "environment=prod,region=eastus"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        apply({})
        wait(lambda: len(controller.running()) == 3, "the third pod, for spec.replicas 3")
        [container] = api.get("statefulsets", NS, "ingestor")["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
        assert container["image"] == doc["spec"]["image"] and container["args"] == ["serve", "--drain-on-annotation"]
        wait(lambda: condition("ingestor.adx-mon.azure.com").get("reason") == "Ready", "the Ready condition")
        assert condition("ingestor.adx-mon.azure.com")["message"] == "all 3 replicas of StatefulSet ingestor are ready"
        fields = str(condition("SpecFieldsApplied").get("message"))
        assert "adxClusterSelector: kept, not used" in fields and "endpoint: kept, not used" in fields
        stored = api.get("ingestors", NS, "prod-ingestor")
        assert stored is not None and stored["spec"]["endpoint"] == SAMPLES[0]["spec"]["endpoint"]
        # criteriaExpression false for this cluster: not this operator's; replicas 2 is not acted on
        apply({"criteriaExpression": "environment == 'test'", "replicas": 2})
        wait(lambda: condition("ingestor.adx-mon.azure.com").get("reason") == "CriteriaExpressionFalse",
             "the CriteriaExpressionFalse condition")
        time.sleep(2.0)  # four reconciles
        assert api.get("statefulsets", NS, "ingestor")["spec"]["replicas"] == 3  # type: ignore[index]
        assert len(controller.running()) == 3
        # true again: handled, replicas 2
        apply({"criteriaExpression": "region in ['eastus', 'westus']"})
        wait(lambda: len(controller.running()) == 2, "the scale to spec.replicas 2")
        assert controller.error is None, controller.error
    finally:
        operator.terminate()
        operator.wait(30)
        log.close()
    text = (tmp_path / "operator.log").read_text()
    assert "cluster labels: environment=prod, region=eastus" in text and "Traceback" not in text, text[-3000:]
