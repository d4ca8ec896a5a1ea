"""adx-mon's collectors and manifests meet this project's node:

- deploy/ as rendered (the base and every overlay): the Service `ingestor` of namespace `adx-mon`
  (https://ingestor.adx-mon.svc.cluster.local, adx-mon's collectors' endpoint) leads on 443 to the
  container port the node serves its transfer front door on, and stays inside the cluster;
- deploy/components/door-policy: a NetworkPolicy that keeps the front door (no authentication) to
  the cluster's pods and leaves the node's other ports as they were;
- docs/migrating-from-adx-mon.md: its commands, run on adx-mon's own StatefulSet
  (`data/adxmon/ingestor-manifest.yaml`, copied from adx-mon's build/k8s/ingestor.yaml), give a pod
  this node can start in, and its flag table is adx-mon's flags and names only flags `serve` takes.

Each property is a function that lists what is wrong, run on the real thing (nothing wrong) and on
a copy changed to break it (caught)."""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cluster.addr import parse_hostport
from node import config as node_config
from tests.deploy.render import (
    DEPLOY,
    KUBECTL_MISSING,
    KUBECTL_REASON,
    OVERLAYS,
    ROOT,
    node_container,
    node_invocation,
    one,
    render,
)

pytestmark = pytest.mark.skipif(KUBECTL_MISSING, reason=KUBECTL_REASON)

Objs = list[dict[str, Any]]
K8S_VERSION = "1.30"
COMPONENT = DEPLOY / "components" / "door-policy"
DOC = ROOT / "docs" / "migrating-from-adx-mon.md"
DATA = Path(__file__).parent / "data" / "adxmon"
ADXMON_MAIN = Path("/work/.mirror/Azure+adx-mon/repo")
"""adx-mon's bare repository, where the machine has it (the flag list is checked against it then)."""
ADX_URL = "https://adxmon.eastus.kusto.windows.net"
"""What adx-mon's setup script (build/k8s/setup.sh, envsubst) puts for $ADX_URL."""
IMAGE = "myregistry.azurecr.io/telemetry-ingestor:0.1.0"


def port_of(addr: str) -> int:
    return parse_hostport(addr, default_host="0.0.0.0", allow_port_zero=True)[1]


