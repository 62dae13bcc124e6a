"""Cross-reference checks over a rendered overlay (a list of Kubernetes objects).

Each check returns a list of problems (strings); an empty list means the overlay passes. The tests run every
check on the real overlays and, to prove that the checks can fail, on deliberately broken copies.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

REPO = Path(__file__).resolve().parents[2]
SETTINGS_PY = REPO / "services" / "acg2vec_server" / "settings.py"

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
SERVER_DEPLOYMENT = "acg2vec"
MILVUS_OPERATOR_PORT = 19530  # the operator's Service "<name>-milvus" listens here
MIB = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
PYDANTIC_BOOLS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}


# --------------------------------------------------------------------------------------------- Settings (by ast)


@dataclass
class SettingField:
    name: str
    kind: str  # int, float, bool, str, path, literal
    choices: tuple[str, ...] = ()
    default: Any = None
    secret: bool = False  # a SecretStr: must come from a Secret, never a ConfigMap or a literal env value

    def problem(self, value: str) -> str | None:
        try:
            if self.kind == "int":
                int(value)
            elif self.kind == "float":
                float(value)
        except ValueError:
            return f"{value!r} is not a valid {self.kind}"
        if self.kind == "bool" and value.strip().lower() not in PYDANTIC_BOOLS:
            return f"{value!r} is not a boolean"
        if self.kind == "literal" and value not in self.choices:
            return f"{value!r} is not one of {self.choices}"
        return None


def _literal_choices(node: ast.expr) -> tuple[str, ...] | None:
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Literal":
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return tuple(e.value for e in elts if isinstance(e, ast.Constant))
    return None


def settings_fields(path: Path = SETTINGS_PY) -> dict[str, SettingField]:
    """Fields of `Settings`, read from the source with ast (robust to an import that a concurrent edit breaks)."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, tuple[str, ...]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            choices = _literal_choices(node.value)
            if choices is not None:
                aliases[node.targets[0].id] = choices
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    fields: dict[str, SettingField] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name, ann = node.target.id, node.annotation
        if name == "model_config":
            continue
        choices = _literal_choices(ann)
        if isinstance(ann, ast.Name) and ann.id in aliases:
            kind, choices = "literal", aliases[ann.id]
        elif choices is not None:
            kind = "literal"
        elif isinstance(ann, ast.Name) and ann.id in {"int", "float", "bool", "str"}:
            kind = ann.id
        else:
            kind = "str"  # Path, Path | None, ...: any string
        default = None
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Field" and value.args:
            value = value.args[0]
        if isinstance(value, ast.Constant):
            default = value.value
        elif value is not None:
            try:
                default = ast.literal_eval(value)
            except ValueError:
                default = None
        secret = isinstance(ann, ast.Name) and ann.id == "SecretStr"
        fields[name] = SettingField(name, kind, choices or (), default, secret)
    return fields


# --------------------------------------------------------------------------------------------- model helpers


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
    host, port = target.rsplit(":", 1)
    return host.split(".")[0], int(port)


def resolve_service_port(docs: list[dict], host: str, port: int) -> tuple[dict, dict] | None:
    svc = find(docs, "Service", host)
    if svc is None:
        return None
    p = next((p for p in svc["spec"].get("ports") or [] if p["port"] == port), None)
    return None if p is None else (svc, p)


def milvus_pod_labels(cr: dict) -> dict[str, str]:
    return {"app.kubernetes.io/name": "milvus", "app.kubernetes.io/instance": cr["metadata"]["name"]}


def tendis_conf(docs: list[dict]) -> tuple[dict, Pod, dict, dict[str, str], str]:
    sts = find(docs, "StatefulSet", "tendis")
    assert sts is not None, "no tendis StatefulSet"
    pod = next(p for p in pods(docs) if p.owner is sts)
    container = pod.spec["containers"][0]
    words = shlex.split(" ".join(container.get("command", []) + container.get("args", [])))
    conf_path = next(w for w in words if w.endswith(".conf"))
    text = mounted_file(docs, pod, container, conf_path)
    assert text is not None, f"{conf_path} is not in a mounted ConfigMap"
    conf = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            conf[name.lower()] = value
    return sts, pod, container, conf, text


