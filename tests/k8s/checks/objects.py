"""The rendered objects as a model: workloads' pod templates, selectors, ports, ConfigMap and Secret contents, the
environment a container sees, mounts, image tags, quantities; every check reads the overlay through these."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .settings import settings_fields

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


SERVER_DEPLOYMENT = "acg2vec"


MILVUS_OPERATOR_PORT = 19530  # the operator's Service "<name>-milvus" listens here


MIB = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}


@dataclass
class Pod:
    owner: dict[str, Any]
    labels: dict[str, str]
    spec: dict[str, Any]
    claim_templates: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.owner['kind']}/{self.owner['metadata']['name']}"

    def containers(self, init: bool = True) -> list[dict[str, Any]]:
        return list(self.spec.get("containers") or []) + (list(self.spec.get("initContainers") or []) if init else [])


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def find(docs: list[dict], kind: str, name: str) -> dict | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def pods(docs: list[dict]) -> list[Pod]:
    out = []
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            tmpl = d["spec"]["template"]
            claims = [c["metadata"]["name"] for c in d["spec"].get("volumeClaimTemplates") or []]
            out.append(Pod(d, dict(tmpl.get("metadata", {}).get("labels") or {}), tmpl["spec"], claims))
    return out


def selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(sel: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelector semantics (an empty selector matches everything)."""
    if sel is None:
        return False
    if not all(labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def container_port(container: dict, port: int | str) -> dict | None:
    for p in container.get("ports") or []:
        if (isinstance(port, str) and p.get("name") == port) or (isinstance(port, int) and p["containerPort"] == port):
            return p
    return None


def pod_port(pod: Pod, port: int | str) -> dict | None:
    return next((p for c in pod.containers(init=False) if (p := container_port(c, port))), None)


def service_pods(docs: list[dict], svc: dict) -> list[Pod]:
    return [p for p in pods(docs) if selects(svc["spec"].get("selector"), p.labels)]


def configmap_data(docs: list[dict], name: str) -> dict[str, str] | None:
    cm = find(docs, "ConfigMap", name)
    return None if cm is None else dict(cm.get("data") or {})


def secret_keys(docs: list[dict], name: str) -> set[str] | None:
    s = find(docs, "Secret", name)
    return None if s is None else set(s.get("data") or {}) | set(s.get("stringData") or {})


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """Environment a container sees: envFrom ConfigMaps (values), envFrom Secrets (keys, value '<secret>'), env."""
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        if "configMapRef" in src:
            env.update(configmap_data(docs, src["configMapRef"]["name"]) or {})
        if "secretRef" in src:
            env.update(dict.fromkeys(secret_keys(docs, src["secretRef"]["name"]) or set(), "<secret>"))
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value", "<valueFrom>")
    return env


def server(docs: list[dict]) -> tuple[dict, Pod, dict]:
    dep = find(docs, "Deployment", SERVER_DEPLOYMENT)
    assert dep is not None, "no acg2vec Deployment"
    pod = next(p for p in pods(docs) if p.owner is dep)
    return dep, pod, pod.spec["containers"][0]


def server_setting(docs: list[dict], name: str) -> Any:
    """Value of a setting in the server container, else the Settings default."""
    _, _, container = server(docs)
    env = container_env(docs, container)
    key = f"ACG2VEC_{name.upper()}"
    return env[key] if key in env else settings_fields()[name].default


def mounted_file(docs: list[dict], pod: Pod, container: dict, path: str) -> str | None:
    """Content of a file that a container reads from a ConfigMap volume, or None."""
    volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        vol = volumes.get(mount["name"]) or {}
        if "configMap" in vol:
            data = configmap_data(docs, vol["configMap"]["name"]) or {}
            return data.get(path[len(prefix) :])
    return None


def mount_of(pod: Pod, container: dict, path: str) -> tuple[dict, dict | None] | None:
    """(volumeMount, volume) under which `path` lies in the container, longest mount path first."""
    volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
    mounts = sorted(container.get("volumeMounts") or [], key=lambda m: -len(m["mountPath"]))
    for mount in mounts:
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            return mount, volumes.get(mount["name"])
    return None


def image_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image} has no tag"
    if last.split(":", 1)[1] == "latest":
        return f"image {image} uses the latest tag"
    return None


def memory_mib(quantity: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(quantity))
    assert m, quantity
    return float(m.group(1)) * (MIB[m.group(2)] if m.group(2) else 1 / 2**20)


def arg_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def host_port(target: str) -> tuple[str, int]:
    """(Service name, port) of host:port, a URL's host, or a gRPC target such as dns:///name.namespace:port."""
    target = re.sub(r"^dns://[^/]*/", "", target)
    host, port = target.rsplit(":", 1)
    return host.split(".")[0], int(port)


def resolve_service_port(docs: list[dict], host: str, port: int) -> tuple[dict, dict] | None:
    svc = find(docs, "Service", host)
    if svc is None:
        return None
    p = next((p for p in svc["spec"].get("ports") or [] if p["port"] == port), None)
    return None if p is None else (svc, p)
