"""Limits: dynamic batching with a bounded queue, cancelled work dropped, per-client and global limits on calls
in progress, streams that stop when the client goes away, request bytes that do not parse."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Mapping

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image

from acg2vec.v1 import tagging_pb2, tagging_pb2_grpc
from acg2vec_server.domain.batching import DROPPED, Batcher, BatchPolicy
from acg2vec_server.domain.errors import InvalidInput, Overloaded
from acg2vec_server.domain.inputs import Limits, check_image
from acg2vec_server.domain.ports import InferenceInputError
from acg2vec_server.settings import Settings
from acg2vec_server.transport.admission import AdmissionInterceptor, client_key
from acg2vec_server.transport.observability import IN_FLIGHT
from acg2vec_server.transport.servicers.services import TaggingServicer
from acg2vec_testing.images import image_bytes
from acg2vec_testing.waiting import wait_until


class GatedModel:
    """A model function whose runs wait for the test to open the gate: the test decides when the model is busy.
    It doubles its input and refuses (like a graph's decoder) any batch holding a negative number."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls: list[list[float]] = []
        self.started = asyncio.Event()

    async def predict(self, model: str, inputs: Mapping[str, np.ndarray], signature: str):
        self.calls.append(inputs["x"][:, 0].tolist())
        self.started.set()
        await self.gate.wait()
        if (inputs["x"] < 0).any():
            raise InferenceInputError("cannot decode")
        return {"y": inputs["x"] * 2}, 7


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[v] for v in values], dtype=np.float32)}


async def started(batcher: Batcher, model: GatedModel, inputs) -> asyncio.Task:
    """Submits a request and waits until the model runs it (the model is busy from then on)."""
    model.started.clear()
    task = asyncio.create_task(batcher.predict("m", inputs))
    await model.started.wait()
    return task


async def queued(batcher: Batcher, inputs) -> asyncio.Task:
    task = asyncio.create_task(batcher.predict("m", inputs))
    for _ in range(3):
        await asyncio.sleep(0)  # let it reach the queue
    return task


async def test_concurrent_requests_while_the_model_is_busy_run_as_one_batch():
    model = GatedModel()
    batcher = Batcher(model.predict, BatchPolicy(max_size=4, max_wait_s=0.001, max_queued=100, concurrency=1))
    try:
        first = await started(batcher, model, rows(1))  # alone: nothing ran, so it went at once
        waiting = [await queued(batcher, rows(v)) for v in (2, 3, 4, 5, 6)]
        model.gate.set()
        results = await asyncio.gather(first, *waiting)
        assert [r[0]["y"][:, 0].tolist() for r in results] == [[2], [4], [6], [8], [10], [12]]
        assert all(version == 7 for _, version in results)
        assert model.calls == [[1], [2, 3, 4, 5], [6]]  # max_size 4 items per run, in arrival order
    finally:
        await batcher.close()


async def test_a_bad_input_fails_only_its_own_request():
    model = GatedModel()
    batcher = Batcher(model.predict, BatchPolicy(max_size=8, max_wait_s=0.001, max_queued=100, concurrency=1))
    try:
        first = await started(batcher, model, rows(0))
        waiting = [await queued(batcher, rows(v)) for v in (1, 2, -3, 4, 5)]
        model.gate.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert isinstance(results[3], InferenceInputError)
        ok = [r for i, r in enumerate(results) if i != 3]
        assert [r[0]["y"][0, 0] for r in ok] == [0, 2, 4, 8, 10]
        assert model.calls[1] == [1, 2, -3, 4, 5]  # refused as a whole, then split until the bad one is alone
        assert [-3] in model.calls and len(model.calls) <= 1 + 1 + 2 * 3
    finally:
        await batcher.close()


async def test_a_full_queue_refuses_at_once_instead_of_growing():
    model = GatedModel()
    batcher = Batcher(model.predict, BatchPolicy(max_size=8, max_wait_s=0.001, max_queued=4, concurrency=1))
    try:
        first = await started(batcher, model, rows(0))
        waiting = [await queued(batcher, rows(1, 2)), await queued(batcher, rows(3, 4))]  # 4 items wait
        with pytest.raises(Overloaded, match=r"at capacity.*limit 4.*retry"):
            await batcher.predict("m", rows(5))
        model.gate.set()
        await asyncio.gather(first, *waiting)
        assert (await batcher.predict("m", rows(5)))[0]["y"][0, 0] == 10  # room again
    finally:
        await batcher.close()


