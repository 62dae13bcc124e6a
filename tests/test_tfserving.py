"""The TF-Serving adapter against a PredictionService server (official stubs) serving the same SavedModels,
parity with the in-process backend, and the service's behaviour while inference is down."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from acg2vec.v1 import image_feature_pb2, image_feature_pb2_grpc, tagging_pb2, tagging_pb2_grpc
from acg2vec_server.app import Application
from acg2vec_server.backends.inprocess import InProcessBackend
from acg2vec_server.backends.tfserving import TFServingBackend
from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.domain.ports import ModelNotInstalled
from acg2vec_server.testing.tfserving_emulator import start_emulator
from acg2vec_testing.images import image_bytes
from acg2vec_testing.paths import SAMPLE_PNG
from acg2vec_testing.waiting import health, wait_for_health
from tests.support.servers import make_settings


async def test_same_request_same_answer_through_both_backends(model_repo):
    server, port = await start_emulator(model_repo)
    remote, local = TFServingBackend(f"127.0.0.1:{port}"), InProcessBackend(model_repo)
    try:
        for model in ("tagger", "illust2vec", "deepix", "acgvoc2vec"):
            assert await remote.describe(model) == await local.describe(model)
        images = np.array([SAMPLE_PNG.read_bytes(), image_bytes(3, fmt="JPEG")], dtype=object)
        texts = np.array(["魔法少女".encode(), b"long hair"], dtype=object)
        for model, inputs in (
            ("tagger", {"image_bytes": images}),
            ("illust2vec", {"image_bytes": images}),
            ("deepix", {"image_bytes": images}),
            ("acgvoc2vec", {"text": texts}),
        ):
            (a, va), (b, vb) = await remote.predict(model, inputs), await local.predict(model, inputs)
            assert va == vb and a.keys() == b.keys()
            for key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)
        names, _ = await remote.predict("tagger", {}, signature="labels")
        assert len(names["names"]) == (await remote.describe("tagger")).output_dim("scores")
        with pytest.raises(ModelNotInstalled):
            await remote.describe("no-such-model")
    finally:
        await remote.close()
        await local.close()
        await server.stop(0)


async def test_service_over_tfserving_and_inference_outage(tmp_path, model_repo, redis_server, stubs):
    emulator, port = await start_emulator(model_repo)
    settings = make_settings(
        tmp_path,
        model_repo,
        redis_server.url,
        inference_backend="tfserving",
        tfserving_target=f"127.0.0.1:{port}",
        redis_key_prefix="tfs:v1",
        inference_timeout_s=30,  # a busy CI machine can be slow on the first call; the outage below is refused fast
    )
    app = Application(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await wait_for_health(channel, "acg2vec.v1.TaggingService", health_pb2.HealthCheckResponse.SERVING)
            tagging = tagging_pb2_grpc.TaggingServiceStub(channel)
            request = tagging_pb2.TagImageRequest(image=SAMPLE_PNG.read_bytes())
            remote = await tagging.TagImage(request)
            local = await stubs.tagging.TagImage(request)  # the session server, in-process backend
            assert [(t.name, round(t.score, 5)) for t in remote.result.tags] == [
                (t.name, round(t.score, 5)) for t in local.result.tags
            ]

            await emulator.stop(0)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tagging.TagImage(request)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "retry" in info.value.details()
            features = image_feature_pb2_grpc.ImageFeatureServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await features.ExtractImageFeature(image_feature_pb2.ExtractImageFeatureRequest(image=image_bytes(1)))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            await wait_for_health(channel, "acg2vec.v1.TaggingService", health_pb2.HealthCheckResponse.NOT_SERVING)
            await wait_for_health(channel, "", health_pb2.HealthCheckResponse.NOT_SERVING)
            assert await health(channel, "liveness") == health_pb2.HealthCheckResponse.SERVING

            emulator, _ = await start_emulator(model_repo, f"127.0.0.1:{port}")
            await wait_for_health(channel, "acg2vec.v1.TaggingService", health_pb2.HealthCheckResponse.SERVING)
            assert (await tagging.TagImage(request)).result.tags
    finally:
        await app.stop(grace_s=0)
        await emulator.stop(0)


async def test_adapter_reports_unreachable_server():
    backend = TFServingBackend("127.0.0.1:1", timeout_s=1)
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await backend.predict("tagger", {"image_bytes": np.array([b"x"], dtype=object)})
        with pytest.raises(BackendUnavailable):
            await backend.ping()
    finally:
        await backend.close()
