"""OpenTelemetry tracing, off by default (`tracing` setting).

When on, `configure` installs an SDK TracerProvider with a batching OTLP exporter. The standard variables apply as
the SDK defines them: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (resource; the service name defaults to
`acg2vec`), OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (sampling), OTEL_BSP_* (batching), OTEL_PROPAGATORS
(W3C trace context and baggage by default), OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT / _PROTOCOL / _HEADERS / _TIMEOUT /
_CERTIFICATE / _INSECURE (the exporter), and OTEL_SDK_DISABLED=true turns tracing off whatever the setting says.
The settings `otlp_endpoint` and `otlp_protocol`, when set, take precedence over the OTLP variables.

The provider is kept here (and set as the global one in a serving process) so that tests can install their own
(`install`) and remove it again; everything in acg2vec asks `tracer()` for its tracer.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from acg2vec_server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "acg2vec"
_provider: TracerProvider | None = None


def enabled() -> bool:
    """Whether spans are recorded at all (checked first, so that tracing off costs nothing per call)."""
    return _provider is not None


def tracer() -> trace.Tracer:
    if _provider is None:
        return trace.NoOpTracer()
    return _provider.get_tracer("acg2vec")


def install(provider: TracerProvider | None) -> None:
    """Makes `provider` the one acg2vec records spans with (None: tracing off)."""
    global _provider
    _provider = provider


def attach(span: trace.Span | None) -> object | None:
    """Makes `span` current in this task (None: nothing); returns the token for `detach`."""
    return None if span is None else otel_context.attach(trace.set_span_in_context(span))


def detach(token: object | None, span: trace.Span | None) -> None:
    """Ends `span` and makes the previous one current again. An async generator closed by the garbage collector
    runs its `finally` in another task, whose context never had the span: there is nothing to restore then."""
    if span is None:
        return
    span.end()
    if token is not None and trace.get_current_span() is span:
        otel_context.detach(token)  # type: ignore[arg-type]


def _protocol(settings: Settings) -> str:
    return (
        settings.otlp_protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )


def exporter(settings: Settings) -> SpanExporter:
    """The OTLP span exporter the settings (and OTEL_EXPORTER_OTLP_* variables) describe."""
    protocol = _protocol(settings)
    endpoint = settings.otlp_endpoint or None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        if endpoint and urlsplit(endpoint).path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"  # as the SDK does with OTEL_EXPORTER_OTLP_ENDPOINT
        return HttpExporter(endpoint=endpoint)
    raise ValueError(f"OTLP protocol {protocol!r} is not supported: use grpc or http/protobuf")


def configure(settings: Settings) -> TracerProvider | None:
    """Installs (globally too) a provider exporting over OTLP when tracing is on; returns it, to shut it down."""
    if not settings.tracing:
        return None
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        log.info("tracing is on in the settings but OTEL_SDK_DISABLED=true: no spans are recorded")
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from acg2vec_server import __version__

    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    span_exporter = exporter(settings)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    install(provider)
    trace.set_tracer_provider(provider)
    log.info(
        "tracing on: OTLP (%s) to %s, service %s", _protocol(settings),
        getattr(span_exporter, "_endpoint", "the exporter's default"), resource.attributes["service.name"],
    )  # fmt: skip
    return provider


def shutdown(provider: TracerProvider | None) -> None:
    """Flushes the spans still queued and stops the exporter."""
    if provider is not None:
        provider.shutdown()
        if _provider is provider:
            install(None)
