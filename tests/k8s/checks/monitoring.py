"""Monitoring: the PodMonitor scrapes the server's metrics port and names the job the alerts and the dashboard select
on; every alert has a severity, a summary, a description and a runbook sentence; the Grafana dashboard ConfigMap
carries the sidecar's label and a dashboard; the HPA's custom metric is the one the prometheus-adapter rule
(k8s/monitoring/prometheus-adapter-rules.yaml) serves, and that rule is a valid adapter configuration.
(That every query reads metrics the server exports is tested against a live server: tests/test_telemetry.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml

from .objects import by_kind, container_port, find, label_selector_matches, pods, server_setting

ADAPTER_RULES = Path(__file__).resolve().parents[3] / "k8s" / "monitoring" / "prometheus-adapter-rules.yaml"
JOB = "acg2vec"
DASHBOARD_LABEL = ("grafana_dashboard", "1")

#: prometheus-adapter's config file (pkg/config/config.go, read with yaml.UnmarshalStrict: unknown keys fail).
_GROUP_RESOURCE = {
    "type": "object", "additionalProperties": False, "required": ["resource"],
    "properties": {"group": {"type": "string"}, "resource": {"type": "string"}},
}  # fmt: skip
ADAPTER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["rules"],
    "properties": {
        "rules": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["seriesQuery", "resources", "name", "metricsQuery"],
                "properties": {
                    "seriesQuery": {"type": "string"},
                    "seriesFilters": {"type": "array"},
                    "resources": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "template": {"type": "string"},
                            "overrides": {"type": "object", "additionalProperties": _GROUP_RESOURCE},
                            "namespaced": {"type": "boolean"},
                        },
                    },
                    "name": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["matches"],
                        "properties": {"matches": {"type": "string"}, "as": {"type": "string"}},
                    },
                    "metricsQuery": {"type": "string"},
                },
            },
        },
        "resourceRules": {"type": "object"},
        "externalRules": {"type": "array"},
    },
}


def adapter_rules() -> dict:
    return yaml.safe_load(ADAPTER_RULES.read_text())


def served_metric(rule: dict) -> str:
    """The custom metric name a rule serves: `name.as`, or the series name when `as` is empty."""
    series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"])
    return rule["name"].get("as") or (series.group(1) if series else "")


def check_adapter_rules(config: dict) -> list[str]:
    problems = [
        f"adapter rules: {e.json_path}: {e.message}"
        for e in jsonschema.Draft202012Validator(ADAPTER_SCHEMA).iter_errors(config)
    ]
    if problems:
        return problems
    for i, rule in enumerate(config["rules"]):
        overrides = rule["resources"].get("overrides") or {}
        if {"namespace", "pod"} - set(overrides):
            problems.append(f"adapter rule {i}: map the namespace and pod labels to their resources (per-pod metric)")
        if "<<.LabelMatchers>>" not in rule["metricsQuery"] or "<<.GroupBy>>" not in rule["metricsQuery"]:
            problems.append(f"adapter rule {i}: metricsQuery must use <<.LabelMatchers>> and <<.GroupBy>>")
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"])
        if not series or not re.search(rule["name"]["matches"], series.group(1)):
            problems.append(f"adapter rule {i}: name.matches does not match the series {rule['seriesQuery']!r}")
    return problems


def check_monitoring(docs: list[dict]) -> list[str]:
    problems: list[str] = []
    server_pods = [
        p for p in pods(docs) if p.owner["kind"] == "Deployment" and p.owner["metadata"]["name"] == "acg2vec"
    ]
    metrics_port = int(server_setting(docs, "metrics_port"))

    monitor = find(docs, "PodMonitor", JOB)
    if monitor is None:
        problems.append("no PodMonitor acg2vec: the server is not scraped")
    else:
        spec = monitor["spec"]
        chosen = [p for p in server_pods if label_selector_matches(spec.get("selector"), p.labels)]
        if not chosen:
            problems.append("PodMonitor acg2vec: its selector matches no server pod")
        others = [
            p.ref for p in pods(docs) if label_selector_matches(spec.get("selector"), p.labels) and p not in chosen
        ]
        if others:
            problems.append(f"PodMonitor acg2vec also selects {others}")
        for pod in chosen:
            if pod.labels.get(spec.get("jobLabel", "")) != JOB:
                problems.append(f'PodMonitor acg2vec: jobLabel {spec.get("jobLabel")} does not give job="{JOB}"')
            for ep in spec.get("podMetricsEndpoints") or []:
                port = container_port(pod.spec["containers"][0], ep.get("port", ep.get("portNumber", "")))
                if port is None or port["containerPort"] != metrics_port:
                    problems.append(f"PodMonitor acg2vec: port {ep.get('port')} is not the metrics port {metrics_port}")
                if ep.get("path", "/metrics") != "/metrics":
                    problems.append(f"PodMonitor acg2vec: path {ep.get('path')} is not /metrics")

    rules = by_kind(docs, "PrometheusRule")
    alerts = [r for rule in rules for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    if not alerts:
        problems.append("no alerts")
    for alert in alerts:
        name = alert["alert"]
        notes = alert.get("annotations") or {}
        for key in ("summary", "description", "runbook"):
            if not str(notes.get(key, "")).strip():
                problems.append(f"alert {name}: no {key} annotation")
        if (alert.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"alert {name}: severity label should be critical, warning or info")
        if f'job="{JOB}"' not in alert["expr"]:
            problems.append(f'alert {name}: select job="{JOB}" (the PodMonitor\'s job)')
        if not alert.get("for"):
            problems.append(f"alert {name}: no `for` (it would fire on one bad scrape)")

    board = find(docs, "ConfigMap", "acg2vec-grafana-dashboard")
    if board is None:
        problems.append("no ConfigMap acg2vec-grafana-dashboard")
    else:
        key, value = DASHBOARD_LABEL
        if (board["metadata"].get("labels") or {}).get(key) != value:
            problems.append(f"dashboard ConfigMap: label {key}={value} missing (Grafana's sidecar looks for it)")
        for file, text in (board.get("data") or {}).items():
            dashboard = json.loads(text)
            if not file.endswith(".json") or not dashboard.get("uid") or not dashboard.get("panels"):
                problems.append(f"dashboard ConfigMap: {file} is not a dashboard with a uid and panels")
            for panel in dashboard.get("panels") or []:
                for target in panel.get("targets") or []:
                    if f'job="{JOB}"' not in target.get("expr", ""):
                        problems.append(f'dashboard panel {panel.get("title")!r}: select job="{JOB}"')

    config = adapter_rules()
    problems += check_adapter_rules(config)
    served = {served_metric(r) for r in config.get("rules") or [] if isinstance(r, dict) and "name" in r}
    for hpa in by_kind(docs, "HorizontalPodAutoscaler"):
        custom = [m for m in hpa["spec"].get("metrics") or [] if m["type"] == "Pods"]
        if not custom:
            problems.append(f"HPA {hpa['metadata']['name']}: no Pods metric (calls in progress)")
        for metric in custom:
            name = metric["pods"]["metric"]["name"]
            if name not in served:
                problems.append(
                    f"HPA {hpa['metadata']['name']}: metric {name} is not served by the adapter rule ({served})"
                )
            if metric["pods"]["target"]["type"] != "AverageValue":
                problems.append(f"HPA {hpa['metadata']['name']}: a Pods metric target must be an AverageValue")
    return problems
