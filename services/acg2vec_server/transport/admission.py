"""Admission at the transport: limits on calls in progress (global and per client), and a clear status for
request bytes that do not parse.

- Past `max_concurrent_calls` calls in progress, or `max_calls_per_client` for one client, a new call is
  answered RESOURCE_EXHAUSTED with a RetryInfo hint at once, before it holds any memory or work. Health
  and reflection are never limited: probes must get through an overloaded server.
- gRPC answers a request that does not parse as its message type with UNKNOWN; here it is
  INVALID_ARGUMENT naming the message type.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import grpc
from grpc_status import rpc_status

from acg2vec_server.domain.errors import InvalidInput, Overloaded
from acg2vec_server.transport.auth import current_client
from acg2vec_server.transport.handlers import HandlerInterceptor, rebuild
from acg2vec_server.transport.status import to_status

log = logging.getLogger(__name__)

#: Never limited: probes and tooling must reach a busy server.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def client_key(context: grpc.aio.ServicerContext) -> str:
    """Who a call counts against: the name of the token that authenticated it (set by the auth interceptor,
    which runs before this one), so that clients behind one proxy or NAT address are told apart; without
    authentication (local mode), the peer's IP address (all connections of one host together)."""
    principal = current_client.get()
    if principal != "-":
        return f"token:{principal}"
    peer = unquote(context.peer() or "")  # ipv4:10.0.0.7:51234, ipv6:[::1]:51234, unix:/path
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return address.rsplit(":", 1)[0].strip("[]")
    return peer


class _Malformed:
    """Stands in for a request that did not parse, so the handler can answer INVALID_ARGUMENT."""

    def __init__(self, message_type: str, error: Exception):
        self.message_type, self.error = message_type, error


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_type = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(message_type, "full_name", "the request message")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as e:
            return _Malformed(name, e)

    return parse


async def _reject_malformed(request: _Malformed, context: grpc.aio.ServicerContext) -> None:
    error = InvalidInput(
        f"the request is not a valid {request.message_type} ({request.error}); send a message serialised "
        "from the acg2vec.v1 protos"
    )
    await context.abort_with_status(rpc_status.to_status(to_status(error)))


class AdmissionInterceptor(HandlerInterceptor):
    def __init__(
        self, max_calls: int, max_calls_per_client: int,
        key: Callable[[grpc.aio.ServicerContext], str] = client_key,
    ):  # fmt: skip
        self.max_calls, self.max_calls_per_client, self.key = max_calls, max_calls_per_client, key
        self.in_progress = 0
        self.per_client: dict[str, int] = {}

    async def _admit(self, context: grpc.aio.ServicerContext) -> str:
        """Counts the call in, or answers RESOURCE_EXHAUSTED; returns the key to release with."""
        client = self.key(context)
        mine = self.per_client.get(client, 0)
        if self.max_calls and self.in_progress >= self.max_calls:
            refusal = f"the server has {self.in_progress} calls in progress, its limit"
        elif self.max_calls_per_client and mine >= self.max_calls_per_client:
            refusal = f"client {client} has {mine} calls in progress, the limit per client"
        else:
            self.in_progress += 1
            self.per_client[client] = mine + 1
            return client
        error = Overloaded(f"{refusal}; retry after the suggested delay, or make fewer calls at once")
        await context.abort_with_status(rpc_status.to_status(to_status(error)))
        raise AssertionError("unreachable")

    def _release(self, client: str) -> None:
        self.in_progress -= 1
        left = self.per_client[client] - 1
        if left:
            self.per_client[client] = left
        else:
            del self.per_client[client]

    def _unary(self, fn: Callable[..., Awaitable[Any]], limited: bool) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await _reject_malformed(request, context)
            if not limited:
                return await fn(request, context)
            client = await self._admit(context)
            try:
                return await fn(request, context)
            finally:
                self._release(client)

        return handler

    def _streaming(self, fn: Callable[..., AsyncIterator[Any]], limited: bool) -> Callable[..., AsyncIterator[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Malformed):
                await _reject_malformed(request, context)
            client = await self._admit(context) if limited else None
            try:
                async for response in fn(request, context):
                    yield response
            finally:
                if client is not None:
                    self._release(client)

        return handler

    @staticmethod
    def _checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async def each() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Malformed):
                    await _reject_malformed(request, context)
                yield request

        return each()

    def wrap(self, handler: grpc.RpcMethodHandler, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        limited = not details.method.startswith(EXEMPT_PREFIXES)

        def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
            """A request stream's messages are checked as they arrive (one message is checked by the wrapper)."""
            if not handler.request_streaming:
                return fn
            return lambda requests, context: fn(self._checked(requests, context), context)

        return rebuild(
            handler,
            unary=lambda fn: self._unary(checked(fn), limited),
            stream=lambda fn: self._streaming(checked(fn), limited),
            request_deserializer=_safe(handler.request_deserializer),
        )
