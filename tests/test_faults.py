"""Backend faults for real, under load: each backend process is killed while clients call, and restarted.

While a backend is down, the calls that need it fail fast with UNAVAILABLE and a RetryInfo, the others go on;
health turns NOT_SERVING for the services that need it; after the restart everything recovers without a server
restart; and no acknowledged write is lost (every id an IndexIllustration acknowledged is returned by Get and by
Search afterwards). A hung inference backend shows deadlines and the bounded inference queue at work, and SIGTERM
during a bulk index loses nothing acknowledged. One rig (acg2vec_testing.rig) for the whole module: the backends and the
server start once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from acg2vec.v1 import search_pb2, search_pb2_grpc, tagging_pb2, tagging_pb2_grpc
from acg2vec_server.app import Application
from acg2vec_testing.images import image_bytes
from acg2vec_testing.model_repository import copy_repository
from acg2vec_testing.rig import Fault, Load, Rig, outage, retry_info, stored_ids
from acg2vec_testing.services import ALL_SERVICES, SEARCH, TAGGING
from acg2vec_testing.waiting import SERVING, health, wait_for_health, wait_until

OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
#: Every id whose index call was acknowledged, over all tests of the module.
ACKED: set[str] = set()
#: The rig's backend timeouts are 30 s: a call that fails well below them failed fast, it did not time out
#: (failures take milliseconds; the margin is for a busy machine, where the inference before a write is slow).
FAST_S = 10.0


SETTINGS = {
    "ACG2VEC_INFERENCE_CONCURRENCY": "1", "ACG2VEC_INFERENCE_QUEUE_ITEMS": "16", "ACG2VEC_BATCH_MAX_SIZE": "8",
    "ACG2VEC_MAX_BATCH_SIZE": "8", "ACG2VEC_GRACE_PERIOD_S": "3",
}  # fmt: skip


@contextlib.asynccontextmanager
async def started_rig(tmp_path_factory: pytest.TempPathFactory, model_repo, milvus_engine: str) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp(f"rig-{milvus_engine}")
    # the models the load uses (TF-Serving loads every model it serves before it answers: fewer start faster)
    models = copy_repository(model_repo, root / "models", only=["tagger", "illust2vec", "acgvoc2vec"])
    rig = Rig(root, models, SETTINGS, milvus_engine=milvus_engine)
    try:
        await rig.start()
        yield rig
    finally:
        await rig.stop()


@pytest_asyncio.fixture(scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory, model_repo) -> AsyncIterator[Rig]:
    """Milvus Lite's server process under the acg2vec server: every test of the module."""
    async with started_rig(tmp_path_factory, model_repo, "lite") as rig:
        yield rig


@pytest_asyncio.fixture
async def channel(rig: Rig) -> AsyncIterator[grpc.aio.Channel]:
    assert rig.server is not None
    async with grpc.aio.insecure_channel(rig.server.target) as channel:
        yield channel


def check(fault: Fault, broken: tuple[str, ...], unaffected: tuple[str, ...]) -> None:
    assert fault.calls, "no call ran during the outage"
    assert set(fault.codes) <= {"OK", "UNAVAILABLE"}, fault.codes
    for call in fault.errors:
        assert call.method in broken, f"{call.method} failed although it does not need the backend: {call.details}"
        assert call.retry_info, f"{call.method} answered UNAVAILABLE without RetryInfo"
        assert call.seconds < FAST_S, f"{call.method} took {call.seconds:.1f}s to fail"
    for method in unaffected:
        assert [c for c in fault.calls if c.method == method], f"no {method} call during the outage"


async def check_no_write_lost(channel: grpc.aio.Channel, load: Load) -> None:
    assert load.acked, "no write was acknowledged"
    ACKED.update(load.acked)
    got, found = await stored_ids(channel, ACKED)
    assert not ACKED - got, f"acknowledged but gone: {sorted(ACKED - got)[:10]}"
    assert not ACKED - found, f"acknowledged but not searchable: {sorted(ACKED - found)[:10]}"


async def test_metadata_store_killed_under_load(rig: Rig, channel: grpc.aio.Channel):
    load = Load(rig.server.target)
    broken = ("IndexIllustration", "Search", "GetIllustration")
    async with load.running():
        await load.wait_for("IndexIllustration", OK, after=0)
        fault = await outage(
            "Redis-protocol server", load, channel, rig.redis.kill, lambda: asyncio.to_thread(rig.redis.start),
            broken, services=(SEARCH, ""),
        )  # fmt: skip
        assert await health(channel, TAGGING, timeout=5) == SERVING  # tagging needs no metadata
    check(fault, broken, unaffected=("TagImage",))
    await check_no_write_lost(channel, load)


async def test_vector_store_killed_under_load(rig: Rig, channel: grpc.aio.Channel):
    load = Load(rig.server.target)
    broken = ("IndexIllustration", "Search")
    async with load.running():
        await load.wait_for("IndexIllustration", OK, after=0)
        fault = await outage(
            "Milvus Lite server", load, channel, rig.milvus.kill, rig.milvus.start, broken, services=(SEARCH, "")
        )
        assert await health(channel, TAGGING, timeout=5) == SERVING
    check(fault, broken, unaffected=("TagImage", "GetIllustration"))
    await check_no_write_lost(channel, load)


