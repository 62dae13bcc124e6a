"""The TF-Serving path: the adapter against the TF-Serving emulator (official stubs) with TF-Serving's batching rules
on, as deployed (`--enable_batching`, k8s/base/tfserving/batching_parameters.txt); every rule the emulator enforces,
with TF-Serving's own status codes and texts; parity of the TF-Serving path (concurrent calls merged into batches,
padded inputs) with the in-process backend; and the service's behaviour while inference is down."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tokenizers import Tokenizer, models, pre_tokenizers

from acg2vec.v1 import (
    image_feature_pb2,
    image_feature_pb2_grpc,
    tagging_pb2,
    tagging_pb2_grpc,
    text_feature_pb2,
    text_feature_pb2_grpc,
)
from acg2vec_models import repository
from acg2vec_models.text.export import export_token_text_model
from acg2vec_models.text.tf_encoders import TextEncoder
from acg2vec_models.text.tokens import serving_definition
from acg2vec_server.app import Application
from acg2vec_server.backends.inprocess import InProcessBackend
from acg2vec_server.backends.signatures import read_signature_defs
from acg2vec_server.backends.tfserving import TFServingBackend, channel_options
from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.domain.models import Models
from acg2vec_server.domain.ports import InferenceInputError, ModelNotInstalled
from acg2vec_server.testing.tfserving_emulator import DEFAULT_BATCHING, BatchingParameters, Emulator, start_emulator
from acg2vec_server.transport.security import Security
from acg2vec_server.transport.server import api_server, bind
from acg2vec_testing.images import image_bytes
from acg2vec_testing.model_repository import copy_repository
from acg2vec_testing.paths import ROOT, SAMPLE_PNG
from acg2vec_testing.waiting import health, wait_for_health
from tests.support.servers import make_settings

ROWS = tf.TensorSpec([None], tf.int64, name="rows")
WORDS = ["[PAD]", "[UNK]", "magical", "girl", "long", "hair", "sword", "art", "online", "魔法少女"]
# Long enough that concurrent calls reliably meet in one batch on a busy machine (the deployment waits 2 ms).
MERGING = BatchingParameters(**{**DEFAULT_BATCHING.__dict__, "batch_timeout_micros": 300_000})


class _MeanEncoder(TextEncoder):
    """A tiny token-id text encoder: the mean of learned token vectors over a row's real tokens."""

    def __init__(self, vocab: int, dim: int = 8):
        super().__init__()
        self.table = tf.Variable(np.random.default_rng(0).normal(size=(vocab, dim)).astype(np.float32))
        self.dim = dim

    def __call__(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        mask = tf.cast(attention_mask, tf.float32)[..., None]
        return tf.reduce_sum(tf.gather(self.table, input_ids) * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)


class _Rules(tf.Module):
    """Signatures that break TF-Serving's batching rules, one per rule (written without the exporters' check)."""

    @tf.function(input_signature=[])
    def labels(self) -> dict[str, tf.Tensor]:  # the tagger's labels before this release: no input
        return {"names": tf.constant(["a", "b"]), "categories": tf.constant(["general", "rating"])}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64, name="x")])
    def scalar(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x[None]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="a"), tf.TensorSpec([None], tf.int64, name="b")])
    def pair(self, a: tf.Tensor, b: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"a": a, "b": b}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64, name="x")])
    def echo(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        """x back, and how many rows the run saw (padding included) in every row."""
        rows = tf.shape(x, out_type=tf.int64)[0]
        return {"x": x, "rows": tf.fill([rows], rows)}

    @tf.function(input_signature=[ROWS])
    def unbatched(self, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"names": tf.constant(["a", "b", "c"])}

    @tf.function(input_signature=[ROWS])
    def count(self, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"n": tf.size(rows, out_type=tf.int64)}


@pytest.fixture(scope="module")
def serving_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev models, a token-id text model (`tokens`, tokenizer carried in the model) and `rules`."""
    root = copy_repository(model_repo, tmp_path_factory.mktemp("serving-repo"))
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    export_token_text_model(_MeanEncoder(len(WORDS)), serving_definition(tokenizer, 16, 0, "[PAD]"), root / "tokens/1")
    rules = _Rules()
    signatures = {name: getattr(rules, name) for name in ("labels", "scalar", "pair", "echo", "unbatched", "count")}
    tf.saved_model.save(rules, str(root / "rules" / "1"), signatures=signatures)
    return root


@pytest_asyncio.fixture(scope="module")
async def engine(serving_repo: Path) -> AsyncIterator[InProcessBackend]:
    """The repository loaded once: the emulators' engine, and the in-process backend the TF-Serving path is
    compared with (each call alone, no batching)."""
    backend = InProcessBackend(serving_repo, threads=4)
    yield backend
    await backend.close()


@pytest_asyncio.fixture(scope="module")
async def emulator(serving_repo: Path, engine: InProcessBackend) -> AsyncIterator[Emulator]:
    """TF-Serving as deployed: batching on with the deployment's parameters (the emulator's defaults)."""
    server = await start_emulator(serving_repo, backend=engine)
    yield server
    await server.stop(0)


async def predict(port: int, model: str, signature: str, **inputs: np.ndarray) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)


async def refused(port: int, model: str, signature: str, **inputs: np.ndarray) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await predict(port, model, signature, **inputs)
    return info.value.code(), info.value.details()


def test_the_emulator_batches_as_deployed():
    deployed = (ROOT / "k8s/base/tfserving/batching_parameters.txt").read_text()
    assert BatchingParameters.parse(deployed) == DEFAULT_BATCHING
    with pytest.raises(ValueError, match="Last entry in allowed_batch_sizes must match max_batch_size"):
        BatchingParameters.parse("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(ValueError, match="'max_execution_batch_size' is not emulated"):
        BatchingParameters.parse("max_execution_batch_size { value: 8 }\n")


def test_exported_signatures_pass_the_batching_rules(serving_repo):
    """What the repository's models export (dev models, token-id text model) passes; the rule breakers do not."""
    for name in ("tagger", "illust2vec", "deepix", "acgvoc2vec", "tokens"):
        path = serving_repo / name / str(repository.latest_version(serving_repo, name))
        assert repository.batching_problems(read_signature_defs(path)) == [], name
    problems = "\n".join(repository.batching_problems(read_signature_defs(serving_repo / "rules" / "1")))
    assert "signature 'labels' takes no input" in problems and "'labels' output 'names' has a fixed 0th" in problems
    assert "'scalar' input 'x' is a scalar" in problems and "'count' output 'n' is a scalar" in problems
    assert "'unbatched' output 'names' has a fixed 0th dimension (3)" in problems
    assert "'echo'" not in problems and "'pair'" not in problems
    with pytest.raises(ValueError, match="takes no input"):
        repository.check_batchable(serving_repo / "rules" / "1")


