"""Metrics and spans of backend calls, in one place per adapter: `@instrumented(backend, Port)` on the adapter class
wraps every coroutine method its port declares (close excepted).

Metrics (labels `backend`: inprocess, tfserving, milvus, redis; `operation`: the port method, e.g. predict, search,
get_many, ping):
  acg2vec_backend_calls_total                 calls started
  acg2vec_backend_errors_total{error}         calls that raised, by kind: unavailable (the backend is down or
                                              failing), invalid_input, model_not_installed, failed_precondition,
                                              cancelled (the caller went away), internal (anything else)
  acg2vec_backend_call_duration_seconds       histogram of call latency (failed calls included)
Span: `<backend> <operation>` (kind CLIENT) as a child of the current span, only inside a recorded trace (the
health probes' pings, outside any RPC, make no traces).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span
from prometheus_client import Counter, Histogram

from acg2vec_server.domain.errors import BackendUnavailable, FailedPrecondition
from acg2vec_server.domain.ports import InferenceInputError, ModelNotInstalled
from acg2vec_server.telemetry import tracing

CALLS = Counter("acg2vec_backend_calls_total", "Backend calls started", ["backend", "operation"])
ERRORS = Counter(
    "acg2vec_backend_errors_total", "Backend calls that failed, by kind", ["backend", "operation", "error"]
)
DURATION = Histogram(
    "acg2vec_backend_call_duration_seconds", "Backend call latency (failed calls included)", ["backend", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip

#: What an error means for the backend; the first matching class wins.
ERROR_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (BackendUnavailable, "unavailable"),
    (InferenceInputError, "invalid_input"),
    (ModelNotInstalled, "model_not_installed"),
    (FailedPrecondition, "failed_precondition"),
    (asyncio.CancelledError, "cancelled"),
)
#: Kinds that say the backend (not the request) failed: the span's status is ERROR, the alerts count them.
BACKEND_FAULTS = frozenset({"unavailable", "internal"})
#: The span attribute naming the backend's system, after the OpenTelemetry database conventions.
DB_SYSTEM = {"milvus": "milvus", "redis": "redis"}

T = TypeVar("T")


def error_kind(error: BaseException) -> str:
    return next((kind for cls, kind in ERROR_KINDS if isinstance(error, cls)), "internal")


def operations(port: type) -> list[str]:
    """The coroutine methods a port (a Protocol) declares."""
    return sorted(
        name for name, value in vars(port).items()
        if not name.startswith("_") and name != "close" and inspect.iscoroutinefunction(value)
    )  # fmt: skip


def _instrument(backend: str, operation: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    calls, duration = CALLS.labels(backend, operation), DURATION.labels(backend, operation)
    takes_model = "model" in inspect.signature(fn).parameters
    attributes = {"acg2vec.backend": backend, "acg2vec.operation": operation}
    if backend in DB_SYSTEM:
        attributes["db.system"] = DB_SYSTEM[backend]

    @functools.wraps(fn)
    async def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.inc()
        start = time.perf_counter()
        span = None
        if tracing.enabled() and get_current_span().get_span_context().is_valid:
            span = tracing.tracer().start_span(f"{backend} {operation}", kind=SpanKind.CLIENT, attributes=attributes)
            if takes_model and args and isinstance(args[0], str):
                span.set_attribute("acg2vec.model", str(args[0]).partition("@")[0])  # the name, pinned or not
        try:
            return await fn(self, *args, **kwargs)
        except BaseException as e:
            kind = error_kind(e)
            ERRORS.labels(backend, operation, kind).inc()
            if span is not None:
                span.set_attribute("error.type", kind)
                if kind in BACKEND_FAULTS:
                    span.record_exception(e)
                    span.set_status(Status(StatusCode.ERROR, str(e)[:200]))
            raise
        finally:
            duration.observe(time.perf_counter() - start)
            if span is not None:
                span.end()

    return call


def instrumented(backend: str, port: type) -> Callable[[type[T]], type[T]]:
    """Class decorator: counts, times and traces every call of the port's methods on this adapter."""

    def decorate(cls: type[T]) -> type[T]:
        for operation in operations(port):
            fn = getattr(cls, operation)
            setattr(cls, operation, _instrument(backend, operation, fn))
            for kind in ("unavailable", "internal"):  # so that error-rate queries see a 0 before the first error
                ERRORS.labels(backend, operation, kind)
        return cls

    return decorate