def resolve(port: int | str, container: dict[str, Any]) -> int | None:
    """A Service's targetPort or a NetworkPolicy's port, a number or the name of a container port."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    return named.get(port)


# -- deploy/: the Service adx-mon's collectors send to ------------------------------------------------

def door_problems(objs: Objs) -> list[str]:
    """The node serves the front door; its container port `transfer` is that port; the Service
    `ingestor` of namespace `adx-mon` selects the pods and maps 443 to it; it is a ClusterIP."""
    args, env = node_invocation(objs)
    config = node_config.parse(args, env=env)
    if not config.transfer_addr:
        return ["the node runs without the transfer front door (--transfer-addr=)"]
    port = port_of(config.transfer_addr)
    container = node_container(objs)
    out = []
    if resolve("transfer", container) != port:
        out.append(f"container port 'transfer' is {resolve('transfer', container)}, the node serves the front door "
                   f"on {port}")
    services = [o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "ingestor"
                and o["metadata"].get("namespace") == "adx-mon"]
    if not services:
        return [*out, "no Service ingestor in namespace adx-mon: adx-mon's collectors send to "
                      "https://ingestor.adx-mon.svc.cluster.local"]
    spec = services[0]["spec"]
    labels = one(objs, "StatefulSet", "ingestor")["spec"]["template"]["metadata"]["labels"]
    if not spec["selector"].items() <= labels.items():
        out.append(f"Service ingestor selects {spec['selector']}, not the node's pods")
    if spec.get("type", "ClusterIP") != "ClusterIP":
        out.append(f"Service ingestor is a {spec['type']}: the front door has no authentication, keep it in "
                   "the cluster")
    https = [p for p in spec["ports"] if p["port"] == 443]
    if not https:
        out.append("Service ingestor has no port 443 (https:// with no port: adx-mon's collectors' endpoint)")
    elif resolve(https[0].get("targetPort", 443), container) != port:
        out.append(f"Service ingestor's 443 goes to {https[0].get('targetPort', 443)}, not the front door's {port}")
    return out


@pytest.mark.parametrize("name", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_adxmons_collectors_reach_the_front_door_through_the_service(name: str) -> None:
    objs = render(name)
    assert door_problems(objs) == []
    args, _ = node_invocation(objs)
    assert "--transfer-addr=0.0.0.0:9090" in args  # given: a port taken is a failed start, not a missing door


def _drop_port(objs: Objs, port: int) -> None:
    svc = one(objs, "Service", "ingestor")
    svc["spec"]["ports"] = [p for p in svc["spec"]["ports"] if p["port"] != port]


def _target(objs: Objs, target: str) -> None:
    [p] = [p for p in one(objs, "Service", "ingestor")["spec"]["ports"] if p["port"] == 443]
    p["targetPort"] = target


@pytest.mark.parametrize(("change", "where"), [
    (lambda o: node_container(o)["args"].append("--transfer-addr="), "without the transfer front door"),
    (lambda o: node_container(o)["args"].append("--transfer-addr=0.0.0.0:9443"), "container port 'transfer' is 9090"),
    (lambda o: _drop_port(o, 443), "no port 443"),
    (lambda o: _target(o, "grpc"), "443 goes to grpc"),
    (lambda o: one(o, "Service", "ingestor")["spec"].update(type="LoadBalancer"), "no authentication"),
    (lambda o: one(o, "Service", "ingestor")["metadata"].update(namespace="monitoring"), "no Service ingestor"),
    (lambda o: one(o, "Service", "ingestor")["spec"].update(selector={"app": "ingestor"}), "not the node's pods"),
])
def test_a_front_door_the_collectors_cannot_reach_is_caught(change: Any, where: str) -> None:
    objs = render("overlays/adx")
    change(objs)
    problems = door_problems(objs)
    assert problems and where in problems[0], problems
    # a door moved to 9443 in the arguments: the container port and the Service's 443 both miss it
    assert len(problems) == (2 if "9443" in str(node_container(objs)["args"]) else 1), problems


# -- deploy/components/door-policy ----------------------------------------------------------------------

def with_component(overlay: str, tmp_path: Path) -> Objs:
    """`kubectl kustomize` of an overlay of `overlay` that adds the component, as its comment says."""
    mine = tmp_path / f"mine-{overlay}"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(DEPLOY / "overlays" / overlay, mine)],  # Kustomize takes no absolute path
        "components": [os.path.relpath(COMPONENT, mine)]}))
    return render(str(mine))


def allowed(policy: dict[str, Any], port: int, container: dict[str, Any]) -> list[Any] | None:
    """Who the policy lets reach `port`: None for anyone, else the `from` peers of the rules that
    name it ([] when none does)."""
    peers: list[Any] = []
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and port not in {resolve(p.get("port"), container) for p in ports}:
            continue
        if not rule.get("from"):
            return None
        peers += rule["from"]
    return peers


def policy_problems(objs: Objs) -> list[str]:
    """One NetworkPolicy selects the node's pods for ingress; the front door's port is open to
    every pod of the cluster and to nothing else; every other port of the node to anyone (peers,
    senders and the kubelet's probes reach them as without it)."""
    sts = one(objs, "StatefulSet", "ingestor")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"
                and o["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
                and o["metadata"].get("namespace") == sts["metadata"]["namespace"]]
    if len(policies) != 1:
        return [f"{len(policies)} NetworkPolicies select the node's pods"]
    [policy] = policies
    if "Ingress" not in policy["spec"].get("policyTypes", []):
        return ["the NetworkPolicy does not govern ingress"]
    args, env = node_invocation(objs)
    door = port_of(node_config.parse(args, env=env).transfer_addr)
    container = node_container(objs)
    out = []
    for p in container["ports"]:
        who = allowed(policy, p["containerPort"], container)
        if p["containerPort"] == door:
            if who is None:
                out.append(f"{door} (the front door, no authentication) is open to anyone")
            elif {"namespaceSelector": {}} not in who:
                out.append(f"{door} (the front door) is not open to every pod of the cluster: {who}")
            elif any("ipBlock" in peer for peer in who):
                out.append(f"{door} (the front door) is open to an ipBlock: {who}")
        elif who is not None:
            out.append(f"{p['containerPort']} ({p['name']}) is no longer open to anyone: {who or 'closed'}")
    return out


def test_the_components_comment_is_how_an_overlay_adds_it() -> None:
    kustomization = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Component"
    assert "- ../../components/door-policy" in (COMPONENT / "kustomization.yaml").read_text()
    for overlay in OVERLAYS:  # that path, from an overlay's directory, is the component
        assert (DEPLOY / "overlays" / overlay / "../../components/door-policy").resolve() == COMPONENT.resolve()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_door_policy_keeps_the_front_door_to_the_clusters_pods(overlay: str, tmp_path: Path) -> None:
    objs = with_component(overlay, tmp_path)
    assert policy_problems(objs) == []
    policy = one(objs, "NetworkPolicy")
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    # the component adds the policy and changes nothing else
    assert [o for o in objs if o["kind"] != "NetworkPolicy"] == render(f"overlays/{overlay}")
    assert policy_problems(render(f"overlays/{overlay}")) == ["0 NetworkPolicies select the node's pods"]


def _rules(objs: Objs) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one(objs, "NetworkPolicy")["spec"]["ingress"]
    return rules


@pytest.mark.parametrize(("change", "expected"), [
    (lambda o: _rules(o).pop(0), 2),  # 4317 and 4318 closed: peers, senders and probes cut off
    (lambda o: _rules(o)[1].pop("from"), 1),  # 9090 open to anyone
    (lambda o: _rules(o).pop(1), 1),  # 9090 closed to the collectors
    (lambda o: _rules(o)[1]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}), 1),
    (lambda o: _rules(o)[1].update({"from": [{"podSelector": {}}]}), 1),  # this namespace's pods only
    (lambda o: one(o, "NetworkPolicy")["spec"].update(podSelector={"matchLabels": {"app": "ingestor"}}), 1),
])
def test_a_policy_that_cuts_the_node_off_or_opens_the_door_is_caught(change: Any, expected: int,
                                                                      tmp_path: Path) -> None:
    objs = copy.deepcopy(with_component("local", tmp_path))
    change(objs)
    assert len(policy_problems(objs)) == expected, policy_problems(objs)


