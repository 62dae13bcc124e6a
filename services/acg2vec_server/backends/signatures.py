"""TensorFlow SignatureDefs (from saved_model.pb or TF-Serving's GetModelMetadata) as the domain's plain types."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from acg2vec_models import repository
from acg2vec_server.domain.ports import SignatureInfo, TensorInfo

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


def read_signature_defs(path: Path) -> dict[str, Any]:
    """SignatureDefs straight from saved_model.pb, exactly what TF-Serving's GetModelMetadata returns."""
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / repository.SAVED_MODEL_FILE).read_bytes())
    return dict(saved.meta_graphs[0].signature_def)
