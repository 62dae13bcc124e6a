"""acg2vec.client against a real in-process gRPC server with fake servicers (no models, no storage)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from acg2vec.client import (
    Acg2vecClient,
    AsyncAcg2vecClient,
    RetryPolicy,
    retry_delay,
    search_request,
    tag_options,
)
from acg2vec.client._config import STREAMING_METHODS, channel_options, local_connection
from acg2vec.v1 import (
    common_pb2,
    image_feature_pb2,
    image_feature_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    tagging_pb2,
    tagging_pb2_grpc,
    text_feature_pb2,
    text_feature_pb2_grpc,
)

TOKEN = "s3cret"
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


@dataclass
class Call:
    method: str
    request: Any  # the request message of `method`
    metadata: dict[str, str]


@dataclass
class Recorder:
    """What the fake servers saw, plus knobs to make them misbehave."""

    calls: list[Call] = field(default_factory=list)
    unavailable_budget: int = 0
    #: Answers for the next calls, in order: a status code and the RetryInfo delay in seconds (None: no RetryInfo).
    failures: list[tuple[grpc.StatusCode, float | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        with self.lock:
            self.calls.append(Call(method, request, metadata))
            failure = self.failures.pop(0) if self.failures else None
            fail = self.unavailable_budget > 0
            if fail:
                self.unavailable_budget -= 1
        if failure is not None:
            code, delay_s = failure
            status = status_pb2.Status(code=code.value[0], message=f"try again in {delay_s} s")
            if delay_s is not None:
                info = error_details_pb2.RetryInfo()
                info.retry_delay.FromNanoseconds(int(delay_s * 1e9))
                status.details.add().Pack(info)
            context.abort_with_status(rpc_status.to_status(status))
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")

    def of(self, method: str) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.method == method]

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.unavailable_budget = 0
            self.failures.clear()


def _tags(image: bytes) -> tagging_pb2.ImageTags:
    return tagging_pb2.ImageTags(
        tags=[common_pb2.Tag(name=image.decode(errors="replace")[:32], score=0.9)],
        rating=common_pb2.RATING_GENERAL,
    )


def _wait_for_cancel(context: grpc.ServicerContext, limit_s: float = 2.0) -> None:
    """A slow handler that ends as soon as the client's deadline cancels the call."""
    end = time.monotonic() + limit_s
    while context.is_active() and time.monotonic() < end:
        time.sleep(0.005)


