"""The ONNX -> TensorFlow op handlers one at a time, against onnxruntime: the attribute corners that the model
exports of test_onnx_import.py do not reach (negative slice steps, pool ceil mode and padding counts, grouped and
dilated convolutions, SAME padding, pre-13 softmax, opset-18 reduce and split forms, integer division...).
Each case is a one-node graph with a dynamic batch dimension where the op allows one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
import tensorflow as tf
from onnx import TensorProto, helper, numpy_helper

from acg2vec_models.onnx_tf import OnnxGraph, UnsupportedOnnx

F, I64 = TensorProto.FLOAT, TensorProto.INT64
I64_MIN = np.iinfo(np.int64).min


def graph(op: str, inputs: dict[str, tuple[int, Sequence[Any]]], outputs: Sequence[str], *,
          constants: dict[str, np.ndarray] | None = None, opset: int = 17, **attrs: Any) -> bytes:  # fmt: skip
    """One `op` node: graph inputs {name: (type, shape)}, constant inputs as initializers, in that order."""
    constants = constants or {}
    node = helper.make_node(op, [*inputs, *constants], list(outputs), **attrs)
    model = helper.make_model(
        helper.make_graph(
            [node], op,
            [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
            [onnx.ValueInfoProto(name=o) for o in outputs],  # types left to inference
            initializer=[numpy_helper.from_array(v, n) for n, v in constants.items()],
        ),
        opset_imports=[helper.make_opsetid("", opset)],
    )  # fmt: skip
    model.ir_version = 8
    return model.SerializeToString()


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


CASES: dict[str, tuple[bytes, dict[str, np.ndarray]]] = {
    "slice-negative-step": (
        graph("Slice", {"x": (F, ["N", 6])}, ["y"], constants={
            "s": np.array([-1], np.int64), "e": np.array([I64_MIN], np.int64),
            "a": np.array([1], np.int64), "t": np.array([-2], np.int64)}),
        {"x": _x(3, 6)},
    ),
    "slice-clamped": (
        graph("Slice", {"x": (F, ["N", 5, 4])}, ["y"], constants={
            "s": np.array([1, -100], np.int64), "e": np.array([100, -1], np.int64)}),
        {"x": _x(2, 5, 4)},
    ),
    "pad-edge": (graph("Pad", {"x": (F, ["N", 3, 4])}, ["y"], mode="edge",
                       constants={"p": np.array([0, 1, 2, 0, 2, 1], np.int64)}), {"x": _x(2, 3, 4)}),
    "pad-reflect": (graph("Pad", {"x": (F, ["N", 3, 4])}, ["y"], mode="reflect",
                          constants={"p": np.array([0, 1, 2, 0, 1, 1], np.int64)}), {"x": _x(2, 3, 4)}),
    "pad-constant": (graph("Pad", {"x": (F, ["N", 3])}, ["y"], constants={
        "p": np.array([0, 2, 0, 1], np.int64), "v": np.array(1.5, np.float32)}), {"x": _x(2, 3)}),
    "maxpool-ceil": (graph("MaxPool", {"x": (F, ["N", 2, 7, 7])}, ["y"], kernel_shape=[3, 3], strides=[2, 2],
                           pads=[1, 1, 1, 1], ceil_mode=1), {"x": _x(2, 2, 7, 7)}),
    "maxpool-same": (graph("MaxPool", {"x": (F, ["N", 2, 6, 6])}, ["y"], kernel_shape=[3, 3], strides=[2, 2],
                           auto_pad="SAME_UPPER"), {"x": _x(2, 2, 6, 6)}),
    "avgpool-exclude-pad": (graph("AveragePool", {"x": (F, ["N", 2, 7, 7])}, ["y"], kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]), {"x": _x(2, 2, 7, 7)}),
    "avgpool-include-pad": (graph("AveragePool", {"x": (F, ["N", 2, 7, 7])}, ["y"], kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), {"x": _x(2, 2, 7, 7)}),
    "conv-grouped-dilated": (graph("Conv", {"x": (F, ["N", 4, 9, 9])}, ["y"], group=2, dilations=[2, 2],
                                   pads=[1, 2, 2, 1], strides=[1, 2],
                                   constants={"w": _x(6, 2, 3, 3, seed=1), "b": _x(6, seed=2)}), {"x": _x(2, 4, 9, 9)}),
    "conv-depthwise-multiplier": (graph("Conv", {"x": (F, ["N", 3, 8, 8])}, ["y"], group=3, pads=[1, 1, 1, 1],
                                        constants={"w": _x(6, 1, 3, 3, seed=1)}), {"x": _x(2, 3, 8, 8)}),
    "conv-same-lower": (graph("Conv", {"x": (F, ["N", 2, 7, 7])}, ["y"], auto_pad="SAME_LOWER", strides=[2, 2],
                              constants={"w": _x(3, 2, 4, 4, seed=1)}), {"x": _x(2, 2, 7, 7)}),
    "conv-1d": (graph("Conv", {"x": (F, ["N", 2, 10])}, ["y"], pads=[2, 1], strides=[2],
                      constants={"w": _x(3, 2, 4, seed=1)}), {"x": _x(2, 2, 10)}),
    "topk-smallest-axis0": (graph("TopK", {"x": (F, [6, 4])}, ["v", "i"], axis=0, largest=0,
                                  constants={"k": np.array([3], np.int64)}), {"x": _x(6, 4)}),
    "argmax": (graph("ArgMax", {"x": (F, ["N", 5])}, ["y"], axis=1, keepdims=0), {"x": _x(3, 5)}),
    "cumsum-exclusive-reverse": (graph("CumSum", {"x": (F, ["N", 5])}, ["y"], exclusive=1, reverse=1,
                                       constants={"a": np.array(1, np.int64)}), {"x": _x(2, 5)}),
    "einsum": (graph("Einsum", {"a": (F, ["N", 3, 4]), "b": (F, ["N", 4, 5])}, ["y"], equation="bij, bjk -> bik"),
               {"a": _x(2, 3, 4), "b": _x(2, 4, 5, seed=1)}),
    "gemm": (graph("Gemm", {"a": (F, [4, "N"])}, ["y"], transA=1, alpha=0.5, beta=2.0,
                   constants={"b": _x(4, 3, seed=1), "c": _x(3, seed=2)}), {"a": _x(4, 2)}),
    "softmax-opset11": (graph("Softmax", {"x": (F, ["N", 3, 4])}, ["y"], axis=1, opset=11), {"x": _x(2, 3, 4)}),
    "clip-min-only": (graph("Clip", {"x": (F, ["N", 5])}, ["y"], constants={"lo": np.array(0.1, np.float32)}),
                      {"x": _x(2, 5)}),
    "div-int": (graph("Div", {"a": (I64, ["N"]), "b": (I64, ["N"])}, ["y"]),
                {"a": np.array([7, -7, 9, -9], np.int64), "b": np.array([2, 2, -4, -4], np.int64)}),
    "mod-int": (graph("Mod", {"a": (I64, ["N"]), "b": (I64, ["N"])}, ["y"]),
                {"a": np.array([7, -7, 9, -9], np.int64), "b": np.array([3, 3, -4, 4], np.int64)}),
    "pow-cube": (graph("Pow", {"x": (F, ["N", 3])}, ["y"], constants={"e": np.array(3.0, np.float32)}),
                 {"x": _x(2, 3)}),
    "gather-elements": (graph("GatherElements", {"x": (F, ["N", 4])}, ["y"], axis=1,
                              constants={"i": np.array([[3, -1, 0], [1, 2, -4]], np.int64)}), {"x": _x(2, 4)}),
    "gather-negative": (graph("Gather", {"x": (F, ["N", 5])}, ["y"], axis=1,
                              constants={"i": np.array([-1, 0, -5], np.int64)}), {"x": _x(2, 5)}),
    "expand-bidirectional": (graph("Expand", {"x": (F, [3, 1])}, ["y"], constants={
        "s": np.array([2, 1, 4], np.int64)}), {"x": _x(3, 1)}),
    "tile": (graph("Tile", {"x": (F, ["N", 3])}, ["y"], constants={"r": np.array([2, 2], np.int64)}),
             {"x": _x(2, 3)}),
    "flatten-axis2": (graph("Flatten", {"x": (F, ["N", 2, 3, 4])}, ["y"], axis=2), {"x": _x(2, 2, 3, 4)}),
    "split-uneven-opset18": (graph("Split", {"x": (F, ["N", 7])}, ["a", "b", "c"], axis=1, num_outputs=3,
                                   opset=18), {"x": _x(2, 7)}),
    "reduce-l2-opset18": (graph("ReduceL2", {"x": (F, ["N", 3, 4])}, ["y"], keepdims=0, opset=18,
                                constants={"a": np.array([-1], np.int64)}), {"x": _x(2, 3, 4)}),
    "reduce-max-noop": (graph("ReduceMax", {"x": (F, ["N", 3])}, ["y"], noop_with_empty_axes=1, opset=18),
                        {"x": _x(2, 3)}),
    "reduce-sum-all": (graph("ReduceSum", {"x": (F, ["N", 3])}, ["y"], keepdims=0), {"x": _x(2, 3)}),
    "batchnorm": (graph("BatchNormalization", {"x": (F, ["N", 3, 4, 4])}, ["y"], epsilon=1e-3, constants={
        "s": _x(3, seed=1), "b": _x(3, seed=2), "m": _x(3, seed=3), "v": np.abs(_x(3, seed=4)) + 0.5}),
        {"x": _x(2, 3, 4, 4)}),
    "instancenorm": (graph("InstanceNormalization", {"x": (F, ["N", 3, 5])}, ["y"], constants={
        "s": _x(3, seed=1), "b": _x(3, seed=2)}), {"x": _x(2, 3, 5)}),
    "layernorm-axis1": (graph("LayerNormalization", {"x": (F, ["N", 3, 4])}, ["y"], axis=1, constants={
        "s": _x(3, 4, seed=1), "b": _x(3, 4, seed=2)}), {"x": _x(2, 3, 4)}),
    "hardswish": (graph("HardSwish", {"x": (F, ["N", 9])}, ["y"]), {"x": _x(2, 9) * 4}),
    "hardsigmoid": (graph("HardSigmoid", {"x": (F, ["N", 9])}, ["y"], alpha=0.3, beta=0.4), {"x": _x(2, 9) * 4}),
    "leakyrelu": (graph("LeakyRelu", {"x": (F, ["N", 9])}, ["y"], alpha=0.2), {"x": _x(2, 9)}),
    "elu": (graph("Elu", {"x": (F, ["N", 9])}, ["y"], alpha=0.7), {"x": _x(2, 9)}),
    "prelu": (graph("PRelu", {"x": (F, ["N", 3, 2])}, ["y"], constants={"s": _x(3, 1, seed=1)}), {"x": _x(2, 3, 2)}),
    "gelu-tanh": (graph("Gelu", {"x": (F, ["N", 9])}, ["y"], approximate="tanh", opset=20), {"x": _x(2, 9)}),
    "where-broadcast": (graph("Where", {"c": (TensorProto.BOOL, ["N", 1]), "x": (F, ["N", 3])}, ["y"],
                            constants={"z": np.zeros(3, np.float32)}),
                      {"c": np.array([[True], [False]]), "x": _x(2, 3)}),
    "squeeze-all": (graph("Squeeze", {"x": (F, [1, 3, 1, 2])}, ["y"]), {"x": _x(1, 3, 1, 2)}),
    "unsqueeze-opset11": (graph("Unsqueeze", {"x": (F, ["N", 3])}, ["y"], axes=[0, -1], opset=11), {"x": _x(2, 3)}),
    "globalmaxpool": (graph("GlobalMaxPool", {"x": (F, ["N", 2, 3, 3])}, ["y"]), {"x": _x(2, 2, 3, 3)}),
    "reshape-zero-and-minus-one": (graph("Reshape", {"x": (F, ["N", 2, 6])}, ["y"], constants={
        "s": np.array([0, -1, 3], np.int64)}), {"x": _x(3, 2, 6)}),
    "resize-cubic-pytorch": (graph("Resize", {"x": (F, ["N", 2, 5, 7])}, ["y"], mode="cubic",
                                   coordinate_transformation_mode="pytorch_half_pixel", constants={
        "r": np.zeros(0, np.float32), "s": np.zeros(0, np.float32), "z": np.array([2, 2, 9, 4], np.int64)}),
        {"x": _x(2, 2, 5, 7)}),
    "resize-cubic-exclude-outside": (graph("Resize", {"x": (F, [1, 1, 6, 6])}, ["y"], mode="cubic",
                                           cubic_coeff_a=-0.5, exclude_outside=1, constants={
        "r": np.zeros(0, np.float32), "s": np.array([1, 1, 1.5, 0.5], np.float32)}), {"x": _x(1, 1, 6, 6)}),
    "resize-linear-align-corners": (graph("Resize", {"x": (F, ["N", 1, 4, 5])}, ["y"], mode="linear",
                                          coordinate_transformation_mode="align_corners", constants={
        "r": np.zeros(0, np.float32), "s": np.zeros(0, np.float32), "z": np.array([2, 1, 7, 3], np.int64)}),
        {"x": _x(2, 1, 4, 5)}),
    "resize-nearest-asymmetric": (graph("Resize", {"x": (F, ["N", 1, 3, 4])}, ["y"], mode="nearest",
                                        coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                                        constants={"r": np.zeros(0, np.float32),
                                                   "s": np.array([1, 1, 2, 1.5], np.float32)}), {"x": _x(2, 1, 3, 4)}),
    "resize-nearest-half-pixel": (graph("Resize", {"x": (F, ["N", 1, 5, 5])}, ["y"], constants={
        "r": np.zeros(0, np.float32), "s": np.zeros(0, np.float32), "z": np.array([2, 1, 3, 8], np.int64)}),
        {"x": _x(2, 1, 5, 5)}),
    "range-folded": (graph("Range", {}, ["y"], constants={"a": np.array(1.0, np.float32),
                     "b": np.array(4.0, np.float32), "d": np.array(0.5, np.float32)}), {}),
}  # fmt: skip


def tensorflow_outputs(model: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    converted = OnnxGraph(model)
    specs = {i.name: tf.TensorSpec([None if d is None else d for d in i.shape], i.dtype) for i in converted.inputs}
    run = tf.function(lambda **kw: converted(**kw), input_signature=None, autograph=False)
    concrete = run.get_concrete_function(**specs)
    result = concrete(**{k: tf.constant(v) for k, v in feeds.items()})
    return [result[o.name].numpy() for o in converted.outputs]


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_onnxruntime(case):
    import onnxruntime

    model, feeds = CASES[case]
    expected = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    ours = tensorflow_outputs(model, feeds)
    assert len(ours) == len(expected)
    for a, b in zip(ours, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_unsupported_ops_are_named_before_anything_is_converted():
    model = graph("ScatterND", {"x": (F, [4])}, ["y"], constants={"i": np.array([[1]], np.int64),
                  "u": np.array([5.0], np.float32)})  # fmt: skip
    with pytest.raises(UnsupportedOnnx, match="does not implement: ScatterND"):
        OnnxGraph(model)
