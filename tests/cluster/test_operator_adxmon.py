"""The operator on adx-mon's `Ingestor` resources, against `tests/kubeapi.py` (a small API server
written for the tests; none can run on these machines) holding our CRD, so that every write of a
resource, the operator's status writes included, is admitted by the CRD's schema as a real server
would admit it. The resources are adx-mon's own samples (tests/deploy/data/adxmon/samples.yaml),
created over HTTP with the real `kubernetes` client."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.kube import api_client
from cluster.operator import controller
from cluster.operator.adxmon import FIELDS, OWNER
from cluster.operator.controller import GROUP, PLURAL, VERSION, Operator
from tests.deploy.test_adxmon import SAMPLES
from tests.kubeapi import FakeKubeApi

NS = "adx-mon"
ROOT = Path(__file__).resolve().parents[2]
OUR_IMAGE = "registry.example.com/telemetry-ingestor:0.2.0"
CONDITION_KEYS = {"type", "status", "observedGeneration", "lastTransitionTime", "reason", "message"}


class World:
    def __init__(self, api: FakeKubeApi, op: Operator, client: Any) -> None:
        self.api, self.op = api, op
        from kubernetes import client as k

        self.custom = k.CustomObjectsApi(client)
        self.now = 1_800_000_000.0
        op.clock = lambda: self.now

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """As `kubectl apply` creates it: over HTTP, admitted by the CRD's schema."""
        out: dict[str, Any] = self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                                          copy.deepcopy(doc))
        return out

    def change(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name, {"spec": spec})

    def reconcile(self) -> None:
        assert self.op.reconcile_all() == len(self.api.list("ingestors", NS))  # none failed
        self.now += 30

    def ingestor(self, name: str) -> dict[str, Any]:
        obj = self.api.get("ingestors", NS, name)
        assert obj is not None
        return obj

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        [found] = [c for c in self.ingestor(name).get("status", {}).get("conditions", []) if c["type"] == type_]
        assert set(found) <= CONDITION_KEYS and set(found) >= CONDITION_KEYS - {"observedGeneration"}, found
        return dict(found)

    def sts(self) -> dict[str, Any]:
        obj = self.api.get("statefulsets", NS, "ingestor")
        assert obj is not None
        return obj

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.api.list("events", NS) if e.get("reason") == reason]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    api = FakeKubeApi().start()
    api.put("customresourcedefinitions", yaml.safe_load((ROOT / "deploy/base/crd.yaml").read_text()))
    api.put("nodes", {"metadata": {"name": "aks-0"}, "status": {"allocatable": {"cpu": "2"}}})
    api.put("nodemetrics", {"metadata": {"name": "aks-0"}, "usage": {"cpu": "1"}})
    container = {"name": "ingestor", "image": "registry.example.com/telemetry-ingestor:0.1.0",
                 "args": ["serve", "--storage-dir=/data"], "ports": [{"name": "grpc", "containerPort": 4317}]}
    api.put("statefulsets", {"metadata": {"name": "ingestor", "namespace": NS},
                             "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ingestor"}},
                                      "serviceName": "ingestor-headless",
                                      "template": {"metadata": {"labels": {"app": "ingestor"}},
                                                   "spec": {"containers": [container]}}},
                             "status": {"replicas": 2, "readyReplicas": 2}})
    for i in range(2):
        api.put("pods", {"metadata": {"name": f"ingestor-{i}", "namespace": NS, "labels": {"app": "ingestor"}},
                         "spec": {"nodeName": "aks-0", "containers": [container]}})
    client = api_client(api.write_kubeconfig(tmp_path / "kubeconfig", NS))
    try:
        yield World(api, Operator(client, namespace=NS, cluster_labels={"region": "eastus", "environment": "prod"}),
                    client)
    finally:
        client.close()
        api.stop()


