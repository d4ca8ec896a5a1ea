"""deploy/ as a Kustomize base and its overlays (local, adx, clickhouse), rendered with
`kubectl kustomize` as `kubectl apply -k` renders them: valid against the Kubernetes schemas, and
what a real cluster needs of them. Each property is a function that lists what is wrong; every one
is run on the real renders (nothing wrong) and on a render changed to break it (caught)."""

from __future__ import annotations

import ast
import inspect
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity

from node import config as node_config
from tests.deploy.render import (
    DEPLOY,
    IMAGE,
    KUBECTL_MISSING,
    KUBECTL_REASON,
    OVERLAYS,
    ROOT,
    documented_secrets,
    node_container,
    node_invocation,
    one,
    pod_specs,
    render,
    secret_placeholder,
)

pytestmark = pytest.mark.skipif(KUBECTL_MISSING, reason=KUBECTL_REASON)

K8S_VERSION = "1.30"
Objs = list[dict[str, Any]]


def test_the_overlays_are_the_three_sinks() -> None:
    assert OVERLAYS == ["adx", "clickhouse", "local"]


@pytest.mark.parametrize("name", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(name: str) -> None:
    objs = render(name)
    assert {o["kind"] for o in objs} >= {"Namespace", "CustomResourceDefinition", "StatefulSet", "Deployment"}
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {e}") from e


# -- Secrets: created by the user, never by an apply -----------------------------------------------

SECRETISH = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL", re.I)


def secret_problems(objs: Objs) -> list[str]:
    """No Secret is rendered (an apply would replace the user's with it), and no ConfigMap holds
    what belongs in one."""
    out = [f"Secret {o['metadata']['name']} is in the manifests: kubectl apply would overwrite the user's"
           for o in objs if o["kind"] == "Secret"]
    for cm in (o for o in objs if o["kind"] == "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if SECRETISH.search(key):
                out.append(f"ConfigMap {cm['metadata']['name']}: {key} looks like a secret")
            for url in re.findall(r"[a-z]+://\S+", value):
                if urlsplit(url.rstrip(",")).password is not None:
                    out.append(f"ConfigMap {cm['metadata']['name']}: {key} has a password in a URL")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_rendered(overlay: str) -> None:
    assert secret_problems(render(f"overlays/{overlay}")) == []


def test_a_rendered_secret_or_a_password_in_a_configmap_is_caught() -> None:
    objs = render("overlays/clickhouse")
    placeholder = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ingestor-peer-token",
                                                                       "namespace": "adx-mon"},
                   "stringData": {"token": "replace-me"}}
    assert len(secret_problems([*objs, placeholder])) == 1
    cm = one(objs, "ConfigMap")
    cm["data"]["INGESTOR_METRICS_KUSTO_ENDPOINTS"] = "Metrics=clickhouse://u:hunter2@ch.example.com:9000/M"
    cm["data"]["CLICKHOUSE_PASSWORD"] = "hunter2"
    assert len(secret_problems(objs)) == 2


def secret_refs(objs: Objs) -> set[tuple[str, str]]:
    """(Secret, key) of everything the pods read from a Secret."""
    refs = set()
    for _, pod in pod_specs(objs):
        for c in pod.get("initContainers", []) + pod["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"]))
            assert not any("secretRef" in s for s in c.get("envFrom", [])), "envFrom a Secret: say its keys"
        assert not any("secret" in v for v in pod.get("volumes", [])), "a Secret volume: add it to secret_refs"
    return refs


def undocumented_secrets(objs: Objs, text: str) -> list[str]:
    namespace = one(objs, "Namespace")["metadata"]["name"]
    documented = documented_secrets(text)
    return [f"Secret {name} (key {key}) is read by the pods and no documented command creates it"
            for name, key in sorted(secret_refs(objs)) if (namespace, name, key) not in documented]


