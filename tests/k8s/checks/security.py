"""Security of both overlays: TLS and token auth on, their files from read-only Secret volumes, no secret in a
ConfigMap, probes on the plaintext health port, the indexer with a token and the CA but never the server's key."""

from __future__ import annotations

from .objects import PROBES, Pod, arg_value, by_kind, container_env, container_port, mount_of, pods, secret_keys, server
from .settings import settings_fields


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
