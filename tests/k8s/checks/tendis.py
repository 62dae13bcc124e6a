"""Tendis: tendisplus.conf as mounted from its ConfigMap, storage on the StatefulSet's volume, and in cluster mode the
bus port, the headless Service and the Job that forms the cluster."""

from __future__ import annotations

import shlex

from .objects import Pod, by_kind, container_port, find, memory_mib, mount_of, mounted_file, pods


def tendis_conf(docs: list[dict]) -> tuple[dict, Pod, dict, dict[str, str], str]:
    sts = find(docs, "StatefulSet", "tendis")
    assert sts is not None, "no tendis StatefulSet"
    pod = next(p for p in pods(docs) if p.owner is sts)
    container = pod.spec["containers"][0]
    words = shlex.split(" ".join(container.get("command", []) + container.get("args", [])))
    conf_path = next(w for w in words if w.endswith(".conf")).rsplit("=", 1)[-1]  # also in `conf=/path.conf`
    text = mounted_file(docs, pod, container, conf_path)
    assert text is not None, f"{conf_path} is not in a mounted ConfigMap"
    conf = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            conf[name.lower()] = value
    return sts, pod, container, conf, text


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
    script = " ".join(c.get("command", []) + c.get("args", []))
    if conf.get("domain-enabled") != "yes":
        problems.append(
            "tendisplus.conf: a cluster needs domain-enabled yes, so that nodes find each other by DNS name after "
            "every pod restarts with a new IP"
        )
    elif "grep -q '^domain-enabled yes'" not in script or "s/^bind .*/bind $name/" not in script:
        problems.append("tendis: with domain-enabled the start command must bind the pod's own DNS name")
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
        if env.get("TENDIS_MEET_BY", "name") != "name" and conf.get("domain-enabled") == "yes":
            problems.append(f"Job {name}: with domain-enabled nodes must meet by name (TENDIS_MEET_BY)")
        per = int(env.get("CLUSTER_REPLICAS", "1")) + 1
        if replicas % per or replicas // per < 3:
            problems.append(f"Job {name}: {replicas} nodes do not make >= 3 masters with {per - 1} replicas each")
        jpod = next(p for p in pods(docs) if p.owner is job)
        script = next((w for w in jc.get("command", []) + jc.get("args", []) if w.endswith(".sh")), "")
        if mounted_file(docs, jpod, jc, script) is None:
            problems.append(f"Job {name}: script {script} is not in a mounted ConfigMap")
    return problems