# -- docs/migrating-from-adx-mon.md on adx-mon's own StatefulSet -------------------------------------------

def adxmon_manifest() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DATA / "ingestor-manifest.yaml").read_text()) if d]
    return one(docs, "Service", "ingestor"), one(docs, "StatefulSet", "ingestor")


def image_user(dockerfile: str) -> int:
    users = re.findall(r"^USER (\d+)$", dockerfile, re.M)
    return int(users[-1]) if users else 0


def swap_problems(sts: dict[str, Any], svc: dict[str, Any], image: str, dockerfile: str) -> list[str]:
    """What keeps this node from running, and serving adx-mon's collectors, in the pod of adx-mon's
    StatefulSet `sts` with this project's image (built from `dockerfile`)."""
    pod = sts["spec"]["template"]["spec"]
    container = one([{**c, "kind": "Container", "metadata": {"name": c["name"]}} for c in pod["containers"]],
                    "Container", "ingestor")
    if container["image"] != image:
        return [f"the container runs {container['image']}, not this node's image"]
    out = []
    command = container.get("command") or ["ingestor"]  # the image's ENTRYPOINT
    if command[0] == "/ingestor":
        if not re.search(r"^RUN ln -s .* /ingestor$", dockerfile, re.M):
            out.append("command /ingestor: the image has no /ingestor")
    elif command[0] != "ingestor":
        out.append(f"command {command}: not the node")
    args = [a.replace("$ADX_URL", ADX_URL) for a in [*command[1:], *container.get("args", [])]]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    try:
        config = node_config.parse(args, env=env)
    except SystemExit:
        return [*out, f"ingestor serve refuses {args}"]
    if config.storage_backend != "adx":
        out.append(f"the node would run --storage-backend {config.storage_backend}, not adx-mon's ADX")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    storage = mounts.get(str(config.storage_dir))
    security = container.get("securityContext") or {}
    uid = security.get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser", image_user(dockerfile)))
    if storage is None:
        out.append(f"--storage-dir {config.storage_dir} is not a volume: adx-mon's segments are not there")
    elif "hostPath" in volumes[storage] and uid != 0:
        out.append(f"the node runs as user {uid}: adx-mon's files on the hostPath volume "
                   f"{volumes[storage]['hostPath']['path']} are root's, and --storage-dir is not writable")
    tmpdir = env.get("TMPDIR", "/tmp")
    if security.get("readOnlyRootFilesystem") and tmpdir not in mounts:
        out.append(f"a read-only root file system and nothing mounted at {tmpdir}: no temporary directory for "
                   "the front door's certificate (the node does not start) or ADX batches")
    door = port_of(config.transfer_addr) if config.transfer_addr else None
    probe = (container.get("readinessProbe") or {}).get("httpGet")
    if probe and (resolve(probe["port"], container) != door or probe.get("scheme") != "HTTPS"):
        out.append(f"the readiness probe {probe} does not reach the front door (HTTPS on {door})")
    [https] = [p for p in svc["spec"]["ports"] if p["port"] == 443]
    if resolve(https.get("targetPort", 443), container) != door:
        out.append(f"the Service's 443 goes to {https.get('targetPort')}, not the front door's {door}")
    return out