async def test_a_request_whose_caller_went_away_never_runs():
    model = GatedModel()
    batcher = Batcher(model.predict, BatchPolicy(max_size=8, max_wait_s=0.001, max_queued=100, concurrency=1))
    try:
        first = await started(batcher, model, rows(1))
        gone = await queued(batcher, rows(99))
        stays = await queued(batcher, rows(2))
        dropped = DROPPED.labels("m")._value.get()
        gone.cancel()  # e.g. its deadline passed while it waited
        await wait_until(lambda: DROPPED.labels("m")._value.get() == dropped + 1, 30, "the dropped request's count")
        model.gate.set()
        await asyncio.gather(first, stays)
        assert model.calls == [[1], [2]]
    finally:
        await batcher.close()


async def test_a_batch_all_of_whose_callers_went_away_is_cancelled():
    model = GatedModel()
    batcher = Batcher(model.predict, BatchPolicy(max_size=8, max_wait_s=0.001, max_queued=100, concurrency=1))
    try:
        first = await started(batcher, model, rows(1))
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        model.gate.set()
        assert (await batcher.predict("m", rows(2)))[0]["y"][0, 0] == 4  # its slot is free again
    finally:
        await batcher.close()


async def test_requests_of_other_shapes_or_over_max_size_are_not_joined():
    model = GatedModel()
    batcher = Batcher(model.predict, BatchPolicy(max_size=3, max_wait_s=0.001, max_queued=100, concurrency=1))
    try:
        first = await started(batcher, model, rows(1))
        wide = {"x": np.array([[5, 5]], dtype=np.float32)}
        waiting = [await queued(batcher, rows(2, 3)), await queued(batcher, wide), await queued(batcher, rows(4, 6))]
        model.gate.set()
        results = await asyncio.gather(first, *waiting)
        assert results[2][0]["y"].tolist() == [[10, 10]]
        assert model.calls == [[1], [2, 3], [5], [4, 6]]
    finally:
        await batcher.close()


def test_per_model_batch_sizes_are_validated():
    assert Settings(batch_max_size_per_model="tagger=16, acgvoc2vec=128").batch_max_sizes() == {
        "tagger": 16,
        "acgvoc2vec": 128,
    }
    with pytest.raises(ValueError, match="model=size pairs"):
        Settings(batch_max_size_per_model="tagger")


class Peer:
    def __init__(self, peer: str):
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def test_a_client_is_its_ip_address():
    assert client_key(Peer("ipv4:10.0.0.7:51234")) == "10.0.0.7"
    assert client_key(Peer("ipv6:%5B::1%5D:40000")) == "::1"
    assert client_key(Peer("unix:/run/acg2vec.sock")) == "unix:/run/acg2vec.sock"


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


async def open_stream(channel: grpc.aio.Channel) -> tuple[grpc.aio.StreamStreamCall, asyncio.Event]:
    """A stream the server has admitted (one answer received) and that stays open until `done` is set."""
    done = asyncio.Event()

    async def requests() -> AsyncIterator[tagging_pb2.StreamTagImagesRequest]:
        yield tagging_pb2.StreamTagImagesRequest(request_id="0", image=image_bytes(0))
        await done.wait()

    call = tagging_pb2_grpc.TaggingServiceStub(channel).StreamTagImages(requests())
    assert (await call.read()).HasField("result")
    return call, done


