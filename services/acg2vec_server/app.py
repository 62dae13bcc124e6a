"""Composition: settings -> backends -> domain (from plain values) -> transport; health reports on it all.

`Core.open` builds the backends and the domain without a transport (`acg2vec repair` needs no more);
`Application` adds the gRPC servers, the health monitor and the background repair, and runs them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2

from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.milvus import MilvusVectorStore
from acg2vec_server.backends.milvus_standalone import MilvusStandalone
from acg2vec_server.backends.redis import RedisMetadataStore
from acg2vec_server.domain.batching import Batcher, BatchPolicy
from acg2vec_server.domain.illustrations import Illustrations
from acg2vec_server.domain.illustrations.consistency import BackgroundRepair
from acg2vec_server.domain.inputs import Limits
from acg2vec_server.domain.models import Models
from acg2vec_server.domain.ports import InferenceBackend, MetadataStore, VectorStore
from acg2vec_server.domain.service import Domain
from acg2vec_server.domain.tagging import Tagger, read_tag_thresholds
from acg2vec_server.health import LIVENESS, HealthMonitor
from acg2vec_server.settings import Settings
from acg2vec_server.telemetry import tracing
from acg2vec_server.transport.security import Security
from acg2vec_server.transport.server import api_server, bind, health_server

log = logging.getLogger(__name__)


def make_inference(settings: Settings) -> InferenceBackend:
    if settings.inference_backend == "tfserving":
        from acg2vec_server.backends.tfserving import TFServingBackend

        return TFServingBackend(
            settings.tfserving_target, settings.inference_timeout_s, settings.max_message_bytes,
            settings.inference_timeouts(),
        )  # fmt: skip
    from acg2vec_server.backends.inprocess import InProcessBackend

    return InProcessBackend(settings.models_root, settings.inference_threads)


def build_domain(s: Settings, inference: InferenceBackend, meta: MetadataStore, vectors: VectorStore) -> Domain:
    limits = Limits(
        s.max_image_bytes, s.max_image_pixels, s.max_text_chars, s.max_batch_size, s.max_top_k,
        s.downscale_above_pixels,
    )  # fmt: skip
    policy = BatchPolicy(
        s.batch_max_size, s.batch_max_wait_ms / 1000, s.inference_queue_items, s.inference_concurrency,
        s.inference_timeout_s,
    )  # fmt: skip
    models = Models(
        inference, s.tagger_model, s.image_feature_model, s.text_model, s.popularity_model,
        Batcher(inference.predict, policy, s.batch_max_sizes(), s.inference_timeouts()), s.joint_model,
    )  # fmt: skip
    tag_thresholds = read_tag_thresholds(s.tag_thresholds_file) if s.tag_thresholds_file else {}
    tagger = Tagger(models, s.default_tag_threshold, s.default_tag_top_k, tag_thresholds)
    illustrations = Illustrations(
        models, tagger, meta, vectors, limits, lease_ttl_s=s.lease_ttl_s, serve_next=s.milvus_collections == "next"
    )
    return Domain(limits, models, tagger, illustrations)


@dataclass
class Core:
    """The backends and the domain over them: everything but the transport."""

    domain: Domain
    inference: InferenceBackend
    meta: MetadataStore
    vectors: VectorStore
    embedded_redis: EmbeddedRedis | None = None
    milvus_standalone: MilvusStandalone | None = None

    @classmethod
    async def open(cls, s: Settings) -> Core:
        embedded = None
        redis_url = s.redis_url
        if not redis_url:
            embedded = EmbeddedRedis(s.data_dir / "redis", s.embedded_redis_port, s.tendis_compat)
            await asyncio.to_thread(embedded.start)
            redis_url = embedded.url
        standalone, milvus_uri = None, s.milvus_uri
        if s.milvus_standalone:
            standalone = MilvusStandalone(s.data_dir / "milvus-standalone", s.milvus_standalone_port)
            try:
                await asyncio.to_thread(standalone.start)
            except BaseException:
                if embedded is not None:
                    await asyncio.to_thread(embedded.stop)
                raise
            milvus_uri = standalone.uri
        inference = make_inference(s)
        meta = RedisMetadataStore(redis_url, s.redis_key_prefix, s.redis_timeout_s, cluster=s.redis_cluster)
        vectors = MilvusVectorStore(
            milvus_uri, s.milvus_collection, s.milvus_token.get_secret_value(), s.milvus_index_type,
            s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef_search, s.milvus_timeout_s,
            ivf_nlist=s.ivf_nlist, ivf_nprobe=s.ivf_nprobe, concurrency=s.milvus_concurrency,
        )  # fmt: skip
        return cls(build_domain(s, inference, meta, vectors), inference, meta, vectors, embedded, standalone)

    async def close(self) -> None:
        for close in (self.domain.models.close, self.inference.close, self.meta.close, self.vectors.close):
            try:
                await close()
            except Exception:
                log.exception("error while closing a backend")
        if self.embedded_redis is not None:
            await asyncio.to_thread(self.embedded_redis.stop)
        if self.milvus_standalone is not None:
            await asyncio.to_thread(self.milvus_standalone.stop)


@dataclass
class Application:
    settings: Settings
    server: grpc.aio.Server | None = None
    port: int = 0
    health_server: grpc.aio.Server | None = None  # plaintext, health only (settings.health_listen)
    health_port: int = 0
    domain: Domain | None = None
    monitor: HealthMonitor | None = None
    repairs: BackgroundRepair | None = None
    core: Core | None = field(default=None, repr=False)

    async def start(self) -> int:
        s = self.settings
        security = Security.from_settings(s)  # first: a bad security configuration starts nothing
        security.log_summary()
        self.core = await Core.open(s)
        self.domain = self.core.domain

        health_servicer = health.aio.HealthServicer()
        self.server = api_server(
            self.domain, health_servicer, security, s.max_message_bytes, s.max_concurrent_calls,
            s.max_calls_per_client, s.access_log, s.max_connection_age_s, s.max_connection_age_grace_s,
        )  # fmt: skip
        self.port = bind(self.server, s.listen, security.credentials, "--listen / ACG2VEC_LISTEN")
        if s.health_listen:
            self.health_server = health_server(health_servicer)
            self.health_port = bind(self.health_server, s.health_listen, None, "ACG2VEC_HEALTH_LISTEN")

        core = self.core
        self.monitor = HealthMonitor(
            health_servicer, self.domain, core.inference, core.meta, core.vectors, s.health_probe_interval_s
        )
        await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        serving = await self.monitor.probe_once(model_timeout_s=300)
        for service, up in serving.items():
            if not up:
                log.warning("%s starts NOT_SERVING: %s", service, "; ".join(self.monitor.problems.values()))
        consistency = self.domain.illustrations.consistency
        if self.monitor.stores_ready():  # ids whose lease another replica holds are left to the background repair
            await consistency.repair(wait=False)
        self.repairs = BackgroundRepair(consistency, s.health_probe_interval_s, self.monitor.stores_ready)
        self.monitor.start()
        self.repairs.start()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
            log.info("health (plaintext, grpc.health.v1 only) on %s (port %d)", s.health_listen, self.health_port)
        auth = "tokens" if security.interceptor is not None else "none"
        tls = ("mutual TLS" if s.tls_client_ca_file else "TLS") if security.tls else "plaintext"
        log.info("acg2vec listening on %s (port %d, %s, auth %s)", s.listen, self.port, tls, auth)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful: NOT_SERVING first, then in-flight calls get grace_s to finish, then backends close."""
        if self.repairs is not None:
            await self.repairs.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.server is not None:
            await self.server.stop(self.settings.grace_period_s if grace_s is None else grace_s)
        if self.health_server is not None:  # after the drain, so probes see NOT_SERVING meanwhile
            await self.health_server.stop(0)
        if self.core is not None:
            await self.core.close()


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM/SIGINT, then shuts down gracefully."""
    if settings.metrics_port:
        from prometheus_client import start_http_server

        host = settings.listen.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"
        start_http_server(settings.metrics_port, addr=host if host not in ("", "::") else "0.0.0.0")
    provider = tracing.configure(settings)
    app = Application(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    await stop.wait()
    log.info("shutting down: draining in-flight calls for up to %.0fs", settings.grace_period_s)
    await app.stop()
    await asyncio.to_thread(tracing.shutdown, provider)  # the spans still queued go out
