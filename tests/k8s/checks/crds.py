"""Custom resources (Milvus, PodMonitor, PrometheusRule) validated against the real CustomResourceDefinitions of
their operators, vendored in tests/k8s/crds/ (versions and sources in its README.md): kubernetes-validate knows
only the built-in kinds.

A CRD's `openAPIV3Schema` is a structural schema; the API server applies it with rules that plain JSON Schema
lacks, so it is translated first:
- unknown fields: the API server prunes them, and `kubectl apply` (server-side field validation `Strict`, the
  default since Kubernetes 1.27) refuses them. Here every object schema with `properties` forbids other keys,
  unless it says `x-kubernetes-preserve-unknown-fields: true` (or gives `additionalProperties`);
- `nullable: true` admits null;
- `format: int32` / `int64` bound integers (JSON Schema ignores these formats);
- `x-kubernetes-int-or-string` comes with its own `anyOf` of integer and string in controller-gen's output.
Rules written as CEL (`x-kubernetes-validations`) would not be checked; the vendored CRDs have none (a test says so).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parents[1] / "crds"
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def to_json_schema(schema: Any) -> Any:
    """A structural schema (or part of one) as JSON Schema with the API server's rules."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: (to_json_schema(v) if k in ("items", "additionalProperties", "not", "anyOf", "oneOf", "allOf") else v)
        for k, v in schema.items()
        if k != "properties"
    }
    if "properties" in schema:
        out["properties"] = {name: to_json_schema(sub) for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    if schema.get("format") in INT_RANGES and schema.get("type") == "integer":
        out["minimum"] = max(schema.get("minimum", INT_RANGES[schema["format"]][0]), INT_RANGES[schema["format"]][0])
        out["maximum"] = min(schema.get("maximum", INT_RANGES[schema["format"]][1]), INT_RANGES[schema["format"]][1])
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    """(apiVersion, kind) -> (JSON Schema of the served version, the CRD file's name)."""
    schemas: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = to_json_schema(version["schema"]["openAPIV3Schema"])
                    schema.setdefault("required", [])
                    schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata"})
                    schemas[(f"{group}/{version['name']}", kind)] = (schema, path.name)
    return schemas


def cel_rules() -> list[str]:
    """Paths of CEL rules in the vendored CRDs (which this validation would not apply)."""
    found = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "x-kubernetes-validations" in node:
                found.append(path)
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    for path in sorted(CRD_DIR.glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()), path.name)
    return found


def is_custom(doc: dict[str, Any]) -> bool:
    return (doc.get("apiVersion"), doc.get("kind")) in crd_schemas()


def validate_custom(doc: dict[str, Any]) -> list[str]:
    """Problems of a custom resource against its CRD (every error, each with its path)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in crd_schemas():
        return [f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: no vendored CRD serves {key[0]} {key[1]}"]
    schema, source = crd_schemas()[key]
    name = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{name}: {e.json_path}: {e.message} (CRD {source})"
        for e in sorted(validator.iter_errors(doc), key=lambda e: e.json_path)
    ]