async def test_tfserving_rules_with_its_codes_and_texts(emulator):
    port, rows = emulator.port, np.zeros([1], np.int64)
    invalid, failed = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
    assert await refused(port, "rules", "labels") == (invalid, "Batching Run() must have at least one input tensor")
    assert await refused(port, "rules", "scalar", x=np.int64(3)) == (
        invalid, "Batching Run() input tensors must have at least one dimension",
    )  # fmt: skip
    assert await refused(port, "rules", "pair", a=np.arange(2), b=np.arange(3)) == (
        invalid, "Batching Run() input tensors must have equal 0th-dimension size",
    )  # fmt: skip
    assert await refused(port, "rules", "echo", x=np.zeros([65, 1], np.int64)) == (
        invalid, "Task size 65 is larger than maximum input batch size 64",
    )  # fmt: skip
    assert await refused(port, "rules", "count", rows=rows) == (failed, "Batched output tensor has 0 dimensions")
    assert await refused(port, "rules", "unbatched", rows=rows) == (
        failed,
        "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the input tensors",
    )
    assert await refused(port, "rules", "nope", rows=rows) == (failed, 'Serving signature key "nope" not found.')
    code, details = await refused(port, "rules", "echo", x=np.zeros([1, 1], np.int64), y=rows)
    assert code == invalid and details.startswith("input size does not match signature: 2!=1 len({x,y}) != len({x})")
    code, details = await refused(port, "no-such-model", "serving_default", rows=rows)
    assert code == grpc.StatusCode.NOT_FOUND and details.startswith("Servable not found for request: Latest(no-such")
    answer = await predict(port, "rules", "echo", x=np.arange(6).reshape(2, 3))  # what passes the rules runs
    assert tf.make_ndarray(answer.outputs["x"]).tolist() == [[0, 1, 2], [3, 4, 5]]
    remote = TFServingBackend(f"127.0.0.1:{port}")  # a specific version (model_spec.version), as a pinned model asks
    try:
        assert (await remote.predict("rules@1", {"x": np.zeros([1, 1], np.int64)}, "echo"))[1] == 1
        assert (await remote.describe("rules@1")).version == 1
        with pytest.raises(ModelNotInstalled, match=r"Servable not found for request: Specific\(rules, 7\)"):
            await remote.predict("rules@7", {"x": np.zeros([1, 1], np.int64)}, "echo")
    finally:
        await remote.close()