# --------------------------------------------------------------------------------------------- checks


def check_services(docs: list[dict]) -> list[str]:
    """Every Service selects long-running pods, and every targetPort is a port of those pods."""
    problems = []
    for svc in by_kind(docs, "Service"):
        name = svc["metadata"]["name"]
        matched = service_pods(docs, svc)
        if not matched:
            problems.append(f"Service {name}: selector {svc['spec'].get('selector')} matches no pod template")
        for pod in matched:
            if pod.owner["kind"] not in LONG_RUNNING_KINDS:
                problems.append(f"Service {name} selects the pods of {pod.ref}")
            for port in svc["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                if pod_port(pod, target) is None:
                    problems.append(f"Service {name}: targetPort {target} is not a container port of {pod.ref}")
        if svc["spec"].get("clusterIP") != "None":
            for port in svc["spec"].get("ports") or []:
                if port.get("name", "").startswith("grpc") and port.get("appProtocol") != "grpc":
                    problems.append(f"Service {name}: port {port['name']} should declare appProtocol grpc")
    return problems


def check_probes(docs: list[dict]) -> list[str]:
    problems = []
    for pod in pods(docs):
        for c in pod.containers():
            for probe_name in PROBES:
                probe = c.get(probe_name)
                if not probe:
                    continue
                for action in ("grpc", "tcpSocket", "httpGet"):
                    if action in probe and container_port(c, probe[action]["port"]) is None:
                        problems.append(
                            f"{pod.ref} {c['name']} {probe_name}: port {probe[action]['port']} is not a container port"
                        )
    return problems


def check_references(docs: list[dict]) -> list[str]:
    """ConfigMaps, Secrets, keys and PVCs named by pods exist in the overlay; volume mounts name volumes."""
    problems = []
    pvcs = {d["metadata"]["name"] for d in by_kind(docs, "PersistentVolumeClaim")}
    for pod in pods(docs):
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        for v in volumes.values():
            if "configMap" in v:
                data = configmap_data(docs, v["configMap"]["name"])
                if data is None and not v["configMap"].get("optional"):
                    problems.append(f"{pod.ref}: volume {v['name']} names missing ConfigMap {v['configMap']['name']}")
                for item in v["configMap"].get("items") or []:
                    if data is not None and item["key"] not in data:
                        problems.append(f"{pod.ref}: ConfigMap {v['configMap']['name']} has no key {item['key']}")
            if "secret" in v and secret_keys(docs, v["secret"]["secretName"]) is None:
                problems.append(f"{pod.ref}: volume {v['name']} names missing Secret {v['secret']['secretName']}")
            if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in pvcs:
                problems.append(
                    f"{pod.ref}: volume {v['name']} names missing PVC {v['persistentVolumeClaim']['claimName']}"
                )
        for c in pod.containers():
            for mount in c.get("volumeMounts") or []:
                if mount["name"] not in volumes and mount["name"] not in pod.claim_templates:
                    problems.append(f"{pod.ref} {c['name']}: volumeMount {mount['name']} names no volume")
            for src in c.get("envFrom") or []:
                if "configMapRef" in src and configmap_data(docs, src["configMapRef"]["name"]) is None:
                    problems.append(
                        f"{pod.ref} {c['name']}: envFrom names missing ConfigMap {src['configMapRef']['name']}"
                    )
                if "secretRef" in src and secret_keys(docs, src["secretRef"]["name"]) is None:
                    problems.append(f"{pod.ref} {c['name']}: envFrom names missing Secret {src['secretRef']['name']}")
            for var in c.get("env") or []:
                ref = (var.get("valueFrom") or {}).get("configMapKeyRef")
                if ref and ref["key"] not in (configmap_data(docs, ref["name"]) or {}):
                    problems.append(
                        f"{pod.ref} {c['name']}: env {var['name']} names missing {ref['name']}/{ref['key']}"
                    )
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["key"] not in (secret_keys(docs, ref["name"]) or set()):
                    problems.append(
                        f"{pod.ref} {c['name']}: env {var['name']} names missing {ref['name']}/{ref['key']}"
                    )
    return problems


def check_settings_keys(docs: list[dict]) -> list[str]:
    """Every ACG2VEC_* key anywhere (ConfigMaps, Secrets, container env) is a Settings field with a valid value."""
    fields = settings_fields()
    problems = []
    entries: list[tuple[str, str, str | None]] = []
    for kind in ("ConfigMap", "Secret"):
        for d in by_kind(docs, kind):
            for key, value in (d.get("data") or {}).items():
                entries.append((f"{kind} {d['metadata']['name']}", key, value if kind == "ConfigMap" else None))
    for pod in pods(docs):
        for c in pod.containers():
            for var in c.get("env") or []:
                entries.append((f"{pod.ref} {c['name']}", var["name"], var.get("value")))
    for where, key, value in entries:
        if not key.startswith("ACG2VEC_"):
            continue
        name = key[len("ACG2VEC_") :].lower()
        if key != key.upper() or name not in fields:
            problems.append(f"{where}: {key} is not a setting of acg2vec_server.settings.Settings")
        elif value is not None and (why := fields[name].problem(value)):
            problems.append(f"{where}: {key}: {why}")
    return problems


def check_backends(docs: list[dict]) -> list[str]:
    """The server's backend addresses name Services (or the Milvus operator's Service) and ports of this overlay."""
    problems = []
    _, spod, container = server(docs)
    env = container_env(docs, container)
    if env.get("ACG2VEC_INFERENCE_BACKEND") != "tfserving":
        problems.append("ACG2VEC_INFERENCE_BACKEND should be tfserving in Kubernetes")
    host, port = host_port(env.get("ACG2VEC_TFSERVING_TARGET", "127.0.0.1:8500"))
    hit = resolve_service_port(docs, host, port)
    if hit is None:
        problems.append(f"ACG2VEC_TFSERVING_TARGET {host}:{port}: no such Service port")
    elif not any(p.owner["metadata"]["name"] == "tfserving" for p in service_pods(docs, hit[0])):
        problems.append(f"ACG2VEC_TFSERVING_TARGET {host}:{port} does not reach the tfserving pods")

    repo = env.get("ACG2VEC_MODEL_REPOSITORY")
    tf = find(docs, "Deployment", "tfserving")
    tf_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in (tf["spec"]["template"]["spec"].get("volumes") or [] if tf else [])
        if "persistentVolumeClaim" in v
    }
    hit = mount_of(spod, container, repo) if repo else None
    if hit is None or (hit[1] or {}).get("persistentVolumeClaim", {}).get("claimName") not in tf_claims:
        problems.append(f"ACG2VEC_MODEL_REPOSITORY {repo} is not the model repository volume TF-Serving serves")
    elif not hit[0].get("readOnly"):
        problems.append("the server must mount the model repository read-only")

    uri = env.get("ACG2VEC_MILVUS_URI", "")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"ACG2VEC_MILVUS_URI {uri!r} must be http://host:port (a file path means Milvus Lite)")
    else:
        mhost, mport = parts.hostname.split(".")[0], parts.port or 19530
        crs = [cr for cr in by_kind(docs, "Milvus") if f"{cr['metadata']['name']}-milvus" == mhost]
        if not (crs and mport == MILVUS_OPERATOR_PORT) and resolve_service_port(docs, mhost, mport) is None:
            problems.append(f"ACG2VEC_MILVUS_URI {uri}: neither a Service port nor a Milvus resource's Service")

    url = env.get("ACG2VEC_REDIS_URL", "")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        problems.append(f"ACG2VEC_REDIS_URL {url!r} must be redis://host:port/0 (empty starts an embedded server)")
    else:
        if parts.path not in ("", "/", "/0"):
            problems.append(f"ACG2VEC_REDIS_URL {url}: Tendis only has database 0")
        hit = resolve_service_port(docs, parts.hostname.split(".")[0], parts.port or 6379)
        if hit is None:
            problems.append(f"ACG2VEC_REDIS_URL {url}: no such Service port")
        else:
            sts, _, tcontainer, conf, _ = tendis_conf(docs)
            target = hit[1].get("targetPort", hit[1]["port"])
            cport = container_port(tcontainer, target)
            if not any(p.owner is sts for p in service_pods(docs, hit[0])):
                problems.append(f"ACG2VEC_REDIS_URL {url} does not reach the tendis pods")
            elif cport is None or str(cport["containerPort"]) != conf.get("port"):
                problems.append(f"ACG2VEC_REDIS_URL {url}: Service port does not reach tendisplus.conf's port")
    return problems