def documented_commands() -> tuple[str, list[str]]:
    """The patch file of step 1 and the commands of steps 1 and 2 that change the StatefulSet."""
    text = DOC.read_text()
    [patch] = re.findall(r"```yaml\n(# swap\.yaml: kubectl .*?)```", text, re.S)
    commands = [line.strip() for line in re.findall(r"```sh\n(.*?)```", text, re.S)[:2] for line in line.splitlines()
                if line.startswith("kubectl -n adx-mon ") and " statefulset" in line and "rollout" not in line]
    return patch, commands


def run_locally(command: str, sts_file: Path, patch_file: Path) -> dict[str, Any]:
    """A documented command, run with `--local` on a file instead of the cluster's StatefulSet."""
    words = shlex.split(command.replace('"$IMAGE"', IMAGE))
    assert words[:3] == ["kubectl", "-n", "adx-mon"], command
    if words[3:5] == ["patch", "statefulset"] and words[5] == "ingestor":
        rest = ["patch", "--local", "-f", str(sts_file), *words[6:]]
    elif words[3:6] == ["set", "image", "statefulset/ingestor"]:
        rest = ["set", "image", "--local", "-f", str(sts_file), *words[6:]]
    else:
        raise AssertionError(f"a command the test does not know: {command}")
    rest = [str(patch_file) if w == "swap.yaml" else w for w in rest]
    r = subprocess.run(["kubectl", *rest, "-o", "yaml"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{command}: {r.stderr}"
    result: dict[str, Any] = yaml.safe_load(r.stdout)
    return result


def swapped(commands: list[str], tmp_path: Path) -> dict[str, Any]:
    patch, _ = documented_commands()
    (tmp_path / "swap.yaml").write_text(patch)
    _, sts = adxmon_manifest()
    for command in commands:
        (tmp_path / "sts.yaml").write_text(yaml.safe_dump(sts))
        sts = run_locally(command, tmp_path / "sts.yaml", tmp_path / "swap.yaml")
    return sts


def test_the_documented_swap_of_adxmons_statefulset_runs_this_node(tmp_path: Path) -> None:
    _, commands = documented_commands()
    assert [c.split()[3] for c in commands] == ["patch", "set", "patch"]  # step 1; step 2: the image, the annotation
    sts = swapped(commands, tmp_path)
    svc, original = adxmon_manifest()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert swap_problems(sts, svc, IMAGE, dockerfile) == []
    [container] = sts["spec"]["template"]["spec"]["containers"]
    [before] = original["spec"]["template"]["spec"]["containers"]
    # adx-mon's command line, its hardening and its volume, as they were
    assert container["command"] == before["command"] == ["/ingestor"] and container["args"] == before["args"]
    assert container["securityContext"] == {**before["securityContext"], "runAsUser": 0}
    assert container["securityContext"]["readOnlyRootFilesystem"] and container["securityContext"]["capabilities"]
    assert [m for m in container["volumeMounts"] if m["mountPath"] != "/tmp"] == before["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]
    # the collectors' scrape of the node's own metrics: its HTTP port
    config = node_config.parse([a.replace("$ADX_URL", ADX_URL) for a in container["args"]], env={})
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["adx-mon/port"]) == port_of(config.http_addr) and annotations["adx-mon/path"] == "/metrics"
    assert str(config.storage_dir) == "/mnt/data" and config.transfer_addr == "0.0.0.0:9090"


def test_without_step_1_the_pod_could_not_start(tmp_path: Path) -> None:
    _, commands = documented_commands()
    sts = swapped([c for c in commands if "swap.yaml" not in c], tmp_path)  # the image alone
    svc, _ = adxmon_manifest()
    problems = swap_problems(sts, svc, IMAGE, (DEPLOY / "Dockerfile").read_text())
    assert len(problems) == 2 and "runs as user 10001" in problems[0] and "read-only root" in problems[1], problems


def test_adxmons_image_or_an_image_without_its_path_is_caught(tmp_path: Path) -> None:
    svc, sts = adxmon_manifest()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert swap_problems(sts, svc, IMAGE, dockerfile) == [
        "the container runs ghcr.io/azure/adx-mon/ingestor:latest, not this node's image"]
    _, commands = documented_commands()
    sts = swapped(commands, tmp_path)
    without_link = re.sub(r"^RUN ln -s .*$", "", dockerfile, flags=re.M)
    assert swap_problems(sts, svc, IMAGE, without_link) == ["command /ingestor: the image has no /ingestor"]
    broken = copy.deepcopy(sts)
    broken["spec"]["template"]["spec"]["containers"][0]["args"].append("--transfer-addr=0.0.0.0:9443")
    assert len(swap_problems(broken, svc, IMAGE, dockerfile)) == 2  # the probe and the Service miss it


# -- the doc's flag table ------------------------------------------------------------------------------

ADXMON_FLAGS = [
    # cmd/ingestor/main.go at adx-mon's 905bfa4d, in its order
    "kubeconfig", "namespace", "hostname", "region", "storage-dir", "storage-backend", "metrics-kusto-endpoints",
    "logs-kusto-endpoints", "cluster-labels", "disable-peer-transfer", "uploads", "max-connections",
    "max-segment-size", "max-transfer-size", "max-disk-usage", "max-segment-count", "max-transfer-age",
    "max-segment-age", "drop-prefix", "max-batch-segments", "enable-wal-fsync", "max-transfer-concurrency",
    "partition-size", "slow-request-threshold", "ca-cert", "key", "insecure-skip-verify",
    # removed in March 2025, still in older manifests
    "add-labels", "drop-labels", "drop-metrics", "lift-label",
]
REFUSED = ["kusto-endpoint", "metrics-kusto-endpoint", "labels", "disable-peer-discovery", "use-cli-auth",
           "min-transfer-size"]
"""Flags adx-mon removed earlier, which the doc says `serve` refuses."""
NOT_SERVES = {"--version", "--flag", "--patch-file", "--type"}
"""`--...` words of the doc that are not serve's: the top-level --version, the placeholder of
"--flag=true", kubectl's options."""


def serve_options() -> set[str]:
    parser = argparse.ArgumentParser()
    node_config.add_serve_flags(parser)
    return {o for action in parser._actions for o in action.option_strings}


def test_the_flag_table_is_adxmons_flags_in_its_order() -> None:
    rows = re.findall(r"^\| `--([a-z-]+)`(?: \(removed 2025-03\))? \|", DOC.read_text(), re.M)
    assert rows == ADXMON_FLAGS
    main = subprocess.run(["git", "-C", str(ADXMON_MAIN), "show", "905bfa4d:cmd/ingestor/main.go"],
                          capture_output=True, text=True) if ADXMON_MAIN.exists() else None
    if main is not None and main.returncode == 0:
        assert re.findall(r'cli\.\w+Flag\{Name: "([a-z-]+)"', main.stdout) == ADXMON_FLAGS[:27]


def test_every_flag_the_doc_names_is_one_serve_takes_or_says_it_refuses() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    options = serve_options()
    assert {f"--{f}" for f in ADXMON_FLAGS} <= options
    assert named - options == {f"--{f}" for f in REFUSED} | NOT_SERVES
    for flag in REFUSED:
        assert f"`--{flag}`" in text
        with pytest.raises(SystemExit):
            node_config.parse(["--storage-dir=/data", f"--{flag}=x"], env={})


def test_the_docs_ports_are_the_nodes_defaults() -> None:
    text = DOC.read_text()
    defaults = node_config.parse(["--storage-dir=/data"], env={})
    assert (port_of(defaults.grpc_addr), port_of(defaults.http_addr), port_of(defaults.transfer_addr)) == (
        4317, 4318, 9090)
    assert f"`--transfer-addr` (default `{defaults.transfer_addr}`)" in text
    assert "`--grpc-addr` 4317" in text and "`--http-addr` 4318" in text