async def test_calls_in_progress_are_limited_per_client_and_in_total(app):
    """A server with the real servicers and small limits; clients are told apart by connection here."""
    server = grpc.aio.server(interceptors=[AdmissionInterceptor(3, 2, key=lambda context: context.peer())])
    tagging_pb2_grpc.add_TaggingServiceServicer_to_server(TaggingServicer(app.domain), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    request = tagging_pb2.TagImageRequest(image=image_bytes(1))
    try:
        own_connection = [("grpc.use_local_subchannel_pool", 1)]  # channels otherwise share one connection
        async with (
            grpc.aio.insecure_channel(target, options=own_connection) as a,
            grpc.aio.insecure_channel(target, options=own_connection) as b,
            grpc.aio.insecure_channel(target, options=own_connection) as c,
        ):
            streams = [await open_stream(a), await open_stream(a)]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tagging_pb2_grpc.TaggingServiceStub(a).TagImage(request)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit per client" in info.value.details() and retry_delay(info.value) > 0
            assert (await tagging_pb2_grpc.TaggingServiceStub(b).TagImage(request)).result.model.name  # b is not a
            streams.append(await open_stream(b))  # 3 in progress: the server's limit
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tagging_pb2_grpc.TaggingServiceStub(c).TagImage(request)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "its limit" in info.value.details()
            check = health_pb2.HealthCheckRequest(service="")
            assert (await health_pb2_grpc.HealthStub(c).Check(check)).status  # probes always get through

            for call, done in streams:
                done.set()
                assert await call.read() == grpc.aio.EOF
            assert (await tagging_pb2_grpc.TaggingServiceStub(c).TagImage(request)).result.model.name
            assert (await tagging_pb2_grpc.TaggingServiceStub(a).TagImage(request)).result.model.name
    finally:
        await server.stop(0)


async def test_request_bytes_that_do_not_parse_are_invalid_argument(app, stubs):
    garbage = b"\xff\xff\xff\xff\x0f not a protobuf message"
    unary = stubs.channel.unary_unary("/acg2vec.v1.TaggingService/TagImage")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await unary(garbage)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid acg2vec.v1.TagImageRequest" in info.value.details()
    stream = stubs.channel.stream_stream("/acg2vec.v1.SearchService/StreamIndexIllustrations")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stream(iter([garbage])):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await stubs.tagging.TagImage(tagging_pb2.TagImageRequest(image=image_bytes(2)))).result.model.name


async def test_a_stream_stops_on_the_server_when_the_client_cancels(stubs):
    in_flight = IN_FLIGHT.labels("bidi_stream", "acg2vec.v1.TaggingService", "StreamTagImages")
    sent = 0

    async def requests() -> AsyncIterator[tagging_pb2.StreamTagImagesRequest]:
        nonlocal sent
        while True:  # a client that would go on forever
            sent += 1
            yield tagging_pb2.StreamTagImagesRequest(request_id=str(sent), image=image_bytes(sent % 5))
            await asyncio.sleep(0.01)

    call = stubs.tagging.StreamTagImages(requests())
    assert (await call.read()).HasField("result")
    assert in_flight._value.get() >= 1
    call.cancel()
    await wait_until(lambda: in_flight._value.get() == 0, 30, "no stream in flight")  # the server's loop ended
    stopped_at = sent
    await asyncio.sleep(0.2)
    assert sent == stopped_at  # and nobody reads the client's requests any more


def on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "P"), ("GIF", "P"), ("PNG", "LA")])
def test_large_images_reach_the_graph_downscaled(fmt, mode):
    """A picture of many pixels in few bytes (the graph would need ~36 bytes per pixel) is shrunk first."""
    picture = Image.new("RGB", (3000, 1500), "white")
    picture.paste((200, 30, 30), (0, 0, 1500, 1500))
    picture = picture.convert(mode, palette=Image.Palette.ADAPTIVE, colors=4) if mode == "P" else picture.convert(mode)
    if mode == "P":
        picture.info["transparency"] = 0
    out = io.BytesIO()
    picture.save(out, format=fmt)
    limits = Limits(10_000_000, 50_000_000, 100, 8, 10, downscale_above_pixels=1_000_000)
    with Image.open(io.BytesIO(check_image(out.getvalue(), limits))) as shrunk:
        assert shrunk.width * shrunk.height <= 1_000_000 and shrunk.size == (1414, 707)  # aspect kept
        shrunk, original = on_white(shrunk), on_white(Image.open(io.BytesIO(out.getvalue())))
        for x in (200, 1200):  # the same colours in the same places, transparency composited as the graph does
            assert shrunk.getpixel((x, 350)) == pytest.approx(original.getpixel((x * 3000 // 1414, 700)), abs=12)
    small = image_bytes(1, fmt=fmt, mode=mode)
    assert check_image(small, limits) == small  # small pictures pass unchanged
    truncated = out.getvalue()[: len(out.getvalue()) // 2]
    with pytest.raises(InvalidInput):
        check_image(truncated, limits)  # and damage still fails the check