def check_autoscaling(docs: list[dict]) -> list[str]:
    problems = []
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = find(docs, ref["kind"], ref["name"])
        if target is None or target["apiVersion"] != ref.get("apiVersion", target["apiVersion"]):
            problems.append(f"HPA {hpa['metadata']['name']}: target {ref['kind']}/{ref['name']} does not exist")
            continue
        lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        if lo > hi:
            problems.append(f"HPA {hpa['metadata']['name']}: minReplicas {lo} > maxReplicas {hi}")
        replicas = target["spec"].get("replicas")
        if replicas is not None and not lo <= replicas <= hi:
            problems.append(f"{ref['kind']}/{ref['name']}: replicas {replicas} fights its HPA ({lo}..{hi})")
        for metric in hpa["spec"].get("metrics") or []:
            name = (metric.get("resource") or {}).get("name")
            if name and not all(
                (c.get("resources") or {}).get("requests", {}).get(name)
                for c in target["spec"]["template"]["spec"]["containers"]
            ):
                problems.append(f"HPA {hpa['metadata']['name']}: {name} utilisation needs {name} requests")
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        matched = [p for p in pods(docs) if label_selector_matches(pdb["spec"].get("selector"), p.labels)]
        if not any(p.owner["kind"] in LONG_RUNNING_KINDS for p in matched):
            problems.append(f"PDB {pdb['metadata']['name']}: selector matches no Deployment/StatefulSet pods")
        if pdb["spec"].get("minAvailable") is not None:
            problems.append(
                f"PDB {pdb['metadata']['name']}: use maxUnavailable (minAvailable blocks single-replica drains)"
            )
    return problems


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


