"""TF-Serving: batching on, the model repository volume read-only and built by a Job, batch sizes that fit the
server's, the gRPC port."""

from __future__ import annotations

import re

from .objects import arg_value, by_kind, container_port, find, mount_of, mounted_file, pods, server_setting


def _int_parameter(text: str, name: str) -> int | None:
    m = re.search(rf"{name}\s*\{{\s*value:\s*(\d+)\s*\}}", text)
    return int(m.group(1)) if m else None


def _concurrency(docs: list[dict], dep: dict, batching: str) -> list[str]:
    """The server's inference_concurrency (batches of one model in flight per server replica) is TF-Serving
    replicas x num_batch_threads, so one server replica can keep every batch thread busy; and the most server
    replicas (HPA) x that stay within what TF-Serving's queues hold (replicas x max_enqueued_batches)."""
    replicas = int(dep["spec"].get("replicas", 1))
    threads, enqueued = _int_parameter(batching, "num_batch_threads"), _int_parameter(batching, "max_enqueued_batches")
    if threads is None or enqueued is None:
        return ["TF-Serving batching parameters: set num_batch_threads and max_enqueued_batches"]
    concurrency = int(server_setting(docs, "inference_concurrency"))
    problems = []
    if concurrency != replicas * threads:
        problems.append(
            f"ACG2VEC_INFERENCE_CONCURRENCY {concurrency} != TF-Serving replicas {replicas} x num_batch_threads "
            f"{threads} = {replicas * threads}"
        )
    hpa = find(docs, "HorizontalPodAutoscaler", "acg2vec")
    servers = int(hpa["spec"]["maxReplicas"]) if hpa else 1
    if servers * concurrency > replicas * enqueued:
        problems.append(
            f"{servers} server replicas x ACG2VEC_INFERENCE_CONCURRENCY {concurrency} batches exceed what TF-Serving "
            f"queues hold ({replicas} replicas x max_enqueued_batches {enqueued}): raise max_enqueued_batches"
        )
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
    channel_arguments = dict(
        a.split("=", 1) for a in (arg_value(args, "--grpc_channel_arguments") or "").split(",") if "=" in a
    )
    if "grpc.max_connection_age_ms" not in channel_arguments:
        problems.append(
            "TF-Serving: set --grpc_channel_arguments=grpc.max_connection_age_ms=...: without it the servers' "
            "round_robin channels never resolve the headless Service again and never use a pod added later"
        )
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
        problems += _concurrency(docs, dep, text)
    grpc = container_port(c, "grpc")
    if grpc is None or arg_value(args, "--port") != str(grpc["containerPort"]):
        problems.append("TF-Serving: --port is not the container's grpc port")
    return problems
