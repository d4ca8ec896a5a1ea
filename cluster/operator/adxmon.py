"""adx-mon's `Ingestor` fields and status conditions, and what this operator makes of them.

adx-mon (github.com/Azure/adx-mon, `api/v1/ingestor_types.go`) defines the same resource,
`adx-mon.azure.com/v1` `Ingestor`, with the spec fields `image`, `replicas`, `endpoint`,
`exposeExternally`, `adxClusterSelector`, `appliedProvisionState` and `criteriaExpression`, and a
status of standard Kubernetes conditions (metav1.Condition: type, status, observedGeneration,
lastTransitionTime, reason, message), the main one of type `ingestor.adx-mon.azure.com`.
Our CRD (deploy/base/crd.yaml) takes all of them, and keeps any other spec field, so that
adx-mon's resources apply unchanged. Here, pure (no I/O, no clock):

- `set_condition`: a condition set the way adx-mon's operator sets them (apimachinery's
  `meta.SetStatusCondition`: lastTransitionTime moves only when the status does; conditions of
  other types are kept);
- `field_notes`: every spec field this operator keeps but does not act on, and why;
- `image_problem`: an image this operator will not put on the StatefulSet.

What the operator does with each field is in docs/kubernetes.md, "adx-mon's Ingestor resources".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

OWNER = "ingestor.adx-mon.azure.com"
"""adx-mon's `IngestorConditionOwner`: the condition that says how the operator's work on the
resource goes. Reasons of this operator: `Ready` (True), `WaitForReady` (Unknown), and False with
`CriteriaExpressionFalse`, `CriteriaExpressionError` (adx-mon's two), `CriteriaExpressionUnsupported`,
`InvalidSpec`, `StatefulSetNotFound`."""
FIELDS = "SpecFieldsApplied"
"""This operator's condition: True (`AllFieldsApplied`) when it acts on every spec field that is
set; False (`FieldsNotApplied`) with each field it keeps and does not act on, and why, in the message."""

APPLIED = ("replicas", "image", "autoscaler", "criteriaExpression")
"""The spec fields the operator acts on (`exposeExternally: false` asks for nothing, so it is applied too)."""
NOT_APPLIED = {
    "adxClusterSelector": "the sinks are the nodes' flags (the overlay's ConfigMap ingestor-sink), not ADXCluster "
                          "resources",
    "endpoint": "read by adx-mon's Collector operator for its collectors; the nodes' address is the Service ingestor "
                "(OTLP 4317, HTTP 4318)",
    "appliedProvisionState": "adx-mon's operator's record of what it applied; this operator neither reads nor "
                             "writes it",
}
EXPOSE = ("exposeExternally: true is not supported (adx-mon's operator does not implement it either): the Services "
          "stay in the cluster; expose them with a LoadBalancer Service or an Ingress of your own")


def condition(type_: str, status: str, reason: str, message: str, now: str,
              generation: int | None = None) -> dict[str, Any]:
    """A condition in metav1.Condition's shape (`now`: RFC 3339)."""
    out: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message,
                           "lastTransitionTime": now}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def set_condition(conditions: Sequence[Mapping[str, Any]], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`conditions` with `new` in place of the condition of its type (appended when there is none).
    The old lastTransitionTime is kept when the status did not change."""
    out: list[dict[str, Any]] = []
    found = False
    for old in conditions:
        if old.get("type") != new["type"]:
            out.append(dict(old))
            continue
        found = True
        merged = dict(new)
        if old.get("status") == new["status"] and old.get("lastTransitionTime"):
            merged["lastTransitionTime"] = old["lastTransitionTime"]
        out.append(merged)
    if not found:
        out.append(dict(new))
    return out


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)


def field_notes(spec: Mapping[str, Any]) -> list[str]:
    """One line for each spec field that is set and that the operator keeps without acting on it."""
    out = []
    for key in sorted(spec):
        value = spec[key]
        if key in APPLIED or value is None:
            continue
        if key == "exposeExternally":
            if value is True:
                out.append(EXPOSE)
        elif key in NOT_APPLIED:
            if value not in ("", {}, []):
                out.append(f"{key}: kept, not used: {NOT_APPLIED[key]}")
        else:
            out.append(f"{key}: not a field of this operator or of adx-mon's Ingestor; kept, not used")
    return out


_ADXMON_INGESTOR = re.compile(r"(^|/)adx-mon/ingestor$")


def image_repository(image: str) -> str:
    """The repository of an image reference, without its tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def image_problem(image: str) -> str | None:
    """Why `spec.image` is not put on the StatefulSet, or None. adx-mon's own ingestor image (a
    repository ending in `adx-mon/ingestor`, e.g. ghcr.io/azure/adx-mon/ingestor:v1.0.0, as in
    adx-mon's sample resources) is a different program: it does not take this node's arguments
    (`serve ...`), and each pod it reached would fail to start."""
    if not image.strip():
        return "spec.image is empty"
    if _ADXMON_INGESTOR.search(image_repository(image)):
        return (f"spec.image {image} is adx-mon's own ingestor, which cannot run this StatefulSet (its pods run "
                f"this project's `ingestor serve`): not applied; build and push this project's image "
                f"(deploy/Dockerfile) and name it here")
    return None
