"""The Milvus custom resource: the structure the Milvus Operator expects (a JSON schema), and standalone vs cluster
mode."""

from __future__ import annotations

import jsonschema

from .objects import by_kind

MILVUS_COMPONENTS = {
    "standalone", "proxy", "mixCoord", "rootCoord", "queryCoord", "dataCoord", "indexCoord",
    "queryNode", "dataNode", "indexNode", "streamingNode",
}  # fmt: skip


_COMPONENT = {
    "type": "object",
    "properties": {
        "replicas": {"type": "integer", "minimum": 0},
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}},
        },
    },
}


_IN_CLUSTER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "values": {"type": "object"},
        "deletionPolicy": {"enum": ["Retain", "Delete"]},
        "pvcDeletion": {"type": "boolean"},
        "chartVersion": {"type": "string"},
    },
}


_DEPENDENCY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["inCluster"],
    "properties": {"inCluster": _IN_CLUSTER, "external": {"const": False}},
}


MILVUS_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "milvus.io/v1beta1"},
        "kind": {"const": "Milvus"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["mode", "components", "dependencies"],
            "properties": {
                "mode": {"enum": ["standalone", "cluster"]},
                "config": {"type": "object"},
                "components": {
                    "type": "object",
                    "required": ["image"],
                    "propertyNames": {
                        "enum": [
                            *sorted(MILVUS_COMPONENTS),
                            "image",
                            "imagePullPolicy",
                            "enableRollingUpdate",
                            "imageUpdateMode",
                            "paused",
                            "podLabels",
                            "podAnnotations",
                            "env",
                            "nodeSelector",
                            "tolerations",
                            "resources",
                            "volumes",
                            "volumeMounts",
                            "serviceAccountName",
                            "disableMetrics",
                            "runAsNonRoot",
                        ]
                    },
                    "properties": {name: _COMPONENT for name in MILVUS_COMPONENTS} | {"image": {"type": "string"}},
                },
                "dependencies": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["etcd", "storage"],
                    "properties": {
                        "etcd": _DEPENDENCY,
                        "storage": _DEPENDENCY,
                        "msgStreamType": {"enum": ["pulsar", "kafka", "rocksmq", "woodpecker", "natsmq"]},
                        "pulsar": _DEPENDENCY,
                        "kafka": _DEPENDENCY,
                    },
                },
            },
        },
    },
}


def milvus_pod_labels(cr: dict) -> dict[str, str]:
    return {"app.kubernetes.io/name": "milvus", "app.kubernetes.io/instance": cr["metadata"]["name"]}


def check_milvus(docs: list[dict], mode: str) -> list[str]:
    crs = by_kind(docs, "Milvus")
    if len(crs) != 1:
        return [f"expected one Milvus resource, found {len(crs)}"]
    cr = crs[0]
    problems = [
        f"Milvus: {e.json_path}: {e.message}" for e in jsonschema.Draft202012Validator(MILVUS_SCHEMA).iter_errors(cr)
    ]
    if problems:
        return problems
    spec, comps, deps = cr["spec"], cr["spec"]["components"], cr["spec"]["dependencies"]
    if spec["mode"] != mode:
        problems.append(f"Milvus: mode {spec['mode']}, expected {mode}")
    if mode == "standalone":
        if set(comps) & (MILVUS_COMPONENTS - {"standalone"}):
            problems.append("Milvus standalone: cluster components are set")
        if (comps.get("standalone") or {}).get("replicas", 1) != 1:
            problems.append("Milvus standalone runs exactly one replica")
    else:
        if "standalone" in comps:
            problems.append("Milvus cluster: the standalone component is still set")
        for name in ("proxy", "queryNode", "dataNode"):
            if (comps.get(name) or {}).get("replicas", 0) < 2:
                problems.append(f"Milvus cluster: {name} should run >= 2 replicas")
        stream = deps.get("msgStreamType", "pulsar")
        if stream == "rocksmq":
            problems.append("Milvus cluster: rocksmq is standalone-only")
        if stream in ("pulsar", "kafka") and stream not in deps:
            problems.append(f"Milvus cluster: msgStreamType {stream} without an in-cluster {stream}")
        if deps["etcd"]["inCluster"].get("values", {}).get("replicaCount", 1) < 3:
            problems.append("Milvus cluster: etcd needs 3 members for quorum")
    return problems
