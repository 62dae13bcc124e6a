"""An ONNX model as a `tf.Module`: weights as variables, nodes interpreted into TensorFlow ops when traced.

Loading checks every op first (a clear list of what is missing beats a failure halfway), then folds the nodes
whose inputs are all weights or constants by running their handlers eagerly, so the traced graph holds only the
work that depends on the image. Tensors above `VARIABLE_MIN_ELEMENTS` become non-trainable variables; smaller
ones stay NumPy constants, which handlers can read statically (reshape targets, slice bounds, axes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

#: Tensors with more elements than this are saved as variables, not as constants of saved_model.pb.
VARIABLE_MIN_ELEMENTS = 1024


class UnsupportedOnnx(ValueError):
    """The ONNX model uses something this converter does not implement; the message names it."""


@dataclass(frozen=True)
class Node:
    op: str
    name: str
    inputs: tuple[str, ...]  # "" for an optional input left out
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, TensorFlow dtype and shape (None for a symbolic or unknown dimension)."""

    name: str
    dtype: tf.DType | None  # None when the model does not declare it (outputs may leave it to inference)
    shape: tuple[int | None, ...] | None


def _attribute(attr: Any) -> Any:
    from onnx import helper, numpy_helper

    if attr.type == attr.GRAPH or attr.type == attr.GRAPHS:
        raise UnsupportedOnnx(f"attribute {attr.name!r} holds a subgraph (If/Loop/Scan are not supported)")
    if attr.type == attr.TENSOR:
        return numpy_helper.to_array(attr.t)
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _tensor_info(value_info: Any) -> TensorInfo:
    from onnx import helper

    tensor_type = value_info.type.tensor_type
    code = tensor_type.elem_type
    dtype = tf.as_dtype(helper.tensor_dtype_to_np_dtype(code)) if code else None
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    return TensorInfo(value_info.name, dtype, shape)


def _variable_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", name).strip("/") or "w"


def _scope_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:60]
    return cleaned if cleaned[:1].isalnum() else "n" + cleaned


def _as_numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


class _Plain:
    """Holds what tf.Module must not track (nodes, NumPy constants): only the variables are saved."""

    def __init__(self, **values: Any):
        self.__dict__.update(values)


class OnnxGraph(tf.Module):
    """Callable with the graph inputs as keyword arguments; returns {output name: tensor}."""

    def __init__(self, source: Path | str | bytes):
        """source: an .onnx file (external data, model.onnx.data, is read from its folder) or a serialised model."""
        super().__init__(name="onnx_graph")
        import onnx

        from acg2vec_models.onnx_tf.ops import HANDLERS, Context

        model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
        path = "the model" if isinstance(source, bytes) else str(source)
        self.opset = {o.domain or "ai.onnx": int(o.version) for o in model.opset_import}
        graph = model.graph
        nodes = [
            Node(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}", n.name or n.op_type,
                 tuple(n.input), tuple(n.output), {a.name: _attribute(a) for a in n.attribute})
            for n in graph.node
        ]  # fmt: skip
        missing = sorted({n.op for n in nodes} - set(HANDLERS))
        if missing:
            raise UnsupportedOnnx(f"{path}: the graph uses ops this converter does not implement: {', '.join(missing)}")
        constants: dict[str, np.ndarray] = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        inputs = [_tensor_info(v) for v in graph.input if v.name not in constants]
        outputs = [_tensor_info(v) for v in graph.output]
        del model, graph

        remaining: list[Node] = []
        for node in nodes:  # ONNX lists nodes in topological order
            if all(not name or name in constants for name in node.inputs):
                values = [constants[name] if name else None for name in node.inputs]
                results = HANDLERS[node.op](Context(node, self.opset), *values)
                for name, value in zip(node.outputs, _as_tuple(results), strict=False):
                    if name:
                        constants[name] = _as_numpy(value)
            else:
                remaining.append(node)
        used = {name for node in remaining for name in node.inputs} | {o.name for o in outputs}
        large = sorted(k for k, v in constants.items() if k in used and v.size > VARIABLE_MIN_ELEMENTS)
        # the variables, tracked by tf.Module and saved with the SavedModel; the rest is plain Python state
        self.weights = [tf.Variable(constants[k], trainable=False, name=_variable_name(k)) for k in large]
        self._state = _Plain(
            nodes=remaining,
            constants={k: v for k, v in constants.items() if k in used and v.size <= VARIABLE_MIN_ELEMENTS},
            weight_index={k: i for i, k in enumerate(large)},
            inputs=inputs,
            outputs=outputs,
            op_types=sorted({n.op for n in nodes}),
        )

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._state.inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._state.outputs

    @property
    def op_types(self) -> list[str]:
        """The ONNX op types of the whole model (before folding)."""
        return self._state.op_types

    def __call__(self, **feeds: tf.Tensor) -> dict[str, tf.Tensor]:
        from acg2vec_models.onnx_tf.ops import HANDLERS, Context

        unknown = set(feeds) - {i.name for i in self.inputs}
        if unknown:
            raise ValueError(f"unknown inputs {sorted(unknown)}; the graph takes {[i.name for i in self.inputs]}")
        values: dict[str, Any] = dict(self._state.constants)
        values.update({k: self.weights[i] for k, i in self._state.weight_index.items()})
        values.update(feeds)
        for node in self._state.nodes:
            inputs = [values[name] if name else None for name in node.inputs]
            with tf.name_scope(_scope_name(node.name)):
                results = HANDLERS[node.op](Context(node, self.opset), *inputs)
            for name, value in zip(node.outputs, _as_tuple(results), strict=False):
                if name:
                    values[name] = value
        return {o.name: tf.convert_to_tensor(values[o.name]) for o in self.outputs}


def _as_tuple(results: Any) -> tuple[Any, ...]:
    return tuple(results) if isinstance(results, (tuple, list)) else (results,)
