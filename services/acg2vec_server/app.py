"""Assembles the server from typed settings: backends, domain, servicers, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

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
from acg2vec_server.admission import AdmissionInterceptor
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.inference import InferenceBackend
from acg2vec_server.backends.metadata import RedisMetadataStore
from acg2vec_server.backends.vectors import MilvusVectorStore
from acg2vec_server.domain.service import Domain
from acg2vec_server.health import LIVENESS, HealthMonitor
from acg2vec_server.interceptors import ObservabilityInterceptor
from acg2vec_server.security import Security
from acg2vec_server.servicers.services import (
    ImageFeatureServicer,
    SearchServicer,
    TaggingServicer,
    TextFeatureServicer,
)
from acg2vec_server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    tagging_pb2.DESCRIPTOR.services_by_name["TaggingService"].full_name,
    image_feature_pb2.DESCRIPTOR.services_by_name["ImageFeatureService"].full_name,
    text_feature_pb2.DESCRIPTOR.services_by_name["TextFeatureService"].full_name,
    search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


def make_inference(settings: Settings) -> InferenceBackend:
    if settings.inference_backend == "tfserving":
        from acg2vec_server.backends.tfserving import TFServingBackend

        return TFServingBackend(settings.tfserving_target, settings.inference_timeout_s, settings.max_message_bytes)
    from acg2vec_server.backends.inprocess import InProcessBackend

    return InProcessBackend(settings.models_root, settings.inference_threads)


@dataclass
class Application:
    settings: Settings
    server: grpc.aio.Server | None = None
    port: int = 0
    health_server: grpc.aio.Server | None = None  # plaintext, health only (settings.health_listen)
    health_port: int = 0
    domain: Domain | None = None
    monitor: HealthMonitor | None = None
    embedded_redis: EmbeddedRedis | None = None
    _closers: list = field(default_factory=list)

    async def start(self) -> int:
        s = self.settings
        security = Security.from_settings(s)  # first: a bad security configuration starts nothing
        security.log_summary()
        redis_url = s.redis_url
        if not redis_url:
            self.embedded_redis = EmbeddedRedis(s.data_dir / "redis", s.embedded_redis_port, s.tendis_compat)
            await asyncio.to_thread(self.embedded_redis.start)
            redis_url = self.embedded_redis.url
        inference = make_inference(s)
        meta = RedisMetadataStore(redis_url, s.redis_key_prefix, s.redis_timeout_s, cluster=s.redis_cluster)
        vectors = MilvusVectorStore(
            s.milvus_uri, s.milvus_collection, s.milvus_token.get_secret_value(), s.milvus_index_type,
            s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef_search, s.milvus_timeout_s,
            ivf_nlist=s.ivf_nlist, ivf_nprobe=s.ivf_nprobe,
        )  # fmt: skip
        self.domain = Domain.build(s, inference, meta, vectors)
        self._closers = [self.domain.models.close, inference.close, meta.close, vectors.close]

        options = [
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        interceptors: list[grpc.aio.ServerInterceptor] = [ObservabilityInterceptor(s.access_log)]
        if security.interceptor is not None:
            interceptors.append(security.interceptor)  # inside the access log, so refused calls are logged too
        # last, after authentication: refused callers use no capacity, and clients are keyed by their token
        interceptors.append(AdmissionInterceptor(s.max_concurrent_calls, s.max_calls_per_client))
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        tagging_pb2_grpc.add_TaggingServiceServicer_to_server(TaggingServicer(self.domain), self.server)
        image_feature_pb2_grpc.add_ImageFeatureServiceServicer_to_server(ImageFeatureServicer(self.domain), self.server)
        text_feature_pb2_grpc.add_TextFeatureServiceServicer_to_server(TextFeatureServicer(self.domain), self.server)
        search_pb2_grpc.add_SearchServiceServicer_to_server(SearchServicer(self.domain), self.server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        reflection.enable_server_reflection(SERVICE_NAMES, self.server)
        self.port = self._bind(self.server, s.listen, security.credentials, "--listen / ACG2VEC_LISTEN")
        if s.health_listen:
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.health_server)
            health_names = (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(health_names, self.health_server)  # grpcurl needs it
            self.health_port = self._bind(self.health_server, s.health_listen, None, "ACG2VEC_HEALTH_LISTEN")

        self.monitor = HealthMonitor(health_servicer, self.domain, inference, meta, vectors, s.health_probe_interval_s)
        await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        serving = await self.monitor.probe_once(model_timeout_s=300)
        for service, up in serving.items():
            if not up:
                log.warning("%s starts NOT_SERVING: %s", service, "; ".join(self.monitor.problems.values()))
        if "collection" not in self.monitor.problems and "metadata" not in self.monitor.problems:
            await self.domain.illustrations.repair()
        self.monitor.start()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
            log.info("health (plaintext, grpc.health.v1 only) on %s (port %d)", s.health_listen, self.health_port)
        auth = "tokens" if security.interceptor is not None else "none"
        tls = ("mutual TLS" if s.tls_client_ca_file else "TLS") if security.tls else "plaintext"
        log.info("acg2vec listening on %s (port %d, %s, auth %s)", s.listen, self.port, tls, auth)
        return self.port

    @staticmethod
    def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None, flag: str) -> int:
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise RuntimeError(f"cannot bind {address}: the port is taken or the address is not local; set {flag}")
        return port

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful: NOT_SERVING first, then in-flight calls get grace_s to finish, then backends close."""
        if self.monitor is not None:
            await self.monitor.stop()
        if self.server is not None:
            await self.server.stop(self.settings.grace_period_s if grace_s is None else grace_s)
        if self.health_server is not None:  # after the drain, so probes see NOT_SERVING meanwhile
            await self.health_server.stop(0)
        for close in self._closers:
            try:
                await close()
            except Exception:
                log.exception("error while closing a backend")
        if self.embedded_redis is not None:
            await asyncio.to_thread(self.embedded_redis.stop)


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM/SIGINT, then shuts down gracefully."""
    if settings.metrics_port:
        from prometheus_client import start_http_server

        host = settings.listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"
        start_http_server(settings.metrics_port, addr=host if host not in ("", "::") else "0.0.0.0")
    app = Application(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    log.info("shutting down: draining in-flight calls for up to %.0fs", settings.grace_period_s)
    await app.stop()