def test_adxmons_sample_is_reconciled_with_the_meaning_of_its_fields(world: World) -> None:
    sample = SAMPLES[0]  # prod-ingestor: adx-mon's image, 3 replicas, endpoint, exposeExternally false, selector
    world.create(sample)
    world.reconcile()
    # replicas: kept on the StatefulSet `ingestor`, the only one, as adx-mon's operator names it
    assert world.sts()["spec"]["replicas"] == 3
    assert world.ingestor("prod-ingestor")["status"]["autoscaler"]["reason"].startswith(
        "autoscaling disabled: keeping spec.replicas 3")
    # image: adx-mon's own ingestor cannot run these pods: not applied, said
    [container] = world.sts()["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/telemetry-ingestor:0.1.0"
    fields = world.condition("prod-ingestor", FIELDS)
    assert (fields["status"], fields["reason"]) == ("False", "FieldsNotApplied")
    assert "adxClusterSelector: kept, not used" in fields["message"]
    assert "endpoint: kept, not used" in fields["message"]
    assert "ghcr.io/azure/adx-mon/ingestor:v1.0.0 is adx-mon's own ingestor" in fields["message"]
    assert "exposeExternally" not in fields["message"]  # false asks for nothing
    owner = world.condition("prod-ingestor", OWNER)
    assert (owner["status"], owner["reason"]) == ("Unknown", "WaitForReady")
    assert owner["message"] == "2 of 3 replicas of StatefulSet ingestor are ready"
    assert owner["observedGeneration"] == world.ingestor("prod-ingestor")["metadata"]["generation"] == 1
    # every field of the sample is still there: kept, not dropped
    for key, value in sample["spec"].items():
        assert world.ingestor("prod-ingestor")["spec"][key] == value, key
    # the StatefulSet controller catches up: Ready, and the unchanged condition keeps its transition time
    world.api.patch("statefulsets", NS, "ingestor", {"status": {"replicas": 3, "readyReplicas": 3}})
    world.reconcile()
    owner = world.condition("prod-ingestor", OWNER)
    assert (owner["status"], owner["reason"]) == ("True", "Ready")
    assert owner["message"] == "all 3 replicas of StatefulSet ingestor are ready"
    assert world.condition("prod-ingestor", FIELDS) == fields


def test_without_replicas_and_autoscaling_the_statefulset_keeps_its_own(world: World) -> None:
    world.create(SAMPLES[1])  # minimal-ingestor: only adxClusterSelector
    world.reconcile()
    assert world.sts()["spec"]["replicas"] == 2
    status = world.ingestor("minimal-ingestor")["status"]
    assert status["autoscaler"]["reason"] == ("autoscaling disabled and spec.replicas not set: the StatefulSet's 2 "
                                              "replicas are left as they are")
    assert world.condition("minimal-ingestor", OWNER)["reason"] == "Ready"
    assert world.condition("minimal-ingestor", FIELDS)["message"].startswith("adxClusterSelector: kept, not used")


def test_without_replicas_the_autoscaler_decides_within_its_range(world: World) -> None:
    doc = copy.deepcopy(SAMPLES[1])
    doc["spec"]["autoscaler"] = {"enabled": True, "minReplicas": 3, "maxReplicas": 6}
    world.create(doc)
    world.reconcile()
    assert world.sts()["spec"]["replicas"] == 3  # brought up into the range, not to adx-mon's default 1
    assert world.ingestor("minimal-ingestor")["status"]["autoscaler"]["lastAction"] == "ScaleUp"


def test_an_image_of_this_project_is_put_on_the_statefulset_once(world: World) -> None:
    doc = copy.deepcopy(SAMPLES[0])
    doc["spec"]["image"] = OUR_IMAGE
    world.create(doc)
    world.reconcile()
    [container] = world.sts()["spec"]["template"]["spec"]["containers"]
    assert container["image"] == OUR_IMAGE
    assert container["args"] == ["serve", "--storage-dir=/data"] and container["ports"][0]["containerPort"] == 4317
    [event] = world.events("ImageUpdated")
    assert OUR_IMAGE in event["message"] and event["involvedObject"]["name"] == "prod-ingestor"
    assert "image" not in world.condition("prod-ingestor", FIELDS)["message"]
    world.reconcile()
    assert len(world.events("ImageUpdated")) == 1  # in place already: nothing more


def test_expose_externally_and_fields_of_a_newer_adxmon_are_kept_and_reported(world: World) -> None:
    doc = copy.deepcopy(SAMPLES[1])
    doc["spec"]["exposeExternally"] = True
    doc["spec"]["someFieldOfANewerAdxMon"] = {"x": 1}
    world.create(doc)
    world.reconcile()
    message = world.condition("minimal-ingestor", FIELDS)["message"]
    assert "exposeExternally: true is not supported" in message
    assert "someFieldOfANewerAdxMon: not a field of this operator or of adx-mon's Ingestor; kept, not used" in message
    assert world.ingestor("minimal-ingestor")["spec"]["someFieldOfANewerAdxMon"] == {"x": 1}


@pytest.mark.parametrize(("expression", "status", "reason"), [
    ("environment == 'prod' && region == 'eastus'", "Unknown", "WaitForReady"),
    ("region == 'westus'", "False", "CriteriaExpressionFalse"),
    ("zone == 'a'", "False", "CriteriaExpressionError"),
    ("size(region) > 1", "False", "CriteriaExpressionUnsupported"),
])
def test_criteria_expression_decides_whether_the_operator_handles_the_resource(
        world: World, expression: str, status: str, reason: str) -> None:
    doc = copy.deepcopy(SAMPLES[0])
    doc["spec"]["criteriaExpression"] = expression
    world.create(doc)
    world.reconcile()
    owner = world.condition("prod-ingestor", OWNER)
    assert (owner["status"], owner["reason"]) == (status, reason), owner
    handled = reason == "WaitForReady"
    assert world.sts()["spec"]["replicas"] == (3 if handled else 2)
    assert ("autoscaler" in world.ingestor("prod-ingestor")["status"]) is handled
    if not handled:
        assert expression in owner["message"]
        world.change("prod-ingestor", {"criteriaExpression": "region == 'eastus'"})  # corrected: handled
        world.reconcile()
        assert world.condition("prod-ingestor", OWNER)["reason"] == "WaitForReady"
        assert world.sts()["spec"]["replicas"] == 3
        assert world.condition("prod-ingestor", OWNER)["observedGeneration"] == 2


def test_conditions_of_other_writers_are_kept(world: World) -> None:
    world.create(SAMPLES[0])
    security = {"type": "SecurityReady", "status": "True", "reason": "SecurityMigrationComplete",
                "message": "Ingestor security controls are reconciled", "lastTransitionTime": "2026-08-20T14:00:50Z",
                "observedGeneration": 1}
    world.custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "prod-ingestor",
                                                       {"status": {"conditions": [security]}})
    world.reconcile()
    conditions = world.ingestor("prod-ingestor")["status"]["conditions"]
    assert conditions[0] == security and {c["type"] for c in conditions} == {"SecurityReady", OWNER, FIELDS}


