"""The Kubernetes manifests (k8s/), rendered offline and checked.

- Both overlays render with tests/k8s/kustomize.py, and (where kubectl is installed) exactly as
  `kubectl kustomize` renders them.
- Every built-in object passes `kubernetes-validate --strict`; the custom resources (Milvus, PodMonitor,
  PrometheusRule), which it has no schema for, pass their operators' own CRD schemas (vendored in crds/).
- Cross-references hold (checks/): Service selectors and ports, probes, ConfigMap/Secret/PVC references,
  ACG2VEC_* keys against the server's Settings, backend addresses, HPA/PDB targets, the NetworkPolicy, graceful
  shutdown, the Indexed Job, TF-Serving, Tendis.
- Each check is shown to fail on a deliberately broken copy, so a green run means something.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support.redis_cluster import cluster_ports

from .checks.common import (
    check_images,
    check_pod_security,
    check_probes,
    check_references,
    check_services,
    check_settings_keys,
)
from .checks.crds import cel_rules, crd_schemas, is_custom, validate_custom
from .checks.indexer import check_indexed_jobs
from .checks.milvus import check_milvus
from .checks.monitoring import adapter_rules, check_adapter_rules, check_monitoring
from .checks.network_policy import check_network_policy
from .checks.objects import by_kind
from .checks.objects import find as find_object
from .checks.security import check_security
from .checks.server import check_autoscaling, check_backends, check_graceful_shutdown
from .checks.settings import settings_fields
from .checks.tendis import check_tendis
from .checks.tfserving import check_tfserving
from .kustomize import KustomizeError, Unsupported, build, to_yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
K8S_VERSION = "1.37.0"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: build(K8S / "overlays" / name) for name in OVERLAYS}


def find(docs: list[dict], kind: str, name: str) -> dict:
    doc = find_object(docs, kind, name)
    assert doc is not None, f"{kind}/{name} missing"
    return doc


# --------------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_component(rendered, overlay):
    docs = rendered[overlay]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Deployment", "acg2vec"),
        ("Service", "acg2vec"),
        ("HorizontalPodAutoscaler", "acg2vec"),
        ("PodDisruptionBudget", "acg2vec"),
        ("NetworkPolicy", "acg2vec-server"),
        ("ConfigMap", "acg2vec-config"),
        ("Secret", "acg2vec-secrets"),
        ("Deployment", "tfserving"),
        ("Service", "tfserving"),
        ("Service", "tfserving-headless"),
        ("PersistentVolumeClaim", "acg2vec-models"),
        ("Job", "acg2vec-models"),
        ("Milvus", "milvus"),
        ("StatefulSet", "tendis"),
        ("Service", "tendis-headless"),
        ("Job", "acg2vec-index"),
    ]:
        assert expected in kinds
    namespace = "acg2vec-dev" if overlay == "dev" else "acg2vec"
    assert ("Namespace", namespace) in kinds
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == namespace, d["metadata"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "acg2vec"
        assert d["metadata"]["labels"]["acg2vec.io/environment"] == overlay


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: renderer not cross-checked")
@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_renderer_matches_kubectl_kustomize(overlay):
    path = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert build(path) == theirs


def test_renderer_rejects_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("namePrefix: x-\nresources: []\n")
    with pytest.raises(Unsupported):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\npatches:\n  - path: p.yaml\n")
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {k: v}\n")
    with pytest.raises(KustomizeError, match="matches nothing"):
        build(tmp_path)


def test_renderer_merges_lists_by_key_for_builtin_kinds_only(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [r.yaml]\npatches:\n  - path: p.yaml\n  - path: q.yaml\n")
    (tmp_path / "r.yaml").write_text(
        """apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  template:
    spec:
      containers:
        - {name: a, image: "x:1", env: [{name: A, value: "1"}, {name: B, value: "2"}], args: [p, q]}
        - {name: b, image: "y:1"}
