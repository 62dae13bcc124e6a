"""Observability at the transport (an interceptor): Prometheus metrics, a server span and an access-log line per call.

Metrics follow go-grpc-prometheus (grpc-ecosystem/go-grpc-prometheus, server_metrics.go / server_reporter.go /
util.go), which py-grpc-prometheus copies, so that stock gRPC dashboards and alerts apply:
  grpc_server_started_total{grpc_type,grpc_service,grpc_method}             at the start of every call
  grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}   at its end, with its status code
  grpc_server_msg_received_total / grpc_server_msg_sent_total{...}         per message (unary: 1 received, and 1
                                                                            sent when it succeeds)
  grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}          histogram of the call's duration
grpc_type is unary, client_stream, server_stream or bidi_stream; grpc_code is Go's codes.Code.String() (OK,
Canceled, InvalidArgument, ResourceExhausted, ...: py-grpc-prometheus writes Python's enum names instead, we follow
Go, which dashboards and alert rules are written for). As go-grpc-prometheus' InitializeMetrics does, every method
of the served services starts at zero (`initialize`). Two series of our own:
  acg2vec_grpc_server_in_flight_calls{grpc_type,grpc_service,grpc_method}   calls in progress (the HPA scales on it)
  acg2vec_grpc_server_max_concurrent_calls                                  the admission limit (saturation = ratio)

Server span (OpenTelemetry, when tracing is on): `<service>/<method>`, kind SERVER, child of the W3C trace context
the caller sent in its metadata (`traceparent`), with the rpc.* attributes of the OpenTelemetry RPC conventions.
The access-log line is written inside it, so a JSON log line carries its trace_id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from opentelemetry import propagate
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram

from acg2vec_server.telemetry import tracing
from acg2vec_server.transport.auth import current_client
from acg2vec_server.transport.handlers import HandlerInterceptor, rebuild

access_log = logging.getLogger("acg2vec.access")

LABELS = ["grpc_type", "grpc_service", "grpc_method"]
STARTED = Counter("grpc_server_started_total", "Total number of RPCs started on the server.", LABELS)
HANDLED = Counter(
    "grpc_server_handled_total", "Total number of RPCs completed on the server, regardless of success or failure.",
    [*LABELS, "grpc_code"],
)  # fmt: skip
MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", LABELS
)
MSG_SENT = Counter("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", LABELS)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
    LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)  # fmt: skip
IN_FLIGHT = Gauge("acg2vec_grpc_server_in_flight_calls", "RPCs in progress on the server.", LABELS)
CALL_LIMIT = Gauge(
    "acg2vec_grpc_server_max_concurrent_calls", "The limit on calls in progress (max_concurrent_calls; 0: none)."
)

#: Python's status code -> Go's codes.Code.String() (grpc-go codes/code_string.go).
GO_CODE_NAMES = {
    code: "Canceled" if code is grpc.StatusCode.CANCELLED else "".join(w.capitalize() for w in code.name.split("_"))
    for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK"}
#: Codes that mark a server span as failed (OpenTelemetry RPC conventions: errors of the server, not the caller).
SERVER_ERRORS = frozenset({"Unknown", "DeadlineExceeded", "Unimplemented", "Internal", "Unavailable", "DataLoss"})


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming:
        return "bidi_stream" if response_streaming else "client_stream"
    return "server_stream" if response_streaming else "unary"


def split_method(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return (service, method) if method else ("unknown", "unknown")


def initialize(service_names: Iterable[str], max_concurrent_calls: int) -> None:
    """Every method of these services gets its series at zero before the first call (go-grpc-prometheus'
    InitializeMetrics), so that rates and ratios exist from the start."""
    CALL_LIMIT.set(max_concurrent_calls)
    pool = descriptor_pool.Default()
    for name in service_names:
        service = pool.FindServiceByName(name)
        for method in service.methods:
            labels = (grpc_type(method.client_streaming, method.server_streaming), service.full_name, method.name)
            for metric in (STARTED, MSG_RECEIVED, MSG_SENT, HANDLING, IN_FLIGHT):
                metric.labels(*labels)
            for code in GO_CODE_NAMES.values():
                HANDLED.labels(*labels, code)


def _status(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, tuple):
        return grpc.StatusCode(code)
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):  # the caller went away, or its deadline passed
        remaining = context.time_remaining()
        return (
            grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
        )
    return grpc.StatusCode.UNKNOWN  # what gRPC answers for an exception the handler let out


class _Call:
    """One call's labels, clock, span and counters."""

    def __init__(self, kind: str, service: str, method: str, full_method: str, context: grpc.aio.ServicerContext):
        self.labels = (kind, service, method)
        self.full_method = full_method
        self.context = context
        self.start = time.perf_counter()
        self.received = MSG_RECEIVED.labels(*self.labels)
        self.sent = MSG_SENT.labels(*self.labels)
        self.span: Span | None = None
        STARTED.labels(*self.labels).inc()
        IN_FLIGHT.labels(*self.labels).inc()

    def start_span(self) -> Span | None:
        if not tracing.enabled():
            return None
        carrier = {key: value for key, value in self.context.invocation_metadata() or () if isinstance(value, str)}
        service, method = self.labels[1:]
        self.span = tracing.tracer().start_span(
            f"{service}/{method}", context=propagate.extract(carrier), kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )  # fmt: skip
        return self.span

    def end(self, error: BaseException | None, log_calls: bool) -> None:
        elapsed = time.perf_counter() - self.start
        status = _status(self.context, error)
        code = GO_CODE_NAMES[status]
        IN_FLIGHT.labels(*self.labels).dec()
        HANDLED.labels(*self.labels, code).inc()
        HANDLING.labels(*self.labels).observe(elapsed)
        if self.span is not None:
            self.span.set_attribute("rpc.grpc.status_code", status.value[0])
            if code in SERVER_ERRORS:
                self.span.set_status(Status(StatusCode.ERROR, f"{code}: {self.context.details() or ''}".strip()))
        if log_calls:
            # client: the name of the caller's token ("-" without one); never the token itself. The line names the
            # code as the gRPC spec does (PERMISSION_DENIED); the grpc_code field as the metrics' label does.
            peer, client = self.context.peer(), current_client.get()
            access_log.info(
                "%s %s %.1fms peer=%s client=%s", self.full_method, status.name, elapsed * 1000, peer, client,
                extra={
                    "grpc_service": self.labels[1], "grpc_method": self.labels[2], "grpc_code": code,
                    "duration_ms": round(elapsed * 1000, 3), "peer": peer, "client": client,
                },
            )  # fmt: skip


