"""A small kustomize renderer: exactly the kustomization features that k8s/ uses, nothing more.

No kustomize binary can be installed by the project's own scripts, so the manifest tests render the overlays
with this. Where `kubectl` is on PATH, tests/k8s/test_manifests.py renders the same overlays with
`kubectl kustomize` and requires identical documents, which keeps this renderer honest.

Supported kustomization fields (anything else raises Unsupported, so a new feature in k8s/ fails loudly):
  resources            files (multi-document YAML) and directories holding a kustomization.yaml
  namespace            set on every namespaced resource
  labels               pairs, includeSelectors: false, includeTemplates: true|false
  images               name -> newName / newTag / digest, in every containers/initContainers list
  replicas             spec.replicas of Deployment / StatefulSet / ReplicaSet / ReplicationController
  patches              strategic merge (path or inline, target from the patch's own kind/name or a selector)
                       and JSON 6902 (add / remove / replace / test) with a target selector
  configMapGenerator   literals and files; behavior create / merge / replace;
  secretGenerator        options.disableNameSuffixHash must be true (no hash suffix is computed); options.labels
                       and options.annotations on the generated object

The order of operations follows kustomize: resources, generators, then patches, namespace, labels,
replicas, images.

Usage: python tests/k8s/kustomize.py k8s/overlays/dev
"""

from __future__ import annotations

import base64
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "replicas",
    "patches",
    "configMapGenerator",
    "secretGenerator",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
REPLICA_KINDS = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}
TEMPLATE_KINDS = {"Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job", "ReplicationController"}
# Strategic-merge keys of the built-in types (from the Kubernetes OpenAPI patchMergeKey annotations).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
}
# kustomize's legacy output order; kinds not listed come after, ordered by their GVK string
# (resid.Gvk.String(): group_version_kind, "~G" for the core group), then namespace and name.
KIND_ORDER = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
KIND_ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class Unsupported(Exception):
    """The kustomization uses something this renderer does not implement."""


class KustomizeError(Exception):
    """The kustomization is wrong (a patch without a target, a duplicate resource, ...)."""


# --------------------------------------------------------------------------------------------- identity


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def version_of(api_version: str) -> str:
    return api_version.split("/")[-1]