def test_the_statefulset_ingestor_is_taken_only_by_the_only_ingestor_of_its_namespace(world: World) -> None:
    world.create(SAMPLES[0])
    world.create(SAMPLES[1])
    world.reconcile()
    assert world.sts()["spec"]["replicas"] == 2  # neither takes it
    for name, other in (("prod-ingestor", "minimal-ingestor"), ("minimal-ingestor", "prod-ingestor")):
        owner = world.condition(name, OWNER)
        assert (owner["status"], owner["reason"]) == ("False", "StatefulSetNotFound")
        assert f"no StatefulSet {name} in namespace {NS}" in owner["message"] and other in owner["message"]
    ours = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Ingestor", "metadata": {"name": "ingestor"},
            "spec": {"replicas": 4}}
    world.create(ours)  # the StatefulSet's own Ingestor: it is its
    world.reconcile()
    assert world.sts()["spec"]["replicas"] == 4
    assert world.condition("ingestor", OWNER)["reason"] == "WaitForReady"


def test_an_invalid_spec_the_schema_lets_through_is_reported(world: World) -> None:
    doc = copy.deepcopy(SAMPLES[1])
    doc["spec"]["autoscaler"] = {"enabled": True}  # no replicas, no range: the CRD's CEL rule, and ours
    world.create(doc)
    world.reconcile()
    owner = world.condition("minimal-ingestor", OWNER)
    assert (owner["status"], owner["reason"]) == ("False", "InvalidSpec")
    assert "required when spec.replicas is not set" in owner["message"]
    assert world.sts()["spec"]["replicas"] == 2


def test_a_condition_is_logged_when_it_changes_not_every_reconcile(world: World,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=controller.__name__)
    doc = copy.deepcopy(SAMPLES[0])
    doc["spec"]["criteriaExpression"] = "region == 'westus'"
    world.create(doc)
    for _ in range(3):
        world.reconcile()
    lines = [r for r in caplog.records if "CriteriaExpressionFalse" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    # nor written again: a resource that is not this operator's is not rewritten every --interval
    version = world.ingestor("prod-ingestor")["metadata"]["resourceVersion"]
    world.reconcile()
    assert world.ingestor("prod-ingestor")["metadata"]["resourceVersion"] == version
    world.change("prod-ingestor", {"criteriaExpression": "zone == 'a'"})
    for _ in range(3):
        world.reconcile()
    lines = [r for r in caplog.records if "CriteriaExpressionError" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