def check_graceful_shutdown(docs: list[dict]) -> list[str]:
    _, pod, container = server(docs)
    grace = float(server_setting(docs, "grace_period_s"))
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    sleep = 0.0
    if "exec" in pre_stop:
        cmd = pre_stop["exec"]["command"]
        if cmd[0] != "sleep":
            return [f"preStop {cmd} is not a sleep"]
        sleep = float(cmd[1])
    elif "sleep" in pre_stop:
        sleep = float(pre_stop["sleep"]["seconds"])
    else:
        return ["the server has no preStop delay (endpoints may still route to a terminating pod)"]
    budget = pod.spec.get("terminationGracePeriodSeconds", 30)
    if budget < sleep + grace + 5:
        return [f"terminationGracePeriodSeconds {budget} < preStop {sleep} + grace_period_s {grace} + 5 s margin"]
    return []


def check_pod_security(docs: list[dict]) -> list[str]:
    problems = []
    for pod in pods(docs):
        psc = pod.spec.get("securityContext") or {}
        for c in pod.containers():
            csc = c.get("securityContext") or {}
            where = f"{pod.ref} {c['name']}"
            if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
                problems.append(f"{where}: runAsNonRoot is not set")
            if csc.get("runAsUser", psc.get("runAsUser")) == 0:
                problems.append(f"{where}: runs as uid 0")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{where}: capabilities are not dropped")
            if not (c.get("resources") or {}).get("requests"):
                problems.append(f"{where}: no resource requests")
            if not ((c.get("resources") or {}).get("limits") or {}).get("memory"):
                problems.append(f"{where}: no memory limit")
    return problems


