"""Telemetry: the standard gRPC server metrics and the backend call metrics scraped from a live `acg2vec serve`
process's /metrics; OpenTelemetry spans (a server span per RPC under the caller's W3C trace context, a child span
per backend call), captured in memory in-process and exported over OTLP by the process to a collector the test
runs; JSON logs that parse and carry the trace id; the dashboards, alerts and autoscaling rule in k8s/ query only
metrics the server exports."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from acg2vec.v1 import search_pb2, tagging_pb2, text_feature_pb2
from acg2vec_server.app import Application
from acg2vec_server.telemetry import logs, tracing
from acg2vec_testing.images import image_bytes
from acg2vec_testing.model_repository import dev_model_repository
from acg2vec_testing.paths import ROOT
from acg2vec_testing.rig import ServerProcess
from tests.support.servers import Stubs

TRACE_ID, PARENT_SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
TRACEPARENT = (("traceparent", f"00-{TRACE_ID:032x}-{PARENT_SPAN_ID:016x}-01"),)
SEARCH = "acg2vec.v1.SearchService/Search"
#: absl's log line format (TensorFlow's and gRPC core's C++ logging) and its first-line notice.
NATIVE_LOG_LINE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
)


# ------------------------------------------------------------------------------------------- spans in-process


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


async def test_a_search_is_one_server_span_under_the_callers_trace_with_a_child_per_backend_call(
    app: Application, stubs: Stubs, spans: InMemorySpanExporter
):
    meta = search_pb2.IllustrationMetadata(title="traced", fields={"source": "telemetry"})
    await stubs.search.IndexIllustration(
        search_pb2.IndexIllustrationRequest(id="traced-1", image=image_bytes(7), metadata=meta)
    )
    spans.clear()

    response = await stubs.search.Search(
        search_pb2.SearchRequest(
            text="traced", top_k=5, filter=search_pb2.SearchFilter(fields={"source": "telemetry"})
        ),
        metadata=TRACEPARENT,
    )
    assert [hit.id for hit in response.hits] == ["traced-1"]

    finished = spans.get_finished_spans()
    server = [s for s in finished if s.name == SEARCH]
    assert len(server) == 1, [s.name for s in finished]
    server_span = server[0]
    assert server_span.kind == SpanKind.SERVER
    assert server_span.context.trace_id == TRACE_ID, "the caller's trace goes on"
    assert (
        server_span.parent is not None and server_span.parent.span_id == PARENT_SPAN_ID and server_span.parent.is_remote
    )
    assert server_span.attributes["rpc.system"] == "grpc"
    assert server_span.attributes["rpc.service"] == "acg2vec.v1.SearchService"
    assert server_span.attributes["rpc.method"] == "Search"
    assert server_span.attributes["rpc.grpc.status_code"] == 0

    children = [s for s in finished if s.parent is not None and s.parent.span_id == server_span.context.span_id]
    names = {s.name for s in children}
    # the text model (through the dynamic batcher's task), the vector search, the records of the hits
    assert {"inprocess predict", "milvus search", "redis get_many"} <= names, names
    for child in children:
        assert child.kind == SpanKind.CLIENT and child.context.trace_id == TRACE_ID
        assert child.start_time >= server_span.start_time and child.end_time <= server_span.end_time
    predict = next(s for s in children if s.name == "inprocess predict")
    assert predict.attributes["acg2vec.model"] == "acgvoc2vec"
    assert next(s for s in children if s.name == "milvus search").attributes["db.system"] == "milvus"
    # nothing of this call escaped its trace
    assert all(s.context.trace_id == TRACE_ID for s in finished), [s.name for s in finished]


async def test_a_call_without_trace_context_starts_a_new_trace_and_failures_mark_the_span(
    stubs: Stubs, spans: InMemorySpanExporter
):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stubs.text.ExtractTextFeature(text_feature_pb2.ExtractTextFeatureRequest(text=""))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (span,) = [s for s in spans.get_finished_spans() if s.name.endswith("/ExtractTextFeature")]
    assert span.parent is None and span.context.trace_id != TRACE_ID
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.status.is_ok, "a caller's mistake is not a server error (OpenTelemetry RPC conventions)"


def test_json_log_lines_carry_the_current_trace(spans: InMemorySpanExporter):
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("acg2vec.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    record.grpc_code = "OK"
    with tracing.tracer().start_as_current_span("outer") as span:
        inside = json.loads(formatter.format(record))
    outside = json.loads(formatter.format(record))
    assert inside["message"] == outside["message"] == "hello world"
    assert inside["level"] == "WARNING" and inside["logger"] == "acg2vec.test" and inside["grpc_code"] == "OK"
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "trace_id" not in outside and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", outside["time"])
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(formatter.format(record))["exception"]


# ---------------------------------------------------------------------------------- a live `acg2vec serve`


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: what an OpenTelemetry Collector's otlp receiver accepts."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list:
        return [
            span
            for request in self.requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def service_names(self) -> set[str]:
        return {
            a.value.string_value
            for r in self.requests
            for rs in r.resource_spans
            for a in rs.resource.attributes
            if a.key == "service.name"
        }


class Live:
    def __init__(self, server: ServerProcess, collector: Collector, metrics_text: str, log_lines: list[str]):
        self.server, self.collector, self.metrics_text, self.log_lines = server, collector, metrics_text, log_lines

    def samples(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (s.labels, s.value)
            for family in text_string_to_metric_families(self.metrics_text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        found = self.samples(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {found}"
        return found[0][1]

    def exported_names(self) -> set[str]:
        """Every series name /metrics offers, also of metrics declared with labels but not used yet (their HELP and
        TYPE lines are there; e.g. acg2vec_inference_refused_total before a first refusal)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
        names = set()
        for family in text_string_to_metric_families(self.metrics_text):
            names |= {s.name for s in family.samples}
            names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        return names


