"""adx-mon's `Ingestor` resources against our CRD (deploy/base/crd.yaml): the same resource (group,
version, kind, plural, scope), every field of adx-mon's schema in ours with the same type, adx-mon's
own sample resources admitted unchanged (`data/adxmon/samples.yaml`, copied from adx-mon's docs),
broken ones refused, by our schema and by adx-mon's alike; and `kubectl apply` of the samples to
the tests' API server once our CRD is applied to it.

The schema is applied the way the API server applies it (`tests/deploy/schema.py`); adx-mon's
CRD is `data/adxmon/crd-facts.yaml` (its schema without the descriptions)."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.operator.rules import parse_spec
from tests.deploy.render import DEPLOY, KUBECTL_MISSING, KUBECTL_REASON
from tests.deploy.schema import admit, unknown_fields, version_schema
from tests.kubeapi import FakeKubeApi

DATA = Path(__file__).parent / "data" / "adxmon"
SAMPLES = [d for d in yaml.safe_load_all((DATA / "samples.yaml").read_text()) if d]
ADXMON = yaml.safe_load((DATA / "crd-facts.yaml").read_text())
CRD = yaml.safe_load((DEPLOY / "base" / "crd.yaml").read_text())
OURS = version_schema(CRD)
THEIRS: dict[str, Any] = ADXMON["openAPIV3Schema"]


def sample_ids() -> list[str]:
    return [f"{i + 1}-{d['metadata']['name']}" for i, d in enumerate(SAMPLES)]


def test_the_samples_are_adxmons_three() -> None:
    assert [d["metadata"]["name"] for d in SAMPLES] == ["prod-ingestor", "minimal-ingestor", "prod-ingestor"]
    assert {d["kind"] for d in SAMPLES} == {"Ingestor"} and {d["apiVersion"] for d in SAMPLES} == {
        "adx-mon.azure.com/v1"}
    for doc in SAMPLES:  # valid for adx-mon itself: the comparisons below mean something
        assert admit(THEIRS, doc, strict=True)[1] == []


def test_our_crd_is_adxmons_resource() -> None:
    spec = CRD["spec"]
    assert spec["group"] == ADXMON["group"] == "adx-mon.azure.com"
    assert spec["names"] == ADXMON["names"] and spec["scope"] == ADXMON["scope"] == "Namespaced"
    assert CRD["metadata"]["name"] == f"{ADXMON['names']['plural']}.{ADXMON['group']}"
    [version] = spec["versions"]
    assert version["name"] == ADXMON["version"] == "v1" and version["served"] and version["storage"]
    assert version["subresources"] == ADXMON["subresources"] == {"status": {}}


KEYWORDS = ("type", "format", "enum", "pattern", "minLength", "maxLength", "x-kubernetes-list-type",
            "x-kubernetes-map-type")


def differences(theirs: dict[str, Any], ours: dict[str, Any] | None, path: str = "") -> list[str]:
    """Where our schema does not take what adx-mon's takes, or takes it differently, field by field."""
    where = path or "<root>"
    if ours is None:
        return [f"{where}: missing"]
    out = [f"{where}: {k} {theirs.get(k)!r}, ours {ours.get(k)!r}" for k in KEYWORDS if theirs.get(k) != ours.get(k)]
    for k in ("default", "minimum", "maximum"):
        if theirs.get(k) != ours.get(k):
            out.append(f"{where}: {k} {theirs.get(k)!r}, ours {ours.get(k)!r}")
    extra = set(ours.get("required") or ()) - set(theirs.get("required") or ())
    if extra:
        out.append(f"{where}: ours requires {sorted(extra)}")
    if set(theirs.get("required") or ()) - set(ours.get("required") or ()):
        out.append(f"{where}: optional in ours: {sorted(set(theirs['required']) - set(ours.get('required') or ()))}")
    for key, sub in (theirs.get("properties") or {}).items():
        if path == "" and key in ("apiVersion", "kind", "metadata"):
            continue  # every object has them, declared or not
        out += differences(sub, (ours.get("properties") or {}).get(key), f"{path}.{key}" if path else key)
    for key in ("items", "additionalProperties"):
        if isinstance(theirs.get(key), dict):
            out += differences(theirs[key], ours.get(key) if isinstance(ours.get(key), dict) else None,
                               f"{where}.{key}")
    return out


