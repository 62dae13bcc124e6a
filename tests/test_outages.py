"""A backend that goes down (the metadata store; Milvus, also at start): UNAVAILABLE with a clear message, health
NOT_SERVING, then back."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from acg2vec.v1 import search_pb2, search_pb2_grpc, tagging_pb2, tagging_pb2_grpc
from acg2vec_server.app import Application
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.milvus_standalone import MilvusStandalone
from acg2vec_testing.images import image_bytes
from acg2vec_testing.paths import ROOT
from acg2vec_testing.rig import MilvusLiteServer
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


@pytest.mark.parametrize("kind", ["lite", "standalone"])
async def test_vector_store_down_at_start_and_later(tmp_path, model_repo, redis_server: EmbeddedRedis, kind: str):
    """Milvus unreachable when the server starts, then up, then killed and back (the Milvus Lite server process, and
    the Milvus standalone server): UNAVAILABLE while it is down (not FAILED_PRECONDITION), health NOT_SERVING until
    it is back, and what was indexed before the kill is found after it."""
    if kind == "lite":
        milvus: MilvusLiteServer | MilvusStandalone = MilvusLiteServer(tmp_path / "milvus")
    else:
        milvus = MilvusStandalone(tmp_path / "milvus", bin_dir=ROOT / ".cache" / "milvus-bin")

    async def start_milvus() -> None:
        result = milvus.start()
        if asyncio.iscoroutine(result):
            await result

    settings = make_settings(
        tmp_path / "data", model_repo, redis_server.url, milvus_uri=milvus.uri, milvus_timeout_s=3,
        redis_key_prefix=f"outage-{kind}:v1",
    )  # fmt: skip
    app = Application(settings)
    await app.start()  # Milvus is not running yet
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            search = search_pb2_grpc.SearchServiceStub(channel)

            async def unavailable() -> None:
                for call in (
                    search.Search(search_pb2.SearchRequest(image=image_bytes(5), top_k=3)),
                    search.IndexIllustration(search_pb2.IndexIllustrationRequest(id="during", image=image_bytes(8))),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
                    assert "Milvus" in info.value.details() and "retry later" in info.value.details()
                await wait_for_health(channel, "acg2vec.v1.SearchService", NOT_SERVING)
                assert await health(channel, "acg2vec.v1.TaggingService") == SERVING  # tagging needs no vectors

            await unavailable()
            await start_milvus()
            await wait_for_health(channel, "acg2vec.v1.SearchService", SERVING, 120)
            await search.IndexIllustration(search_pb2.IndexIllustrationRequest(id="kept", image=image_bytes(9)))

            milvus.kill()
            await unavailable()
            await start_milvus()  # same port, same data
            await wait_for_health(channel, "acg2vec.v1.SearchService", SERVING, 120)
            hits = await search.Search(search_pb2.SearchRequest(image=image_bytes(9), top_k=3), timeout=60)
            assert hits.hits and hits.hits[0].id == "kept"
    finally:
        await app.stop(grace_s=0)
        milvus.stop()
