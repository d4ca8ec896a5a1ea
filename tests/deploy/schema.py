"""What the API server does with a custom resource, given its CRD's structural schema, as far as the
tests need it (no real API server can run on these machines): defaults, unknown fields (refused
under `fieldValidation=Strict`, pruned otherwise, kept under `x-kubernetes-preserve-unknown-fields`)
and validation (type, enum, pattern, bounds, lengths, required, date-time), each error with the
path of the field, as the API server names them.

Not done: the `x-kubernetes-validations` CEL rules (the tests check them apart, and the operator's
parser enforces the same), ObjectMeta's own validation, int32/int64 ranges.

Used by tests/deploy/ directly and by `tests/kubeapi.py` for the Ingestor resources once the CRD
is applied to it."""

from __future__ import annotations

import copy
import datetime
import re
from typing import Any

import jsonschema

Schema = dict[str, Any]
ROOT_FIELDS = {"apiVersion", "kind", "metadata"}
"""Fields every object has, whatever its schema says."""
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def version_schema(crd: dict[str, Any], version: str = "v1") -> Schema:
    """The openAPIV3Schema of one version of a CustomResourceDefinition."""
    [found] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: Schema = found["schema"]["openAPIV3Schema"]
    return schema


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def defaulted(schema: Schema, obj: Any) -> Any:
    """`obj` with the schema's defaults filled in (in objects that are there, as the API server does)."""
    obj = copy.deepcopy(obj)
    _default(schema, obj)
    return obj


def _default(schema: Schema, obj: Any) -> None:
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                _default(sub, obj[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, value in obj.items():
                if key not in (schema.get("properties") or {}):
                    _default(extra, value)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            _default(schema["items"], item)


def unknown_fields(schema: Schema, obj: Any, path: str = "", root: bool = True) -> list[str]:
    """The paths of the fields the schema does not declare and does not preserve."""
    out: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields") is True
        for key, value in obj.items():
            if root and key in ROOT_FIELDS:  # ObjectMeta and the type: the server's, whatever the schema says
                continue
            if key in props:
                out += unknown_fields(props[key], value, _path(path, key), False)
            elif isinstance(extra, dict):
                out += unknown_fields(extra, value, _path(path, key), False)
            elif not keep and extra is not True:
                out.append(_path(path, key))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            out += unknown_fields(schema["items"], item, _path(path, i), False)
    return out


def pruned(schema: Schema, obj: Any) -> Any:
    """`obj` without the fields `unknown_fields` names."""
    obj = copy.deepcopy(obj)
    for path in sorted(unknown_fields(schema, obj), key=len, reverse=True):
        parent: Any = obj
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
        for part in parts[:-1]:
            parent = parent[int(part[1:-1])] if part.startswith("[") else parent[part]
        parent.pop(parts[-1], None)
    return obj


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.match(value):
        return False
    try:
        datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_FORMATS = jsonschema.FormatChecker()
_FORMATS.checks("date-time")(_date_time)


def errors(schema: Schema, obj: Any) -> list[str]:
    """What the API server refuses in `obj` (already defaulted and pruned), one line per error,
    `path: message` (the CEL rules are not evaluated)."""
    validator = jsonschema.Draft7Validator(schema, format_checker=_FORMATS)
    out = []
    for e in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        path = ""
        for part in e.absolute_path:
            path = _path(path, part)
        out.append(f"{path or '<root>'}: {e.message}")
    return out


def admit(schema: Schema, obj: dict[str, Any], strict: bool = False) -> tuple[dict[str, Any], list[str]]:
    """What the API server stores of `obj`, and its errors (empty: admitted). `strict`: unknown
    fields are errors (kubectl's default `--validate=strict`), else they are pruned."""
    unknown = unknown_fields(schema, obj)
    if strict and unknown:
        return obj, [f'{path}: unknown field "{path}"' for path in unknown]
    stored = defaulted(schema, pruned(schema, obj))
    return stored, errors(schema, stored)
