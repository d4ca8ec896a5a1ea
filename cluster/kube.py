"""Reaching the Kubernetes API: in-cluster configuration, or a kubeconfig outside a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def api_client(kubeconfig: Path | None = None) -> Any:
    """A `kubernetes.client.ApiClient` from `kubeconfig`, else from the pod's service account."""
    from kubernetes import client, config

    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    cfg = client.Configuration()
    config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)


def core_api(kubeconfig: Path | None = None) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client(kubeconfig))


def current_namespace(kubeconfig: Path | None = None) -> str:
    """The pod's namespace in a cluster, else the kubeconfig context's, else "default"."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        pass
    if kubeconfig is not None:
        from kubernetes import config

        try:
            _contexts, active = config.list_kube_config_contexts(config_file=str(kubeconfig))
            return str(active.get("context", {}).get("namespace") or "default")
        except Exception:
            return "default"
    return "default"
