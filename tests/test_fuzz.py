"""Bad input at scale: random requests to every RPC (hypothesis, from the proto descriptors) always get a proper
status, never UNKNOWN or INTERNAL, and the server goes on answering; request bytes that do not parse get
INVALID_ARGUMENT; a fuzz run over the image decoding path (the domain check, then the model graph) raises
nothing unexpected and does not grow memory. benchmarks/fuzz_images.py is the long run of the last one.
"""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from acg2vec.v1 import (
    common_pb2,
    image_feature_pb2,
    search_pb2,
    tagging_pb2,
    text_feature_pb2,
)
from acg2vec_server.domain.errors import InvalidInput, TooLarge
from acg2vec_server.domain.inputs import check_image
from acg2vec_testing.image_fuzz import base_images, mutate
from acg2vec_testing.images import image_bytes
from acg2vec_testing.services import ACG2VEC_SERVICES
from tests.support.proto_strategies import messages

METHODS = [method for service in ACG2VEC_SERVICES for method in service.methods]
#: What a bad request may get; UNKNOWN, INTERNAL (a bug), UNAVAILABLE (backends are up) or a timeout may not.
PROPER = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
}  # fmt: skip
PROPER_CODES = {code.value[0] for code in PROPER}


def fuzz(max_examples: int) -> settings:
    """Bounded and reproducible in the suite (the same examples on every run); no example database on disk."""
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )  # fmt: skip


def call_of(channel: grpc.aio.Channel, method, raw: bool = False):
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary"}.get(
        (method.client_streaming, method.server_streaming), "stream_stream"
    )
    if raw:
        return getattr(channel, kind)(path)
    from tests.support.proto_strategies import message_class

    return getattr(channel, kind)(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=message_class(method.output_type).FromString,
    )


async def run(channel: grpc.aio.Channel, method, request, raw: bool = False) -> tuple[grpc.StatusCode, list]:
    """Calls the method; returns the final status code and the responses."""
    call = call_of(channel, method, raw)
    try:
        if method.client_streaming:
            requests = iter(request)
            if method.server_streaming:
                return grpc.StatusCode.OK, [r async for r in call(requests, timeout=120)]
            return grpc.StatusCode.OK, [await call(requests, timeout=120)]
        if method.server_streaming:
            return grpc.StatusCode.OK, [r async for r in call(request, timeout=120)]
        return grpc.StatusCode.OK, [await call(request, timeout=120)]
    except grpc.aio.AioRpcError as e:
        assert e.code() not in PROPER or e.details(), f"{e.code().name} without a message"
        return e.code(), []


def item_errors(responses: list) -> list[common_pb2.ItemError]:
    return [r.error for r in responses if "error" in r.DESCRIPTOR.fields_by_name and r.HasField("error")]


VALID = {
    "acg2vec.v1.TaggingService": lambda s: s.tagging.TagImage(tagging_pb2.TagImageRequest(image=image_bytes(301))),
    "acg2vec.v1.ImageFeatureService": lambda s: s.image.ExtractImageFeature(
        image_feature_pb2.ExtractImageFeatureRequest(image=image_bytes(302))
    ),
    "acg2vec.v1.TextFeatureService": lambda s: s.text.ExtractTextFeature(
        text_feature_pb2.ExtractTextFeatureRequest(text="long hair")
    ),
    "acg2vec.v1.SearchService": lambda s: s.search.Search(search_pb2.SearchRequest(text="long hair", top_k=3)),
}


async def forget_indexed(stubs, method, request, responses: list) -> None:
    """Deletes what a random index call stored, so later tests see the store as they left it."""
    if method.name == "IndexIllustration" and responses:
        ids = [request.id]
    elif method.name == "StreamIndexIllustrations":
        ids = [r.id for r in responses if r.HasField("outcome")]
    else:
        return
    for id in ids:
        await stubs.search.DeleteIllustration(search_pb2.DeleteIllustrationRequest(id=id))


async def check_random_request(stubs, method, request) -> None:
    code, responses = await run(stubs.channel, method, request)
    event(code.name)  # the spread of answers shows in --hypothesis-show-statistics
    assert code in PROPER, f"{method.name} answered {code.name} to {request!r:.500}"
    for error in item_errors(responses):
        assert error.code in PROPER_CODES and error.message, f"{method.name} item error {error}"
    await forget_indexed(stubs, method, request, responses)
    assert await VALID[method.containing_service.full_name](stubs)  # and the next valid call is answered


UNARY_IN = [m for m in METHODS if not m.client_streaming]
STREAMING_IN = [m for m in METHODS if m.client_streaming]


@pytest.mark.parametrize("method", UNARY_IN, ids=lambda m: m.name)
@fuzz(max_examples=20)
@given(data=st.data())
async def test_random_requests_get_a_proper_status(stubs, method, data):
    await check_random_request(stubs, method, data.draw(messages(method.input_type), label="request"))


@pytest.mark.parametrize("method", STREAMING_IN, ids=lambda m: m.name)
@fuzz(max_examples=12)
@given(data=st.data())
async def test_random_request_streams_get_proper_statuses(stubs, method, data):
    requests = data.draw(st.lists(messages(method.input_type), max_size=4), label="requests")
    await check_random_request(stubs, method, requests)


@fuzz(max_examples=40)
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=200))
async def test_request_bytes_that_may_not_parse(stubs, method, data):
    code, responses = await run(stubs.channel, method, [data] if method.client_streaming else data, raw=True)
    assert code in PROPER, f"{method.name} answered {code.name} to {data!r}"
    if responses and method.output_type.name == "StreamIndexIllustrationsResponse":
        parsed = [search_pb2.StreamIndexIllustrationsResponse.FromString(r) for r in responses]
        await forget_indexed(stubs, method, None, parsed)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF tags it skips
async def test_image_decoding_path_fuzz(app):
    """Damaged and crafted files straight into the domain check, and what it accepts through the model graph:
    only InvalidInput or TooLarge, never another error, and memory stays flat after a warm-up."""
    rng, pool, models = random.Random(7), base_images(), app.domain.models
    outcomes: dict[str, int] = {}
    for i in range(500):
        if i == 100:
            warm = rss_mib()
        _, data = rng.choice(pool)
        try:
            checked = check_image(mutate(data, rng), app.domain.limits)
            await models.run_images(models.tagger, [checked])
            outcome = "ok"
        except (InvalidInput, TooLarge) as e:
            outcome = type(e).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) == {"ok", "InvalidInput", "TooLarge"}, outcomes  # every kind of outcome was exercised
    assert rss_mib() - warm < 200, f"memory grew from {warm:.0f} MiB to {rss_mib():.0f} MiB"
