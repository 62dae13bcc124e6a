"""Health per service name, from periodic probes of the backends and models each service needs.

Names: "" (all four services serving), "liveness" (the process answers), and each acg2vec.v1 service.
A service is NOT_SERVING while a backend or model it needs is unavailable, and SERVING again as soon
as a probe sees it back; no restart needed. Reports only: what acts on the probes (the background repair,
domain/illustrations/consistency.py) reads them through `stores_ready`.
"""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2
from prometheus_client import Gauge

from acg2vec_server.domain.errors import Acg2vecError
from acg2vec_server.domain.periodic import Periodic
from acg2vec_server.domain.ports import InferenceBackend, MetadataStore, VectorStore
from acg2vec_server.domain.service import Domain

log = logging.getLogger(__name__)

TAGGING = "acg2vec.v1.TaggingService"
IMAGE_FEATURE = "acg2vec.v1.ImageFeatureService"
TEXT_FEATURE = "acg2vec.v1.TextFeatureService"
SEARCH = "acg2vec.v1.SearchService"
SERVICES = (TAGGING, IMAGE_FEATURE, TEXT_FEATURE, SEARCH)
LIVENESS = "liveness"

#: 1 while a health name is SERVING, 0 while NOT_SERVING; the overall name "" is labelled service="all".
SERVING_GAUGE = Gauge("acg2vec_health_serving", "1 while the health service name is SERVING, else 0", ["service"])


class HealthMonitor:
    def __init__(
        self, servicer: health.aio.HealthServicer, domain: Domain, inference: InferenceBackend,
        meta: MetadataStore, vectors: VectorStore, interval_s: float,
    ):  # fmt: skip
        self.servicer, self.domain, self.inference, self.meta, self.vectors = servicer, domain, inference, meta, vectors
        self.interval_s = interval_s
        self.problems: dict[str, str] = {}
        #: The last probe's verdict per backend, model and the vector collection.
        self.last: dict[str, bool] = {}
        self._periodic = Periodic(self.probe_once, interval_s, "health probe")

    async def _check(self, name: str, probe, timeout_s: float | None = None) -> bool:
        try:
            await asyncio.wait_for(probe, timeout=timeout_s or max(2.0, self.interval_s * 2))
        except (Acg2vecError, TimeoutError) as e:
            message = getattr(e, "message", "") or f"{type(e).__name__}"
            if self.problems.get(name) != message:
                log.warning("health: %s unavailable: %s", name, message)
            self.problems[name] = message
            return False
        if name in self.problems:
            log.info("health: %s is back", name)
            del self.problems[name]
        return True

    async def probe_once(self, model_timeout_s: float | None = None) -> dict[str, bool]:
        """One round of probes; model_timeout_s allows for loading models (at start-up)."""
        m = self.domain.models
        tagger, image, text = m.tagger, m.image, m.text  # as probed (ensure_ready may pin other versions)
        ok = {
            "inference": await self._check("inference", self.inference.ping()),
            "metadata": await self._check("metadata", self.meta.ping()),
            "vectors": await self._check("vectors", self.vectors.ping()),
        }
        for model in (tagger, image, text):
            ok[model] = ok["inference"] and await self._check(f"model {model}", m.describe(model), model_timeout_s)
        if ok["vectors"] and ok[image] and ok[text]:
            # creating and loading collections takes a while: allowed the model timeout at start-up
            ok["collection"] = await self._check(
                "collection", self.domain.illustrations.ensure_ready(), model_timeout_s
            )
        else:
            ok["collection"] = False
        self.last = ok
        serving = {
            TAGGING: ok[tagger],
            IMAGE_FEATURE: ok[image],
            TEXT_FEATURE: ok[text],
            SEARCH: ok["metadata"] and ok["collection"],
        }
        for service, up in serving.items():
            await self.set(service, up)
        await self.set("", all(serving.values()))
        return serving

    def stores_ready(self) -> bool:
        """Both stores answered the last probe and the vector collection is ready: writes can be finished."""
        return self.last.get("metadata", False) and self.last.get("collection", False)

    async def set(self, service: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.servicer.set(service, status)
        SERVING_GAUGE.labels(service or "all").set(1 if serving else 0)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        """Everything NOT_SERVING (load balancers stop routing here), then the probes stop."""
        await self._periodic.stop()
        for service in (*SERVICES, ""):
            await self.set(service, False)