async def test_batches_merge_pad_and_fail_together(serving_repo, engine):
    """Concurrent calls run as one batch: inputs padded with each call's first value (pad_variable_length_inputs),
    the batch padded to an allowed size; without padding, shapes must agree; one bad input fails the whole batch."""
    padded = await start_emulator(serving_repo, batching=BatchingParameters(**{
        **MERGING.__dict__, "max_batch_size": 8, "allowed_batch_sizes": (4, 8),
    }), backend=engine)  # fmt: skip
    strict = await start_emulator(serving_repo, batching=BatchingParameters(**{
        **MERGING.__dict__, "pad_variable_length_inputs": False,
    }), backend=engine)  # fmt: skip
    try:
        short, wide = np.array([[7, 8]]), np.array([[1, 2, 3], [4, 5, 6]])
        a, b = await asyncio.gather(
            predict(padded.port, "rules", "echo", x=short), predict(padded.port, "rules", "echo", x=wide)
        )
        assert padded.batch_sizes == [3]  # one run of both calls
        assert tf.make_ndarray(a.outputs["x"]).tolist() == [[7, 8, 7]]  # padded with the call's first value
        assert tf.make_ndarray(b.outputs["x"]).tolist() == wide.tolist()
        assert tf.make_ndarray(a.outputs["rows"]).tolist() == [4]  # the run saw 3 rows padded to 4
        answers = await asyncio.gather(
            predict(strict.port, "rules", "echo", x=short), predict(strict.port, "rules", "echo", x=wide),
            return_exceptions=True,
        )  # fmt: skip
        for answer in answers:
            assert isinstance(answer, grpc.aio.AioRpcError) and answer.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert answer.details().startswith("Tensors with name 'x' from different tasks have different shapes and")
        good, bad = np.array([SAMPLE_PNG.read_bytes()], dtype=object), np.array([b"not an image"], dtype=object)
        answers = await asyncio.gather(
            predict(strict.port, "illust2vec", "serving_default", image_bytes=good),
            predict(strict.port, "illust2vec", "serving_default", image_bytes=bad),
            return_exceptions=True,
        )  # fmt: skip
        assert strict.batch_sizes[-1] == 2
        assert all(
            isinstance(a, grpc.aio.AioRpcError) and a.code() == grpc.StatusCode.INVALID_ARGUMENT for a in answers
        )
    finally:
        await padded.stop(0)
        await strict.stop(0)


