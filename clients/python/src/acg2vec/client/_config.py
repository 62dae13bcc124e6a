"""Channel settings shared by the sync and asyncio clients: retry policy, message limits, TLS and auth."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

#: Every service the client talks to; the retry policy applies to all of them (all RPCs are idempotent).
SERVICE_NAMES: tuple[str, ...] = (
    "acg2vec.v1.TaggingService",
    "acg2vec.v1.ImageFeatureService",
    "acg2vec.v1.TextFeatureService",
    "acg2vec.v1.SearchService",
    "grpc.health.v1.Health",
)

#: Images are large; gRPC's 4 MiB default receive limit is too small for a batch of 32 illustrations.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Deadline of a unary call (all retry attempts together) unless the call or the client says otherwise.
DEFAULT_TIMEOUT_S = 30.0
#: Items per batch RPC; keeps each request below the server's max_batch_size and the message limit.
DEFAULT_BATCH_SIZE = 32
#: Retries after the first attempt when the server is UNAVAILABLE.
DEFAULT_RETRIES = 3
#: gRPC silently caps maxAttempts at 5, so asking for more is an error rather than a surprise.
MAX_ATTEMPTS_LIMIT = 5

Metadata = tuple[tuple[str, str], ...]


def _duration(seconds: float) -> str:
    """Formats seconds as a protobuf JSON Duration, which is what the service config expects."""
    return f"{seconds:.9f}s"


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's built-in (service-config) retry, so backoff and attempt accounting happen inside the channel.

    Retries only happen before the server has sent a response message, and the call's deadline bounds all
    attempts together.
    """

    max_attempts: int = DEFAULT_RETRIES + 1
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"max_attempts must be in 2..{MAX_ATTEMPTS_LIMIT} (gRPC caps it), got {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0:
            raise ValueError("backoffs must be > 0 seconds")
        if self.backoff_multiplier <= 0:
            raise ValueError("backoff_multiplier must be > 0")
        if not self.retryable_status_codes:
            raise ValueError("retryable_status_codes must not be empty")

    @classmethod
    def from_retries(cls, retries: int) -> RetryPolicy | None:
        """Maps "how many retries" to a policy; 0 turns retrying off."""
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if retries == 0:
            return None
        return cls(max_attempts=retries + 1)

    def method_config(self, services: Sequence[str] = SERVICE_NAMES) -> dict[str, Any]:
        """One methodConfig entry covering every method of the given services."""
        return {
            "name": [{"service": service} for service in services],
            "retryPolicy": {
                "maxAttempts": self.max_attempts,
                "initialBackoff": _duration(self.initial_backoff_s),
                "maxBackoff": _duration(self.max_backoff_s),
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": [code.name for code in self.retryable_status_codes],
            },
        }

    def service_config_json(self, services: Sequence[str] = SERVICE_NAMES) -> str:
        """The value of the "grpc.service_config" channel option."""
        return json.dumps({"methodConfig": [self.method_config(services)]})


def resolve_retry_policy(retries: int | RetryPolicy | None) -> RetryPolicy | None:
    """Accepts a retry count for the common case and a full policy for tuning."""
    if retries is None or isinstance(retries, RetryPolicy):
        return retries
    return RetryPolicy.from_retries(retries)


def channel_options(
    *,
    max_message_bytes: int,
    retry_policy: RetryPolicy | None,
    extra: Sequence[tuple[str, Any]] = (),
) -> list[tuple[str, Any]]:
    """Channel options for both grpc.Channel and grpc.aio.Channel; keys in `extra` replace the derived ones."""
    if max_message_bytes <= 0:
        raise ValueError(f"max_message_bytes must be > 0, got {max_message_bytes}")
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if retry_policy is None:
        options.append(("grpc.enable_retries", 0))
    else:
        options += [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", retry_policy.service_config_json()),
            # A request bigger than the retry buffer commits on the first attempt and is never retried;
            # image uploads easily pass the 256 KiB default, so buffer up to one whole message.
            ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ]
    # gRPC keeps the first of duplicate keys, so drop ours where the caller gave their own.
    overridden = {key for key, _ in extra}
    return [option for option in options if option[0] not in overridden] + list(extra)


def channel_credentials(
    *,
    tls: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials (system roots unless root_certificates is given), or None for plaintext."""
    if not tls:
        if root_certificates or private_key or certificate_chain:
            raise ValueError("certificates were given but tls=False")
        return None
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("mutual TLS needs both private_key and certificate_chain")
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )


def call_metadata(token: str | None, metadata: Sequence[tuple[str, str]]) -> Metadata:
    """Metadata sent with every call; the bearer token travels as call metadata so it works on any channel."""
    items = [(key.lower(), value) for key, value in metadata]
    if token:
        items.append(("authorization", f"Bearer {token}"))
    return tuple(items)