@pytest.mark.parametrize("doc", ["docs/kubernetes.md", "deploy/README.md"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_the_pods_read_has_its_create_command_in_the_docs(overlay: str, doc: str) -> None:
    objs = render(f"overlays/{overlay}")
    assert secret_refs(objs)  # the peer token at least
    assert undocumented_secrets(objs, (ROOT / doc).read_text()) == []


def test_an_undocumented_secret_is_caught() -> None:
    objs = render("overlays/clickhouse")
    text = (ROOT / "docs/kubernetes.md").read_text()
    node_container(objs)["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}})
    assert len(undocumented_secrets(objs, text)) == 1
    assert len(undocumented_secrets(render("overlays/clickhouse"), text.replace("ingestor-clickhouse", "x"))) == 1


# -- one namespace, created first ------------------------------------------------------------------

CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet",
              "Ingestor"}


def namespace_problems(objs: Objs) -> list[str]:
    """One Namespace, first (kubectl applies in order), and every namespaced object, and every
    ServiceAccount a binding names, in it."""
    namespaces = [o for o in objs if o["kind"] == "Namespace"]
    if len(namespaces) != 1:
        return [f"{len(namespaces)} Namespace objects"]
    ns = namespaces[0]["metadata"]["name"]
    out = [] if objs[0]["kind"] == "Namespace" else [f"the Namespace comes after {objs[0]['kind']}"]
    for o in objs:
        what = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] not in CLUSTER_SCOPED | NAMESPACED:
            out.append(f"{what}: a kind the test does not know the scope of (add it to CLUSTER_SCOPED or NAMESPACED)")
        elif o["kind"] in NAMESPACED and o["metadata"].get("namespace") != ns:
            out.append(f"{what} is in namespace {o['metadata'].get('namespace')!r}, not {ns!r}")
        elif o["kind"] in CLUSTER_SCOPED and "namespace" in o["metadata"]:
            out.append(f"{what} is cluster-scoped and names a namespace")
        for s in o.get("subjects", []):
            if s["kind"] == "ServiceAccount" and s.get("namespace") != ns:
                out.append(f"{what}: subject {s['name']} in namespace {s.get('namespace')!r}, not {ns!r}")
    return out


@pytest.mark.parametrize("name", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_everything_is_in_the_namespace_the_render_creates_first(name: str) -> None:
    objs = render(name)
    assert namespace_problems(objs) == []
    ns = one(objs, "Namespace")["metadata"]["name"]
    for example in sorted((DEPLOY / "examples").glob("*.yaml")):
        for doc in (d for d in yaml.safe_load_all(example.read_text()) if d):
            assert doc["metadata"]["namespace"] == ns, example


def test_an_object_outside_the_namespace_or_before_it_is_caught() -> None:
    objs = render("overlays/adx")
    one(objs, "ConfigMap")["metadata"].pop("namespace")  # what an overlay without `namespace:` renders
    assert len(namespace_problems(objs)) == 1
    objs = render("overlays/adx")
    one(objs, "ClusterRoleBinding")["subjects"][0]["namespace"] = "other"
    assert len(namespace_problems(objs)) == 1
    objs = render("overlays/adx")
    assert len(namespace_problems(objs[1:] + objs[:1])) == 1
    assert len(namespace_problems([*objs, {"kind": "PodDisruptionBudget", "metadata": {"name": "x"}}])) == 1


# -- references between the objects, and the image ---------------------------------------------------

def reference_problems(objs: Objs, overlay: str) -> list[str]:
    """Every name an object refers to is rendered (the ConfigMap's hashed name included), and every
    container runs the image the overlay's `images:` entry names."""
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    out = []
    for o in objs:
        ref = o.get("roleRef")
        if ref and (ref["kind"], ref["name"]) not in names:
            out.append(f"{o['kind']}/{o['metadata']['name']} binds {ref['kind']} {ref['name']}, which is not rendered")
        for s in o.get("subjects", []):
            if (s["kind"], s["name"]) not in names:
                out.append(f"{o['kind']}/{o['metadata']['name']}: subject {s['kind']} {s['name']} is not rendered")
    kustomization = yaml.safe_load((DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text())
    [entry] = [i for i in kustomization["images"] if i["name"] == IMAGE]
    image = f"{entry['newName']}:{entry['newTag']}"
    for workload, pod in pod_specs(objs):
        what = f"{workload['kind']}/{workload['metadata']['name']}"
        if ("ServiceAccount", pod.get("serviceAccountName")) not in names:
            out.append(f"{what}: ServiceAccount {pod.get('serviceAccountName')} is not rendered")
        for c in pod["containers"]:
            if c["image"] != image:
                out.append(f"{what}: container {c['name']} runs {c['image']}, not the overlay's {image}")
            for source in c.get("envFrom", []):
                if "configMapRef" in source and ("ConfigMap", source["configMapRef"]["name"]) not in names:
                    out.append(f"{what}: ConfigMap {source['configMapRef']['name']} is not rendered")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves_and_every_container_runs_the_overlays_image(overlay: str) -> None:
    assert reference_problems(render(f"overlays/{overlay}"), overlay) == []


def test_a_dangling_reference_or_a_stray_image_is_caught() -> None:
    objs = render("overlays/adx")
    one(objs, "ConfigMap")["metadata"]["name"] = "ingestor-sink"  # the name before the generator's hash
    one(objs, "RoleBinding")["roleRef"]["name"] = "nobody"
    one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] = IMAGE
    assert len(reference_problems(objs, "adx")) == 3


# -- the sink each overlay selects -------------------------------------------------------------------

def sink_problems(objs: Objs, backend: str) -> list[str]:
    """What `ingestor serve` would make of the container's arguments and environment: the backend,
    an endpoint for each of the node's default databases (the receivers refuse the others), each
    endpoint as the sink parses it, and for ClickHouse the password from a Secret, not the DSN."""
    args, env = node_invocation(objs)
    config = node_config.parse(args, env=env)
    if config.storage_backend != backend:
        return [f"the node runs --storage-backend {config.storage_backend}, not {backend}"]
    if backend == "local":
        return [f"endpoints for the local sink: {config.endpoints}"] if config.endpoints else []
    if not config.endpoints:
        return [f"--storage-backend {backend} and no endpoint: the node would not start"]
    out = []
    databases = {e.partition("=")[0] for e in config.endpoints}
    for flag in ("default_metrics_database", "default_logs_database", "default_traces_database"):
        database = getattr(config, flag, None)
        if database and database not in databases:
            out.append(f"{database} (--{flag.replace('_', '-')}) has no endpoint: its rows would be refused")
    if backend == "adx":
        from node.sinks.adx import parse_endpoints

        try:
            parse_endpoints(config.endpoints)
        except ValueError as e:
            out.append(str(e))
    else:
        from node.sinks.clickhouse import parse_dsns

        for text in config.endpoints:
            if urlsplit(text.partition("=")[2]).password is not None:
                out.append(f"{text.partition('=')[0]}: a password in the DSN")
        ref = [v["valueFrom"]["secretKeyRef"] for v in node_container(objs).get("env", [])
               if v["name"] == "CLICKHOUSE_PASSWORD" and "secretKeyRef" in v.get("valueFrom", {})]
        if not ref:
            out.append("CLICKHOUSE_PASSWORD does not come from a Secret")
        try:
            endpoints = parse_dsns(config.endpoints, env)
        except ValueError as e:
            return [*out, str(e)]
        if ref:
            password = secret_placeholder(ref[0]["name"], ref[0]["key"])
            out += [f"{e.database}: the password is not the Secret's" for e in endpoints if e.password != password]
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_runs_its_sink_with_endpoints_from_its_configmap(overlay: str) -> None:
    objs = render(f"overlays/{overlay}")
    assert sink_problems(objs, overlay) == []
    args, _ = node_invocation(objs)
    assert f"--storage-backend={overlay}" in args
    if overlay != "local":  # the endpoints are the ConfigMap's, for the user to edit
        data = one(objs, "ConfigMap")["data"]
        assert {k for k in data if k.endswith("_KUSTO_ENDPOINTS")} >= {"INGESTOR_METRICS_KUSTO_ENDPOINTS"}
        assert not any(a.startswith(("--metrics-kusto", "--logs-kusto", "--traces-kusto")) for a in args)


def test_the_base_alone_runs_the_local_sink() -> None:
    assert sink_problems(render("base"), "local") == []


def test_a_wrong_sink_configuration_is_caught() -> None:
    objs = render("overlays/adx")
    assert sink_problems(objs, "clickhouse") == ["the node runs --storage-backend adx, not clickhouse"]
    node_container(objs).pop("envFrom")
    assert sink_problems(objs, "adx") == ["--storage-backend adx and no endpoint: the node would not start"]
    objs = render("overlays/adx")
    data = one(objs, "ConfigMap")["data"]
    data["INGESTOR_METRICS_KUSTO_ENDPOINTS"] = "Other=https://c.example.kusto.windows.net"
    data["INGESTOR_LOGS_KUSTO_ENDPOINTS"] = "Logs=https://c.example.kusto.windows.net/Logs"
    assert len(sink_problems(objs, "adx")) == 2  # Metrics without an endpoint; a path in a Kusto URL
    objs = render("overlays/clickhouse")
    data = one(objs, "ConfigMap")["data"]
    data["INGESTOR_METRICS_KUSTO_ENDPOINTS"] = "Metrics=clickhouse://u:pw@ch.example.com:9000/Metrics"
    [env] = [v for v in node_container(objs)["env"] if v["name"] == "CLICKHOUSE_PASSWORD"]
    env.pop("valueFrom")
    env["value"] = "in-the-manifest"
    problems = sink_problems(objs, "clickhouse")
    assert "Metrics: a password in the DSN" in problems
    assert "CLICKHOUSE_PASSWORD does not come from a Secret" in problems


# -- receivers, memory and disk agree with the container's resources -------------------------------

def sizing_problems(objs: Objs) -> list[str]:
    """--receivers = the CPU limit; --max-memory given, and at most half the memory limit (the
    node's own default is half the cgroup limit: the other half holds the WAL's buffers, caches,
    the sink's client and the processes); --max-disk-usage plus --min-free-disk fit the volume."""
    args, env = node_invocation(objs)
    config = node_config.parse(args, env=env)
    container = node_container(objs)
    limits = container.get("resources", {}).get("limits", {})
    out = []
    if "cpu" not in limits or "memory" not in limits:
        return [f"the ingestor container's limits name no cpu or no memory: {limits}"]
    cpus = parse_quantity(limits["cpu"])
    given = [a.partition("=")[2] for a in args if a.startswith("--receivers=")] or [env.get("INGESTOR_RECEIVERS", "")]
    if given[-1].strip() == "0":  # the node makes it os.cpu_count(): equal to the limit only by chance
        out.append("--receivers 0 counts the host's CPUs, not the pod's")
    elif config.receivers != cpus:
        out.append(f"--receivers {config.receivers} and a CPU limit of {limits['cpu']}")
    memory = parse_quantity(limits["memory"])
    if not 0 < config.max_memory <= memory / 2:
        out.append(f"--max-memory {config.max_memory} and a memory limit of {limits['memory']} ({memory}): "
                   "give it, at most half the limit")
    [claim] = [c for c in one(objs, "StatefulSet", "ingestor")["spec"]["volumeClaimTemplates"]
               if c["metadata"]["name"] == "data"]
    volume = parse_quantity(claim["spec"]["resources"]["requests"]["storage"])
    if not (config.max_disk_usage > 0 and config.max_disk_usage + config.min_free_disk <= volume):
        out.append(f"--max-disk-usage {config.max_disk_usage} + --min-free-disk {config.min_free_disk} and a volume "
                   f"of {volume}")
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_receivers_memory_and_disk_agree_with_the_resources(overlay: str) -> None:
    objs = render(f"overlays/{overlay}")
    assert sizing_problems(objs) == []
    _, env = node_invocation(objs)
    assert "INGESTOR_RECEIVERS" in env and "INGESTOR_MAX_MEMORY" in env  # said, not left to defaults


@pytest.mark.parametrize(("change", "where"), [
    (lambda c: c["resources"]["limits"].update(cpu="4"), "--receivers 2 and a CPU limit of 4"),
    (lambda c: c["resources"]["limits"].update(cpu="2500m"), "--receivers 2 and a CPU limit of 2500m"),
    (lambda c: c["resources"]["limits"].update(memory="3Gi"), "--max-memory"),
    (lambda c: c["env"].remove({"name": "INGESTOR_MAX_MEMORY", "value": "2GiB"}), "--max-memory 0"),
    (lambda c: c["args"].append("--receivers=0"), "host's CPUs"),
    (lambda c: c["args"].append("--receivers=3"), "--receivers 3 and a CPU limit of 2"),
    (lambda c: c["args"].append("--max-disk-usage=60GiB"), "--max-disk-usage"),
    (lambda c: c["args"].append("--max-disk-usage=0"), "--max-disk-usage 0"),
    (lambda c: c["resources"]["limits"].pop("cpu"), "limits name no cpu"),
])
def test_sizing_that_disagrees_is_caught(change: Any, where: str) -> None:
    objs = render("overlays/local")
    change(node_container(objs))
    problems = sizing_problems(objs)
    assert len(problems) == 1 and where in problems[0], problems


# -- the operator's RBAC is what its code calls ------------------------------------------------------

OPERATOR_CODE = ROOT / "cluster" / "operator"
CLIENTS = {"core": "CoreV1Api", "apps": "AppsV1Api", "custom": "CustomObjectsApi"}
"""The kubernetes clients the operator holds, as `self.<attribute>`."""
TYPED = {
    "list_namespaced_pod": ("", "pods", "list"), "read_namespaced_pod": ("", "pods", "get"),
    "patch_namespaced_pod": ("", "pods", "patch"), "read_node": ("", "nodes", "get"),
    "list_node": ("", "nodes", "list"), "create_namespaced_event": ("", "events", "create"),
    "read_namespaced_stateful_set": ("apps", "statefulsets", "get"),
    "patch_namespaced_stateful_set": ("apps", "statefulsets", "patch"),
    "patch_namespaced_stateful_set_scale": ("apps", "statefulsets/scale", "patch"),
    "read_namespaced_stateful_set_scale": ("apps", "statefulsets/scale", "get"),
}
"""What each method of CoreV1Api / AppsV1Api asks of the API: (group, resource, verb)."""
VERBS = {"list": "list", "get": "get", "patch": "patch", "create": "create", "replace": "update", "delete": "delete"}


def kube_calls(source: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every Kubernetes API call in `source` made through
    `self.core` / `self.apps` / `self.custom`: a method called, or a list method handed to a watch
    (`func, args = self.custom.list_..., (GROUP, ...)`: the verb is then `watch`). Custom-object
    group and plural are read from the arguments (literals or the module's constants). A method
    or an argument it cannot read is a ValueError: teach it rather than let a call go unchecked."""
    tree = ast.parse(source)
    constants: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name) and isinstance(stmt.value, ast.Constant):
                    constants[target.id] = stmt.value.value
                elif isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Tuple):
                    for t, v in zip(target.elts, stmt.value.elts, strict=True):
                        if isinstance(t, ast.Name) and isinstance(v, ast.Constant):
                            constants[t.id] = v.value
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}

    def value(node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        raise ValueError(f"line {node.lineno}: cannot read {ast.unparse(node)}")

    from kubernetes import client

    calls = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
                and node.value.attr in CLIENTS):
            continue
        method, parent = node.attr, parents[node]
        if isinstance(parent, ast.Call) and parent.func is node:
            args, verb = parent.args, VERBS.get(method.split("_")[0])
        elif (isinstance(parent, ast.Tuple) and len(parent.elts) == 2 and parent.elts[0] is node
              and isinstance(parent.elts[1], ast.Tuple) and method.startswith("list_")):
            args, verb = parent.elts[1].elts, "watch"
        else:
            raise ValueError(f"line {node.lineno}: {ast.unparse(node)} used in a way the test cannot read")
        if node.value.attr != "custom":
            if method not in TYPED:
                raise ValueError(f"line {node.lineno}: {method}: add what it asks of the API to TYPED")
            group, resource, typed_verb = TYPED[method]
            calls.add((group, resource, "watch" if verb == "watch" else typed_verb))
            continue
        params = [p for p in inspect.signature(getattr(client.CustomObjectsApi, method)).parameters if p != "self"]
        if verb is None or not {"group", "plural"} <= set(params):
            raise ValueError(f"line {node.lineno}: {method}: not a custom-object call the test can read")
        resource = value(args[params.index("plural")])
        for sub in ("status", "scale"):
            if method.endswith(f"_{sub}"):
                resource += f"/{sub}"
        calls.add((value(args[params.index("group")]), resource, verb))
    return calls


def operator_calls() -> set[tuple[str, str, str]]:
    calls = set()
    for path in sorted(OPERATOR_CODE.glob("*.py")):
        source = path.read_text()
        for m in re.finditer(r"client\.(\w+Api)\(", source):
            assert m[1] in CLIENTS.values(), f"{path}: a client the test does not read: {m[1]}"
        calls |= kube_calls(source)
    return calls


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def rbac_problems(objs: Objs, calls: set[tuple[str, str, str]]) -> list[str]:
    """The operator's ClusterRole allows every call of its code, and nothing else; it is bound to
    the ServiceAccount the operator's Deployment runs as."""
    role = one(objs, "ClusterRole", "ingestor-operator")
    granted = grants(role["rules"])
    out = [f"the operator calls {c} and its ClusterRole does not allow it" for c in sorted(calls - granted)]
    out += [f"the ClusterRole allows {g}, which the operator never calls" for g in sorted(granted - calls)]
    deployment = one(objs, "Deployment", "ingestor-operator")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    bound = [b for b in objs if b["kind"] == "ClusterRoleBinding" and b["roleRef"]["name"] == "ingestor-operator"
             and any(s["kind"] == "ServiceAccount" and s["name"] == account
                     and s.get("namespace") == deployment["metadata"]["namespace"] for s in b["subjects"])]
    if not bound:
        out.append(f"no ClusterRoleBinding gives ingestor-operator to ServiceAccount {account}")
    return out


def test_the_operators_calls_are_read_from_its_code() -> None:
    calls = operator_calls()
    # what cluster/operator/controller.py does, as docs/kubernetes.md says it
    assert {("adx-mon.azure.com", "ingestors", "list"), ("adx-mon.azure.com", "ingestors", "watch"),
            ("adx-mon.azure.com", "ingestors/status", "patch"), ("apps", "statefulsets/scale", "patch"),
            ("metrics.k8s.io", "nodes", "list"), ("", "events", "create")} <= calls


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_operators_rbac_allows_what_its_code_calls_and_no_more(overlay: str) -> None:
    assert rbac_problems(render(f"overlays/{overlay}"), operator_calls()) == []


def test_rbac_that_disagrees_with_the_code_is_caught() -> None:
    objs = render("overlays/local")
    calls = operator_calls()
    assert len(rbac_problems(objs, calls | {("apps", "statefulsets", "delete")})) == 1
    role = one(objs, "ClusterRole", "ingestor-operator")
    role["rules"] = [r for r in role["rules"] if r["apiGroups"] != ["metrics.k8s.io"]]
    assert rbac_problems(objs, calls) == ["the operator calls ('metrics.k8s.io', 'nodes', 'list') and its "
                                          "ClusterRole does not allow it"]
    one(objs, "ClusterRoleBinding")["subjects"][0]["name"] = "default"
    assert len(rbac_problems(objs, calls)) == 2
    code = ("class O:\n    def f(self):\n        self.core.list_namespaced_pod('ns')\n"
            "        func, args = self.custom.list_cluster_custom_object, ('g', 'v', 'things')\n")
    assert kube_calls(code) == {("", "pods", "list"), ("g", "things", "watch")}
    with pytest.raises(ValueError, match="add what it asks"):
        kube_calls("class O:\n    def f(self):\n        self.core.delete_namespaced_pod('p', 'ns')\n")
    with pytest.raises(ValueError, match="cannot read"):
        kube_calls("class O:\n    def f(self, g):\n        self.custom.list_cluster_custom_object(g, 'v', 'p')\n")


# -- the documented walk -------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", ["docs/kubernetes.md", "deploy/README.md"])
def test_the_docs_name_metrics_server_and_the_overlays(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert "metrics-server" in text
    for overlay in OVERLAYS:
        assert f"deploy/overlays/{overlay}" in text, overlay
    assert "kubectl apply -k deploy/overlays/" in text


def test_the_docs_walk_from_docker_build_to_a_running_node() -> None:
    text = (ROOT / "docs/kubernetes.md").read_text()
    for step in ("docker build -f deploy/Dockerfile", "docker push", f"kustomize edit set image {IMAGE}=",
                 "kubectl apply -k deploy/overlays/", "kubectl -n adx-mon get pods", "port-forward", "grpcurl",
                 "ingestor status", "metrics-server"):
        assert step in text, step
    steps = ["\ndocker build", "\ndocker push", "kustomize edit set image",
             "\nkubectl -n adx-mon create secret generic", "\nkubectl apply -k deploy/overlays/",
             "\nkubectl -n adx-mon get pods", "ingestor status"]
    assert [text.index(s) for s in steps] == sorted(text.index(s) for s in steps)  # the commands, in this order


def test_the_example_ingestors_follow_the_crd_the_base_renders() -> None:
    crd = one(render("base"), "CustomResourceDefinition")
    plural, group = crd["spec"]["names"]["plural"], crd["spec"]["group"]
    assert f"{plural}.{group}" == crd["metadata"]["name"]
    for example in sorted((DEPLOY / "examples").glob("*.yaml")):
        for doc in (d for d in yaml.safe_load_all(example.read_text()) if d):
            assert doc["apiVersion"] == f"{group}/v1" and doc["kind"] == crd["spec"]["names"]["kind"]


def test_the_dockerfile_builds_every_package_pyproject_installs() -> None:
    """`pip install .` in the image installs what packages.find finds among what was COPYed: every
    package under the included top-level directories needs its __init__.py, or it is silently
    left out of the image (and the node fails at its first import of it, in the cluster)."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = {p.rstrip("/") for line in re.findall(r"^COPY (.+)$", dockerfile, re.M) for p in line.split()[:-1]}
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        top = pattern.rstrip("*")
        assert top in copied, f"{top} is installed by pyproject and not COPYed"
        for directory in sorted({p.parent for p in (ROOT / top).rglob("*.py")}):
            assert (directory / "__init__.py").exists(), f"{directory.relative_to(ROOT)} would be left out of the image"
    assert re.search(r"^RUN pip install \.", dockerfile, re.M)


def test_the_base_kustomization_lists_every_manifest_of_the_base() -> None:
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in (DEPLOY / "base").glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    assert Path(DEPLOY / "base" / "namespace.yaml").exists() and kustomization["resources"][0] == "namespace.yaml"


def doc_yaml(marker: str) -> dict[str, Any]:
    """The ```yaml block of docs/kubernetes.md with `marker` at its top level."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "docs/kubernetes.md").read_text(),
                                                    re.S)]
    [block] = [b for b in blocks if marker in b]
    return dict(block)


def test_the_documented_kustomization_snippets_render_as_they_say(tmp_path: Path) -> None:
    overlay = tmp_path / "mine"
    overlay.mkdir()
    base = os.path.relpath(DEPLOY / "overlays" / "local", overlay)  # Kustomize takes no absolute path
    kustomization = {"resources": [base], **doc_yaml("patches"), **doc_yaml("replicas")}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    objs = render(str(overlay))
    assert sizing_problems(objs) == []
    args, env = node_invocation(objs)
    assert node_config.parse(args, env=env).receivers == 4
    assert one(objs, "StatefulSet", "ingestor")["spec"]["replicas"] == doc_yaml("replicas")["replicas"][0]["count"]