class FakeTagging(tagging_pb2_grpc.TaggingServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def TagImage(
        self, request: tagging_pb2.TagImageRequest, context: grpc.ServicerContext
    ) -> tagging_pb2.TagImageResponse:
        self.recorder.record("TagImage", request, context)
        if request.image == b"slow":
            _wait_for_cancel(context)
        return tagging_pb2.TagImageResponse(result=_tags(request.image))

    def BatchTagImages(
        self, request: tagging_pb2.BatchTagImagesRequest, context: grpc.ServicerContext
    ) -> tagging_pb2.BatchTagImagesResponse:
        self.recorder.record("BatchTagImages", request, context)
        return tagging_pb2.BatchTagImagesResponse(results=[_tags(image) for image in request.images])

    def StreamTagImages(
        self, request_iterator: Iterator[tagging_pb2.StreamTagImagesRequest], context: grpc.ServicerContext
    ) -> Iterator[tagging_pb2.StreamTagImagesResponse]:
        for request in request_iterator:
            self.recorder.record("StreamTagImages", request, context)
            if request.image == b"bad":
                error = common_pb2.ItemError(code=code_pb2.INVALID_ARGUMENT, message="not an image")
                yield tagging_pb2.StreamTagImagesResponse(request_id=request.request_id, error=error)
            else:
                yield tagging_pb2.StreamTagImagesResponse(request_id=request.request_id, result=_tags(request.image))

    def PredictPopularity(
        self, request: tagging_pb2.PredictPopularityRequest, context: grpc.ServicerContext
    ) -> tagging_pb2.PredictPopularityResponse:
        self.recorder.record("PredictPopularity", request, context)
        violation = error_details_pb2.BadRequest.FieldViolation(field="image", description="empty image")
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad image", details=[detail])
        context.abort_with_status(rpc_status.to_status(status))
        raise AssertionError("unreachable")


class FakeImageFeatures(image_feature_pb2_grpc.ImageFeatureServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def BatchExtractImageFeatures(
        self, request: image_feature_pb2.BatchExtractImageFeaturesRequest, context: grpc.ServicerContext
    ) -> image_feature_pb2.BatchExtractImageFeaturesResponse:
        self.recorder.record("BatchExtractImageFeatures", request, context)
        features = [common_pb2.FeatureVector(values=[float(len(image))], dimension=1) for image in request.images]
        return image_feature_pb2.BatchExtractImageFeaturesResponse(features=features)


class FakeTextFeatures(text_feature_pb2_grpc.TextFeatureServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def BatchExtractTextFeatures(
        self, request: text_feature_pb2.BatchExtractTextFeaturesRequest, context: grpc.ServicerContext
    ) -> text_feature_pb2.BatchExtractTextFeaturesResponse:
        self.recorder.record("BatchExtractTextFeatures", request, context)
        features = [common_pb2.FeatureVector(values=[float(len(text))], dimension=1) for text in request.texts]
        return text_feature_pb2.BatchExtractTextFeaturesResponse(features=features)


class FakeSearch(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        self.recorder.record("Search", request, context)
        hits = [search_pb2.SearchHit(id=f"hit-{i}", score=1.0 - i / 10) for i in range(request.top_k)]
        return search_pb2.SearchResponse(hits=hits, next_page_token="next" if not request.page_token else "")

    def IndexIllustration(
        self, request: search_pb2.IndexIllustrationRequest, context: grpc.ServicerContext
    ) -> search_pb2.IndexIllustrationResponse:
        self.recorder.record("IndexIllustration", request, context)
        illustration = search_pb2.Illustration(id=request.id, metadata=request.metadata)
        return search_pb2.IndexIllustrationResponse(illustration=illustration, outcome=search_pb2.INDEX_OUTCOME_CREATED)

    def StreamIndexIllustrations(
        self, request_iterator: Iterator[search_pb2.StreamIndexIllustrationsRequest], context: grpc.ServicerContext
    ) -> Iterator[search_pb2.StreamIndexIllustrationsResponse]:
        for request in request_iterator:
            self.recorder.record("StreamIndexIllustrations", request, context)
            yield search_pb2.StreamIndexIllustrationsResponse(id=request.id, outcome=search_pb2.INDEX_OUTCOME_CREATED)

    def GetIllustration(
        self, request: search_pb2.GetIllustrationRequest, context: grpc.ServicerContext
    ) -> search_pb2.GetIllustrationResponse:
        self.recorder.record("GetIllustration", request, context)
        if request.id != "known":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no illustration {request.id!r}")
        return search_pb2.GetIllustrationResponse(illustration=search_pb2.Illustration(id=request.id))

    def UpdateIllustrationMetadata(
        self, request: search_pb2.UpdateIllustrationMetadataRequest, context: grpc.ServicerContext
    ) -> search_pb2.UpdateIllustrationMetadataResponse:
        self.recorder.record("UpdateIllustrationMetadata", request, context)
        illustration = search_pb2.Illustration(id=request.id, metadata=request.metadata)
        return search_pb2.UpdateIllustrationMetadataResponse(illustration=illustration)

    def DeleteIllustration(
        self, request: search_pb2.DeleteIllustrationRequest, context: grpc.ServicerContext
    ) -> search_pb2.DeleteIllustrationResponse:
        self.recorder.record("DeleteIllustration", request, context)
        return search_pb2.DeleteIllustrationResponse(existed=request.id == "known")


@dataclass
class FakeServer:
    target: str
    recorder: Recorder


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    recorder = Recorder()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    tagging_pb2_grpc.add_TaggingServiceServicer_to_server(FakeTagging(recorder), grpc_server)
    image_feature_pb2_grpc.add_ImageFeatureServiceServicer_to_server(FakeImageFeatures(recorder), grpc_server)
    text_feature_pb2_grpc.add_TextFeatureServiceServicer_to_server(FakeTextFeatures(recorder), grpc_server)
    search_pb2_grpc.add_SearchServiceServicer_to_server(FakeSearch(recorder), grpc_server)
    health_servicer = health.HealthServicer()
    health_servicer.set("acg2vec.v1.TaggingService", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield FakeServer(f"127.0.0.1:{port}", recorder)
    finally:
        grpc_server.stop(grace=None)


@pytest.fixture
def recorder(server: FakeServer) -> Iterator[Recorder]:
    server.recorder.reset()
    yield server.recorder
    server.recorder.reset()


@pytest.fixture
def client(server: FakeServer, recorder: Recorder) -> Iterator[Acg2vecClient]:
    with Acg2vecClient(
        server.target, token=TOKEN, timeout_s=5.0, retries=FAST_RETRY, metadata=[("X-Client", "unit")]
    ) as c:
        yield c


# Request building (no server) -----------------------------------------------------------------------


def test_tag_options_maps_category_thresholds() -> None:
    options = tag_options(top_k=5, thresholds={"general": 0.25, "TAG_CATEGORY_CHARACTER": 0.75})
    assert options.top_k == 5
    assert options.thresholds.general == pytest.approx(0.25)
    assert options.thresholds.character == pytest.approx(0.75)
    assert not options.thresholds.HasField("copyright")
    with pytest.raises(ValueError, match="unknown threshold category"):
        tag_options(thresholds={"colour": 0.5})


def test_tag_options_carry_tag_thresholds_and_modes() -> None:
    options = tag_options(tag_thresholds={"long_hair": 0.9}, modes={"general": "mcut", "character": "FIXED"})
    assert dict(options.tag_thresholds) == {"long_hair": pytest.approx(0.9)}
    assert options.modes.general == tagging_pb2.THRESHOLD_MODE_MCUT
    assert options.modes.character == tagging_pb2.THRESHOLD_MODE_FIXED
    with pytest.raises(ValueError, match="fixed or mcut"):
        tag_options(modes={"general": "adaptive"})
    with pytest.raises(ValueError, match="unknown mode category"):
        tag_options(modes={"rating": "mcut"})


def test_search_request_needs_exactly_one_query() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        search_request()
    with pytest.raises(ValueError, match="exactly one"):
        search_request(text="miku", illustration_id="x")
    with pytest.raises(ValueError, match="space"):
        search_request(vector=[0.1, 0.2])
    request = search_request(vector=[0.5, 0.25], space="text", ratings=["safe", "explicit"], top_k=3)
    assert request.WhichOneof("query") == "vector"
    assert list(request.vector.values) == [0.5, 0.25]
    assert request.vector.space == search_pb2.VECTOR_SPACE_TEXT
    assert list(request.filter.ratings) == [common_pb2.RATING_GENERAL, common_pb2.RATING_EXPLICIT]


def test_retry_policy_becomes_service_config_for_the_streams() -> None:
    """gRPC's own retries cover only the streaming RPCs: unary calls are retried by the client (RetryInfo)."""
    config = json.loads(RetryPolicy(max_attempts=3, initial_backoff_s=0.2).service_config_json())
    (method_config,) = config["methodConfig"]
    names = {(entry["service"], entry["method"]) for entry in method_config["name"]}
    assert names == {
        ("acg2vec.v1.TaggingService", "StreamTagImages"),
        ("acg2vec.v1.ImageFeatureService", "StreamExtractImageFeatures"),
        ("acg2vec.v1.TextFeatureService", "StreamExtractTextFeatures"),
        ("acg2vec.v1.SearchService", "StreamIndexIllustrations"),
        ("grpc.health.v1.Health", "Watch"),
    }
    assert names == set(STREAMING_METHODS)
    policy = method_config["retryPolicy"]
    assert policy["maxAttempts"] == 3
    assert policy["initialBackoff"] == "0.200000000s"
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert RetryPolicy.from_retries(0) is None
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=6)


def test_extra_channel_options_replace_derived_ones() -> None:
    options = channel_options(
        max_message_bytes=1024, retry_policy=FAST_RETRY, extra=[("grpc.per_rpc_retry_buffer_size", 7)]
    )
    assert [value for key, value in options if key == "grpc.per_rpc_retry_buffer_size"] == [7]
    assert ("grpc.max_receive_message_length", 1024) in options
    assert ("grpc.enable_retries", 0) in channel_options(max_message_bytes=1024, retry_policy=None)


# Sync client ----------------------------------------------------------------------------------------


def test_tag_image_maps_fields_and_sends_bearer_token(client: Acg2vecClient, recorder: Recorder) -> None:
    response = client.tag_image(b"miku", top_k=7, thresholds={"general": 0.3}, include_popularity=True)
    assert response.result.tags[0].name == "miku"
    (call,) = recorder.of("TagImage")
    assert isinstance(call.request, tagging_pb2.TagImageRequest)
    assert call.request.image == b"miku"
    assert call.request.options.top_k == 7
    assert call.request.options.include_popularity
    assert call.request.options.thresholds.general == pytest.approx(0.3)
    assert not call.request.options.thresholds.HasField("rating")
    assert call.metadata["authorization"] == f"Bearer {TOKEN}"
    assert call.metadata["x-client"] == "unit"


def test_token_travels_as_call_credentials(client: Acg2vecClient, recorder: Recorder) -> None:
    """Channel-level call credentials: a raw stub call, with no metadata of its own, carries the token too."""
    client.tagging.TagImage(tagging_pb2.TagImageRequest(image=b"raw"), timeout=5)
    (call,) = recorder.of("TagImage")
    assert call.metadata["authorization"] == f"Bearer {TOKEN}"
    assert "x-client" not in call.metadata, "per-call metadata is the client methods' business"


@pytest.mark.parametrize(
    "target",
    ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "dns:///localhost:1", "ipv4:127.0.0.1:1,127.0.0.2:2"],
)
def test_loopback_targets_are_local(target: str) -> None:
    assert local_connection(target) == grpc.LocalConnectionType.LOCAL_TCP
    assert local_connection("unix:/run/acg2vec.sock") == grpc.LocalConnectionType.UDS


@pytest.mark.parametrize(
    "target", ["acg2vec.example.com:50051", "dns:///acg2vec:50051", "10.0.0.5:50051", "ipv4:127.0.0.1:1,10.0.0.1:2"]
)
def test_token_refused_over_plaintext_to_another_host(target: str) -> None:
    assert local_connection(target) is None
    with pytest.raises(ValueError, match=r"refusing to send the token in plaintext.*allow_plaintext_token=True"):
        Acg2vecClient(target, token=TOKEN)
    # no token, TLS, or the explicit opt-in: accepted (the channel connects lazily, so nothing is sent here)
    for kwargs in ({}, {"token": TOKEN, "tls": True}, {"token": TOKEN, "allow_plaintext_token": True}):
        Acg2vecClient(target, **kwargs).close()  # type: ignore[arg-type]


def _non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback (none on an isolated CI runner: the test skips)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_forced_plaintext_token_reaches_another_host(recorder: Recorder) -> None:
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tagging_pb2_grpc.add_TaggingServiceServicer_to_server(FakeTagging(recorder), grpc_server)
    port = grpc_server.add_insecure_port(f"{address}:0")
    grpc_server.start()
    try:
        target = f"{address}:{port}"
        with pytest.raises(ValueError, match="allow_plaintext_token"):
            Acg2vecClient(target, token=TOKEN)
        with Acg2vecClient(
            target, token=TOKEN, allow_plaintext_token=True, options=[("grpc.enable_http_proxy", 0)]
        ) as c:
            assert c.tag_image(b"remote").result.tags[0].name == "remote"
        (call,) = recorder.of("TagImage")
        assert call.metadata["authorization"] == f"Bearer {TOKEN}"
    finally:
        grpc_server.stop(grace=None)


def test_tag_images_splits_into_batches(client: Acg2vecClient, recorder: Recorder) -> None:
    images = [f"img{i}".encode() for i in range(70)]
    response = client.tag_images(images, top_k=3)
    assert [result.tags[0].name for result in response.results] == [image.decode() for image in images]
    sizes = [len(call.request.images) for call in recorder.of("BatchTagImages")]
    assert sizes == [32, 32, 6]
    assert all(call.request.options.top_k == 3 for call in recorder.of("BatchTagImages"))

    recorder.reset()
    assert len(client.tag_images(images[:10], batch_size=4).results) == 10
    assert [len(call.request.images) for call in recorder.of("BatchTagImages")] == [4, 4, 2]

    recorder.reset()
    assert len(client.tag_images([]).results) == 0
    assert recorder.of("BatchTagImages") == []


def test_feature_batches_are_chunked(client: Acg2vecClient, recorder: Recorder) -> None:
    images = [b"x" * (i + 1) for i in range(5)]
    response = client.extract_image_features(images, batch_size=2)
    assert [f.values[0] for f in response.features] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert len(recorder.of("BatchExtractImageFeatures")) == 3
    texts = ["初音ミク", "long hair", "a"]
    text_response = client.extract_text_features(texts, batch_size=2)
    assert [f.values[0] for f in text_response.features] == [4.0, 9.0, 1.0]
    assert [list(c.request.texts) for c in recorder.of("BatchExtractTextFeatures")] == [texts[:2], texts[2:]]
    with pytest.raises(TypeError):
        client.extract_text_features("not a list")


def test_stream_tag_images(client: Acg2vecClient, recorder: Recorder) -> None:
    items = [("a", b"one"), ("b", b"bad"), tagging_pb2.StreamTagImagesRequest(request_id="c", image=b"three")]
    responses = list(client.stream_tag_images(iter(items), top_k=2))
    assert [r.request_id for r in responses] == ["a", "b", "c"]
    assert responses[1].WhichOneof("outcome") == "error"
    assert responses[1].error.code == code_pb2.INVALID_ARGUMENT
    assert responses[2].result.tags[0].name == "three"
    sent = [call.request for call in recorder.of("StreamTagImages")]
    assert [r.options.top_k for r in sent] == [2, 2, 0]
    assert recorder.of("StreamTagImages")[0].metadata["authorization"] == f"Bearer {TOKEN}"


def test_search_maps_query_and_filter(client: Acg2vecClient, recorder: Recorder) -> None:
    response = client.search(
        text="silver hair",
        top_k=3,
        ratings=["general", common_pb2.RATING_SENSITIVE],
        required_tags=["1girl"],
        excluded_tags=["comic"],
        fields={"source": "pixiv"},
        exact_rerank=True,
    )
    assert [hit.id for hit in response.hits] == ["hit-0", "hit-1", "hit-2"]
    assert response.next_page_token == "next"
    (call,) = recorder.of("Search")
    expected = search_pb2.SearchRequest(
        text="silver hair",
        top_k=3,
        exact_rerank=True,
        filter=search_pb2.SearchFilter(
            ratings=[common_pb2.RATING_GENERAL, common_pb2.RATING_SENSITIVE],
            required_tags=["1girl"],
            excluded_tags=["comic"],
            fields={"source": "pixiv"},
        ),
    )
    assert call.request == expected

    client.search(illustration_id="known", top_k=1, page_token="next")
    client.search(vector=[1.0, 0.0], space="image", top_k=1)
    client.search(image=b"png", top_k=1)
    kinds = [call.request.WhichOneof("query") for call in recorder.of("Search")]
    assert kinds == ["text", "illustration_id", "vector", "image"]
    assert recorder.of("Search")[1].request.page_token == "next"


def test_illustration_crud(client: Acg2vecClient, recorder: Recorder) -> None:
    indexed = client.index_illustration(
        "pixiv:1", b"img", title="t", artist="a", source_url="https://x/1", fields={"source": "pixiv"}
    )
    assert indexed.outcome == search_pb2.INDEX_OUTCOME_CREATED
    assert indexed.illustration.metadata.fields["source"] == "pixiv"
    (call,) = recorder.of("IndexIllustration")
    assert call.request == search_pb2.IndexIllustrationRequest(
        id="pixiv:1",
        image=b"img",
        metadata=search_pb2.IllustrationMetadata(
            title="t", artist="a", source_url="https://x/1", fields={"source": "pixiv"}
        ),
    )

    assert client.get_illustration("known", include_vectors=True).illustration.id == "known"
    assert recorder.of("GetIllustration")[0].request.include_vectors
    with pytest.raises(grpc.RpcError) as excinfo:
        client.get_illustration("missing")
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND

    updated = client.update_illustration_metadata("known", title="new")
    assert updated.illustration.metadata.title == "new"
    assert client.delete_illustration("known").existed
    assert not client.delete_illustration("other").existed


def test_stream_index_illustrations_accepts_tuples_and_messages(client: Acg2vecClient, recorder: Recorder) -> None:
    items = [
        ("a", b"1"),
        ("b", b"2", {"title": "B", "fields": {"k": "v"}}),
        search_pb2.IndexIllustrationRequest(id="c", image=b"3"),
        search_pb2.StreamIndexIllustrationsRequest(id="d", image=b"4"),
    ]
    responses = list(client.stream_index_illustrations(items))
    assert sorted(r.id for r in responses) == ["a", "b", "c", "d"]
    assert all(r.outcome == search_pb2.INDEX_OUTCOME_CREATED for r in responses)
    sent = {call.request.id: call.request for call in recorder.of("StreamIndexIllustrations")}
    assert sent["b"].metadata.title == "B"
    assert sent["b"].metadata.fields["k"] == "v"


def test_retries_unavailable(client: Acg2vecClient, recorder: Recorder) -> None:
    recorder.unavailable_budget = 1
    assert client.tag_image(b"again").result.tags[0].name == "again"
    assert len(recorder.of("TagImage")) == 2


def test_retries_large_requests(client: Acg2vecClient, recorder: Recorder) -> None:
    """Bigger than gRPC's default 256 KiB retry buffer: still retried because the client raises the buffer."""
    recorder.unavailable_budget = 1
    big = b"x" * (1024 * 1024)
    assert len(client.extract_image_features([big]).features) == 1
    assert len(recorder.of("BatchExtractImageFeatures")) == 2


def test_gives_up_after_max_attempts(client: Acg2vecClient, recorder: Recorder) -> None:
    recorder.unavailable_budget = 10
    with pytest.raises(grpc.RpcError) as excinfo:
        client.tag_image(b"down")
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(recorder.of("TagImage")) == FAST_RETRY.max_attempts


def test_resource_exhausted_with_retry_info_waits_the_servers_delay(client: Acg2vecClient, recorder: Recorder) -> None:
    recorder.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.3)]
    started = time.monotonic()
    assert client.tag_image(b"later").result.tags[0].name == "later"
    assert time.monotonic() - started >= 0.3, "never sooner than the server asked"
    assert len(recorder.of("TagImage")) == 2


def test_unavailable_with_retry_info_waits_the_servers_delay_not_the_backoff(
    client: Acg2vecClient, recorder: Recorder
) -> None:
    recorder.failures = [(grpc.StatusCode.UNAVAILABLE, 0.3), (grpc.StatusCode.UNAVAILABLE, 0.3)]
    started = time.monotonic()
    assert len(client.extract_text_features(["a"]).features) == 1
    assert time.monotonic() - started >= 0.6, f"backoff of {FAST_RETRY.max_backoff_s} s would be much shorter"
    assert len(recorder.of("BatchExtractTextFeatures")) == 3


def test_resource_exhausted_without_retry_info_is_not_retried(client: Acg2vecClient, recorder: Recorder) -> None:
    """E.g. a quota or size limit: trying again would not help."""
    recorder.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, None)]
    with pytest.raises(grpc.RpcError) as excinfo:
        client.tag_image(b"x")
    assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(excinfo.value) is None
    assert len(recorder.of("TagImage")) == 1