def check_images(docs: list[dict]) -> list[str]:
    problems = []
    for pod in pods(docs):
        for c in pod.containers():
            if why := image_problem(c["image"]):
                problems.append(f"{pod.ref} {c['name']}: {why}")
    for cr in by_kind(docs, "Milvus"):
        image = (cr["spec"].get("components") or {}).get("image")
        if not image:
            problems.append(f"Milvus {cr['metadata']['name']}: components.image is not pinned")
        elif why := image_problem(image):
            problems.append(f"Milvus {cr['metadata']['name']}: {why}")
    return problems


def check_indexed_jobs(docs: list[dict]) -> list[str]:
    problems = []
    jobs = [j for j in by_kind(docs, "Job") if j["spec"].get("completionMode") == "Indexed"]
    if not jobs:
        return ["no Indexed Job for bulk indexing"]
    for job in jobs:
        name, spec = job["metadata"]["name"], job["spec"]
        c = spec["template"]["spec"]["containers"][0]
        args = [str(a) for a in c.get("command", []) + c.get("args", [])]
        if "index" not in args[:2]:
            problems.append(f"Job {name}: does not run `acg2vec index`")
        count = arg_value(args, "--shard-count")
        if count is None or int(count) != spec.get("completions"):
            problems.append(f"Job {name}: --shard-count {count} != completions {spec.get('completions')}")
        if spec.get("parallelism", 1) > spec.get("completions", 1):
            problems.append(f"Job {name}: parallelism above completions")
        if arg_value(args, "--shard-index") != "$(JOB_COMPLETION_INDEX)":
            problems.append(f"Job {name}: --shard-index is not $(JOB_COMPLETION_INDEX)")
        if not any(v["name"] == "JOB_COMPLETION_INDEX" for v in c.get("env") or []):
            problems.append(
                f"Job {name}: $(JOB_COMPLETION_INDEX) is expanded only from an env var the container defines"
            )
        target = arg_value(args, "--target")
        hit = resolve_service_port(docs, *host_port(target)) if target else None
        if hit is None:
            problems.append(f"Job {name}: --target {target} is no Service port")
        elif hit[1].get("appProtocol") != "grpc" or not any(
            p.owner["metadata"]["name"] == SERVER_DEPLOYMENT for p in service_pods(docs, hit[0])
        ):
            problems.append(f"Job {name}: --target {target} does not reach the acg2vec gRPC port")
        manifest = next((a for a in args if a.endswith(".jsonl")), None)
        pod = next(p for p in pods(docs) if p.owner is job)
        if manifest is None or mount_of(pod, c, manifest) is None:
            problems.append(f"Job {name}: manifest {manifest} is not on a mounted volume")
        if spec.get("backoffLimitPerIndex") is None:
            problems.append(f"Job {name}: a failing shard should be retried on its own (backoffLimitPerIndex)")
    return problems


def check_tfserving(docs: list[dict]) -> list[str]:
    problems = []
    dep = find(docs, "Deployment", "tfserving")
    if dep is None:
        return ["no tfserving Deployment"]
    pod = next(p for p in pods(docs) if p.owner is dep)
    c = next(c for c in pod.spec["containers"] if c["name"] == "tfserving")
    args = c.get("args") or []
    config_file = arg_value(args, "--model_config_file")
    if arg_value(args, "--enable_batching") != "true":
        problems.append("TF-Serving: batching is not enabled")
    hit = mount_of(pod, c, config_file or "/nonexistent")
    if hit is None or not (hit[1] or {}).get("persistentVolumeClaim"):
        problems.append(f"TF-Serving: --model_config_file {config_file} is not on the model repository volume")
    else:
        mount, volume = hit
        claim = volume["persistentVolumeClaim"]["claimName"]
        pvc = find(docs, "PersistentVolumeClaim", claim) or {"spec": {}}
        if not mount.get("readOnly") or not volume["persistentVolumeClaim"].get("readOnly"):
            problems.append("TF-Serving: the model repository must be mounted read-only")
        if "ReadOnlyMany" not in pvc["spec"].get("accessModes", []):
            problems.append(f"PVC {claim}: TF-Serving replicas need ReadOnlyMany")
        rel = config_file[len(mount["mountPath"].rstrip("/")) + 1 :]
        writers = []
        for job in by_kind(docs, "Job"):
            jpod = next(p for p in pods(docs) if p.owner is job)
            for jc in jpod.containers():
                for jm in jc.get("volumeMounts") or []:
                    jv = next((v for v in jpod.spec.get("volumes") or [] if v["name"] == jm["name"]), {})
                    if (jv.get("persistentVolumeClaim") or {}).get("claimName") == claim and not jm.get("readOnly"):
                        script = " ".join(jc.get("command", []) + jc.get("args", []))
                        root = jm["mountPath"].rstrip("/")
                        if f"build-defaults --repository {root}" in script and rel in script:
                            writers.append(job["metadata"]["name"])
        if not writers:
            problems.append(f"no Job builds the models onto PVC {claim} and writes {rel}")
    batching = arg_value(args, "--batching_parameters_file")
    text = mounted_file(docs, pod, c, batching or "")
    if text is None:
        problems.append(f"TF-Serving: batching parameters {batching} are not in a mounted ConfigMap")
    else:
        m = re.search(r"max_batch_size\s*\{\s*value:\s*(\d+)\s*\}", text)
        server_max = int(server_setting(docs, "max_batch_size"))
        if not m or int(m.group(1)) < server_max:
            problems.append(f"TF-Serving max_batch_size below the server's max_batch_size {server_max}")
    grpc = container_port(c, "grpc")
    if grpc is None or arg_value(args, "--port") != str(grpc["containerPort"]):
        problems.append("TF-Serving: --port is not the container's grpc port")
    return problems