def test_every_field_of_adxmons_schema_is_in_ours_with_its_type() -> None:
    # The differences docs/kubernetes.md gives, and no other: replicas has no default (left out, the
    # StatefulSet or the autoscaler decides) and is at least 1; adxClusterSelector is optional.
    assert differences(THEIRS, OURS) == [
        "spec: optional in ours: ['adxClusterSelector']",
        "spec.replicas: default 1, ours None",
        "spec.replicas: minimum None, ours 1",
    ]
    assert OURS["properties"]["status"]["properties"]["conditions"] == {
        k: v for k, v in THEIRS["properties"]["status"]["properties"]["conditions"].items()
        if k != "description"} | {"description": OURS["properties"]["status"]["properties"]["conditions"]
                                  ["description"]}


def test_a_difference_in_a_field_is_caught() -> None:
    ours = copy.deepcopy(OURS)
    ours["properties"]["spec"]["properties"]["exposeExternally"]["type"] = "string"
    del ours["properties"]["spec"]["properties"]["endpoint"]
    ours["properties"]["status"]["properties"]["conditions"]["items"]["required"].remove("reason")
    ours["properties"]["status"]["properties"]["conditions"]["items"]["properties"]["status"]["enum"] = ["True"]
    found = differences(THEIRS, ours)
    assert "spec.endpoint: missing" in found
    assert "spec.exposeExternally: type 'boolean', ours 'string'" in found
    assert "status.conditions.items: optional in ours: ['reason']" in found
    assert any(f.startswith("status.conditions.items.status: enum") for f in found)


@pytest.mark.parametrize("doc", SAMPLES, ids=sample_ids())
def test_adxmons_samples_are_admitted_unchanged_and_read_by_the_operator(doc: dict[str, Any]) -> None:
    stored, problems = admit(OURS, doc, strict=True)  # kubectl's default: an unknown field is an error
    assert problems == []
    assert unknown_fields(OURS, doc) == []
    for key, value in doc["spec"].items():  # nothing pruned, nothing changed
        assert stored["spec"][key] == value, key
    assert stored["spec"]["exposeExternally"] is False  # adx-mon's default, ours too
    spec = parse_spec(stored)  # the operator's own reading: autoscaling off, replicas as given
    assert not spec.enabled and spec.min_replicas == spec.max_replicas == doc["spec"].get("replicas", 1)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return change


CONDITION = {"type": "ingestor.adx-mon.azure.com", "status": "True", "reason": "WaitForReady",
             "message": "Ingestor manifests installing", "lastTransitionTime": "2026-08-20T14:00:49Z",
             "observedGeneration": 2}

WRONG = [
    ("replicas-a-string", _set("spec.replicas", "three"), "spec.replicas"),
    ("expose-a-string", _set("spec.exposeExternally", "yes"), "spec.exposeExternally"),
    ("selector-label-a-number", _set("spec.adxClusterSelector.matchLabels.app", 1), "spec.adxClusterSelector"),
    ("selector-expression-without-operator", _set("spec.adxClusterSelector.matchExpressions", [{"key": "app"}]),
     "spec.adxClusterSelector.matchExpressions[0]"),
    ("selector-unknown-field", _set("spec.adxClusterSelector.matchLabel", {"app": "x"}),
     "spec.adxClusterSelector.matchLabel"),
    ("criteria-a-list", _set("spec.criteriaExpression", ["region == 'eastus'"]), "spec.criteriaExpression"),
    ("condition-status-maybe", _set("status.conditions", [{**CONDITION, "status": "Maybe"}]),
     "status.conditions[0].status"),
    ("condition-reason-with-spaces", _set("status.conditions", [{**CONDITION, "reason": "Not ready"}]),
     "status.conditions[0].reason"),
    ("condition-without-time", _set("status.conditions", [{k: v for k, v in CONDITION.items()
                                                           if k != "lastTransitionTime"}]), "status.conditions[0]"),
    ("condition-time-not-rfc3339", _set("status.conditions", [{**CONDITION, "lastTransitionTime": "yesterday"}]),
     "status.conditions[0].lastTransitionTime"),
]


@pytest.mark.parametrize(("change", "where"), [w[1:] for w in WRONG], ids=[w[0] for w in WRONG])
def test_a_wrong_adxmon_resource_is_refused_by_ours_as_by_adxmons(change: Callable[[dict[str, Any]], None],
                                                                  where: str) -> None:
    doc = copy.deepcopy(SAMPLES[0])
    change(doc)
    for schema in (OURS, THEIRS):
        _, problems = admit(schema, doc, strict=True)
        assert problems and all(p.startswith(where) for p in problems), problems


