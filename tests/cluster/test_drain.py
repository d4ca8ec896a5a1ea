"""The scale-down handshake on a real node: the `shutdown-requested` annotation on its pod makes it
stop taking data, upload everything into the local sink and set `shutdown-completed`.

No Kubernetes API server can run on these machines: the pod lives in `tests/kubeapi.py`, a small
API server written for the tests, which the node reaches with the real `kubernetes` client.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc

from cluster.annotations import SHUTDOWN_COMPLETED, SHUTDOWN_REQUESTED, parse_rfc3339, rfc3339
from tests.harness import ROOT, NodeProcess
from tests.kubeapi import FakeKubeApi
from tests.node.test_grpc import gauge_request
from tests.upload.test_e2e import PARTS_SQL, query

NS = "adx-mon"


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi().start()
    try:
        yield api
    finally:
        api.stop()


def pod(name: str, annotations: dict[str, str] | None = None) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": NS, "labels": {"app": "ingestor"},
                         "annotations": annotations or {}},
            "spec": {"nodeName": "aks-1", "containers": [{"name": "ingestor", "image": "ingestor:test"}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1"}}


def readyz(node: NodeProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(node.http_url + "/readyz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("receivers", [1, 2])
def test_shutdown_requested_drains_everything_then_completes(tmp_path: Path, kube: FakeKubeApi,
                                                             receivers: int) -> None:
    """With two receiver processes, the requests come on connections of their own, so that both
    hold active segments (the kernel spreads connections over the shared port): the supervisor's
    leave must have its sibling close them too."""
    kube.put("pods", pod("ingestor-0"))
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", NS)
    node = NodeProcess(tmp_path / "data", "--drain-on-annotation", "--kubeconfig", str(kubeconfig),
                       "--namespace", NS, "--max-segment-age", "1h", "--upload-interval", "0.5s",
                       "--receivers", str(receivers), name="ingestor-0").start()
    try:
        sent = 0
        for k in range(10):
            with grpc.insecure_channel(node.grpc_addr) as ch:
                stub = metrics_service_pb2_grpc.MetricsServiceStub(ch)
                stub.Export(gauge_request(f"drain_{k}", points=20, start=k * 20), timeout=10)
                sent += 20
        assert len(node.rows()) == sent  # in the WAL, active: nothing would be uploaded for an hour
        requested = time.time()
        kube.patch("pods", NS, "ingestor-0", {"metadata": {"annotations": {SHUTDOWN_REQUESTED: rfc3339(requested)}}})
        deadline = time.monotonic() + 60
        while SHUTDOWN_COMPLETED not in (kube.get("pods", NS, "ingestor-0") or {})["metadata"]["annotations"]:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        completed = parse_rfc3339(kube.get("pods", NS, "ingestor-0")["metadata"]["annotations"][SHUTDOWN_COMPLETED])  # type: ignore[index]
        assert completed is not None and completed >= int(requested)
        # it takes no new data, says why, and holds nothing any more
        code, text = readyz(node)
        assert code == 503 and "left the cluster" in text
        with grpc.insecure_channel(node.grpc_addr) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                metrics_service_pb2_grpc.MetricsServiceStub(ch).Export(gauge_request("late", points=1), timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert node.rows() == []
        status = subprocess.run([sys.executable, "-m", "node.cli", "status", "--addr", node.grpc_addr],
                                capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert "left the cluster" in status.stdout
        stored = {str(r["table"]): int(str(r["n"])) for r in query(node.storage_dir, PARTS_SQL.format(db="Metrics"))}
        assert sum(stored.values()) == sent
    finally:
        assert node.stop() == 0


def test_a_pod_already_completed_is_left_alone(tmp_path: Path, kube: FakeKubeApi) -> None:
    kube.put("pods", pod("ingestor-1", {SHUTDOWN_REQUESTED: "2026-11-24T10:00:00Z",
                                        SHUTDOWN_COMPLETED: "2026-11-24T10:01:00Z"}))
    node = NodeProcess(tmp_path / "data", "--drain-on-annotation", "--kubeconfig",
                       str(kube.write_kubeconfig(tmp_path / "kubeconfig", NS)), name="ingestor-1").start()
    try:
        time.sleep(1.5)
        assert readyz(node)[0] == 200
        assert kube.get("pods", NS, "ingestor-1")["metadata"]["annotations"][SHUTDOWN_COMPLETED] == \
            "2026-11-24T10:01:00Z"  # type: ignore[index]
    finally:
        node.stop()
