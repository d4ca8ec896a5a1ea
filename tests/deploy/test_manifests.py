"""The manifests of deploy/base/ and deploy/examples/, as files (no kubectl needed): valid against the
Kubernetes schemas (shipped by kubernetes-validate, no network), consistent with each other and with
the node's real flags and ports. The rendered overlays: test_kustomize.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.addr import parse_hostport
from cluster.operator.rules import parse_spec
from node import config as node_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.30"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def every_doc() -> list[tuple[str, dict[str, Any]]]:
    """The objects of the base and the examples (the overlays' files are patches and generator
    inputs, checked once rendered)."""
    paths = [*sorted((DEPLOY / "base").glob("*.yaml")), *sorted((DEPLOY / "examples").glob("*.yaml"))]
    names = [str(p.relative_to(DEPLOY)) for p in paths if p.name != "kustomization.yaml"]
    return [(name, d) for name in names for d in docs(name)]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    [doc] = [d for _, d in every_doc() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return doc


def crd_schema() -> dict[str, Any]:
    [version] = find("CustomResourceDefinition")["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(("path", "doc"), [pytest.param(p, d, id=f"{p}:{d['kind']}/{d['metadata']['name']}")
                                           for p, d in every_doc() if d["kind"] != "Ingestor"])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises with the path of the error


def test_a_broken_manifest_is_caught() -> None:
    sts = find("StatefulSet")
    broken = {**sts, "spec": {**sts["spec"], "replicas": "three", "serviceNme": "x"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("example", sorted(p.name for p in (DEPLOY / "examples").glob("*.yaml")))
def test_example_ingestors_are_valid_against_the_crd_and_the_operator(example: str) -> None:
    for doc in docs(f"examples/{example}"):
        jsonschema.validate(doc, crd_schema())
        spec = parse_spec(doc)  # the operator's own validation (the CEL rules, in Python)
        assert spec.enabled


@pytest.mark.parametrize(("autoscaler", "schema_error"), [
    ({"scaleUpCPUThreshold": 101}, True),
    ({"scaleUpBasePercent": -1}, True),
    ({"scaleInterval": "five minutes"}, True),
    ({"scaleUpCapPerCycle": 0}, True),
    ({"minReplicas": 5, "maxReplicas": 3}, False),  # a CEL rule: the API server's, and parse_spec's
])
def test_invalid_ingestors_are_refused(autoscaler: dict[str, Any], schema_error: bool) -> None:
    doc = {"apiVersion": "adx-mon.azure.com/v1", "kind": "Ingestor", "metadata": {"name": "x"},
           "spec": {"replicas": 3, "autoscaler": {"enabled": True, **autoscaler}}}
    if schema_error:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, crd_schema())
    else:
        jsonschema.validate(doc, crd_schema())
        rules = crd_schema()["properties"]["spec"]["properties"]["autoscaler"]["x-kubernetes-validations"]
        assert any("self.maxReplicas >= self.minReplicas" in r["rule"] for r in rules)
    with pytest.raises(ValueError):
        parse_spec(doc)


def test_crd_defaults_are_the_design_defaults() -> None:
    props = crd_schema()["properties"]["spec"]["properties"]["autoscaler"]["properties"]
    defaults = {k: v.get("default") for k, v in props.items() if "default" in v}
    assert defaults == {"enabled": False, "scaleUpCPUThreshold": 70, "scaleDownCPUThreshold": 40,
                        "scaleInterval": "5m", "cpuWindow": "15m", "scaleUpBasePercent": 25,
                        "scaleUpCapPerCycle": 5, "dryRun": False, "collectMetrics": True}
    status = crd_schema()["properties"]["status"]["properties"]["autoscaler"]["properties"]
    assert set(status) == {"lastAction", "lastActionTime", "lastObservedCpuPercentHundredths", "reason",
                           "lastScaleTime"}
    assert status["lastAction"]["enum"] == ["None", "ScaleUp", "ScaleDown", "Skip"]


def node_args() -> list[str]:
    [container] = find("StatefulSet")["spec"]["template"]["spec"]["containers"]
    args = [re.sub(r"\$\((\w+)\)", lambda m: {"POD_NAME": "ingestor-0", "POD_NAMESPACE": "adx-mon"}[m[1]], a)
            for a in container["args"]]
    assert args[0] == "serve"
    return args[1:]


def test_the_statefulset_runs_the_node_with_flags_it_accepts() -> None:
    config = node_config.parse(node_args(), env={"INGESTOR_PEER_TOKEN": "t"})
    assert config.node_name == "ingestor-0" and config.kubernetes_peers and config.drain_on_annotation
    assert str(config.storage_dir) == "/data" and config.statefulset == "ingestor"
    sts = find("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_grace  # a SIGTERM drain fits
    [container] = pod["containers"]
    assert {e["name"] for e in container["env"]} >= {"POD_NAME", "POD_NAMESPACE", "INGESTOR_PEER_TOKEN"}
    assert [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data"] == ["/data"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def port_of(addr: str) -> int:
    return parse_hostport(addr, default_host="0.0.0.0")[1]


def test_probes_ports_and_services_match_the_node() -> None:
    sts = find("StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = sts["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 4317, "http": 4318, "transfer": 9090}  # the node's defaults
    config = node_config.parse(node_args(), env={"INGESTOR_PEER_TOKEN": "t"})
    assert ports == {"grpc": port_of(config.grpc_addr), "http": port_of(config.http_addr),
                     "transfer": port_of(config.transfer_addr)}  # what the container's arguments serve
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    headless = find("Service", "ingestor-headless")
    assert sts["spec"]["serviceName"] == "ingestor-headless" and headless["spec"]["clusterIP"] == "None"
    client = find("Service", "ingestor")
    assert {p["port"] for p in client["spec"]["ports"]} == {4317, 4318, 443}
    # adx-mon's collectors send to https://ingestor.adx-mon.svc.cluster.local: 443 of this Service
    assert client["metadata"]["namespace"] == "adx-mon" and client["spec"]["type"] == "ClusterIP"
    assert {p["port"]: ports[p["targetPort"]] for p in client["spec"]["ports"]}[443] == port_of(config.transfer_addr)
    for svc in (headless, client):
        assert svc["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    account = find("ServiceAccount", "ingestor")["metadata"]["name"]
    assert sts["spec"]["template"]["spec"]["serviceAccountName"] == account


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_rbac_grants_what_the_node_and_the_operator_use_and_no_more() -> None:
    node = grants(find("Role", "ingestor")["rules"])
    assert node == {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "patch"),
                    ("apps", "statefulsets", "get")}
    operator = grants(find("ClusterRole", "ingestor-operator")["rules"])
    needed = {("adx-mon.azure.com", "ingestors", "list"), ("adx-mon.azure.com", "ingestors/status", "patch"),
              ("apps", "statefulsets", "get"), ("apps", "statefulsets", "patch"),
              ("apps", "statefulsets/scale", "patch"), ("", "pods", "list"),
              ("", "pods", "patch"), ("", "nodes", "get"), ("metrics.k8s.io", "nodes", "list"),
              ("", "events", "create")}
    assert needed <= operator
    assert not any(v in ("delete", "deletecollection", "*") for _, _, v in operator | node)
    [container] = find("Deployment", "ingestor-operator")["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "operator"


def test_the_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base is not None and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base[1])  # pinned
    assert re.search(r"^USER 10001$", text, re.M)  # the manifests' runAsUser: non-root
    assert 'ENTRYPOINT ["ingestor"]' in text and "pip install ." in text
    [container] = find("StatefulSet")["spec"]["template"]["spec"]["containers"]
    [exposed] = re.findall(r"^EXPOSE (.+)$", text, re.M)
    assert sorted(int(p) for p in exposed.split()) == sorted(p["containerPort"] for p in container["ports"])
    # adx-mon's manifests start `command: [/ingestor]`: the console script under that path too, made
    # after `pip install .` (which puts it on PATH) and before USER (a non-root user cannot write /)
    link = re.search(r'^RUN ln -s "\$\(command -v ingestor\)" /ingestor$', text, re.M)
    assert link is not None
    assert text.index("RUN pip install .") < link.start() < text.index("USER 10001")
    for path in re.findall(r"^COPY (\S+)", text, re.M):
        assert (DEPLOY.parent / path).exists(), path
