"""Observability at the transport: one access-log line and Prometheus metrics per call (an interceptor)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from acg2vec_server.transport.auth import current_client
from acg2vec_server.transport.handlers import HandlerInterceptor, rebuild

access_log = logging.getLogger("acg2vec.access")

REQUESTS = Counter("acg2vec_grpc_requests_total", "gRPC calls handled", ["method", "code"])
LATENCY = Histogram(
    "acg2vec_grpc_request_duration_seconds", "gRPC call latency", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
IN_FLIGHT = Gauge("acg2vec_grpc_in_flight", "gRPC calls in progress", ["method"])


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if code is None:
        return "OK" if error is None else "UNKNOWN"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode(code).name if isinstance(code, tuple) else str(code)


class ObservabilityInterceptor(HandlerInterceptor):
    """Wraps every handler kind; records method, status code and duration."""

    def __init__(self, log_calls: bool = True):
        self.log_calls = log_calls

    def _record(
        self, method: str, context: grpc.aio.ServicerContext, start: float, error: BaseException | None
    ) -> None:
        elapsed = time.perf_counter() - start
        code = _code(context, error)
        REQUESTS.labels(method, code).inc()
        LATENCY.labels(method).observe(elapsed)
        if self.log_calls:
            # client: the name of the caller's token ("-" without one); never the token itself
            access_log.info(
                "%s %s %.1fms peer=%s client=%s", method, code, elapsed * 1000, context.peer(), current_client.get()
            )

    def _wrap_unary(self, method: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start, error = time.perf_counter(), None
            IN_FLIGHT.labels(method).inc()
            try:
                return await fn(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                IN_FLIGHT.labels(method).dec()
                self._record(method, context, start, error)

        return handler

    def _wrap_stream(self, method: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start, error = time.perf_counter(), None
            IN_FLIGHT.labels(method).inc()
            try:
                async for response in fn(request, context):
                    yield response
            except BaseException as e:
                error = e
                raise
            finally:
                IN_FLIGHT.labels(method).dec()
                self._record(method, context, start, error)

        return handler

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        return rebuild(
            handler, unary=lambda fn: self._wrap_unary(method, fn), stream=lambda fn: self._wrap_stream(method, fn)
        )
