"""A metadata backend that goes down: UNAVAILABLE with a clear message, health NOT_SERVING, then back."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from acg2vec.v1 import search_pb2, search_pb2_grpc, tagging_pb2, tagging_pb2_grpc
from acg2vec_server.app import Application
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_testing.images import image_bytes
from acg2vec_testing.waiting import health, wait_for_health
from tests.support.servers import make_settings

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_metadata_store_outage_and_recovery(tmp_path, model_repo):
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_server.start()
    app = Application(make_settings(tmp_path / "data", model_repo, redis_server.url, redis_timeout_s=1))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            search = search_pb2_grpc.SearchServiceStub(channel)
            await search.IndexIllustration(search_pb2.IndexIllustrationRequest(id="kept", image=image_bytes(9)))
            await wait_for_health(channel, "acg2vec.v1.SearchService", SERVING)

            redis_server.kill()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await search.GetIllustration(search_pb2.GetIllustrationRequest(id="kept"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "metadata store" in info.value.details() and "retry later" in info.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await search.IndexIllustration(search_pb2.IndexIllustrationRequest(id="during", image=image_bytes(8)))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            await wait_for_health(channel, "acg2vec.v1.SearchService", NOT_SERVING)
            assert await health(channel, "acg2vec.v1.TaggingService") == SERVING  # tagging needs no metadata
            tagged = await tagging_pb2_grpc.TaggingServiceStub(channel).TagImage(
                tagging_pb2.TagImageRequest(image=image_bytes(2))
            )
            assert tagged.result.tags

            redis_server.start()  # same port, same data directory
            await wait_for_health(channel, "acg2vec.v1.SearchService", SERVING)
            got = await search.GetIllustration(search_pb2.GetIllustrationRequest(id="kept"))
            assert got.illustration.id == "kept"
            # the write that failed mid-way was repaired or never acknowledged: stores agree either way
            hits = await search.Search(search_pb2.SearchRequest(image=image_bytes(8), top_k=5))
            ids = {h.id for h in hits.hits}
            meta_ids = {i for i in ("kept", "during") if await app.domain.illustrations.meta.get(i)}
            assert ids <= meta_ids and "kept" in ids
    finally:
        await app.stop(grace_s=0)
        redis_server.stop()