def res_id(res: Resource) -> tuple[str, str, str, str]:
    meta = res.get("metadata") or {}
    return (group_of(res.get("apiVersion", "")), res.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def is_builtin(res: Resource) -> bool:
    group = group_of(res.get("apiVersion", ""))
    return group == "" or "." not in group or group.endswith(".k8s.io")


# --------------------------------------------------------------------------------------------- loading


def load_kustomization(directory: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = set(data) - SUPPORTED_FIELDS
            if unknown:
                raise Unsupported(f"{path}: unsupported kustomization fields {sorted(unknown)}")
            return data
    raise KustomizeError(f"no kustomization file in {directory}")


def load_documents(path: Path) -> list[Resource]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{path}: not a Kubernetes object: {doc!r:.80}")
        if doc["kind"].endswith("List"):
            raise Unsupported(f"{path}: List objects")
    return docs


def within(root: Path, path: Path) -> Path:
    """A file a kustomization loads must lie under its root (kustomize's default load restrictor)."""
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise KustomizeError(f"{path} is outside the kustomization root {root}")
    return resolved


# --------------------------------------------------------------------------------------------- generators


def parse_literal(source: str) -> tuple[str, str]:
    if "=" not in source:
        raise KustomizeError(f"literal {source!r} is not KEY=VALUE")
    key, value = source.split("=", 1)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return key, value


def generator_data(root: Path, spec: dict[str, Any]) -> dict[str, str]:
    unknown = set(spec) - {"name", "namespace", "behavior", "literals", "files", "options", "type"}
    if unknown:
        raise Unsupported(f"generator fields {sorted(unknown)}")
    data: dict[str, str] = {}
    for literal in spec.get("literals") or []:
        key, value = parse_literal(literal)
        if key in data:
            raise KustomizeError(f"duplicate key {key} in generator {spec['name']}")
        data[key] = value
    for entry in spec.get("files") or []:
        key, rel = entry.split("=", 1) if "=" in entry else (Path(entry).name, entry)
        path = within(root, Path(rel))
        if key in data:
            raise KustomizeError(f"duplicate key {key} in generator {spec['name']}")
        try:
            data[key] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise Unsupported(f"binary file {path} in a generator") from err
    return data


def run_generator(root: Path, spec: dict[str, Any], kind: str, resources: list[Resource]) -> None:
    options = spec.get("options") or {}
    if set(options) - {"disableNameSuffixHash", "labels", "annotations"} or not options.get("disableNameSuffixHash"):
        raise Unsupported(
            f"{kind} generator {spec['name']}: only options.disableNameSuffixHash: true, labels and annotations"
        )
    data = generator_data(root, spec)
    behavior = spec.get("behavior", "create")
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()} if kind == "Secret" else data
    existing = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == spec["name"]]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{kind} {spec['name']} already exists; use behavior merge or replace")
        res: Resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
        if spec.get("namespace"):
            res["metadata"]["namespace"] = spec["namespace"]
        for field in ("labels", "annotations"):
            if options.get(field):
                res["metadata"][field] = dict(options[field])
        if kind == "Secret":
            res["type"] = spec.get("type", "Opaque")
        res["data"] = encoded
        resources.append(res)
    elif behavior in ("merge", "replace"):
        if len(existing) != 1:
            raise KustomizeError(f"{kind} {spec['name']}: behavior {behavior} needs exactly one existing object")
        target = existing[0]
        if behavior == "replace":
            target["data"] = encoded
        else:
            target.setdefault("data", {}).update(encoded)
    else:
        raise Unsupported(f"generator behavior {behavior}")


# --------------------------------------------------------------------------------------------- patches


def strategic_merge(target: Any, patch: Any, builtin: bool, key: str | None = None) -> Any:
    """Merge `patch` into `target` the way kustomize's strategic merge does for what k8s/ needs."""
    if isinstance(patch, dict) and isinstance(target, dict):
        if "$patch" in patch or any(k.startswith("$") for k in patch):
            raise Unsupported(f"strategic merge directives in {patch!r:.80}")
        out = dict(target)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, builtin, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(target, list) and builtin:
        merge_key = MERGE_KEYS.get(key or "")
        if key == "ports" and all(isinstance(i, dict) for i in patch + target):
            items = patch + target
            merge_key = "containerPort" if any("containerPort" in i for i in items) else "port"
        if merge_key and all(isinstance(i, dict) and merge_key in i for i in patch + target):
            out_list = [copy.deepcopy(i) for i in target]
            for item in patch:
                for idx, existing in enumerate(out_list):
                    if existing[merge_key] == item[merge_key]:
                        out_list[idx] = strategic_merge(existing, item, builtin, None)
                        break
                else:
                    out_list.append(copy.deepcopy(item))
            return out_list
    return copy.deepcopy(patch)


