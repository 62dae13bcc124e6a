"""The one place that rebuilds a gRPC method handler of the same call type around a wrapped behaviour.

The interceptors (auth, admission, observability) are `HandlerInterceptor`s: each wraps what a handler does.
gRPC has four call types, each with its own handler factory; `rebuild` makes that switch once, so an interceptor
only says how to wrap a behaviour that answers once (`unary`: unary-unary, stream-unary) and one that yields
answers (`stream`: unary-stream, stream-stream). The wrapped function is called as gRPC calls the original:
(request or request iterator, context). A streaming handler written as a coroutine (it sends its answers with
`context.write`, as grpc_health's `Watch` does) answers once from a wrapper's point of view: it gets `unary`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behaviour = Callable[..., Any]
Wrap = Callable[[Behaviour], Behaviour]


def rebuild(
    handler: grpc.RpcMethodHandler, *, unary: Wrap, stream: Wrap,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:  # fmt: skip
    """A handler of `handler`'s call type running the wrapped behaviour (and `request_deserializer` if given)."""
    kwargs = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, unary, stream), **kwargs)
    return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, unary, stream), **kwargs)


def _streaming(fn: Behaviour, unary: Wrap, stream: Wrap) -> Behaviour:
    """A generator handler yields its answers (`stream`); a coroutine one writes them and returns (`unary`)."""
    return unary(fn) if inspect.iscoroutinefunction(fn) else stream(fn)


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """A server interceptor that replaces the handler of every known method with `wrap(handler, details)`."""

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # fmt: skip
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED
            return handler
        return self.wrap(handler, handler_call_details)