async def exercise(target: str) -> None:
    """Calls of every kind: unary OK and refused, a bidirectional stream, a batch, an index and a traced search."""
    async with grpc.aio.insecure_channel(target) as channel:
        stubs = Stubs(channel)
        await stubs.tagging.TagImage(tagging_pb2.TagImageRequest(image=image_bytes(3)))
        with pytest.raises(grpc.aio.AioRpcError):
            await stubs.text.ExtractTextFeature(text_feature_pb2.ExtractTextFeatureRequest(text=""))

        async def two():
            for i in range(2):
                yield text_feature_pb2.StreamExtractTextFeaturesRequest(request_id=f"r{i}", text=f"text {i}")

        answers = [a async for a in stubs.text.StreamExtractTextFeatures(two())]
        assert len(answers) == 2
        await stubs.text.BatchExtractTextFeatures(text_feature_pb2.BatchExtractTextFeaturesRequest(texts=["a", "b"]))
        meta = search_pb2.IllustrationMetadata(title="live", fields={"source": "live"})
        await stubs.search.IndexIllustration(
            search_pb2.IndexIllustrationRequest(id="live-1", image=image_bytes(5), metadata=meta)
        )
        response = await stubs.search.Search(
            search_pb2.SearchRequest(text="live", top_k=3, filter=search_pb2.SearchFilter(fields={"source": "live"})),
            metadata=TRACEPARENT,
        )
        assert [h.id for h in response.hits] == ["live-1"]


