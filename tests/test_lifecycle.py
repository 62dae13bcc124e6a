"""The server as a process: SIGTERM drains in-flight calls; a crash between the two writes is repaired."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from acg2vec.v1 import search_pb2, search_pb2_grpc, tagging_pb2, tagging_pb2_grpc
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.redis import RedisMetadataStore
from acg2vec_testing.images import image_bytes
from acg2vec_testing.rig import ServerProcess


async def start_server(data_dir: Path, model_repo: Path, redis_url: str, **env: str) -> tuple[subprocess.Popen, str]:
    server = ServerProcess(data_dir, {
        "ACG2VEC_MODEL_REPOSITORY": str(model_repo), "ACG2VEC_REDIS_URL": redis_url, "ACG2VEC_METRICS_PORT": "0",
        "ACG2VEC_MILVUS_INDEX_TYPE": "FLAT", "ACG2VEC_GRACE_PERIOD_S": "20", **env,
    })  # fmt: skip
    await server.start(timeout_s=600)
    assert server.process is not None
    return server.process, server.target


@pytest.fixture
def own_redis(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_sigterm_drains_in_flight_stream(tmp_path, model_repo, own_redis):
    process, target = await start_server(tmp_path, model_repo, own_redis.url)
    try:
        sent = asyncio.Event()

        async def requests():
            for i in range(12):
                if i == 4:
                    sent.set()
                    await asyncio.sleep(0.5)  # SIGTERM arrives while the call is open
                yield tagging_pb2.StreamTagImagesRequest(request_id=str(i), image=image_bytes(i))

        async with grpc.aio.insecure_channel(target) as channel:
            call = tagging_pb2_grpc.TaggingServiceStub(channel).StreamTagImages(requests())

            async def collect():
                return [a async for a in call]

            task = asyncio.create_task(collect())
            await sent.wait()
            process.send_signal(signal.SIGTERM)
            answers = await asyncio.wait_for(task, 60)
        assert sorted(int(a.request_id) for a in answers) == list(range(12))
        assert all(a.HasField("result") for a in answers)
        assert await asyncio.to_thread(process.wait, 60) == 0
    finally:
        if process.poll() is None:
            process.kill()


async def test_crash_between_metadata_and_vector_writes_is_repaired(tmp_path, model_repo, own_redis):
    # a 2 s lease: the dead process's lease on crash-1 has run out when the next one starts (a start-up repair
    # leaves ids whose lease is taken to the background repair)
    process, target = await start_server(
        tmp_path, model_repo, own_redis.url, ACG2VEC_CRASH_AT="after_metadata", ACG2VEC_LEASE_TTL_S="2"
    )
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await search_pb2_grpc.SearchServiceStub(channel).IndexIllustration(
                    search_pb2.IndexIllustrationRequest(id="crash-1", image=image_bytes(42)), timeout=60
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # never acknowledged
        assert await asyncio.to_thread(process.wait, 30) == 137
    finally:
        if process.poll() is None:
            process.kill()
    store = RedisMetadataStore(own_redis.url)
    assert await store.pending() == ["crash-1"]  # the record is written, Milvus is not
    assert (await store.get("crash-1")).state == "pending"

    process, target = await start_server(tmp_path, model_repo, own_redis.url)  # start-up repairs
    try:
        assert await store.pending() == []
        assert (await store.get("crash-1")).state == "committed"
        async with grpc.aio.insecure_channel(target) as channel:
            hits = await search_pb2_grpc.SearchServiceStub(channel).Search(
                search_pb2.SearchRequest(image=image_bytes(42), top_k=1)
            )
            assert hits.hits[0].id == "crash-1"
    finally:
        await store.close()
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 60)
