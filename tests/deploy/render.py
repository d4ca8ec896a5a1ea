"""deploy/ as Kubernetes would see it: `kubectl kustomize` of the base and the overlays, and what the
ingestor container is started with (its arguments and environment, resolved the way the kubelet
resolves them), for the tests of tests/deploy/."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").exists())
IMAGE = "telemetry-ingestor"
"""The image name the base's manifests use; each overlay's `images:` entry replaces it."""

if shutil.which("kubectl") is None and os.environ.get("KUBECTL_REQUIRED"):
    raise RuntimeError("KUBECTL_REQUIRED is set and kubectl is not installed")
KUBECTL_MISSING = shutil.which("kubectl") is None
KUBECTL_REASON = "kubectl is not installed (.ci/run installs it); it renders the Kustomize overlays"


@functools.cache
def _render(directory: str) -> tuple[dict[str, Any], ...]:
    r = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"kubectl kustomize {directory}: {r.stderr}"
    return tuple(d for d in yaml.safe_load_all(r.stdout) if d)


def render(name: str) -> list[dict[str, Any]]:
    """The objects of `kubectl kustomize deploy/<name>` ("base", "overlays/adx", ...), in its order;
    a copy the caller may change."""
    return copy.deepcopy(list(_render(str(DEPLOY / name))))


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) of every object that runs pods."""
    return [(o, o["spec"]["template"]["spec"]) for o in objs
            if o["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job", "ReplicaSet")]


def node_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ingestor container of the StatefulSet, itself (not a copy)."""
    container: dict[str, Any]
    [container] = [c for c in one(objs, "StatefulSet", "ingestor")["spec"]["template"]["spec"]["containers"]
                   if c["name"] == "ingestor"]
    return container


def secret_placeholder(name: str, key: str) -> str:
    """What the tests put in an environment variable read from a Secret (the user creates them)."""
    return f"from-secret-{name}-{key}"


CREATE_SECRET = re.compile(r"kubectl -n (\S+) create secret generic (\S+)((?: --from-(?:literal|file)=\S+)+)")


def documented_secrets(text: str) -> set[tuple[str, str, str]]:
    """(namespace, Secret, key) of every `kubectl -n NS create secret generic NAME --from-...=KEY=...`."""
    return {(ns, name, m.split("=")[1]) for ns, name, froms in CREATE_SECRET.findall(text)
            for m in froms.split()}


_VAR = re.compile(r"\$\((\w+)\)")


def node_invocation(objs: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """The arguments after `serve` and the environment the ingestor container of pod ingestor-0
    starts with: envFrom ConfigMaps first, then `env` in order (which wins), $(VAR) expanded from
    the variables defined before, as the kubelet does. Values from Secrets are
    `secret_placeholder(name, key)`. A ConfigMap named and not rendered is an AssertionError."""
    sts = one(objs, "StatefulSet", "ingestor")
    container = node_container(objs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = one(objs, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        elif "secretRef" in source:
            raise AssertionError("envFrom a Secret: the tests cannot tell its keys")
    fields = {"metadata.name": f"{sts['metadata']['name']}-0", "metadata.namespace": sts["metadata"]["namespace"]}

    def expand(text: str) -> str:
        return _VAR.sub(lambda m: env.get(m[1], m[0]), text)

    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"])
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_placeholder(ref["name"], ref["key"])
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = one(objs, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            raise AssertionError(f"env {var['name']}: a source the tests do not know: {var['valueFrom']}")
    args = [expand(a) for a in container["args"]]
    assert args[0] == "serve", args
    return args[1:], env