@pytest_asyncio.fixture(scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    collector = Collector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    otlp_port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    server = ServerProcess(
        tmp_path_factory.mktemp("telemetry"),
        {
            "ACG2VEC_MODEL_REPOSITORY": str(dev_model_repository()), "ACG2VEC_MILVUS_INDEX_TYPE": "FLAT",
            "ACG2VEC_ACCESS_LOG": "true", "ACG2VEC_LOG_FORMAT": "json",
            "ACG2VEC_TRACING": "true", "ACG2VEC_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
            "OTEL_SERVICE_NAME": "acg2vec-under-test", "OTEL_BSP_SCHEDULE_DELAY": "200",
            "ACG2VEC_HEALTH_PROBE_INTERVAL_S": "0.5",
        },
    )  # fmt: skip
    try:
        await server.start()
        await exercise(server.target)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as answer:
            metrics_text = answer.read().decode()
    finally:
        code = await asyncio.to_thread(server.stop)  # SIGTERM: the spans still queued are exported on the way out
        await receiver.stop(0)
    assert code == 0, server.log.read_text()[-3000:]
    yield Live(server, collector, metrics_text, server.log.read_text().splitlines())


def test_grpc_server_metrics_have_the_go_grpc_prometheus_names_and_labels(live: Live):
    text = ("acg2vec.v1.TextFeatureService", "ExtractTextFeature")
    unary = {"grpc_type": "unary", "grpc_service": text[0], "grpc_method": text[1]}
    assert live.value("grpc_server_started_total", **unary) == 1
    assert live.value("grpc_server_handled_total", **unary, grpc_code="OK") == 0
    assert live.value("grpc_server_handled_total", **unary, grpc_code="InvalidArgument") == 1
    assert live.value("grpc_server_msg_received_total", **unary) == 1
    assert live.value("grpc_server_msg_sent_total", **unary) == 0, "a failed unary call sends no message"
    assert live.value("grpc_server_handling_seconds_count", **unary) == 1
    buckets = live.samples("grpc_server_handling_seconds_bucket", **unary)
    assert {labels["le"] for labels, _ in buckets} >= {"0.005", "0.1", "1.0", "+Inf"}

    bidi = {"grpc_type": "bidi_stream", "grpc_service": text[0], "grpc_method": "StreamExtractTextFeatures"}
    assert live.value("grpc_server_started_total", **bidi) == 1
    assert live.value("grpc_server_msg_received_total", **bidi) == 2
    assert live.value("grpc_server_msg_sent_total", **bidi) == 2
    assert live.value("grpc_server_handled_total", **bidi, grpc_code="OK") == 1

    tag = {"grpc_type": "unary", "grpc_service": "acg2vec.v1.TaggingService", "grpc_method": "TagImage"}
    assert live.value("grpc_server_handled_total", **tag, grpc_code="OK") == 1
    assert live.value("grpc_server_msg_sent_total", **tag) == 1
    # every method of every served service starts at zero, with every code (go-grpc-prometheus' InitializeMetrics)
    never = {"grpc_type": "unary", "grpc_service": "acg2vec.v1.TaggingService", "grpc_method": "PredictPopularity"}
    codes = {labels["grpc_code"] for labels, _ in live.samples("grpc_server_handled_total", **never)}
    assert {"OK", "Canceled", "InvalidArgument", "ResourceExhausted", "Unavailable", "DataLoss"} <= codes
    assert len(codes) == 17
    watch = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
    assert [labels["grpc_type"] for labels, _ in live.samples("grpc_server_started_total", **watch)] == [
        "server_stream"
    ]
    assert (
        live.samples("grpc_server_started_total", grpc_method="ServerReflectionInfo")[0][0]["grpc_type"]
        == "bidi_stream"
    )
    # ours: calls in progress (none now) and the limit they are measured against
    assert live.value("acg2vec_grpc_server_in_flight_calls", **unary) == 0
    assert live.value("acg2vec_grpc_server_max_concurrent_calls") == 256
    assert live.value("acg2vec_health_serving", service="all") == 1
    assert not [n for n in live.exported_names() if n.startswith("acg2vec_grpc_request")], "the old names are gone"


def test_backend_call_metrics_by_backend_and_operation(live: Live):
    assert live.value("acg2vec_backend_calls_total", backend="inprocess", operation="predict") >= 5
    assert live.value("acg2vec_backend_calls_total", backend="milvus", operation="search") == 1
    assert live.value("acg2vec_backend_calls_total", backend="milvus", operation="upsert") == 1
    assert live.value("acg2vec_backend_calls_total", backend="redis", operation="get_many") >= 1
    assert live.value("acg2vec_backend_calls_total", backend="redis", operation="ping") >= 1  # health probes
    assert live.value("acg2vec_backend_call_duration_seconds_count", backend="milvus", operation="search") == 1
    assert live.value("acg2vec_backend_errors_total", backend="milvus", operation="search", error="unavailable") == 0
    # the refused empty text never reached a model; nothing failed in a backend. One error is by design: the first
    # binding of a new deployment asks whether the optional joint image-text model is installed (it is not here).
    # A health probe's ping that outlives the probe's timeout on a busy machine is cancelled by the probe (counted
    # as error="cancelled"): the prober gave up, no backend failed.
    probe = {"backend": "inprocess", "operation": "describe", "error": "model_not_installed"}
    errors = [(labels, v) for labels, v in live.samples("acg2vec_backend_errors_total") if v]
    gave_up = [lb for lb, _ in errors if (lb.get("operation"), lb.get("error")) == ("ping", "cancelled")]
    assert [(labels, v) for labels, v in errors if labels != probe and labels not in gave_up] == []
    assert live.value("acg2vec_backend_errors_total", **probe) <= 1  # once, not on every health probe


def test_spans_are_exported_over_otlp_with_the_callers_trace(live: Live):
    assert live.collector.service_names() == {"acg2vec-under-test"}, "OTEL_SERVICE_NAME is honoured"
    traced = [s for s in live.collector.spans() if s.trace_id == TRACE_ID.to_bytes(16, "big")]
    server = [s for s in traced if s.name == SEARCH]
    assert len(server) == 1, [s.name for s in traced]
    assert server[0].parent_span_id == PARENT_SPAN_ID.to_bytes(8, "big")
    children = {s.name for s in traced if s.parent_span_id == server[0].span_id}
    assert {"inprocess predict", "milvus search", "redis get_many"} <= children, children


def test_json_logs_parse_and_the_access_log_carries_the_trace(live: Live):
    records, native = [], []
    for line in live.log_lines:
        if line.startswith("{"):
            records.append(json.loads(line))  # every line the server logged is one JSON object
        elif line.strip():
            native.append(line)
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    # what is not JSON was written by native code straight to stderr (TensorFlow's C++ logging through absl at
    # start-up), not through Python's logging: nothing of ours
    assert all(NATIVE_LOG_LINE.match(line) for line in native), native
    access = [r for r in records if r["logger"] == "acg2vec.access"]
    search = [r for r in access if r.get("grpc_method") == "Search"]
    assert len(search) == 1
    (server_span,) = [s for s in live.collector.spans() if s.name == SEARCH]
    assert search[0]["trace_id"] == f"{TRACE_ID:032x}"
    assert search[0]["span_id"] == server_span.span_id.hex()
    assert search[0]["grpc_code"] == "OK" and search[0]["grpc_service"] == "acg2vec.v1.SearchService"
    refused = [r for r in access if r.get("grpc_method") == "ExtractTextFeature"]
    assert refused[0]["grpc_code"] == "InvalidArgument" and len(refused[0]["trace_id"]) == 32


# --------------------------------------------------------------------- k8s: queries only of exported metrics

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
    # aggregation operators (followed by `by (...)` rather than their parenthesis)
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, grouping labels, functions and strings left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"<<[^>]*>>", "", expr)  # prometheus-adapter templates
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[m.end() :].lstrip()
        word = m.group(0)
        if rest.startswith("(") or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]?", word):
            continue
        if expr[max(0, m.start() - 1)] in "0123456789.":  # a number's exponent or unit
            continue
        names.add(word)
    return names


