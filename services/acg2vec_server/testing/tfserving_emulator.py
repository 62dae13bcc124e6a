"""A PredictionService server over the official tensorflow-serving-api stubs, serving a model repository.

`tensorflow_model_server` has no package here, so tests, benchmarks and local development use this
to exercise the TF-Serving adapter over a real socket: same protos, same SavedModels, same semantics
(newest version, NOT_FOUND for unknown models, INVALID_ARGUMENT for inputs the graph rejects).
Run it with `acg2vec tfserving-emulator --listen 127.0.0.1:8500`.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from acg2vec_models import repository
from acg2vec_server.backends.inprocess import InProcessBackend
from acg2vec_server.backends.signatures import read_signature_defs
from acg2vec_server.domain.ports import InferenceInputError, ModelNotInstalled


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, backend: InProcessBackend):
        self.backend = backend

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        name = request.model_spec.name
        signature = request.model_spec.signature_name or "serving_default"
        inputs: dict[str, np.ndarray] = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        try:
            outputs, version = await self.backend.predict(name, inputs, signature)
        except ModelNotInstalled as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name}): {e}")
        except (InferenceInputError, TypeError, ValueError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.signature_name = signature
        response.model_spec.version.value = version
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        name = request.model_spec.name
        try:
            description = await self.backend.describe(name)
        except ModelNotInstalled as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name}): {e}")
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, value in read_signature_defs(self.backend.root / name / str(description.version)).items():
            defs.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = description.version
        response.metadata["signature_def"].Pack(defs)
        return response


async def start_emulator(root: Path, address: str = "127.0.0.1:0", threads: int = 2) -> tuple[grpc.aio.Server, int]:
    """Loads every model of the repository (as tensorflow_model_server does before it serves), then starts
    the emulator on address; returns the server and its bound port."""
    backend = InProcessBackend(root, threads=threads)
    for name in repository.model_names(root):
        await backend.describe(name)
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(backend), server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, port
