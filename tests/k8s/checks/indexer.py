"""The bulk indexer: an Indexed Job whose shards run `acg2vec index` against the server's gRPC Service."""

from __future__ import annotations

from .objects import (
    SERVER_DEPLOYMENT,
    arg_value,
    by_kind,
    host_port,
    mount_of,
    pods,
    resolve_service_port,
    service_pods,
)


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