class ObservabilityInterceptor(HandlerInterceptor):
    """Wraps every handler kind: metrics, the server span (the handler runs inside it) and the access log."""

    def __init__(self, log_calls: bool = True):
        self.log_calls = log_calls

    def _counted(self, requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
        async def each() -> AsyncIterator[Any]:
            async for request in requests:
                call.received.inc()
                yield request

        return each()

    def _wrap_unary(
        self, kind: str, full_method: str, streaming_in: bool, fn: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        service, method = split_method(full_method)

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call, error = _Call(kind, service, method, full_method, context), None
            span = call.start_span()
            token = tracing.attach(span)
            try:
                if streaming_in:
                    request = self._counted(request, call)
                else:
                    call.received.inc()
                response = await fn(request, context)
                if response is not None:  # a coroutine streaming handler (context.write) returns None
                    call.sent.inc()
                return response
            except BaseException as e:
                error = e
                raise
            finally:
                call.end(error, self.log_calls)
                tracing.detach(token, span)

        return handler

    def _wrap_stream(
        self, kind: str, full_method: str, streaming_in: bool, fn: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        service, method = split_method(full_method)

        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call, error = _Call(kind, service, method, full_method, context), None
            span = call.start_span()
            token = tracing.attach(span)
            try:
                if streaming_in:
                    request = self._counted(request, call)
                else:
                    call.received.inc()
                async for response in fn(request, context):
                    call.sent.inc()
                    yield response
            except BaseException as e:
                error = e
                raise
            finally:
                call.end(error, self.log_calls)
                tracing.detach(token, span)

        return handler

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        full_method = details.method
        streaming_in = bool(handler.request_streaming)
        kind = grpc_type(streaming_in, bool(handler.response_streaming))
        return rebuild(
            handler,
            unary=lambda fn: self._wrap_unary(kind, full_method, streaming_in, fn),
            stream=lambda fn: self._wrap_stream(kind, full_method, streaming_in, fn),
        )
