"""Checks of the acg2vec server Deployment: its backend addresses reach the backends of this overlay, HPA and PDB
target it sensibly, and a rollout drains it gracefully."""

from __future__ import annotations

from urllib.parse import urlsplit

from .objects import (
    LONG_RUNNING_KINDS,
    MILVUS_OPERATOR_PORT,
    by_kind,
    container_env,
    container_port,
    find,
    host_port,
    label_selector_matches,
    mount_of,
    pods,
    resolve_service_port,
    server,
    server_setting,
    service_pods,
)
from .tendis import tendis_conf


def check_backends(docs: list[dict]) -> list[str]:
    """The server's backend addresses name Services (or the Milvus operator's Service) and ports of this overlay."""
    problems = []
    _, spod, container = server(docs)
    env = container_env(docs, container)
    if env.get("ACG2VEC_INFERENCE_BACKEND") != "tfserving":
        problems.append("ACG2VEC_INFERENCE_BACKEND should be tfserving in Kubernetes")
    target = env.get("ACG2VEC_TFSERVING_TARGET", "127.0.0.1:8500")
    host, port = host_port(target)
    hit = resolve_service_port(docs, host, port)
    if hit is None:
        problems.append(f"ACG2VEC_TFSERVING_TARGET {host}:{port}: no such Service port")
    elif not any(p.owner["metadata"]["name"] == "tfserving" for p in service_pods(docs, hit[0])):
        problems.append(f"ACG2VEC_TFSERVING_TARGET {host}:{port} does not reach the tfserving pods")
    elif not target.startswith("dns:///") or hit[0]["spec"].get("clusterIP") != "None":
        problems.append(
            f"ACG2VEC_TFSERVING_TARGET {target}: per-call balancing over the TF-Serving pods needs dns:///<headless "
            "Service>:<port> (round_robin over every pod address); a ClusterIP Service pins each server to one pod"
        )

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