@pytest.mark.parametrize(("delay_s", "timeout_s"), [(30.0, 60.0), (0.8, 0.3)])
def test_retry_info_beyond_the_bound_or_the_deadline_fails_at_once(
    server: FakeServer, recorder: Recorder, delay_s: float, timeout_s: float
) -> None:
    """A delay over max_retry_delay_s (10 s), or longer than the time left: the caller gets the answer now."""
    recorder.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, delay_s)]
    with Acg2vecClient(server.target, timeout_s=timeout_s, retries=FAST_RETRY) as c:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as excinfo:
            c.tag_image(b"x")
        elapsed = time.monotonic() - started
    assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(excinfo.value) == pytest.approx(delay_s)
    assert elapsed < min(delay_s, timeout_s), "no waiting for a retry that cannot happen"
    assert len(recorder.of("TagImage")) == 1


def test_no_retry_when_disabled(server: FakeServer, recorder: Recorder) -> None:
    recorder.unavailable_budget = 1
    with Acg2vecClient(server.target, retries=0) as no_retry, pytest.raises(grpc.RpcError) as excinfo:
        no_retry.tag_image(b"once")
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(recorder.of("TagImage")) == 1


def test_deadline(server: FakeServer, recorder: Recorder) -> None:
    with Acg2vecClient(server.target, timeout_s=0.1, retries=FAST_RETRY) as short:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as excinfo:
            short.tag_image(b"slow")
        assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.0
        # A per-call timeout overrides the client default.
        with pytest.raises(grpc.RpcError) as excinfo:
            short.tag_image(b"slow", timeout=0.05)
        assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert short.tag_image(b"fast").result.tags[0].name == "fast"