def check_tendis(docs: list[dict], cluster: bool) -> list[str]:
    problems = []
    sts, pod, c, conf, text = tendis_conf(docs)
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and len(line.split(" ")) != 2:
            problems.append(f"tendisplus.conf: {line!r} is not 'name value' with one space")
    port = container_port(c, "redis")
    if port is None or str(port["containerPort"]) != conf.get("port"):
        problems.append("tendis: container port 'redis' differs from tendisplus.conf port")
    if conf.get("daemon") not in ("no", "off", "false", "0"):
        problems.append("tendisplus.conf: daemon must be off in a container")
    if conf.get("bind") != "0.0.0.0":
        problems.append("tendisplus.conf: bind 0.0.0.0 so that other pods can connect")
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates") or []]
    for key in ("dir", "dumpdir", "logdir"):
        hit = mount_of(pod, c, conf.get(key, "./"))
        if hit is None or hit[0]["name"] not in claims:
            problems.append(f"tendisplus.conf: {key} {conf.get(key)} is not on the StatefulSet's volume")
    limit = memory_mib(c["resources"]["limits"]["memory"])
    if float(conf.get("rocks.blockcachemb", 4096)) >= 0.8 * limit:
        problems.append(
            f"tendis: rocks.blockcachemb {conf.get('rocks.blockcachemb')} does not fit the {limit} MiB limit"
        )
    enabled = conf.get("cluster-enabled") == "yes"
    if enabled != cluster:
        problems.append(f"tendisplus.conf: cluster-enabled should be {'yes' if cluster else 'no'}")
    replicas = sts["spec"].get("replicas", 1)
    headless = find(docs, "Service", sts["spec"]["serviceName"])
    if headless is None or headless["spec"].get("clusterIP") != "None":
        problems.append(f"tendis: serviceName {sts['spec']['serviceName']} is not a headless Service")
    if not enabled:
        if replicas != 1:
            problems.append(f"tendis: {replicas} replicas without cluster mode are {replicas} separate databases")
        return problems
    if container_port(c, int(conf["port"]) + 10000) is None:
        problems.append("tendis: the cluster bus port (port + 10000) is not a container port")
    if headless is not None and not headless["spec"].get("publishNotReadyAddresses"):
        problems.append("tendis: the headless Service must publish not-ready pods for cluster formation")
    jobs = []
    for job in by_kind(docs, "Job"):
        jc = job["spec"]["template"]["spec"]["containers"][0]
        env = {v["name"]: v.get("value") for v in jc.get("env") or []}
        if "TENDIS_REPLICAS" in env:
            jobs.append((job, jc, env))
    if not jobs:
        return [*problems, "tendis: no Job forms the cluster"]
    for job, jc, env in jobs:
        name = job["metadata"]["name"]
        if int(env["TENDIS_REPLICAS"]) != replicas:
            problems.append(f"Job {name}: TENDIS_REPLICAS {env['TENDIS_REPLICAS']} != StatefulSet replicas {replicas}")
        if env.get("TENDIS_STATEFULSET") != sts["metadata"]["name"]:
            problems.append(f"Job {name}: TENDIS_STATEFULSET is not {sts['metadata']['name']}")
        if env.get("TENDIS_SERVICE") != sts["spec"]["serviceName"]:
            problems.append(f"Job {name}: TENDIS_SERVICE is not {sts['spec']['serviceName']}")
        if env.get("TENDIS_PORT") != conf["port"]:
            problems.append(f"Job {name}: TENDIS_PORT is not {conf['port']}")
        per = int(env.get("CLUSTER_REPLICAS", "1")) + 1
        if replicas % per or replicas // per < 3:
            problems.append(f"Job {name}: {replicas} nodes do not make >= 3 masters with {per - 1} replicas each")
        jpod = next(p for p in pods(docs) if p.owner is job)
        script = next((w for w in jc.get("command", []) + jc.get("args", []) if w.endswith(".sh")), "")
        if mounted_file(docs, jpod, jc, script) is None:
            problems.append(f"Job {name}: script {script} is not in a mounted ConfigMap")
    return problems


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


