"""Settings and helpers common to Acg2vecClient and AsyncAcg2vecClient."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from acg2vec.client import _config
from acg2vec.client._config import RetryPolicy


def health_modules() -> tuple[Any, Any]:
    """Imports grpc_health lazily: only health_check needs the optional grpcio-health-checking package."""
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("health_check needs the grpcio-health-checking package") from exc
    return health_pb2, health_pb2_grpc


class BaseClient:
    """Resolves constructor options once so both clients behave identically.

    Args:
        target: "host:port" (any gRPC target string, e.g. "dns:///acg2vec:50051").
        tls: use TLS; root_certificates (PEM) default to the system roots, private_key and
            certificate_chain enable mutual TLS.
        token: sent as gRPC call credentials ("authorization: Bearer <token>") on every call; refused over
            plaintext to a non-loopback target unless allow_plaintext_token=True.
        allow_plaintext_token: send the token over a plaintext channel to another host (a trusted network only).
        timeout_s: default deadline of unary and batch calls (all retry attempts together); None = none.
        stream_timeout_s: default deadline of streaming calls, None (unlimited) because they carry bulk work.
        max_message_bytes: send and receive limit; also the retry buffer so large uploads stay retryable.
        retries: retries on UNAVAILABLE (0 or None = off), or a RetryPolicy for full control; RESOURCE_EXHAUSTED
            and UNAVAILABLE answers with a google.rpc.RetryInfo are retried after the server's delay.
        batch_size: items per batch RPC when a batch method splits its input.
        metadata: extra metadata sent with every call.
        options: extra gRPC channel options; they override the ones derived from the arguments above.
        interceptors: gRPC client interceptors (grpc.*ClientInterceptor for Acg2vecClient, grpc.aio ones for
            AsyncAcg2vecClient), applied to every call on the channel, each retry attempt included.
    """

    #: The interceptor base classes this flavour of client accepts.
    interceptor_types: tuple[type, ...] = ()

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
        allow_plaintext_token: bool = False,
        timeout_s: float | None = _config.DEFAULT_TIMEOUT_S,
        stream_timeout_s: float | None = None,
        max_message_bytes: int = _config.DEFAULT_MAX_MESSAGE_BYTES,
        retries: int | RetryPolicy | None = _config.DEFAULT_RETRIES,
        batch_size: int = _config.DEFAULT_BATCH_SIZE,
        metadata: Sequence[tuple[str, str]] = (),
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[Any] = (),
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        if stream_timeout_s is not None and stream_timeout_s <= 0:
            raise ValueError(f"stream_timeout_s must be > 0 or None, got {stream_timeout_s}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.target = target
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.batch_size = batch_size
        self.retry_policy = _config.resolve_retry_policy(retries)
        self._credentials, token_metadata = _config.channel_credentials(
            target=target,
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            token=token,
            allow_plaintext_token=allow_plaintext_token,
        )
        self._metadata = _config.call_metadata(metadata, token_metadata)
        for interceptor in interceptors:
            if not isinstance(interceptor, self.interceptor_types):
                package = "grpc.aio" if self.interceptor_types[0].__module__.startswith("grpc.aio") else "grpc"
                expected = " or ".join(f"{package}.{t.__name__}" for t in self.interceptor_types)
                raise TypeError(f"{type(self).__name__} takes interceptors of type {expected}, got {interceptor!r}")
        self._interceptors = tuple(interceptors)
        self._channel_options = _config.channel_options(
            max_message_bytes=max_message_bytes, retry_policy=self.retry_policy, extra=options
        )
        self._connect()

    def _connect(self) -> None:
        """Opens the channel and creates the stubs (sync or asyncio flavour)."""
        raise NotImplementedError

    def _timeout(self, timeout: float | None) -> float | None:
        """A per-call timeout wins over the client default."""
        return self.timeout_s if timeout is None else timeout

    def _stream_timeout(self, timeout: float | None) -> float | None:
        """Streams carry bulk work, so they get their own (by default unlimited) deadline."""
        return self.stream_timeout_s if timeout is None else timeout

    def _batch_size(self, batch_size: int | None) -> int:
        return self.batch_size if batch_size is None else batch_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"