async def test_without_batching_a_call_without_input_runs(serving_repo, engine):
    """The rule is batching's: the same call passes with `--enable_batching=false`; and the service still reads a
    tagger exported before this release where it can, and names the fix where TF-Serving's batching refuses it."""
    plain = await start_emulator(serving_repo, batching=None, backend=engine)
    remote_plain, local = TFServingBackend(f"127.0.0.1:{plain.port}"), engine
    try:
        answer = await predict(plain.port, "rules", "labels")
        assert [n.decode() for n in tf.make_ndarray(answer.outputs["names"])] == ["a", "b"]
        for backend in (remote_plain, local):
            labels = await Models(backend, "rules", "illust2vec", "tokens", "deepix").labels(1)
            assert labels.names == ["a", "b"] and labels.categories.tolist() == ["general", "rating"]
    finally:
        await remote_plain.close()
        await plain.stop(0)


async def test_a_tagger_exported_before_this_release_names_the_fix(emulator):
    remote = TFServingBackend(f"127.0.0.1:{emulator.port}")
    try:
        with pytest.raises(BackendUnavailable, match=r"'labels' signature without input.*export the model again"):
            await Models(remote, "rules", "illust2vec", "tokens", "deepix").labels(1)
    finally:
        await remote.close()


async def test_tfserving_path_matches_in_process(serving_repo, engine):
    """Each call through TF-Serving's path (concurrent calls merged into batches, token ids padded across calls)
    answers what the in-process backend answers for that call alone."""
    server = await start_emulator(serving_repo, batching=MERGING, backend=engine)
    # correctness, not speed: a busy machine may take long over the first runs of each model
    remote, local = TFServingBackend(f"127.0.0.1:{server.port}", timeout_s=300), engine
    try:
        for model in ("tagger", "illust2vec", "deepix", "acgvoc2vec", "tokens"):
            assert await remote.describe(model) == await local.describe(model)
        images = [SAMPLE_PNG.read_bytes(), image_bytes(3, fmt="JPEG"), image_bytes(5)]
        calls: list[tuple[str, dict[str, np.ndarray], str]] = []
        for model in ("tagger", "illust2vec", "deepix"):
            calls += [(model, {"image_bytes": np.array(images[:2], dtype=object)}, "serving_default")]
            calls += [(model, {"image_bytes": np.array(images[2:], dtype=object)}, "serving_default")]
        calls += [("acgvoc2vec", {"text": np.array([t.encode()], dtype=object)}, "serving_default")
                  for t in ("魔法少女", "long hair")]  # fmt: skip
        remote_models, local_models = (
            Models(backend, "tagger", "illust2vec", "tokens", "deepix") for backend in (remote, local)
        )
        for texts in (["magical girl"], ["long hair sword art online", "魔法少女 girl"]):
            calls.append(("tokens", (await local_models.text_inputs())(texts), "serving_default"))
        calls.append(("tagger", {"rows": np.zeros([1], np.int64)}, "labels"))
        calls.append(("tokens", {"rows": np.zeros([1], np.int64)}, "tokenizer"))
        answers = await asyncio.gather(*(remote.predict(m, x, s) for m, x, s in calls))
        assert max(server.batch_sizes) > 2 and len(server.batch_sizes) < len(calls)  # calls were merged
        for (model, inputs, signature), (outputs, version) in zip(calls, answers, strict=True):
            expected, expected_version = await local.predict(model, inputs, signature)
            assert version == expected_version and outputs.keys() == expected.keys()
            for key in outputs:
                if outputs[key].dtype == object:
                    assert outputs[key].tolist() == expected[key].tolist()
                else:
                    np.testing.assert_allclose(outputs[key], expected[key], rtol=1e-5, atol=1e-6)
        assert (await remote_models.labels(1)).names == (await local_models.labels(1)).names
        served, alone = (
            await remote_models.embed_texts(["magical girl", "sword"]),
            await local_models.embed_texts(["magical girl", "sword"]),
        )
        for a, b in zip(served, alone, strict=True):
            np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)
        with pytest.raises(ModelNotInstalled):
            await remote.describe("no-such-model")
        with pytest.raises(InferenceInputError, match="Task size 65"):
            await remote.predict("illust2vec", {"image_bytes": np.array([images[0]] * 65, dtype=object)})
    finally:
        await remote.close()
        await server.stop(0)