def test_where_ours_is_stricter_than_adxmons() -> None:
    doc = copy.deepcopy(SAMPLES[0])
    doc["spec"]["replicas"] = 0  # adx-mon's operator would run 1; ours refuses it
    assert admit(THEIRS, doc)[1] == []
    assert admit(OURS, doc)[1] == ["spec.replicas: 0 is less than the minimum of 1"]
    doc["spec"] = {"autoscaler": {"enabled": True}}  # no replicas, no range: refused by the CEL rule
    rules = [r["rule"] for r in OURS["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("has(self.replicas)" in r and "has(self.autoscaler.maxReplicas)" in r for r in rules)
    with pytest.raises(ValueError, match=r"required when spec\.replicas is not set"):
        parse_spec(doc)  # the operator's own check of the same rule


def test_what_adxmons_operator_writes_is_admitted_by_ours() -> None:
    """An Ingestor as adx-mon's operator leaves it (operator/ingestor.go: applyDefaults, then the
    spec's JSON in appliedProvisionState; its conditions), and a field of a newer adx-mon."""
    doc = copy.deepcopy(SAMPLES[0])
    doc["spec"]["appliedProvisionState"] = json.dumps(doc["spec"])
    doc["spec"]["someFieldOfANewerAdxMon"] = {"x": 1}
    doc["status"] = {"conditions": [CONDITION, {"type": "SecurityReady", "status": "True",
                                                "reason": "SecurityMigrationComplete", "message": "reconciled",
                                                "lastTransitionTime": "2026-08-20T14:00:50Z"}]}
    stored, problems = admit(OURS, doc, strict=True)
    assert problems == []
    assert stored["spec"]["someFieldOfANewerAdxMon"] == {"x": 1}  # spec keeps what it does not declare
    assert stored["status"] == doc["status"]
    assert admit(THEIRS, doc, strict=True)[1] == ['spec.someFieldOfANewerAdxMon: unknown field '
                                                  '"spec.someFieldOfANewerAdxMon"']


# -- kubectl apply of adx-mon's samples --------------------------------------------------------------

@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, list[str]]]:
    api = FakeKubeApi().start()
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", "adx-mon")
    try:
        yield api, ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache")]
    finally:
        api.stop()


@pytest.mark.skipif(KUBECTL_MISSING, reason=KUBECTL_REASON)
def test_kubectl_applies_adxmons_samples_to_our_crd_and_refuses_a_wrong_one(
        kubectl: tuple[FakeKubeApi, list[str]], tmp_path: Path) -> None:
    api, cmd = kubectl

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)

    for path in (DEPLOY / "base/namespace.yaml", DEPLOY / "base/crd.yaml"):
        assert run("apply", "--validate=false", "-f", str(path)).returncode == 0
    r = run("apply", "--validate=false", "-n", "adx-mon", "-f", str(DATA / "samples.yaml"))
    assert r.returncode == 0, r.stderr
    # the first and the third are both prod-ingestor: created, then changed
    assert r.stdout.split("\n")[:3] == ["ingestor.adx-mon.azure.com/prod-ingestor created",
                                        "ingestor.adx-mon.azure.com/minimal-ingestor created",
                                        "ingestor.adx-mon.azure.com/prod-ingestor configured"], r.stdout
    prod = api.get("ingestors", "adx-mon", "prod-ingestor")
    assert prod is not None and prod["spec"]["image"] == SAMPLES[2]["spec"]["image"]
    assert prod["spec"]["adxClusterSelector"] == {"matchLabels": {"env": "production"}}
    assert "endpoint" not in prod["spec"]  # the third sample has none: kubectl apply removed the first's
    minimal = api.get("ingestors", "adx-mon", "minimal-ingestor")
    assert minimal is not None and "replicas" not in minimal["spec"] and minimal["spec"]["exposeExternally"] is False
    wrong = copy.deepcopy(SAMPLES[1])
    wrong["spec"]["replicas"] = "three"
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    r = run("apply", "--validate=false", "-n", "adx-mon", "-f", str(tmp_path / "wrong.yaml"))
    assert r.returncode != 0 and "is invalid" in r.stderr and "spec.replicas" in r.stderr, r.stderr
    after = api.get("ingestors", "adx-mon", "minimal-ingestor")
    assert after is not None and "replicas" not in after["spec"]
