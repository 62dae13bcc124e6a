"""Inference backend interface: TF-Serving semantics (model, version, signature, named tensors)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # numpy dtype name: float32, int32, int64, object (strings)
    shape: tuple[int, ...]  # -1 for unknown dimensions


@dataclass(frozen=True)
class SignatureInfo:
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


@dataclass(frozen=True)
class ModelDescription:
    name: str
    version: int
    signatures: dict[str, SignatureInfo] = field(default_factory=dict)

    def output_dim(self, output: str, signature: str = "serving_default") -> int:
        """Size of the last axis of an output (e.g. the embedding dimension)."""
        return self.signatures[signature].outputs[output].shape[-1]


class InferenceBackend(Protocol):
    """Runs SavedModels of a TF-Serving model repository, in-process or remotely."""

    name: str

    async def describe(self, model: str) -> ModelDescription:
        """Version and signatures of the model's newest version; ModelNotInstalled if absent."""
        ...

    async def predict(
        self, model: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default"
    ) -> tuple[dict[str, np.ndarray], int]:
        """Runs a signature; returns its outputs and the model version that answered."""
        ...

    async def ping(self) -> None:
        """Raises BackendUnavailable when the backend cannot answer."""
        ...

    async def close(self) -> None: ...


class ModelNotInstalled(Exception):
    """The model repository has no (loadable) version of this model."""

    def __init__(self, model: str, hint: str):
        super().__init__(f"model '{model}' is not installed: {hint}")
        self.model = model


class InferenceInputError(Exception):
    """The model refused the input (e.g. an image its decoder cannot read)."""


_DTYPES = {1: "float32", 2: "float64", 3: "int32", 7: "object", 9: "int64", 10: "bool"}


def signature_infos(signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]) -> dict[str, SignatureInfo]:
    """Converts SignatureDef protos (as in saved_model.pb and GetModelMetadata) to plain types."""

    def tensors(m: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, TensorInfo]:
        return {
            k: TensorInfo(_DTYPES.get(v.dtype, str(v.dtype)), tuple(d.size for d in v.tensor_shape.dim))
            for k, v in m.items()
        }

    return {
        name: SignatureInfo(tensors(sig.inputs), tensors(sig.outputs))
        for name, sig in signature_defs.items()
        if not name.startswith("__")
    }
