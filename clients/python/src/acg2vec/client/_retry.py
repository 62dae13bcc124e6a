"""The client's retry decision for unary calls, shared by the sync and asyncio loops.

gRPC's own retries ignore the google.rpc.RetryInfo that the server attaches to RESOURCE_EXHAUSTED (overloaded)
and UNAVAILABLE (a backend is down), and would retry sooner than asked; so unary calls are retried here.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.rpc import error_details_pb2, status_pb2

from acg2vec.client._config import RETRY_INFO_CODES, RetryPolicy

_DETAILS_KEY = "grpc-status-details-bin"
#: Added on top of the server's retry_delay so clients refused at the same moment do not all return together.
RETRY_INFO_JITTER = 0.2


class _FailedCall(Protocol):
    def code(self) -> grpc.StatusCode: ...

    def trailing_metadata(self) -> object: ...


def retry_delay(error: grpc.RpcError) -> float | None:
    """The server's google.rpc.RetryInfo retry_delay in seconds, or None when the error carries none.

    Works with the errors of both clients (grpc.RpcError, grpc.aio.AioRpcError), e.g. for streaming calls,
    which are not retried on it: `time.sleep(retry_delay(e) or 1.0)`.
    """
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToTimedelta().total_seconds()
    return None


@dataclass
class Deadline:
    """One deadline for all attempts of a call (None: no deadline)."""

    timeout_s: float | None
    start: float = field(default_factory=time.monotonic)

    def remaining(self) -> float | None:
        if self.timeout_s is None:
            return None
        return self.timeout_s - (time.monotonic() - self.start)


def wait_before_retry(policy: RetryPolicy | None, error: _FailedCall, attempt: int, deadline: Deadline) -> float | None:
    """Seconds to wait before attempt `attempt + 1`, or None to give up and raise `error`.

    With a RetryInfo (on RESOURCE_EXHAUSTED or UNAVAILABLE): at least the server's retry_delay, never sooner;
    no retry when that is longer than max_retry_delay_s or than the time left. Otherwise, on a retryable code:
    a random wait up to the exponential backoff, as gRPC's own retries do.
    """
    if policy is None or attempt >= policy.max_attempts:
        return None
    code = error.code()
    server_delay = retry_delay(error) if code in RETRY_INFO_CODES else None  # type: ignore[arg-type]
    if server_delay is not None:
        if server_delay > policy.max_retry_delay_s:
            return None
        wait = server_delay * (1 + random.uniform(0, RETRY_INFO_JITTER))
    elif code in policy.retryable_status_codes:
        backoff = min(policy.initial_backoff_s * policy.backoff_multiplier ** (attempt - 1), policy.max_backoff_s)
        wait = random.uniform(0, backoff)
    else:
        return None
    remaining = deadline.remaining()
    if remaining is not None and wait >= remaining:
        return None  # the deadline would pass while waiting: the caller gets the server's answer now
    return wait
