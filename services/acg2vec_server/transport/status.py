"""One place that maps domain errors to canonical gRPC status codes with google.rpc details."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from acg2vec.v1 import common_pb2
from acg2vec_server.domain.errors import (
    Acg2vecError,
    BackendUnavailable,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    Overloaded,
    TooLarge,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CODES: list[tuple[type[Acg2vecError], grpc.StatusCode]] = [
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
]


def code_of(error: Acg2vecError) -> grpc.StatusCode:
    for kind, code in CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(error: Acg2vecError) -> status_pb2.Status:
    code = code_of(error)
    status = status_pb2.Status(code=code.value[0], message=error.message)
    if error.violations:
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(details)
        status.details.append(packed)
    if isinstance(error, (BackendUnavailable, Overloaded)):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(1000)
        packed = any_pb2.Any()
        packed.Pack(retry)
        status.details.append(packed)
    return status


def item_error(error: Exception) -> common_pb2.ItemError:
    """Per-item error of a streaming call."""
    if isinstance(error, Acg2vecError):
        return common_pb2.ItemError(code=code_of(error).value[0], message=error.message)
    log.exception("internal error in a stream item", exc_info=error)
    return common_pb2.ItemError(code=code_pb2.INTERNAL, message="internal error; the server log has details")


async def abort(context: grpc.aio.ServicerContext, error: Acg2vecError) -> None:
    await context.abort_with_status(rpc_status.to_status(to_status(error)))


def handle_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Unary and stream-unary handlers: domain errors become their status; anything else INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except Acg2vecError as e:
            await abort(context, e)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has details")
        raise AssertionError("unreachable")

    return wrapper
