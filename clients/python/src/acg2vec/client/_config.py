"""Channel settings shared by the sync and asyncio clients: retry policy, message limits, TLS and auth."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from acg2vec.v1 import image_feature_pb2, search_pb2, tagging_pb2, text_feature_pb2

#: Every service the client talks to; the retry policy applies to all of them (all RPCs are idempotent).
SERVICE_NAMES: tuple[str, ...] = (
    "acg2vec.v1.TaggingService",
    "acg2vec.v1.ImageFeatureService",
    "acg2vec.v1.TextFeatureService",
    "acg2vec.v1.SearchService",
    "grpc.health.v1.Health",
)


def _streaming_methods() -> tuple[tuple[str, str], ...]:
    """(service, method) of every streaming RPC, read from the generated descriptors so none can be missed."""
    found = [
        (service.full_name, method.name)
        for module in (tagging_pb2, image_feature_pb2, text_feature_pb2, search_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.client_streaming or method.server_streaming
    ]
    return (*found, ("grpc.health.v1.Health", "Watch"))


#: The streaming RPCs: gRPC's own (service-config) retries cover them, because a stream of requests cannot be
#: replayed by the client; unary calls are retried by the client, which can honour the server's RetryInfo.
STREAMING_METHODS: tuple[tuple[str, str], ...] = _streaming_methods()
#: Status codes retried when the server attaches a google.rpc.RetryInfo (then after its retry_delay).
RETRY_INFO_CODES: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)

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
    """When and how often a failed call is tried again; the call's deadline bounds all attempts together.

    Unary calls are retried by the client: on `retryable_status_codes` after a jittered exponential backoff,
    and on RESOURCE_EXHAUSTED or UNAVAILABLE that carry a google.rpc.RetryInfo after the server's retry_delay
    (never sooner; not at all when that delay exceeds `max_retry_delay_s` or the time left). Streaming calls use
    the same numbers through gRPC's own retries, before the first response only.
    """

    max_attempts: int = DEFAULT_RETRIES + 1
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_status_codes: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)
    max_retry_delay_s: float = 10.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"max_attempts must be in 2..{MAX_ATTEMPTS_LIMIT} (gRPC caps it), got {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.max_retry_delay_s <= 0:
            raise ValueError("backoffs and max_retry_delay_s must be > 0 seconds")
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

    def method_config(self, methods: Sequence[tuple[str, str]] = STREAMING_METHODS) -> dict[str, Any]:
        """One methodConfig entry covering the given (service, method) pairs."""
        return {
            "name": [{"service": service, "method": method} for service, method in methods],
            "retryPolicy": {
                "maxAttempts": self.max_attempts,
                "initialBackoff": _duration(self.initial_backoff_s),
                "maxBackoff": _duration(self.max_backoff_s),
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": [code.name for code in self.retryable_status_codes],
            },
        }

    def service_config_json(self, methods: Sequence[tuple[str, str]] = STREAMING_METHODS) -> str:
        """The value of the "grpc.service_config" channel option."""
        return json.dumps({"methodConfig": [self.method_config(methods)]})


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
            # A stream whose requests outgrow the retry buffer commits and is never retried; image uploads
            # easily pass the 256 KiB default, so buffer up to one whole message.
            ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ]
    # gRPC keeps the first of duplicate keys, so drop ours where the caller gave their own.
    overridden = {key for key, _ in extra}
    return [option for option in options if option[0] not in overridden] + list(extra)


def local_connection(target: str) -> grpc.LocalConnectionType | None:
    """How `target` connects when it stays on this machine (Unix socket or loopback TCP), else None.

    Only literal loopback addresses and "localhost" count; gRPC's local credentials check the peer again.
    """
    if target.startswith(("unix:", "unix-abstract:")):
        return grpc.LocalConnectionType.UDS
    rest = target
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
            if scheme == "dns:" and rest.startswith("//"):
                rest = rest[2:].partition("/")[2]  # dns://[authority]/host:port
            break
    addresses = rest.split(",") if target.startswith(("ipv4:", "ipv6:")) else [rest]
    return grpc.LocalConnectionType.LOCAL_TCP if all(_is_loopback(a) for a in addresses) else None


def _is_loopback(address: str) -> bool:
    if address.startswith("["):  # [::1]:50051
        host = address[1:].partition("]")[0]
    elif address.count(":") == 1:  # host:port
        host = address.partition(":")[0]
    else:  # host, or a bare IPv6 address
        host = address
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_credentials(
    *,
    target: str,
    tls: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    token: str | None = None,
    allow_plaintext_token: bool = False,
) -> tuple[grpc.ChannelCredentials | None, Metadata]:
    """Channel credentials (None: plaintext) and the metadata that must carry the token where they cannot.

    The token travels as gRPC call credentials (`authorization: Bearer ...` added by gRPC to every call on the
    channel, raw stubs included), which gRPC only sends over TLS or to a local peer. A plaintext channel to
    another host would expose it, so that is refused unless `allow_plaintext_token` says the network is
    trusted (e.g. a service mesh that encrypts traffic between pods); then it is sent as call metadata.
    """
    if not tls:
        if root_certificates or private_key or certificate_chain:
            raise ValueError("certificates were given but tls=False")
        if not token:
            return None, ()
        local = local_connection(target)
        if local is not None:
            return _with_token(grpc.local_channel_credentials(local), token), ()
        if not allow_plaintext_token:
            raise ValueError(
                f"refusing to send the token in plaintext to {target!r} (not a loopback address): use tls=True, "
                "or pass allow_plaintext_token=True if the network between client and server is trusted"
            )
        return None, (("authorization", f"Bearer {token}"),)
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("mutual TLS needs both private_key and certificate_chain")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    return (_with_token(credentials, token) if token else credentials), ()


def _with_token(credentials: grpc.ChannelCredentials, token: str) -> grpc.ChannelCredentials:
    return grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))


def call_metadata(metadata: Sequence[tuple[str, str]], token_metadata: Metadata = ()) -> Metadata:
    """Metadata sent with every call: the caller's extra entries (keys lower-cased, as gRPC requires)."""
    return tuple((key.lower(), value) for key, value in metadata) + tuple(token_metadata)
