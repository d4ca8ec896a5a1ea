"""`kubectl apply` of deploy/ against `tests/kubeapi.py`, a small API server written for the tests
(no real one can run on these machines), with the real kubectl binary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.kubeapi import FakeKubeApi

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FILES = ["crd.yaml", "ingestor.yaml", "operator.yaml", "examples/ingestor.yaml"]

if shutil.which("kubectl") is None and os.environ.get("KUBECTL_REQUIRED"):
    raise RuntimeError("KUBECTL_REQUIRED is set and kubectl is not installed")
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl is not installed (.ci/run installs it)")


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, list[str]]]:
    api = FakeKubeApi().start()
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", "adx-mon")
    try:
        yield api, ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache")]
    finally:
        api.stop()


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_kubectl_applies_every_manifest_and_reapplies_unchanged(kubectl: tuple[FakeKubeApi, list[str]],
                                                               tmp_path: Path) -> None:
    api, cmd = kubectl
    for name in FILES:
        out = run([*cmd, "apply", "--validate=false", "-f", str(DEPLOY / name)])
        assert out.count(" created") == len([d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d])
    again = run([*cmd, "apply", "--validate=false", "-f", str(DEPLOY / "ingestor.yaml")])
    assert "configured" not in again and again.count(" unchanged") == 8
    sts = json.loads(run([*cmd, "get", "statefulset", "ingestor", "-n", "adx-mon", "-o", "json"]))
    assert sts["spec"]["serviceName"] == "ingestor-headless" and sts["spec"]["replicas"] == 3
    # a changed Ingestor is patched, and the operator's parser reads what kubectl stored
    changed = tmp_path / "ingestor.yaml"
    doc = yaml.safe_load((DEPLOY / "examples/ingestor.yaml").read_text())
    doc["spec"]["autoscaler"]["maxReplicas"] = 20
    changed.write_text(yaml.safe_dump(doc))
    assert "configured" in run([*cmd, "apply", "--validate=false", "-f", str(changed)])
    stored = api.get("ingestors", "adx-mon", "ingestor")
    assert stored is not None and stored["spec"]["autoscaler"]["maxReplicas"] == 20
    from cluster.operator.rules import parse_spec

    assert parse_spec(stored).max_replicas == 20
