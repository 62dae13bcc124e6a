"""Checks over every workload: Services select long-running pods on their ports, probes name container ports,
referenced ConfigMaps, Secrets, keys and PVCs exist, ACG2VEC_* keys are Settings fields with valid values, pods run
locked down with requests and a memory limit, images are pinned."""

from __future__ import annotations

from .objects import (
    LONG_RUNNING_KINDS,
    PROBES,
    by_kind,
    configmap_data,
    container_port,
    image_problem,
    pod_port,
    pods,
    secret_keys,
    service_pods,
)
from .settings import settings_fields


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