async def test_service_over_tfserving_and_inference_outage(tmp_path, serving_repo, engine, redis_server, stubs):
    emulator, port = await start_emulator(serving_repo, backend=engine)
    settings = make_settings(
        tmp_path,
        serving_repo,
        redis_server.url,
        inference_backend="tfserving",
        tfserving_target=f"127.0.0.1:{port}",
        text_model="tokens",
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
            in_process = await stubs.tagging.TagImage(request)  # the session server, in-process backend
            assert remote.result.tags and [(t.name, round(t.score, 5)) for t in remote.result.tags] == [
                (t.name, round(t.score, 5)) for t in in_process.result.tags
            ]
            text = text_feature_pb2_grpc.TextFeatureServiceStub(channel)
            feature = (
                await text.ExtractTextFeature(text_feature_pb2.ExtractTextFeatureRequest(text="long hair"))
            ).feature
            expected = await Models(engine, "tagger", "illust2vec", "tokens", "deepix").embed_texts(["long hair"])
            assert feature.model.name == "tokens" and feature.dimension == 8
            np.testing.assert_allclose(feature.values, expected[0].values, rtol=1e-5, atol=1e-6)

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

            emulator, _ = await start_emulator(serving_repo, f"127.0.0.1:{port}", backend=engine)
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


def run_count(emulators: list[Emulator]) -> list[int]:
    return [len(e.batch_sizes) for e in emulators]


class _Dns(asyncio.DatagramProtocol):
    """A DNS server (UDP) that answers A queries for one name with the addresses of `pods`, as Kubernetes' DNS
    answers for a headless Service; any other name NXDOMAIN, any other type no record."""

    def __init__(self, name: str, pods: list[str]):
        self.name, self.pods = name, pods
        self.queries: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        ident, i, labels = struct.unpack(">H", data[:2])[0], 12, []
        while data[i]:
            labels.append(data[i + 1 : i + 1 + data[i]].decode())
            i += 1 + data[i]
        qtype = struct.unpack(">H", data[i + 1 : i + 3])[0]
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))
        known = name == self.name
        answers = [struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(ip) for ip in self.pods]
        answers = answers if known and qtype == 1 else []  # 0xC00C: the name of the question
        header = struct.pack(">HHHHHH", ident, 0x8180 | (0 if known else 3), 1, len(answers), 0, 0)
        self.transport.sendto(header + data[12 : i + 5] + b"".join(answers), addr)  # type: ignore[attr-defined]


