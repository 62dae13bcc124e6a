"""TF-Serving adapter: PredictionService.Predict and GetModelMetadata over gRPC (tensorflow-serving-api)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from acg2vec_server.backends.signatures import signature_infos
from acg2vec_server.domain.batching import timed_out
from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.domain.ports import (
    InferenceBackend,
    InferenceInputError,
    ModelDescription,
    ModelNotInstalled,
    split_model,
)
from acg2vec_server.telemetry.backend_calls import instrumented

#: Per-call balancing: round_robin keeps a connection to every address the target resolves to (with
#: `dns:///tfserving-headless:8500`, every TF-Serving pod) and sends each call to the next one; the default
#: pick_first would send every call of this replica to one pod. The resolver looks again when a connection ends:
#: a pod going away, or TF-Serving's own max_connection_age (k8s: --grpc_channel_arguments), which is how a pod
#: added later is found.
SERVICE_CONFIG = {"loadBalancingConfig": [{"round_robin": {}}]}
#: The DNS resolver's floor between two resolutions (gRPC's default is 30 s): a connection that ends is followed by
#: a fresh look at the pods within a second.
DNS_MIN_RESOLUTION_INTERVAL_MS = 1000


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    """The channel's options: message limits, quick reconnects, the round_robin service config."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RESOLUTION_INTERVAL_MS),
    ]


_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@instrumented("tfserving", InferenceBackend)
class TFServingBackend:
    name = "inference"

    def __init__(
        self, target: str, timeout_s: float = 30.0, max_message_bytes: int = 64 * 1024 * 1024,
        timeouts: Mapping[str, float] | None = None,
    ):  # fmt: skip
        self.target = target
        self.timeout_s = timeout_s
        self.timeouts = dict(timeouts or {})  # per model: the gRPC deadline of its calls
        self._channel = grpc.aio.insecure_channel(target, options=channel_options(max_message_bytes))
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def timeout_of(self, model: str) -> float:
        return self.timeouts.get(split_model(model)[0], self.timeout_s)

    def _error(self, model: str, e: grpc.aio.AioRpcError) -> Exception:
        code = e.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self._channel.get_state() == grpc.ChannelConnectivity.READY:
            return timed_out(model, self.timeout_of(model))  # connected, but the model was slower than its deadline
        if code in _UNREACHABLE:
            return BackendUnavailable(
                self.name, f"TF-Serving at {self.target} is unreachable ({code.name}); retry later"
            )
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelNotInstalled(model, f"TF-Serving at {self.target} does not serve it ({e.details()})")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InferenceInputError(e.details() or "invalid input")
        return BackendUnavailable(self.name, f"TF-Serving at {self.target} failed: {code.name}: {e.details()}")

    async def describe(self, model: str) -> ModelDescription:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _spec(request.model_spec, model)
        try:
            response = await self._stub.GetModelMetadata(request, timeout=self.timeout_of(model))
        except grpc.aio.AioRpcError as e:
            raise self._error(model, e) from None
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        version = response.model_spec.version.value
        return ModelDescription(split_model(model)[0], version, signature_infos(defs.signature_def))

    async def predict(
        self, model: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default"
    ) -> tuple[dict[str, np.ndarray], int]:
        request = predict_pb2.PredictRequest()
        _spec(request.model_spec, model)
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = await self._stub.Predict(request, timeout=self.timeout_of(model))
        except grpc.aio.AioRpcError as e:
            raise self._error(model, e) from None
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        return outputs, response.model_spec.version.value

    async def ping(self) -> None:
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout=min(2.0, self.timeout_s))
        except TimeoutError:
            raise BackendUnavailable(self.name, f"TF-Serving at {self.target} is unreachable; retry later") from None

    async def close(self) -> None:
        await self._channel.close()


def _spec(spec: Any, model: str) -> None:
    """ModelSpec of `name` (TF-Serving's newest version) or `name@version` (that version; TF-Serving serves it when
    its model_version_policy keeps it, e.g. `specific { versions: 1 versions: 2 }` during an upgrade)."""
    name, version = split_model(model)
    spec.name = name
    if version is not None:
        spec.version.value = version