def k8s_queries() -> dict[str, str]:
    """Every PromQL expression in the dashboard, the alert rules and the prometheus-adapter rule."""
    queries: dict[str, str] = {}
    monitoring = ROOT / "k8s" / "base" / "monitoring"
    dashboard = json.loads((monitoring / "dashboards" / "acg2vec.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"dashboard {panel['title']!r} {target['refId']}"] = target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":  # label_values(<series selector>, <label>)
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
            assert selector, var["definition"]
            queries[f"dashboard variable {var['name']}"] = selector.group(1)
    rules = yaml.safe_load((monitoring / "prometheusrule.yaml").read_text())
    for group in rules["spec"]["groups"]:
        for rule in group["rules"]:
            queries[f"alert {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    adapter = yaml.safe_load((ROOT / "k8s" / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    for i, rule in enumerate(adapter["rules"]):
        queries[f"adapter rule {i} series"] = rule["seriesQuery"]
        queries[f"adapter rule {i} metrics"] = rule["metricsQuery"]
    return queries


def test_promql_metric_name_extraction():
    assert metric_names('sum by (grpc_method) (rate(grpc_server_handled_total{grpc_code!="OK"}[5m]))') == {
        "grpc_server_handled_total"
    }
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) > 1.5e3") == {"x_bucket"}
    assert metric_names('up{job="acg2vec"} == 0 or absent(up{job="acg2vec"})') == {"up"}


def test_dashboards_alerts_and_the_adapter_rule_query_only_exported_metrics(live: Live):
    exported = live.exported_names() | {"up"}  # `up`: Prometheus' own series per scrape target
    queries = k8s_queries()
    assert len(queries) >= 15
    used = set()
    for where, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        missing = names - exported
        assert not missing, f"{where} reads {sorted(missing)}, which the server does not export ({expr!r})"
        used |= names
    for standard in ("grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "grpc_server_started_total"):
        assert standard in used, f"nothing in k8s/ shows {standard}"


def test_tracing_is_off_by_default_and_the_otlp_exporter_follows_the_settings_and_otel_variables(monkeypatch):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    from acg2vec_server.settings import Settings

    for name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().tracing is False and Settings().log_format == "text"
    assert tracing.configure(Settings()) is None and not tracing.enabled()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure(Settings(tracing=True)) is None and not tracing.enabled()

    grpc_exporter = tracing.exporter(Settings(tracing=True, otlp_endpoint="http://collector:4317"))
    assert isinstance(grpc_exporter, GrpcExporter) and grpc_exporter._endpoint == "collector:4317"
    http_exporter = tracing.exporter(
        Settings(tracing=True, otlp_endpoint="http://collector:4318", otlp_protocol="http/protobuf")
    )
    assert isinstance(http_exporter, HttpExporter) and http_exporter._endpoint == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://elsewhere:4318/v1/traces")
    from_env = tracing.exporter(Settings(tracing=True))
    assert isinstance(from_env, HttpExporter) and from_env._endpoint == "http://elsewhere:4318/v1/traces"
    with pytest.raises(ValueError, match="grpc or http/protobuf"):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        tracing.exporter(Settings(tracing=True))