async def test_each_call_goes_to_the_next_tfserving_pod(serving_repo, engine):
    """The adapter's channel balances per call (round_robin service config) over every address the DNS name of its
    target resolves to, as `dns:///tfserving-headless:8500` resolves to every TF-Serving pod (here a DNS server of
    the test answers for a headless Service of two pods); a pod that goes away takes no further call; pick_first,
    gRPC's default, would send every call to one pod."""
    first = await start_emulator(serving_repo, "127.0.0.1:0", backend=engine)
    second = await start_emulator(serving_repo, f"127.0.0.2:{first.port}", backend=engine)
    pods = [first, second]
    loop = asyncio.get_running_loop()
    dns_transport, dns = await loop.create_datagram_endpoint(
        lambda: _Dns("tfserving-headless.acg2vec.test", ["127.0.0.1", "127.0.0.2"]), local_addr=("127.0.0.1", 0)
    )
    dns_port = dns_transport.get_extra_info("sockname")[1]
    target = f"dns://127.0.0.1:{dns_port}/tfserving-headless.acg2vec.test:{first.port}"  # dns:///: the pod's DNS
    backend = TFServingBackend(target)
    options = dict(channel_options(1 << 20))
    assert json.loads(str(options["grpc.service_config"])) == {"loadBalancingConfig": [{"round_robin": {}}]}
    x = {"x": np.zeros([1, 1], np.int64)}
    try:
        for _ in range(50):  # until both connections are up (calls go to the ready ones meanwhile)
            await backend.predict("rules", x, "echo")
            if min(run_count(pods)) > 0:
                break
        before = run_count(pods)
        for _ in range(6):
            await backend.predict("rules", x, "echo")
        assert [b - a for a, b in zip(before, run_count(pods), strict=True)] == [3, 3]  # each call to the next pod
        assert ("tfserving-headless.acg2vec.test", 1) in dns.queries
        before = run_count(pods)
        del options["grpc.service_config"]
        async with grpc.aio.insecure_channel(target, options=list(options.items())) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.signature_name = "rules", "echo"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(x["x"]))
            for _ in range(6):
                await stub.Predict(request, timeout=30)
        assert sorted(b - a for a, b in zip(before, run_count(pods), strict=True)) == [0, 6]  # pick_first: one pod
        await first.stop(0)  # a pod goes away: the next calls go to the other one
        before = run_count(pods)[1]
        for _ in range(4):
            await backend.predict("rules", x, "echo")
        assert run_count(pods)[1] == before + 4
    finally:
        await backend.close()
        dns_transport.close()
        for pod in pods:
            await pod.stop(0)


async def test_a_tfserving_pod_added_later_gets_calls_after_the_connection_age(serving_repo, engine):
    """TF-Serving ends connections at its max_connection_age (the deployment's --grpc_channel_arguments); the
    server's channel then resolves the name again and finds a pod added since, without a failed call."""
    age = [("grpc.max_connection_age_ms", 300), ("grpc.max_connection_age_grace_ms", 5000)]
    first = await start_emulator(serving_repo, "127.0.0.1:0", backend=engine, channel_arguments=age)
    second = await start_emulator(serving_repo, f"127.0.0.2:{first.port}", backend=engine, channel_arguments=age)
    pods = [first, second]
    loop = asyncio.get_running_loop()
    dns_transport, dns = await loop.create_datagram_endpoint(
        lambda: _Dns("tfserving-headless.acg2vec.test", ["127.0.0.1"]), local_addr=("127.0.0.1", 0)
    )
    backend = TFServingBackend(
        f"dns://127.0.0.1:{dns_transport.get_extra_info('sockname')[1]}/tfserving-headless.acg2vec.test:{first.port}"
    )
    x = {"x": np.zeros([1, 1], np.int64)}
    try:
        for _ in range(3):
            await backend.predict("rules", x, "echo")
        assert run_count(pods) == [3, 0]
        dns.pods.append("127.0.0.2")  # scaled up: the headless Service now answers with two pods
        deadline = loop.time() + 20
        while run_count(pods)[1] == 0 and loop.time() < deadline:
            await backend.predict("rules", x, "echo")  # every call answers meanwhile
            await asyncio.sleep(0.05)
        assert run_count(pods)[1] > 0, "the new pod got no call"
    finally:
        await backend.close()
        dns_transport.close()
        for pod in pods:
            await pod.stop(0)


@pytest.mark.parametrize("age_s", [0.3, 0])
async def test_server_connections_end_at_their_max_age(age_s):
    """The other side of per-call balancing: the acg2vec server ends each client connection after
    max_connection_age_s (+ grace for calls in progress), so clients behind its ClusterIP Service reconnect and
    reach replicas added since; 0 keeps connections (a stream stays open)."""
    server = api_server(
        None, health_aio.HealthServicer(), Security(None, None, []), 1 << 20, 0, 0, False,  # type: ignore[arg-type]
        max_connection_age_s=age_s, max_connection_age_grace_s=0.3,
    )  # fmt: skip
    port = bind(server, "127.0.0.1:0", None, "--listen")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            if age_s:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(watch.read(), 10)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            else:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(watch.read(), 1.5)
            watch.cancel()
    finally:
        await server.stop(0)