def all_problems(docs: list[dict], overlay: str) -> Iterator[str]:
    """Every check for an overlay named dev or prod."""
    yield from check_services(docs)
    yield from check_probes(docs)
    yield from check_references(docs)
    yield from check_settings_keys(docs)
    yield from check_backends(docs)
    yield from check_autoscaling(docs)
    yield from check_network_policy(docs)
    yield from check_graceful_shutdown(docs)
    yield from check_pod_security(docs)
    yield from check_images(docs)
    yield from check_indexed_jobs(docs)
    yield from check_tfserving(docs)
    yield from check_tendis(docs, cluster=overlay == "prod")
    yield from check_milvus(docs, "cluster" if overlay == "prod" else "standalone")


# --------------------------------------------------------------------------------------------- security


def secret_file(docs: list[dict], pod: Pod, container: dict, path: str) -> tuple[str, str] | str:
    """(Secret name, key) of the Secret volume file at `path` in the container, or a problem."""
    hit = mount_of(pod, container, path)
    if hit is None or "secret" not in (hit[1] or {}):
        return f"{path} is not in a mounted Secret volume"
    mount, volume = hit
    if not mount.get("readOnly"):
        return f"{path}: the Secret volume {mount['name']} must be mounted readOnly"
    name = volume["secret"]["secretName"]
    rel = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    items = volume["secret"].get("items")
    key = next((i["key"] for i in items if i["path"] == rel), None) if items else rel
    keys = secret_keys(docs, name)
    if key is None or keys is None or key not in keys:
        return f"{path}: Secret {name} has no key for it ({rel})"
    mode = volume["secret"].get("defaultMode", 0o644)
    if mode & 0o007:
        return f"{path}: Secret volume {mount['name']} is world-readable (defaultMode {mode:o})"
    return name, key


