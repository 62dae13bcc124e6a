"""The Milvus custom resource: validated against the Milvus Operator's own CRD (vendored: tests/k8s/crds/), the
rules of its validating webhook (milvus-operator apis/milvus.io/v1beta1/milvus_webhook.go), and standalone vs
cluster mode as each overlay means it."""

from __future__ import annotations

from .crds import validate_custom
from .objects import by_kind

MILVUS_COMPONENTS = {
    "standalone", "proxy", "mixCoord", "rootCoord", "queryCoord", "dataCoord", "indexCoord",
    "queryNode", "dataNode", "indexNode", "streamingNode",
}  # fmt: skip


def webhook_problems(spec: dict) -> list[str]:
    """What the operator's validating webhook refuses (ValidateCreate: validateCommon, validateExternal)."""
    problems = []
    comps, deps = spec.get("components") or {}, spec.get("dependencies") or {}
    if comps.get("rollingMode") not in (None, 0, 2, 3):
        problems.append("Milvus: spec.components.rollingMode should be 2 or 3")
    stream = deps.get("msgStreamType") or ("pulsar" if spec.get("mode") == "cluster" else "woodpecker")
    if comps.get("enableRollingUpdate") and spec.get("mode") != "cluster" and stream in ("rocksmq", "natsmq"):
        problems.append(f"Milvus: enableRollingUpdate is not supported for msgStream {stream}")
    for name, endpoint in (("etcd", "endpoints"), ("storage", "endpoint")):
        dep = deps.get(name) or {}
        if dep.get("external") and not dep.get(endpoint):
            problems.append(f"Milvus: external {name} needs spec.dependencies.{name}.{endpoint}")
    for name in ("kafka", "pulsar"):
        dep = deps.get(name) or {}
        if stream == name and dep.get("external") and not dep.get("brokerList" if name == "kafka" else "endpoint"):
            problems.append(f"Milvus: external {name} needs its address")
    return problems


def milvus_pod_labels(cr: dict) -> dict[str, str]:
    return {"app.kubernetes.io/name": "milvus", "app.kubernetes.io/instance": cr["metadata"]["name"]}


def check_milvus(docs: list[dict], mode: str) -> list[str]:
    crs = by_kind(docs, "Milvus")
    if len(crs) != 1:
        return [f"expected one Milvus resource, found {len(crs)}"]
    cr = crs[0]
    problems = validate_custom(cr) or webhook_problems(cr["spec"])
    if problems:
        return problems
    spec = cr["spec"]
    comps, deps = spec.get("components") or {}, spec.get("dependencies") or {}
    if spec.get("mode") != mode:
        problems.append(f"Milvus: mode {spec.get('mode')}, expected {mode}")
    for name in ("etcd", "storage"):  # everything Milvus needs runs in the cluster, managed by the operator
        if not (deps.get(name) or {}).get("inCluster") or (deps.get(name) or {}).get("external"):
            problems.append(f"Milvus: {name} should run in-cluster (spec.dependencies.{name}.inCluster)")
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
        if ((deps.get("etcd") or {}).get("inCluster") or {}).get("values", {}).get("replicaCount", 1) < 3:
            problems.append("Milvus cluster: etcd needs 3 members for quorum")
    return problems