def test_error_details_are_readable(client: Acg2vecClient) -> None:
    with pytest.raises(grpc.RpcError) as excinfo:
        client.predict_popularity(b"")
    error = excinfo.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "image"


def test_health_check(client: Acg2vecClient) -> None:
    assert client.health_check().status == health_pb2.HealthCheckResponse.SERVING
    assert client.health_check("acg2vec.v1.TaggingService").status == health_pb2.HealthCheckResponse.SERVING


def test_raw_stubs_are_exposed(client: Acg2vecClient) -> None:
    response = client.tagging.TagImage(tagging_pb2.TagImageRequest(image=b"raw"), timeout=5)
    assert response.result.tags[0].name == "raw"
    assert client.search_service is not None and client.image_features is not None and client.text_features is not None


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


class TagAttempts(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """A user's interceptor: counts attempts and adds a header."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        self.methods.append(details.method)
        return _CallDetails(details, [*(details.metadata or ()), ("x-intercepted", "sync")])

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def test_user_interceptors_see_every_call_and_attempt(server: FakeServer, recorder: Recorder) -> None:
    interceptor = TagAttempts()
    with Acg2vecClient(server.target, token=TOKEN, retries=FAST_RETRY, interceptors=[interceptor]) as c:
        recorder.unavailable_budget = 1
        assert c.tag_image(b"a").result.tags[0].name == "a"
        assert [r.request_id for r in c.stream_tag_images([("s", b"b")])] == ["s"]
        assert c.health_check().status == health_pb2.HealthCheckResponse.SERVING
    assert interceptor.methods == [
        "/acg2vec.v1.TaggingService/TagImage",
        "/acg2vec.v1.TaggingService/TagImage",  # the retry is a second attempt through the interceptors
        "/acg2vec.v1.TaggingService/StreamTagImages",
        "/grpc.health.v1.Health/Check",
    ]
    seen = recorder.of("TagImage") + recorder.of("StreamTagImages")
    assert [c.metadata.get("x-intercepted") for c in seen] == ["sync"] * 3
    assert all(c.metadata["authorization"] == f"Bearer {TOKEN}" for c in seen)


def test_interceptors_must_match_the_client_flavour(server: FakeServer) -> None:
    with pytest.raises(TypeError, match=r"grpc\.aio"):
        AsyncAcg2vecClient(server.target, interceptors=[TagAttempts()])
    with pytest.raises(TypeError, match="UnaryUnaryClientInterceptor"):
        Acg2vecClient(server.target, interceptors=[object()])


# Async client ---------------------------------------------------------------------------------------


async def test_async_client_mirrors_sync(server: FakeServer, recorder: Recorder) -> None:
    async with AsyncAcg2vecClient(server.target, token=TOKEN, timeout_s=5.0, retries=FAST_RETRY) as aclient:
        tagged = await aclient.tag_image(b"miku", top_k=4)
        assert tagged.result.tags[0].name == "miku"
        assert recorder.of("TagImage")[0].metadata["authorization"] == f"Bearer {TOKEN}"

        batch = await aclient.tag_images([b"%d" % i for i in range(5)], batch_size=2)
        assert [r.tags[0].name for r in batch.results] == ["0", "1", "2", "3", "4"]
        assert [len(c.request.images) for c in recorder.of("BatchTagImages")] == [2, 2, 1]

        features = await aclient.extract_text_features(["a", "bb", "ccc"], batch_size=2)
        assert [f.values[0] for f in features.features] == [1.0, 2.0, 3.0]

        found = await aclient.search(text="miku", top_k=2, required_tags=["1girl"])
        assert len(found.hits) == 2
        assert list(recorder.of("Search")[0].request.filter.required_tags) == ["1girl"]

        assert (await aclient.get_illustration("known")).illustration.id == "known"
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await aclient.get_illustration("missing")
        assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await aclient.delete_illustration("known")).existed
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await aclient.predict_popularity(b"")
        rich = rpc_status.from_call(bad.value)  # type: ignore[arg-type]  # AioRpcError has the same accessors
        assert rich is not None and rich.code == code_pb2.INVALID_ARGUMENT
        status = await aclient.health_check()
        assert status.status == health_pb2.HealthCheckResponse.SERVING


async def test_async_streams_take_sync_and_async_iterables(server: FakeServer, recorder: Recorder) -> None:
    async def items() -> AsyncIterator[tuple[str, bytes]]:
        for i in range(3):
            yield (f"r{i}", b"img%d" % i)

    async with AsyncAcg2vecClient(server.target) as aclient:
        answers = [r async for r in aclient.stream_tag_images(items(), top_k=1)]
        assert [a.request_id for a in answers] == ["r0", "r1", "r2"]
        assert all(c.request.options.top_k == 1 for c in recorder.of("StreamTagImages"))

        indexed = [r async for r in aclient.stream_index_illustrations([("x", b"1"), ("y", b"2", {"title": "Y"})])]
        assert sorted(r.id for r in indexed) == ["x", "y"]

        # Stopping early cancels the stream instead of leaking it.
        stream = aclient.stream_tag_images([("a", b"1"), ("b", b"2")])
        first = await anext(stream)
        assert first.request_id == "a"
        await stream.aclose()


async def test_async_retry_and_deadline(server: FakeServer, recorder: Recorder) -> None:
    async with AsyncAcg2vecClient(server.target, timeout_s=0.2, retries=FAST_RETRY) as aclient:
        recorder.unavailable_budget = 1
        assert (await aclient.tag_image(b"again")).result.tags[0].name == "again"
        assert len(recorder.of("TagImage")) == 2
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await aclient.tag_image(b"slow")
        assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_async_retry_info_waits_the_servers_delay(server: FakeServer, recorder: Recorder) -> None:
    async with AsyncAcg2vecClient(server.target, timeout_s=5, retries=FAST_RETRY) as aclient:
        recorder.failures = [(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.3)]
        started = time.monotonic()
        assert (await aclient.tag_image(b"later")).result.tags[0].name == "later"
        assert time.monotonic() - started >= 0.3
        assert len(recorder.of("TagImage")) == 2

        recorder.reset()
        recorder.failures = [(grpc.StatusCode.UNAVAILABLE, 8.0)]
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await aclient.tag_image(b"x", timeout=1.0)
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
        assert retry_delay(excinfo.value) == pytest.approx(8.0)
        assert len(recorder.of("TagImage")) == 1


class AsyncTagAttempts(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    def __init__(self) -> None:
        self.methods: list[str] = []

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.methods.append(method)
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("x-intercepted", "aio"))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_stream(self, continuation: Any, client_call_details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


async def test_async_user_interceptors(server: FakeServer, recorder: Recorder) -> None:
    interceptor = AsyncTagAttempts()
    async with AsyncAcg2vecClient(server.target, token=TOKEN, interceptors=[interceptor]) as aclient:
        assert (await aclient.tag_image(b"a")).result.tags[0].name == "a"
        assert [r.request_id async for r in aclient.stream_tag_images([("s", b"b")])] == ["s"]
    assert interceptor.methods == ["/acg2vec.v1.TaggingService/TagImage", "/acg2vec.v1.TaggingService/StreamTagImages"]
    seen = recorder.of("TagImage") + recorder.of("StreamTagImages")
    assert [c.metadata.get("x-intercepted") for c in seen] == ["aio", "aio"]
    assert all(c.metadata["authorization"] == f"Bearer {TOKEN}" for c in seen)
    with pytest.raises(TypeError, match=r"grpc\.aio\.ClientInterceptor"):
        AsyncAcg2vecClient(server.target, interceptors=[TagAttempts()])