---
apiVersion: example.com/v1
kind: Thing
metadata: {name: t}
spec: {items: [{name: a, v: 1}, {name: b, v: 2}], keep: 1, drop: 2}
"""
    )
    (tmp_path / "p.yaml").write_text(
        """apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  template:
    spec:
      containers:
        - {name: a, env: [{name: B, value: "3"}], args: [r]}
"""
    )
    (tmp_path / "q.yaml").write_text(
        "apiVersion: example.com/v1\nkind: Thing\nmetadata: {name: t}\nspec: {items: [{name: b, v: 3}], drop: null}\n"
    )
    dep, thing = build(tmp_path)
    a, b = dep["spec"]["template"]["spec"]["containers"]
    assert a["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]
    assert a["args"] == ["r"] and a["image"] == "x:1" and b["name"] == "b"
    assert thing["spec"] == {"items": [{"name": "b", "v": 3}], "keep": 1}


# --------------------------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_object_passes_strict_schema_validation(rendered, overlay):
    failures = []
    for doc in rendered[overlay]:
        if is_custom(doc):
            continue  # custom resource: test_custom_resources_pass_their_operators_crds
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, err.path))}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            failures.append(err.message)
    assert failures == []


def test_kubernetes_validate_cli_accepts_the_rendered_overlays(rendered, tmp_path):
    """The command line a developer runs: kubernetes-validate --strict on the rendered YAML."""
    exe = Path(sys.executable).with_name("kubernetes-validate")
    if not exe.exists():
        pytest.skip("kubernetes-validate CLI not installed next to this Python")
    for overlay in OVERLAYS:
        path = tmp_path / f"{overlay}.yaml"
        path.write_text(to_yaml([d for d in rendered[overlay] if not is_custom(d)]))
        out = subprocess.run(
            [str(exe), "--strict", "--quiet", "-k", K8S_VERSION, str(path)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "ERROR" not in out.stdout + out.stderr, out.stdout + out.stderr


def test_strict_validation_rejects_a_misspelt_field(rendered):
    doc = copy.deepcopy(find(rendered["prod"], "Deployment", "acg2vec"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["servce"] = ""
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_milvus_resource(rendered, overlay):
    assert check_milvus(rendered[overlay], "cluster" if overlay == "prod" else "standalone") == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_pass_their_operators_crds(rendered, overlay):
    custom = [d for d in rendered[overlay] if is_custom(d)]
    assert {d["kind"] for d in custom} == {"Milvus", "PodMonitor", "PrometheusRule"}
    assert [p for d in custom for p in validate_custom(d)] == []
    # every object is either a built-in kind (kubernetes-validate) or has a vendored CRD
    for doc in rendered[overlay]:
        if not is_custom(doc):
            assert "." not in doc["apiVersion"].split("/")[0] or doc["apiVersion"].split("/")[0].endswith("k8s.io")


def test_adapter_rule_check_follows_the_adapters_config_format():
    assert check_adapter_rules(adapter_rules()) == []
    broken = copy.deepcopy(adapter_rules())
    broken["rules"][0]["name"]["rename"] = "x"  # the adapter reads its file with yaml.UnmarshalStrict
    assert "'rename' was unexpected" in " ".join(check_adapter_rules(broken))
    broken = copy.deepcopy(adapter_rules())
    broken["rules"][0]["metricsQuery"] = "sum(acg2vec_grpc_server_in_flight_calls)"
    assert "<<.LabelMatchers>>" in " ".join(check_adapter_rules(broken))


def test_vendored_crds_are_the_operators_releases_and_apply_in_full():
    readme = (REPO / "tests" / "k8s" / "crds" / "README.md").read_text()
    for path in sorted((REPO / "tests" / "k8s" / "crds").glob("*.yaml")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"`{path.name}`" in readme and digest in readme, f"{path.name}: note its version, source and sha256"
    assert ("milvus.io/v1beta1", "Milvus") in crd_schemas()
    assert cel_rules() == [], "CEL rules (x-kubernetes-validations) would not be checked by this validation"


def test_crd_validation_is_the_operators_not_a_hand_schema(rendered):
    """The real CRD decides: the operator's disableMetric and replicas: -1 (its minimum) pass; unknown fields, wrong
    types and out-of-range values fail, at any depth."""
    milvus = copy.deepcopy(find(rendered["prod"], "Milvus", "milvus"))
    milvus["spec"]["components"]["disableMetric"] = True
    milvus["spec"]["components"]["queryNode"]["replicas"] = -1
    assert validate_custom(milvus) == []
    milvus["spec"]["components"]["queryNode"]["replicas"] = -2
    milvus["spec"]["components"]["queryNode"]["resources"]["limits"]["memroy"] = "1Gi"
    problems = " ".join(validate_custom(milvus))
    assert "-2 is less than the minimum of -1" in problems and "memroy" not in problems  # limits: any resource name
    milvus["spec"]["components"]["queryNode"]["resorces"] = {}
    assert "'resorces' was unexpected" in " ".join(validate_custom(milvus))
    rule = copy.deepcopy(find(rendered["dev"], "PrometheusRule", "acg2vec"))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    assert "does not match" in " ".join(validate_custom(rule))
    monitor = copy.deepcopy(find(rendered["dev"], "PodMonitor", "acg2vec"))
    monitor["spec"].pop("selector")
    assert "'selector' is a required property" in " ".join(validate_custom(monitor))


# --------------------------------------------------------------------------------------------- cross-references

CHECKS: dict[str, Callable[[list[dict], str], list[str]]] = {
    "services": lambda d, o: check_services(d),
    "probes": lambda d, o: check_probes(d),
    "references": lambda d, o: check_references(d),
    "settings_keys": lambda d, o: check_settings_keys(d),
    "backends": lambda d, o: check_backends(d),
    "autoscaling": lambda d, o: check_autoscaling(d),
    "network_policy": lambda d, o: check_network_policy(d),
    "graceful_shutdown": lambda d, o: check_graceful_shutdown(d),
    "pod_security": lambda d, o: check_pod_security(d),
    "images": lambda d, o: check_images(d),
    "indexed_jobs": lambda d, o: check_indexed_jobs(d),
    "tfserving": lambda d, o: check_tfserving(d),
    "tendis": lambda d, o: check_tendis(d, cluster=o == "prod"),
    "security": lambda d, o: check_security(d),
    "monitoring": lambda d, o: check_monitoring(d),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_cross_references(rendered, overlay, check):
    assert CHECKS[check](rendered[overlay], overlay) == []


def _container(docs, kind, name, index=0):
    return find(docs, kind, name)["spec"]["template"]["spec"]["containers"][index]


def _set_config(docs, key, value):
    find(docs, "ConfigMap", "acg2vec-config")["data"][key] = value


def _set_tendis_conf(docs, old, new):
    cm = find(docs, "ConfigMap", "tendis-config")
    assert old in cm["data"]["tendisplus.conf"]
    cm["data"]["tendisplus.conf"] = cm["data"]["tendisplus.conf"].replace(old, new)


def _volume(docs, kind, name, volume):
    spec = find(docs, kind, name)["spec"]["template"]["spec"]
    return next(v for v in spec["volumes"] if v["name"] == volume)


def _first_alert(docs):
    return find(docs, "PrometheusRule", "acg2vec")["spec"]["groups"][0]["rules"][0]


# (check, overlay, how to break it, a phrase the problem must contain)
BREAKAGES = [
    (
        "monitoring",
        "dev",
        lambda d: find(d, "PodMonitor", "acg2vec")["spec"]["podMetricsEndpoints"][0].update(port="grpc"),
        "not the metrics port 9090",
    ),
    (
        "monitoring",
        "prod",
        lambda d: find(d, "PodMonitor", "acg2vec")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/name": "tfserving"}
        ),
        "matches no server pod",
    ),
    (
        "monitoring",
        "prod",
        lambda d: find(d, "HorizontalPodAutoscaler", "acg2vec")["spec"]["metrics"][1]["pods"]["metric"].update(
            name="grpc_in_flight"
        ),
        "not served by the adapter rule",
    ),
    ("monitoring", "dev", lambda d: _first_alert(d)["annotations"].pop("runbook"), "no runbook annotation"),
    ("monitoring", "dev", lambda d: _first_alert(d).update(expr="up == 0"), 'select job="acg2vec"'),
    (
        "monitoring",
        "prod",
        lambda d: find(d, "ConfigMap", "acg2vec-grafana-dashboard")["metadata"]["labels"].pop("grafana_dashboard"),
        "grafana_dashboard=1 missing",
    ),
    (
        "security",
        "dev",
        lambda d: _set_config(d, "ACG2VEC_TLS_CERT_FILE", "/etc/certs/tls.crt"),
        "not in a mounted Secret",
    ),
    (
        "security",
        "prod",
        lambda d: _set_config(d, "ACG2VEC_AUTH_TOKENS_FILE", "/etc/acg2vec/auth/tokens.txt"),
        "no key",
    ),
    ("security", "prod", lambda d: _set_config(d, "ACG2VEC_AUTH", "none"), "must authenticate callers"),
    ("security", "dev", lambda d: _set_config(d, "ACG2VEC_AUTH_TOKENS", "a read x"), "put it in a Secret"),
    (
        "security",
        "prod",
        lambda d: _container(d, "Deployment", "acg2vec")["readinessProbe"]["grpc"].update(port=50051),
        "not the plaintext health port",
    ),
    ("security", "dev", lambda d: _set_config(d, "ACG2VEC_HEALTH_LISTEN", "127.0.0.1:50052"), "bind 0.0.0.0"),
    (
        "security",
        "prod",
        lambda d: _volume(d, "Job", "acg2vec-index", "server-ca")["secret"].pop("items"),
        "private key tls.key",
    ),
    (
        "security",
        "dev",
        lambda d: _volume(d, "Deployment", "acg2vec", "auth")["secret"].update(defaultMode=0o644),
        "world-readable",
    ),
    (
        "security",
        "dev",
        lambda d: _container(d, "Job", "acg2vec-index")["args"].__setitem__(-1, "/tmp/token"),
        "--token-file /tmp/token is not in a mounted Secret",
    ),
    (
        "services",
        "dev",
        lambda d: find(d, "Service", "tfserving")["spec"]["selector"].update({"app.kubernetes.io/name": "tf-serving"}),
        "matches no pod template",
    ),
    (
        "services",
        "prod",
        lambda d: find(d, "Service", "acg2vec")["spec"]["ports"][1].update(targetPort="prometheus"),
        "targetPort prometheus",
    ),
    (
        "services",
        "dev",
        lambda d: find(d, "Service", "acg2vec")["spec"]["selector"].pop("app.kubernetes.io/component"),
        "selects the pods of Job/",
    ),
    (
        "probes",
        "dev",
        lambda d: _container(d, "Deployment", "acg2vec")["livenessProbe"]["grpc"].update(port=50099),
        "port 50099",
    ),
    (
        "probes",
        "prod",
        lambda d: _container(d, "StatefulSet", "tendis")["readinessProbe"]["tcpSocket"].update(port="client"),
        "port client",
    ),
    (
        "references",
        "dev",
        lambda d: _container(d, "Deployment", "acg2vec")["envFrom"][1]["secretRef"].update(name="acg2vec-secret"),
        "missing Secret acg2vec-secret",
    ),
    (
        "references",
        "prod",
        lambda d: find(d, "Deployment", "tfserving")["spec"]["template"]["spec"]["volumes"][0][
            "persistentVolumeClaim"
        ].update(claimName="models"),
        "missing PVC models",
    ),
    (
        "references",
        "prod",
        lambda d: d.remove(find(d, "ConfigMap", "tfserving-config")),
        "missing ConfigMap tfserving-config",
    ),
    (
        "settings_keys",
        "dev",
        lambda d: _set_config(d, "ACG2VEC_TFSERVING_ADDRESS", "tfserving:8500"),
        "ACG2VEC_TFSERVING_ADDRESS is not a setting",
    ),
    ("settings_keys", "prod", lambda d: _set_config(d, "ACG2VEC_INFERENCE_BACKEND", "tf-serving"), "not one of"),
    ("settings_keys", "prod", lambda d: _set_config(d, "ACG2VEC_METRICS_PORT", "nine"), "not a valid int"),
    (
        "backends",
        "dev",
        lambda d: _set_config(d, "ACG2VEC_TFSERVING_TARGET", "tfserving:9000"),
        "ACG2VEC_TFSERVING_TARGET tfserving:9000",
    ),
    (
        "backends",
        "prod",
        lambda d: _set_config(d, "ACG2VEC_MILVUS_URI", "http://milvus:19530"),
        "neither a Service port nor a Milvus",
    ),
    (
        "backends",
        "prod",
        lambda d: _set_config(d, "ACG2VEC_MILVUS_URI", "/var/lib/acg2vec/milvus.db"),
        "must be http://",
    ),
    ("backends", "prod", lambda d: _set_config(d, "ACG2VEC_REDIS_URL", "redis://tendis:51002/3"), "database 0"),
    ("backends", "dev", lambda d: _set_config(d, "ACG2VEC_REDIS_URL", "redis://tendis:6379/0"), "no such Service"),
    ("backends", "dev", lambda d: _set_config(d, "ACG2VEC_MODEL_REPOSITORY", "/var/lib/acg2vec/models"), "model"),
    (
        "autoscaling",
        "prod",
        lambda d: find(d, "HorizontalPodAutoscaler", "acg2vec")["spec"]["scaleTargetRef"].update(name="acg2vec-server"),
        "does not exist",
    ),
    ("autoscaling", "prod", lambda d: find(d, "Deployment", "acg2vec")["spec"].update(replicas=1), "fights its HPA"),
    (
        "autoscaling",
        "dev",
        lambda d: find(d, "PodDisruptionBudget", "acg2vec")["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "api"}
        ),
        "matches no Deployment",
    ),
    (
        "network_policy",
        "dev",
        lambda d: find(d, "NetworkPolicy", "acg2vec-server")["spec"]["podSelector"]["matchLabels"].pop(
            "app.kubernetes.io/component"
        ),
        "also selects Job/",
    ),
    (
        "network_policy",
        "prod",
        lambda d: find(d, "NetworkPolicy", "acg2vec-server")["spec"]["egress"][2]["ports"][0].update(port=6379),
        "no egress to tendis",
    ),
    (
        "network_policy",
        "prod",
        lambda d: find(d, "NetworkPolicy", "acg2vec-server")["spec"]["egress"][1]["to"][0]["podSelector"][
            "matchLabels"
        ].update({"app.kubernetes.io/instance": "vectors"}),
        "no egress to milvus",
    ),
    (
        "network_policy",
        "dev",
        lambda d: find(d, "NetworkPolicy", "acg2vec-server")["spec"]["ingress"][1]["from"].append({"podSelector": {}}),
        "open to every pod",
    ),
    (
        "graceful_shutdown",
        "prod",
        lambda d: _set_config(d, "ACG2VEC_GRACE_PERIOD_S", "30"),
        "terminationGracePeriodSeconds 30",
    ),
    (
        "pod_security",
        "dev",
        lambda d: _container(d, "Deployment", "tfserving")["securityContext"].update(readOnlyRootFilesystem=False),
        "readOnlyRootFilesystem",
    ),
    (
        "images",
        "prod",
        lambda d: _container(d, "StatefulSet", "tendis").update(image="tencentdbforkv/tendisplus:latest"),
        "latest",
    ),
    (
        "images",
        "dev",
        lambda d: find(d, "Milvus", "milvus")["spec"]["components"].update(image="milvusdb/milvus"),
        "no tag",
    ),
    (
        "indexed_jobs",
        "prod",
        lambda d: find(d, "Job", "acg2vec-index")["spec"].update(completions=12),
        "--shard-count 16 != completions 12",
    ),
    (
        "indexed_jobs",
        "dev",
        lambda d: _container(d, "Job", "acg2vec-index")["args"].__setitem__(3, "acg2vec:8080"),
        "--target acg2vec:8080",
    ),
    (
        "tfserving",
        "prod",
        lambda d: find(d, "ConfigMap", "tfserving-config")["data"].update(
            {"batching_parameters.txt": "max_batch_size { value: 16 }\n"}
        ),
        "max_batch_size",
    ),
    (
        "tfserving",
        "prod",
        lambda d: _set_config(d, "ACG2VEC_INFERENCE_CONCURRENCY", "1"),
        "ACG2VEC_INFERENCE_CONCURRENCY 1 != TF-Serving replicas 3 x num_batch_threads 4 = 12",
    ),
    (
        "tfserving",
        "prod",
        lambda d: find(d, "HorizontalPodAutoscaler", "acg2vec")["spec"].update(maxReplicas=200),
        "raise max_enqueued_batches",
    ),
    (
        "tfserving",
        "prod",
        lambda d: _container(d, "Deployment", "tfserving")["args"].remove(
            "--grpc_channel_arguments=grpc.max_connection_age_ms=300000,grpc.max_connection_age_grace_ms=60000"
        ),
        "never use a pod added later",
    ),
    (
        "backends",
        "prod",
        lambda d: _set_config(d, "ACG2VEC_TFSERVING_TARGET", "tfserving:8500"),
        "per-call balancing over the TF-Serving pods needs dns:///",
    ),
    (
        "backends",
        "dev",
        lambda d: find(d, "Service", "tfserving-headless")["spec"].pop("clusterIP"),
        "a ClusterIP Service pins each server to one pod",
    ),
    (
        "tfserving",
        "dev",
        lambda d: _container(d, "Job", "acg2vec-models").update(args=["echo no models"]),
        "no Job builds the models",
    ),
    (
        "tfserving",
        "dev",
        lambda d: find(d, "PersistentVolumeClaim", "acg2vec-models")["spec"].update(accessModes=["ReadWriteOnce"]),
        "ReadOnlyMany",
    ),
    (
        "tendis",
        "prod",
        lambda d: _set_tendis_conf(d, "domain-enabled yes\n", ""),
        "a cluster needs domain-enabled yes",
    ),
    (
        "tendis",
        "prod",
        lambda d: _container(d, "StatefulSet", "tendis")["args"].__setitem__(
            0, _container(d, "StatefulSet", "tendis")["args"][0].replace("s/^bind .*/bind $name/", "")
        ),
        "must bind the pod's own DNS name",
    ),
    (
        "tendis",
        "prod",
        lambda d: find(d, "StatefulSet", "tendis")["spec"].update(replicas=8),
        "TENDIS_REPLICAS 6 != StatefulSet replicas 8",
    ),
    (
        "tendis",
        "prod",
        lambda d: _set_tendis_conf(d, "cluster-enabled yes", "cluster-enabled no"),
        "cluster-enabled should be yes",
    ),
    ("tendis", "dev", lambda d: _set_tendis_conf(d, "port 51002", "port 6379"), "differs from tendisplus.conf"),
    ("tendis", "dev", lambda d: _set_tendis_conf(d, "daemon no", "daemon  no"), "one space"),
    (
        "tendis",
        "prod",
        lambda d: _set_tendis_conf(d, "rocks.blockcachemb 2048", "rocks.blockcachemb 8192"),
        "does not fit",
    ),
]


@pytest.mark.parametrize(
    ("check", "overlay", "breakage", "phrase"), BREAKAGES, ids=[f"{b[0]}-{b[1]}-{i}" for i, b in enumerate(BREAKAGES)]
)
def test_checks_catch_broken_manifests(rendered, check, overlay, breakage, phrase):
    docs = copy.deepcopy(rendered[overlay])
    breakage(docs)
    problems = CHECKS[check](docs, overlay)
    assert any(phrase in p for p in problems), problems


@pytest.mark.parametrize(
    ("overlay", "mode", "edit", "phrase"),
    [
        ("prod", "cluster", lambda s: s["components"].update(standalone={"replicas": 1}), "standalone component"),
        ("prod", "cluster", lambda s: s["dependencies"].update(msgStreamType="rocksmq"), "standalone-only"),
        ("prod", "cluster", lambda s: s["dependencies"]["etcd"].update(external=True), "etcd"),
        ("dev", "standalone", lambda s: s.update(mode="cluster"), "expected standalone"),
        ("dev", "standalone", lambda s: s["components"].update(querynode={"replicas": 1}), "querynode"),
        # the operator's field is disableMetric; its CRD has no disableMetrics
        ("dev", "standalone", lambda s: s["components"].update(disableMetrics=True), "'disableMetrics' was unexpected"),
        ("prod", "cluster", lambda s: s["components"]["proxy"].update(replicas="2"), "is not of type 'integer'"),
        ("dev", "standalone", lambda s: s["dependencies"].update(msgStreamType="zeromq"), "is not one of"),
        ("dev", "standalone", lambda s: s["dependencies"].update(msgStreamType="rocksmq"), "enableRollingUpdate"),
        ("prod", "cluster", lambda s: s["dependencies"].update(storage={"external": True}), "storage.endpoint"),
    ],
)
def test_milvus_check_catches_broken_resources(rendered, overlay, mode, edit, phrase):
    docs = copy.deepcopy(rendered[overlay])
    edit(find(docs, "Milvus", "milvus")["spec"])
    problems = check_milvus(docs, mode)
    assert any(phrase in p for p in problems), problems


# --------------------------------------------------------------------------------------------- scale per overlay


def _effective_replicas(docs: list[dict], workload: dict) -> tuple[int, int]:
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == workload["metadata"]["name"]:
            return hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
    n = workload["spec"].get("replicas", 1)
    return n, n


def test_dev_runs_one_replica_of_everything(rendered):
    docs = rendered["dev"]
    for w in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet"):
        assert _effective_replicas(docs, w) == (1, 1), w["metadata"]["name"]
    index = find(docs, "Job", "acg2vec-index")["spec"]
    assert index["completions"] == index["parallelism"] == 1
    milvus = find(docs, "Milvus", "milvus")["spec"]
    assert milvus["mode"] == "standalone" and milvus["components"]["standalone"]["replicas"] == 1
    assert "cluster-enabled no" in find(docs, "ConfigMap", "tendis-config")["data"]["tendisplus.conf"]


def test_prod_is_scaled_out(rendered):
    docs = rendered["prod"]
    assert _effective_replicas(docs, find(docs, "Deployment", "acg2vec"))[0] >= 3
    assert find(docs, "Deployment", "tfserving")["spec"]["replicas"] == 3
    assert find(docs, "StatefulSet", "tendis")["spec"]["replicas"] == 6
    assert find(docs, "Milvus", "milvus")["spec"]["mode"] == "cluster"
    assert find(docs, "Job", "acg2vec-index")["spec"]["parallelism"] > 1
    for name in ("tfserving", "tendis"):
        assert find(docs, "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1


def test_indexer_job_is_created_suspended(rendered):
    for overlay in OVERLAYS:
        assert find(rendered[overlay], "Job", "acg2vec-index")["spec"]["suspend"] is True


# --------------------------------------------------------------------------------------------- Settings by ast


def test_settings_fields_parsed_by_ast_match_the_settings_class():
    fields = settings_fields()
    for name in (
        "listen",
        "metrics_port",
        "grace_period_s",
        "inference_backend",
        "tfserving_target",
        "milvus_uri",
        "redis_url",
        "model_repository",
        "data_dir",
        "max_batch_size",
    ):
        assert name in fields
    assert fields["inference_backend"].choices == ("inprocess", "tfserving")
    assert fields["metrics_port"].kind == "int" and fields["grace_period_s"].kind == "float"
    assert fields["auth_tokens"].secret and fields["milvus_token"].secret and not fields["auth_tokens_file"].secret
    try:
        from acg2vec_server.settings import Settings
    except Exception as err:  # a concurrent edit may break the import; the ast reading is what tests rely on
        pytest.skip(f"acg2vec_server.settings does not import: {err}")
    assert set(fields) == set(Settings.model_fields)


# ---------------------------------------------------------------------------------------- the Tendis cluster script


def _tool(name: str) -> str | None:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else shutil.which(name)


@pytest.mark.skipif(
    _tool("redis-server") is None or _tool("redis-cli") is None or shutil.which("sh") is None,
    reason="needs redis-server and redis-cli",
)
def test_tendis_cluster_script_forms_a_cluster_and_is_idempotent(tmp_path):
    """The prod cluster-forming script, run against six Redis Cluster nodes (the protocol Tendis speaks); then every
    node restarts at once and the cluster re-forms by itself, from what each node saved, with no MEET."""
    script = K8S / "overlays" / "prod" / "tendis" / "tendis-cluster-init.sh"
    server, cli = _tool("redis-server"), _tool("redis-cli")
    ports = cluster_ports(6)
    procs: list[subprocess.Popen] = []

    def start_nodes() -> None:
        for port in ports:
            d = tmp_path / str(port)
            d.mkdir(exist_ok=True)
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", "--save", "",
                    "--appendonly", "yes", "--dir", str(d)]  # fmt: skip
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop_nodes() -> None:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        procs.clear()

    def redis(port: int, *command: str) -> str:
        return subprocess.run([cli, "-c", "-p", str(port), *command], capture_output=True, text=True).stdout.strip()

    try:
        start_nodes()
        env = {
            **os.environ,
            "TENDIS_NODES": " ".join(f"127.0.0.1:{p}" for p in ports),
            "REDIS_CLI": cli,
            "WAIT_TIMEOUT_S": "20",
            "POLL_S": "0.2",
        }
        start = time.monotonic()
        out = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert time.monotonic() - start < 20
        nodes = subprocess.run([cli, "-p", str(ports[0]), "cluster", "nodes"], capture_output=True, text=True).stdout
        roles = [line.split()[2].replace("myself,", "") for line in nodes.splitlines() if line.strip()]
        assert sorted(roles) == ["master"] * 3 + ["slave"] * 3, nodes
        info = subprocess.run([cli, "-p", str(ports[3]), "cluster", "info"], capture_output=True, text=True).stdout
        assert "cluster_state:ok" in info
        # a key written through one node is readable through another (slots are served)
        assert (
            subprocess.run(
                [cli, "-c", "-p", str(ports[1]), "set", "acg2vec:k", "v"], capture_output=True, text=True
            ).stdout.strip()
            == "OK"
        )
        assert (
            subprocess.run(
                [cli, "-c", "-p", str(ports[5]), "get", "acg2vec:k"], capture_output=True, text=True
            ).stdout.strip()
            == "v"
        )
        again = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already formed" in again.stdout, again.stdout + again.stderr
        bad = subprocess.run(
            ["sh", str(script)],
            env={**env, "TENDIS_NODES": " ".join(f"127.0.0.1:{p}" for p in ports[:4])},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2 and "at least 3 masters" in bad.stderr

        # Every node restarts at once (in Kubernetes: every pod, each with a new IP; Tendis with domain-enabled keeps
        # the DNS names, as these nodes keep their addresses): the cluster re-forms by itself, data included.
        stop_nodes()
        start_nodes()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [redis(p, "cluster", "info") for p in ports]
            if all("cluster_state:ok" in s and "cluster_known_nodes:6" in s for s in states):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the cluster did not re-form by itself: {states}")
        assert redis(ports[4], "get", "acg2vec:k") == "v"
        nodes = redis(ports[2], "cluster", "nodes")
        roles = sorted(ln.split()[2].replace("myself,", "") for ln in nodes.splitlines())
        assert roles == ["master"] * 3 + ["slave"] * 3, nodes
        again = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already formed" in again.stdout, again.stdout + again.stderr
    finally:
        stop_nodes()
