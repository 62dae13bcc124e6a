"""The gRPC server around the domain: message limits, interceptor order, the four services, health, reflection,
binding (and the optional plaintext health-only server for kubelet probes)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from acg2vec.v1 import (
    image_feature_pb2,
    image_feature_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    tagging_pb2,
    tagging_pb2_grpc,
    text_feature_pb2,
    text_feature_pb2_grpc,
)
from acg2vec_server.domain.service import Domain
from acg2vec_server.transport import observability
from acg2vec_server.transport.admission import AdmissionInterceptor
from acg2vec_server.transport.observability import ObservabilityInterceptor
from acg2vec_server.transport.security import Security
from acg2vec_server.transport.servicers.services import (
    ImageFeatureServicer,
    SearchServicer,
    TaggingServicer,
    TextFeatureServicer,
)

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVICE_NAMES = (
    tagging_pb2.DESCRIPTOR.services_by_name["TaggingService"].full_name,
    image_feature_pb2.DESCRIPTOR.services_by_name["ImageFeatureService"].full_name,
    text_feature_pb2.DESCRIPTOR.services_by_name["TextFeatureService"].full_name,
    search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
    HEALTH,
    reflection.SERVICE_NAME,
)


def api_server(
    domain: Domain, health_servicer: health.aio.HealthServicer, security: Security, max_message_bytes: int,
    max_concurrent_calls: int, max_calls_per_client: int, access_log: bool,
    max_connection_age_s: float = 0, max_connection_age_grace_s: float = 0,
) -> grpc.aio.Server:  # fmt: skip
    """The public server: the acg2vec.v1 services, health and reflection, behind the interceptors."""
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        *connection_age_options(max_connection_age_s, max_connection_age_grace_s),
    ]
    interceptors: list[grpc.aio.ServerInterceptor] = [ObservabilityInterceptor(access_log)]
    if security.interceptor is not None:
        interceptors.append(security.interceptor)  # inside the access log, so refused calls are logged too
    # last, after authentication: refused callers use no capacity, and clients are keyed by their token
    interceptors.append(AdmissionInterceptor(max_concurrent_calls, max_calls_per_client))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    tagging_pb2_grpc.add_TaggingServiceServicer_to_server(TaggingServicer(domain), server)
    image_feature_pb2_grpc.add_ImageFeatureServiceServicer_to_server(ImageFeatureServicer(domain), server)
    text_feature_pb2_grpc.add_TextFeatureServiceServicer_to_server(TextFeatureServicer(domain), server)
    search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(domain), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    observability.initialize(SERVICE_NAMES, max_concurrent_calls)
    return server


def connection_age_options(age_s: float, grace_s: float) -> list[tuple[str, int]]:
    """Server options that end each client connection after age_s (with grace_s for calls in progress): a client
    behind a Kubernetes Service keeps one connection to one replica, so without an age it never moves to a replica
    added later. Nothing when age_s is 0."""
    if age_s <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", int(age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(grace_s * 1000)),
    ]


def health_server(health_servicer: health.aio.HealthServicer) -> grpc.aio.Server:
    """Plaintext, grpc.health.v1 only (and reflection, which grpcurl needs): for probes that cannot do TLS."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((HEALTH, reflection.SERVICE_NAME), server)
    return server


def bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None, flag: str) -> int:
    """Binds `address` (TLS when credentials are given); the port, or a RuntimeError naming the setting to fix."""
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise RuntimeError(f"cannot bind {address}: the port is taken or the address is not local; set {flag}")
    return port