def check_security(docs: list[dict]) -> list[str]:
    """TLS and token auth are on, their files come from read-only Secret volumes with the keys the settings
    name, secrets never sit in ConfigMaps, probes use the plaintext health port, and the indexer gets a token
    and the CA (never the server's private key)."""
    problems = []
    fields = settings_fields()
    _, pod, container = server(docs)
    env = container_env(docs, container)
    for cm in by_kind(docs, "ConfigMap"):
        for key in cm.get("data") or {}:
            name = key[len("ACG2VEC_") :].lower()
            if key.startswith("ACG2VEC_") and name in fields and fields[name].secret:
                problems.append(f"ConfigMap {cm['metadata']['name']}: {key} is a secret; put it in a Secret")
    for p in pods(docs):
        for c in p.containers():
            for var in c.get("env") or []:
                name = var["name"][len("ACG2VEC_") :].lower()
                if var["name"].startswith("ACG2VEC_") and name in fields and fields[name].secret and "value" in var:
                    problems.append(f"{p.ref} {c['name']}: {var['name']} is a secret given as a literal value")

    auth = env.get("ACG2VEC_AUTH", fields["auth"].default)
    client_ca = env.get("ACG2VEC_TLS_CLIENT_CA_FILE")
    if auth != "token" and not client_ca:
        problems.append(f"ACG2VEC_AUTH={auth}: the server must authenticate callers (tokens, or mutual TLS)")
    if auth == "token" and "ACG2VEC_AUTH_TOKENS_FILE" not in env and "ACG2VEC_AUTH_TOKENS" not in env:
        problems.append("ACG2VEC_AUTH=token but neither ACG2VEC_AUTH_TOKENS_FILE nor ACG2VEC_AUTH_TOKENS is set")
    tls_files = {k: env.get(k) for k in ("ACG2VEC_TLS_CERT_FILE", "ACG2VEC_TLS_KEY_FILE")}
    if not all(tls_files.values()):
        problems.append("TLS is off: set ACG2VEC_TLS_CERT_FILE and ACG2VEC_TLS_KEY_FILE from the TLS Secret")
    files = {
        **tls_files,
        "ACG2VEC_TLS_CLIENT_CA_FILE": client_ca,
        "ACG2VEC_AUTH_TOKENS_FILE": env.get("ACG2VEC_AUTH_TOKENS_FILE"),
    }
    tls_secrets = set()
    for key, path in files.items():
        if not path:
            continue
        found = secret_file(docs, pod, container, path)
        if isinstance(found, str):
            problems.append(f"{key} {found}")
        elif key in ("ACG2VEC_TLS_CERT_FILE", "ACG2VEC_TLS_KEY_FILE"):
            tls_secrets.add(found[0])

    if all(tls_files.values()):
        health = env.get("ACG2VEC_HEALTH_LISTEN", "")
        health_port = int(health.rsplit(":", 1)[1]) if health else None
        if health_port is None:
            problems.append("TLS is on but ACG2VEC_HEALTH_LISTEN is empty: kubelet gRPC probes cannot do TLS")
        elif health.rsplit(":", 1)[0].strip("[]") not in ("0.0.0.0", "::", ""):
            problems.append(f"ACG2VEC_HEALTH_LISTEN {health}: the kubelet reaches the pod IP, bind 0.0.0.0")
        elif container_port(container, health_port) is None:
            problems.append(f"ACG2VEC_HEALTH_LISTEN port {health_port} is not a container port of the server")
        for probe_name in PROBES:
            probe = (container.get(probe_name) or {}).get("grpc")
            if probe is not None and probe["port"] != health_port:
                problems.append(
                    f"server {probe_name}: gRPC probe on port {probe['port']}, not the plaintext health port "
                    f"{health_port} (the TLS port refuses the kubelet's plaintext probe)"
                )

    for job in by_kind(docs, "Job"):
        jpod = next(p for p in pods(docs) if p.owner is job)
        for v in jpod.spec.get("volumes") or []:
            secret = v.get("secret")
            if secret and secret["secretName"] in tls_secrets:
                exposed = {i["key"] for i in secret.get("items") or []} or secret_keys(docs, secret["secretName"])
                if "tls.key" in (exposed or set()):
                    problems.append(f"{jpod.ref}: volume {v['name']} exposes the server's private key tls.key")
        if job["spec"].get("completionMode") != "Indexed":
            continue
        c = job["spec"]["template"]["spec"]["containers"][0]
        args = [str(a) for a in c.get("command", []) + c.get("args", [])]
        for flag in ("--token-file", "--tls-ca-file"):
            path = arg_value(args, flag)
            if path is None:
                problems.append(f"Job {job['metadata']['name']}: no {flag} (the server needs a token over TLS)")
                continue
            found = secret_file(docs, jpod, c, path)
            if isinstance(found, str):
                problems.append(f"Job {job['metadata']['name']}: {flag} {found}")
    return problems
