"""`kubectl apply` of deploy/ against `tests/kubeapi.py`, a small API server written for the tests
(no real one can run on these machines), with the real kubectl binary: the base's files one by
one, and each overlay with `kubectl apply -k` the way docs/kubernetes.md says."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.render import DEPLOY, KUBECTL_MISSING, KUBECTL_REASON, OVERLAYS, ROOT, documented_secrets, render
from tests.kubeapi import FakeKubeApi

FILES = ["base/namespace.yaml", "base/crd.yaml", "base/ingestor.yaml", "base/operator.yaml", "examples/ingestor.yaml"]

pytestmark = pytest.mark.skipif(KUBECTL_MISSING, reason=KUBECTL_REASON)


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
    again = run([*cmd, "apply", "--validate=false", "-f", str(DEPLOY / "base/ingestor.yaml")])
    objects = [d for d in yaml.safe_load_all((DEPLOY / "base/ingestor.yaml").read_text()) if d]
    assert "configured" not in again and again.count(" unchanged") == len(objects) == 6
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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_documented_apply_of_each_overlay_keeps_the_users_secrets(kubectl: tuple[FakeKubeApi, list[str]],
                                                                      overlay: str) -> None:
    api, cmd = kubectl
    objs = render(f"overlays/{overlay}")
    [namespace] = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
    assert "created" in run([*cmd, "apply", "--validate=false", "-f", str(DEPLOY / "base/namespace.yaml")])
    # the Secrets, with the documented commands (their values are the user's). `create secret` posts
    # protobuf, which the tests' API server does not read: the same object goes as JSON.
    secrets = {(name, key) for ns, name, key in documented_secrets((ROOT / "docs/kubernetes.md").read_text())
               if ns == namespace}
    for name in sorted({name for name, _ in secrets}):
        literals = [f"--from-literal={key}=users-{name}-{key}" for n, key in sorted(secrets) if n == name]
        secret = run([*cmd, "-n", namespace, "create", "secret", "generic", name, *literals, "--dry-run=client",
                      "-o", "json"])
        r = subprocess.run([*cmd, "create", "--validate=false", "-f", "-"], input=secret, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "created" in r.stdout, r.stderr
    first = run([*cmd, "apply", "--validate=false", "-k", str(DEPLOY / "overlays" / overlay)])
    assert first.count(" created") == len(objs) - 1 and first.count(" unchanged") == 1  # the Namespace
    again = run([*cmd, "apply", "--validate=false", "-k", str(DEPLOY / "overlays" / overlay)])
    assert again.count(" unchanged") == len(objs) and "created" not in again and "configured" not in again
    for name, key in secrets:
        stored = api.get("secrets", namespace, name)
        assert stored is not None and base64.b64decode(stored["data"][key]).decode() == f"users-{name}-{key}"
    sts = json.loads(run([*cmd, "get", "statefulset", "ingestor", "-n", namespace, "-o", "json"]))
    [container] = sts["spec"]["template"]["spec"]["containers"]
    assert f"--storage-backend={overlay}" in container["args"]
    for source in container.get("envFrom", []):
        assert api.get("configmaps", namespace, source["configMapRef"]["name"]) is not None