async def test_milvus_standalone_server_killed_under_load(tmp_path_factory, model_repo):
    """The same vector store fault on the Milvus standalone server (a rig of its own; the other faults do not
    depend on the vector engine and run once, on Milvus Lite's server)."""
    async with (
        started_rig(tmp_path_factory, model_repo, "standalone") as rig,
        grpc.aio.insecure_channel(rig.server.target) as channel,
    ):
        load = Load(rig.server.target)
        broken = ("IndexIllustration", "Search")
        async with load.running():
            await load.wait_for("IndexIllustration", OK, after=0)
            fault = await outage(
                "Milvus standalone server", load, channel, rig.milvus.kill, rig.milvus.start, broken,
                services=(SEARCH, ""),
            )  # fmt: skip
            assert await health(channel, TAGGING, timeout=5) == SERVING
        check(fault, broken, unaffected=("TagImage", "GetIllustration"))
        assert load.acked, "no write was acknowledged"
        got, found = await stored_ids(channel, load.acked)
        assert not load.acked - got, f"acknowledged but gone: {sorted(load.acked - got)[:10]}"
        assert not load.acked - found, f"acknowledged but not searchable: {sorted(load.acked - found)[:10]}"


async def test_inference_server_killed_under_load(rig: Rig, channel: grpc.aio.Channel):
    load = Load(rig.server.target)
    broken = ("IndexIllustration", "TagImage", "Search")
    async with load.running():
        await load.wait_for("IndexIllustration", OK, after=0)
        fault = await outage(
            "TF-Serving", load, channel, rig.tfserving.kill, rig.tfserving.start, broken, services=(*ALL_SERVICES, "")
        )
    check(fault, broken, unaffected=("GetIllustration",))
    await check_no_write_lost(channel, load)


async def test_hung_inference_server_deadlines_and_a_bounded_queue(rig: Rig, channel: grpc.aio.Channel):
    """TF-Serving stops answering (SIGSTOP): calls queue behind the one in progress; the queue is bounded
    (RESOURCE_EXHAUSTED at once past it), calls past their deadline leave the queue without running."""
    server, tagging = rig.server, tagging_pb2_grpc.TaggingServiceStub(channel)

    async def metric(name: str) -> float:
        return await asyncio.to_thread(server.metric, name, model="tagger")

    batch = tagging_pb2.BatchTagImagesRequest(images=[image_bytes(i) for i in range(8)])
    runs = await metric("acg2vec_inference_batch_items_count")
    dropped = await metric("acg2vec_inference_dropped_total")
    rig.tfserving.signal(signal.SIGSTOP)
    try:
        first = asyncio.ensure_future(tagging.TagImage(tagging_pb2.TagImageRequest(image=image_bytes(1)), timeout=60))
        await wait_until(_above(metric, "acg2vec_inference_batch_items_count", runs), 30, "the first call to run")
        waiting = [asyncio.ensure_future(tagging.BatchTagImages(batch, timeout=5)) for _ in range(2)]
        await wait_until(_equal(metric, "acg2vec_inference_queued_items", 16), 30, "16 items to queue")

        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tagging.BatchTagImages(batch, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_info(info.value)
        assert "at capacity" in info.value.details() and time.monotonic() - start < FAST_S

        for call in waiting:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_until(_equal(metric, "acg2vec_inference_dropped_total", dropped + 2), 30, "2 dropped requests")
        assert await metric("acg2vec_inference_queued_items") == 0
        assert await metric("acg2vec_inference_batch_items_count") == runs + 1  # the dropped ones never ran
    finally:
        rig.tfserving.signal(signal.SIGCONT)
    assert (await first).result.model.name == "tagger"  # the call in progress finishes once the backend is back
    await wait_for_health(channel, TAGGING, SERVING)


def _above(metric, name: str, value: float):
    async def check() -> bool:
        return await metric(name) > value

    return check


def _equal(metric, name: str, value: float):
    async def check() -> bool:
        return await metric(name) == value

    return check


async def test_sigterm_during_a_bulk_index_loses_nothing_acknowledged(rig: Rig):
    server = rig.server
    acked: set[str] = set()

    async def requests() -> AsyncIterator[search_pb2.StreamIndexIllustrationsRequest]:
        for i in range(100_000):  # more than the server can take before its grace period ends
            metadata = search_pb2.IllustrationMetadata(title=f"bulk {i}")
            yield search_pb2.StreamIndexIllustrationsRequest(
                id=f"bulk-{i}", image=image_bytes(i % 50), metadata=metadata
            )

    async with grpc.aio.insecure_channel(server.target) as channel:
        call = search_pb2_grpc.SearchServiceStub(channel).StreamIndexIllustrations(requests())
        with pytest.raises(grpc.aio.AioRpcError):  # the stream is cut when the grace period ends
            async for answer in call:
                assert answer.WhichOneof("result") == "outcome", answer
                acked.add(answer.id)
                if len(acked) == 16:
                    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.process.wait, 60) == 0, "the server did not shut down cleanly"
    assert len(acked) > 16

    app = Application(server.settings())  # the same data and backends, started in this process (no TF import)
    await app.start()
    try:
        assert await app.domain.illustrations.meta.pending() == []  # writes cut mid-way were finished at start-up
        ACKED.update(acked)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            got, found = await stored_ids(channel, ACKED)
    finally:
        await app.stop(grace_s=0)
    assert not ACKED - (got & found), f"acknowledged but lost: {sorted(ACKED - (got & found))[:10]}"