def pointer_parts(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise KustomizeError(f"bad JSON pointer {pointer!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def json6902(doc: Resource, ops: list[dict[str, Any]]) -> Resource:
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = pointer_parts(op["path"])
        if not parts:
            raise Unsupported("JSON 6902 operations on the whole document")
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise KustomizeError(f"JSON 6902 test failed at {op['path']}: {current!r} != {op['value']!r}")
        elif kind in ("replace", "remove"):
            if isinstance(parent, list):
                idx = int(last)
                if kind == "replace":
                    parent[idx] = copy.deepcopy(op["value"])
                else:
                    del parent[idx]
            else:
                if last not in parent:
                    raise KustomizeError(f"JSON 6902 {kind}: {op['path']} does not exist")
                if kind == "replace":
                    parent[last] = copy.deepcopy(op["value"])
                else:
                    del parent[last]
        elif kind == "add":
            if isinstance(parent, list):
                if last == "-":
                    parent.append(copy.deepcopy(op["value"]))
                else:
                    parent.insert(int(last), copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise Unsupported(f"JSON 6902 op {kind}")
    return doc


def selected(res: Resource, target: dict[str, Any]) -> bool:
    unknown = set(target) - {"group", "version", "kind", "name", "namespace"}
    if unknown:
        raise Unsupported(f"patch target selectors {sorted(unknown)}")
    meta = res["metadata"]
    checks = {
        "group": group_of(res["apiVersion"]),
        "version": version_of(res["apiVersion"]),
        "kind": res["kind"],
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
    }
    return all(checks[k] == v for k, v in target.items())


def apply_patch(root: Path, entry: dict[str, Any], resources: list[Resource]) -> None:
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise Unsupported(f"patch fields {sorted(unknown)}")
    if ("path" in entry) == ("patch" in entry):
        raise KustomizeError("a patch needs exactly one of path and patch")
    text = within(root, Path(entry["path"])).read_text() if "path" in entry else entry["patch"]
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) != 1:
        raise Unsupported("a patch file must hold exactly one document")
    body = docs[0]
    target = entry.get("target")
    if isinstance(body, list):
        if not target:
            raise KustomizeError("a JSON 6902 patch needs a target")
        matched = [i for i, r in enumerate(resources) if selected(r, target)]
        if not matched:
            raise KustomizeError(f"JSON 6902 patch target {target} matches nothing")
        for i in matched:
            resources[i] = json6902(resources[i], body)
        return
    if target is None:
        meta = body.get("metadata") or {}
        target = {
            "group": group_of(body["apiVersion"]),
            "version": version_of(body["apiVersion"]),
            "kind": body["kind"],
        }
        target["name"] = meta["name"]
        if meta.get("namespace"):
            target["namespace"] = meta["namespace"]
    matched = [i for i, r in enumerate(resources) if selected(r, target)]
    if not matched:
        raise KustomizeError(f"strategic merge patch target {target} matches nothing")
    for i in matched:
        patch = copy.deepcopy(body)
        # the patch's identity never renames the target
        patch.pop("apiVersion", None)
        patch.pop("kind", None)
        meta = patch.get("metadata") or {}
        meta.pop("name", None)
        meta.pop("namespace", None)
        if not meta:
            patch.pop("metadata", None)
        resources[i] = strategic_merge(resources[i], patch, is_builtin(resources[i]))


# --------------------------------------------------------------------------------------------- transformers


def set_namespace(resources: list[Resource], namespace: str) -> None:
    for res in resources:
        if res["kind"] == "Namespace":
            if res["metadata"]["name"] != namespace:
                raise Unsupported("renaming a Namespace object through the namespace field")
            continue
        if res["kind"] in CLUSTER_SCOPED:
            continue
        res["metadata"]["namespace"] = namespace


def add_labels(resources: list[Resource], entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        unknown = set(entry) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown or entry.get("includeSelectors"):
            raise Unsupported("labels: only pairs, includeSelectors: false and includeTemplates are supported")
        pairs = {str(k): str(v) for k, v in (entry.get("pairs") or {}).items()}
        for res in resources:
            res.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            if not entry.get("includeTemplates"):
                continue
            spec = res.get("spec")
            if res["kind"] in TEMPLATE_KINDS and isinstance(spec, dict):
                template = spec.setdefault("template", {})
                template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            if res["kind"] == "StatefulSet" and isinstance(spec, dict):
                for claim in spec.get("volumeClaimTemplates") or []:
                    claim.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
            if res["kind"] == "CronJob" and isinstance(spec, dict):
                template = spec.setdefault("jobTemplate", {}).setdefault("spec", {}).setdefault("template", {})
                template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def set_replicas(resources: list[Resource], entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        hits = [r for r in resources if r["kind"] in REPLICA_KINDS and r["metadata"]["name"] == entry["name"]]
        if not hits:
            raise KustomizeError(f"replicas: no workload named {entry['name']}")
        for res in hits:
            res.setdefault("spec", {})["replicas"] = int(entry["count"])


def image_name(image: str) -> tuple[str, str]:
    """('repo/name', rest) where rest is ':tag', '@digest', ':tag@digest' or ''."""
    at = image.find("@")
    base, digest = (image[:at], image[at:]) if at >= 0 else (image, "")
    colon = base.rfind(":")
    if colon > base.rfind("/"):
        return base[:colon], base[colon:] + digest
    return base, digest


def walk_containers(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict) and "image" in c)
            else:
                yield from walk_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_containers(item)


def set_images(resources: list[Resource], entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        unknown = set(entry) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise Unsupported(f"images fields {sorted(unknown)}")
        for res in resources:
            for container in walk_containers(res):
                name, rest = image_name(container["image"])
                if name != entry["name"]:
                    continue
                new = entry.get("newName", name)
                if "digest" in entry:
                    new += "@" + entry["digest"]
                elif "newTag" in entry:
                    new += ":" + str(entry["newTag"])
                else:
                    new += rest
                container["image"] = new


# --------------------------------------------------------------------------------------------- build


def build(directory: str | Path) -> list[Resource]:
    """Render a kustomization directory into a list of Kubernetes objects (kustomize's legacy order)."""
    root = Path(directory).resolve()
    kust = load_kustomization(root)
    resources: list[Resource] = []
    for entry in kust.get("resources") or []:
        if "://" in entry or entry.startswith("github.com/"):
            raise Unsupported(f"remote resource {entry}")
        path = (root / entry).resolve()
        # a directory is another kustomization and may lie anywhere; a file must lie under the root
        resources.extend(build(path) if path.is_dir() else load_documents(within(root, Path(entry))))
    for spec in kust.get("configMapGenerator") or []:
        run_generator(root, spec, "ConfigMap", resources)
    for spec in kust.get("secretGenerator") or []:
        run_generator(root, spec, "Secret", resources)
    resources = [copy.deepcopy(r) for r in resources]
    for entry in kust.get("patches") or []:
        apply_patch(root, entry, resources)
    if kust.get("namespace"):
        set_namespace(resources, kust["namespace"])
    add_labels(resources, kust.get("labels") or [])
    set_replicas(resources, kust.get("replicas") or [])
    set_images(resources, kust.get("images") or [])
    seen: set[tuple[str, str, str, str]] = set()
    for res in resources:
        rid = res_id(res)
        if rid in seen:
            raise KustomizeError(f"duplicate resource {rid}")
        seen.add(rid)
    return sort_legacy(resources)


def sort_legacy(resources: list[Resource]) -> list[Resource]:
    def rank(res: Resource) -> tuple[int, str, str, str]:
        kind = res["kind"]
        if kind in KIND_ORDER:
            first = KIND_ORDER.index(kind)
        elif kind in KIND_ORDER_LAST:
            first = len(KIND_ORDER) + 1 + KIND_ORDER_LAST.index(kind)
        else:
            first = len(KIND_ORDER)
        meta = res["metadata"]
        gvk = f"{group_of(res['apiVersion']) or '~G'}_{version_of(res['apiVersion']) or '~V'}_{kind}"
        return (first, gvk if first == len(KIND_ORDER) else "", meta.get("namespace", ""), meta.get("name", ""))

    return sorted(resources, key=rank)


def to_yaml(resources: list[Resource]) -> str:
    return yaml.safe_dump_all(resources, sort_keys=True, default_flow_style=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/k8s/kustomize.py KUSTOMIZATION_DIR")
    sys.stdout.write(to_yaml(build(sys.argv[1])))
