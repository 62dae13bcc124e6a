"""The server's NetworkPolicy: who may reach its gRPC and metrics ports, and that its egress reaches exactly the
backends and DNS."""

from __future__ import annotations

from urllib.parse import urlsplit

from .milvus import milvus_pod_labels
from .objects import (
    MILVUS_OPERATOR_PORT,
    SERVER_DEPLOYMENT,
    by_kind,
    container_env,
    container_port,
    host_port,
    label_selector_matches,
    pod_port,
    pods,
    resolve_service_port,
    server,
    service_pods,
)


def _peer_allows(rule: dict, labels: dict[str, str] | None, namespace_label: str | None) -> bool:
    """Does an ingress/egress rule's peer list admit pods with `labels` in this namespace (labels given) or in
    the namespace named `namespace_label` (by kubernetes.io/metadata.name)?"""
    peers = rule.get("from", rule.get("to"))
    if peers is None:
        return True
    for peer in peers:
        ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
        if labels is not None and ns_sel is None and pod_sel is not None and label_selector_matches(pod_sel, labels):
            return True
        if namespace_label is not None and ns_sel is not None:
            ns_ok = label_selector_matches(ns_sel, {"kubernetes.io/metadata.name": namespace_label})
            if ns_ok and (pod_sel is None or label_selector_matches(pod_sel, labels or {})):
                return True
    return False


def _rule_ports(rule: dict) -> set[int] | None:
    if not rule.get("ports"):
        return None  # all ports
    return {int(p["port"]) for p in rule["ports"]}


def _allows(rules: list[dict], port: int, labels: dict[str, str] | None, namespace: str | None = None) -> bool:
    for rule in rules:
        ports = _rule_ports(rule)
        if (ports is None or port in ports) and _peer_allows(rule, labels, namespace):
            return True
    return False


def check_network_policy(docs: list[dict]) -> list[str]:
    problems = []
    _, spod, scontainer = server(docs)
    policies = [
        np for np in by_kind(docs, "NetworkPolicy") if label_selector_matches(np["spec"]["podSelector"], spod.labels)
    ]
    if not policies:
        return ["no NetworkPolicy selects the acg2vec server pods"]
    np = policies[0]
    for pod in pods(docs):
        if pod.owner["metadata"]["name"] != SERVER_DEPLOYMENT and label_selector_matches(
            np["spec"]["podSelector"], pod.labels
        ):
            problems.append(f"NetworkPolicy {np['metadata']['name']} also selects {pod.ref}")
    ingress, egress = np["spec"].get("ingress") or [], np["spec"].get("egress") or []
    if set(np["spec"].get("policyTypes") or []) != {"Ingress", "Egress"}:
        problems.append("NetworkPolicy should restrict both Ingress and Egress")
    grpc_port = container_port(scontainer, "grpc")["containerPort"]
    metrics_port = container_port(scontainer, "metrics")["containerPort"]
    indexer = next((p for p in pods(docs) if p.labels.get("app.kubernetes.io/component") == "indexer"), None)
    if indexer and not _allows(ingress, grpc_port, indexer.labels):
        problems.append(f"NetworkPolicy: indexer pods cannot reach gRPC port {grpc_port}")
    if not _allows(ingress, grpc_port, {"any": "pod"}):
        problems.append(f"NetworkPolicy: pods of the namespace cannot reach gRPC port {grpc_port}")
    if not _allows(ingress, metrics_port, None, "monitoring"):
        problems.append(f"NetworkPolicy: the monitoring namespace cannot scrape port {metrics_port}")
    if _allows(ingress, metrics_port, {"any": "pod"}):
        problems.append(f"NetworkPolicy: metrics port {metrics_port} is open to every pod of the namespace")

    env = container_env(docs, scontainer)
    backends: list[tuple[str, dict[str, str], int]] = []
    host, port = host_port(env["ACG2VEC_TFSERVING_TARGET"])
    if hit := resolve_service_port(docs, host, port):
        for pod in service_pods(docs, hit[0]):
            cport = pod_port(pod, hit[1].get("targetPort", port))
            backends.append(("tfserving", pod.labels, cport["containerPort"] if cport else port))
    parts = urlsplit(env["ACG2VEC_REDIS_URL"])
    if hit := resolve_service_port(docs, parts.hostname or "", parts.port or 6379):
        for pod in service_pods(docs, hit[0]):
            cport = pod_port(pod, hit[1].get("targetPort", hit[1]["port"]))
            backends.append(("tendis", pod.labels, cport["containerPort"] if cport else hit[1]["port"]))
    for cr in by_kind(docs, "Milvus"):
        backends.append(("milvus", milvus_pod_labels(cr), MILVUS_OPERATOR_PORT))
    for what, labels, port in backends:
        if not _allows(egress, port, labels):
            problems.append(f"NetworkPolicy: no egress to {what} pods on port {port}")
    if not any(
        _allows([r], 53, None, "kube-system") or _allows([r], 53, {"k8s-app": "kube-dns"}, "kube-system")
        for r in egress
    ):
        problems.append("NetworkPolicy: no egress to DNS (port 53)")
    if _allows(egress, 443, {"random": "pod"}, "default"):
        problems.append("NetworkPolicy: egress is open to arbitrary destinations")
    return problems
