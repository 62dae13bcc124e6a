"""ONNX operators as TensorFlow ops, one handler per op (semantics from the ONNX operator specification).

A handler gets a `Context` (the node's attributes and the model's opset) and the node's inputs, each a NumPy
array (a constant known when the graph is built), a tf.Variable (a large weight) or a tf.Tensor, or None for an
optional input left out; it returns one value or a tuple (one per output). Arguments that TensorFlow needs as
Python values (axes, permutations) are read with `_static`, which fails with the op's name when the value is
only known at run time. Layouts are ONNX's (NCHW for convolutions and pools): Conv transposes to NHWC around
TensorFlow's kernels, which the CPU needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from acg2vec_models.onnx_tf.graph import Node, UnsupportedOnnx

Handler = Callable[..., Any]
HANDLERS: dict[str, Handler] = {}


@dataclass(frozen=True)
class Context:
    node: Node
    opset: dict[str, int]

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    @property
    def version(self) -> int:
        return self.opset.get("ai.onnx", 1)

    def fail(self, why: str) -> UnsupportedOnnx:
        return UnsupportedOnnx(f"{self.node.op} node {self.node.name!r}: {why}")


def op(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            HANDLERS[name] = fn
        return fn

    return register


def _t(value: Any) -> tf.Tensor:
    return tf.convert_to_tensor(value)


def _static(ctx: Context, value: Any, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if value is not None and not isinstance(value, tf.Variable):
        found = tf.get_static_value(value)
        if found is not None:
            return np.asarray(found)
    raise ctx.fail(f"{what} must be a constant")


def _maybe_static(value: Any) -> np.ndarray | None:
    if isinstance(value, np.ndarray):
        return value
    if value is None or isinstance(value, tf.Variable):
        return None
    found = tf.get_static_value(value)
    return None if found is None else np.asarray(found)


def _rank(ctx: Context, x: Any) -> int:
    rank = _t(x).shape.rank
    if rank is None:
        raise ctx.fail("the input rank must be known when the graph is built")
    return int(rank)


def _dims(x: tf.Tensor) -> list[Any]:
    """Each dimension as a Python int when known statically, else a scalar int64 tensor."""
    static = x.shape.as_list()
    dynamic = tf.shape(x, out_type=tf.int64)
    return [d if d is not None else dynamic[i] for i, d in enumerate(static)]


def _shape_tensor(dims: Sequence[Any]) -> Any:
    if all(isinstance(d, (int, np.integer)) for d in dims):
        return np.array(dims, dtype=np.int64)
    return tf.stack([tf.cast(d, tf.int64) for d in dims])


def _axes(ctx: Context, axes: Sequence[int], rank: int) -> list[int]:
    return [int(a) + rank if int(a) < 0 else int(a) for a in axes]


# ---------------------------------------------------------------- elementwise


def _binary(fn: Callable[[Any, Any], Any]) -> Handler:
    return lambda ctx, a, b: fn(_t(a), _t(b))


for _name, _fn in {
    "Add": tf.add,
    "Sub": tf.subtract,
    "Mul": tf.multiply,
    "Equal": tf.equal,
    "Less": tf.less,
    "LessOrEqual": tf.less_equal,
    "Greater": tf.greater,
    "GreaterOrEqual": tf.greater_equal,
    "And": tf.logical_and,
    "Or": tf.logical_or,
    "Xor": tf.math.logical_xor,
}.items():
    HANDLERS[_name] = _binary(_fn)


@op("Div")
def _div(ctx: Context, a: Any, b: Any) -> Any:
    a, b = _t(a), _t(b)
    return tf.truncatediv(a, b) if a.dtype.is_integer else tf.divide(a, b)


@op("Pow")
def _pow(ctx: Context, x: Any, y: Any) -> Any:
    x = _t(x)
    exponent = _maybe_static(y)
    if exponent is not None and exponent.size == 1 and x.dtype.is_floating:
        e = float(exponent.reshape(()))
        if e == 1.0:
            return tf.identity(x)
        if e == 2.0:
            return x * x  # what onnxruntime's pow gives for squares (exact)
        if e == 0.5:
            return tf.sqrt(x)
    return tf.pow(x, tf.cast(y, x.dtype))


@op("Mod")
def _mod(ctx: Context, a: Any, b: Any) -> Any:
    a, b = _t(a), _t(b)
    return tf.truncatemod(a, b) if ctx.attr("fmod", 0) else tf.math.floormod(a, b)


@op("Max", "Min", "Sum", "Mean")
def _variadic(ctx: Context, *xs: Any) -> Any:
    tensors = [_t(x) for x in xs]
    result = tensors[0]
    for other in tensors[1:]:
        if ctx.node.op == "Max":
            result = tf.maximum(result, other)
        elif ctx.node.op == "Min":
            result = tf.minimum(result, other)
        else:
            result = result + other
    return result / len(tensors) if ctx.node.op == "Mean" else result


@op("Where")
def _where(ctx: Context, cond: Any, x: Any, y: Any) -> Any:
    return tf.where(_t(cond), _t(x), _t(y))


@op("Not")
def _not(ctx: Context, x: Any) -> Any:
    return tf.logical_not(_t(x))


def _unary(fn: Callable[[Any], Any]) -> Handler:
    return lambda ctx, x: fn(_t(x))


for _name, _fn in {
    "Relu": tf.nn.relu,
    "Sigmoid": tf.sigmoid,
    "Tanh": tf.tanh,
    "Exp": tf.exp,
    "Log": tf.math.log,
    "Sqrt": tf.sqrt,
    "Reciprocal": tf.math.reciprocal,
    "Neg": tf.negative,
    "Abs": tf.abs,
    "Erf": tf.math.erf,
    "Floor": tf.floor,
    "Ceil": tf.math.ceil,
    "Round": tf.round,  # half to even, as ONNX says
    "Sin": tf.sin,
    "Cos": tf.cos,
    "Sign": tf.sign,
    "Softplus": tf.math.softplus,
    "Softsign": tf.math.softsign,
    "IsNaN": tf.math.is_nan,
    "Identity": tf.identity,
}.items():
    HANDLERS[_name] = _unary(_fn)


@op("Dropout")
def _dropout(ctx: Context, x: Any, *_: Any) -> Any:
    x = _t(x)
    return x, tf.ones_like(x, dtype=tf.bool)


@op("Gelu")
def _gelu(ctx: Context, x: Any) -> Any:
    return tf.nn.gelu(_t(x), approximate=ctx.attr("approximate", "none") == "tanh")


@op("HardSigmoid")
def _hard_sigmoid(ctx: Context, x: Any) -> Any:
    x = _t(x)
    return tf.clip_by_value(ctx.attr("alpha", 0.2) * x + ctx.attr("beta", 0.5), 0.0, 1.0)


@op("HardSwish")
def _hard_swish(ctx: Context, x: Any) -> Any:
    x = _t(x)
    return x * tf.clip_by_value(x / 6.0 + 0.5, 0.0, 1.0)


@op("LeakyRelu")
def _leaky_relu(ctx: Context, x: Any) -> Any:
    return tf.nn.leaky_relu(_t(x), alpha=ctx.attr("alpha", 0.01))


@op("Elu")
def _elu(ctx: Context, x: Any) -> Any:
    x = _t(x)
    return tf.where(x < 0, ctx.attr("alpha", 1.0) * (tf.exp(x) - 1.0), x)


@op("PRelu")
def _prelu(ctx: Context, x: Any, slope: Any) -> Any:
    x = _t(x)
    return tf.where(x < 0, _t(slope) * x, x)


@op("Clip")
def _clip(ctx: Context, x: Any, low: Any = None, high: Any = None) -> Any:
    x = _t(x)
    if ctx.version < 11:
        low, high = ctx.attr("min"), ctx.attr("max")
    if low is not None:
        x = tf.maximum(x, tf.cast(low, x.dtype))
    if high is not None:
        x = tf.minimum(x, tf.cast(high, x.dtype))
    return x


def _onnx_dtype(code: int) -> tf.DType:
    from onnx import helper

    return tf.as_dtype(helper.tensor_dtype_to_np_dtype(code))


@op("Cast")
def _cast(ctx: Context, x: Any) -> Any:
    return tf.cast(_t(x), _onnx_dtype(ctx.attr("to")))


@op("CastLike")
def _cast_like(ctx: Context, x: Any, like: Any) -> Any:
    return tf.cast(_t(x), _t(like).dtype)


# ---------------------------------------------------------------- constants and shapes


@op("Constant")
def _constant(ctx: Context) -> Any:
    for key, dtype in (
        ("value", None),
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in ctx.node.attrs:
            return np.asarray(ctx.node.attrs[key], dtype=dtype)
    raise ctx.fail(f"unsupported attributes {sorted(ctx.node.attrs)}")


@op("Shape")
def _shape(ctx: Context, x: Any) -> Any:
    x = _t(x)
    start, end = ctx.attr("start", 0), ctx.attr("end")
    if x.shape.is_fully_defined():
        return np.array(x.shape.as_list(), dtype=np.int64)[start:end]
    return tf.shape(x, out_type=tf.int64)[start:end]


@op("Size")
def _size(ctx: Context, x: Any) -> Any:
    return tf.size(_t(x), out_type=tf.int64)


@op("Reshape")
def _reshape(ctx: Context, x: Any, shape: Any) -> Any:
    x = _t(x)
    target = _maybe_static(shape)
    if target is not None:
        if not ctx.attr("allowzero", 0) and (target == 0).any():
            dims = _dims(x)
            return tf.reshape(x, _shape_tensor([dims[i] if v == 0 else int(v) for i, v in enumerate(target)]))
        return tf.reshape(x, target.astype(np.int64))
    shape = tf.cast(_t(shape), tf.int64)
    if not ctx.attr("allowzero", 0):
        length = shape.shape[0]
        if length is None:
            raise ctx.fail("the target shape's length must be known")
        source = tf.shape(x, out_type=tf.int64)
        source = tf.pad(source, [[0, tf.maximum(0, length - tf.size(source))]])[:length]
        shape = tf.where(tf.equal(shape, 0), source, shape)
    return tf.reshape(x, shape)


@op("Flatten")
def _flatten(ctx: Context, x: Any) -> Any:
    x = _t(x)
    rank = _rank(ctx, x)
    axis = ctx.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    dims = _dims(x)
    inner = dims[axis:]
    if all(isinstance(d, int) for d in inner):
        return tf.reshape(x, [-1, math.prod(inner)] if axis > 0 else [1, -1])
    outer = tf.reduce_prod(tf.cast(_shape_tensor(dims[:axis] or [1]), tf.int64))
    return tf.reshape(x, tf.stack([outer, tf.constant(-1, tf.int64)]))


def _axes_input_or_attr(ctx: Context, axes: Any, since: int) -> list[int] | None:
    if ctx.version >= since:
        return None if axes is None else [int(a) for a in _static(ctx, axes, "axes").reshape(-1)]
    found = ctx.attr("axes")
    return None if found is None else [int(a) for a in found]


@op("Squeeze")
def _squeeze(ctx: Context, x: Any, axes: Any = None) -> Any:
    x = _t(x)
    found = _axes_input_or_attr(ctx, axes, 13)
    return tf.squeeze(x) if not found else tf.squeeze(x, axis=_axes(ctx, found, _rank(ctx, x)))


@op("Unsqueeze")
def _unsqueeze(ctx: Context, x: Any, axes: Any = None) -> Any:
    x = _t(x)
    found = _axes_input_or_attr(ctx, axes, 13) or []
    rank = _rank(ctx, x) + len(found)
    for axis in sorted(_axes(ctx, found, rank)):
        x = tf.expand_dims(x, axis)
    return x


@op("Transpose")
def _transpose(ctx: Context, x: Any) -> Any:
    x = _t(x)
    perm = ctx.attr("perm")
    return tf.transpose(x, perm=list(perm) if perm is not None else None)


@op("Concat")
def _concat(ctx: Context, *xs: Any) -> Any:
    tensors = [_t(x) for x in xs if x is not None]
    return tf.concat(tensors, axis=ctx.attr("axis"))


@op("Split")
def _split(ctx: Context, x: Any, split: Any = None) -> Any:
    x = _t(x)
    axis = ctx.attr("axis", 0)
    sizes = ctx.attr("split") if ctx.version < 13 else None
    if split is not None:
        sizes = [int(s) for s in _static(ctx, split, "split")]
    count = len(ctx.node.outputs)
    if sizes is None:
        dim = x.shape[axis]
        if dim is None:
            return tuple(tf.split(x, count, axis=axis))
        chunk = -(-int(dim) // count)
        sizes = [min(chunk, int(dim) - i * chunk) for i in range(count)]
    return tuple(tf.split(x, list(sizes), axis=axis))


_BIG = np.iinfo(np.int64).max // 2


@op("Slice")
def _slice(ctx: Context, x: Any, starts: Any = None, ends: Any = None, axes: Any = None, steps: Any = None) -> Any:
    x = _t(x)
    rank = _rank(ctx, x)
    if ctx.version < 10:
        starts, ends, axes = ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes")
        starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    if axes is None:
        known = _maybe_static(starts)
        count = known.size if known is not None else _t(starts).shape[0]
        if count is None:
            raise ctx.fail("the number of sliced axes must be known")
        axes_list = list(range(int(count)))
    else:
        axes_list = _axes(ctx, [int(a) for a in _static(ctx, axes, "axes").reshape(-1)], rank)
    step_values = [1] * len(axes_list) if steps is None else [int(s) for s in _static(ctx, steps, "steps").reshape(-1)]
    start_static, end_static = _maybe_static(starts), _maybe_static(ends)
    start_static = None if start_static is None else start_static.reshape(-1)
    end_static = None if end_static is None else end_static.reshape(-1)
    begin: list[Any] = [0] * rank
    end: list[Any] = [0] * rank
    stride = [1] * rank
    begin_mask = end_mask = 0
    for i in range(rank):
        if i not in axes_list:
            begin_mask |= 1 << i
            end_mask |= 1 << i
    for k, axis in enumerate(axes_list):
        stride[axis] = step_values[k]
        begin[axis] = int(start_static[k]) if start_static is not None else tf.cast(_t(starts)[k], tf.int64)
        end[axis] = int(end_static[k]) if end_static is not None else tf.cast(_t(ends)[k], tf.int64)
        # TensorFlow clamps out-of-range bounds as ONNX does; the extreme sentinels ("to the end" in the
        # direction of the step) become masks so that no bound overflows
        forward = step_values[k] > 0
        if isinstance(end[axis], int) and (end[axis] >= _BIG if forward else end[axis] <= -_BIG):
            end_mask |= 1 << axis
            end[axis] = 0
        if isinstance(begin[axis], int) and (begin[axis] <= -_BIG if forward else begin[axis] >= _BIG):
            begin_mask |= 1 << axis
            begin[axis] = 0
    return tf.strided_slice(
        x, _shape_tensor(begin), _shape_tensor(end), _shape_tensor(stride), begin_mask=begin_mask, end_mask=end_mask
    )


def _normalised_indices(indices: Any, dim: Any) -> Any:
    static = _maybe_static(indices)
    if static is not None and isinstance(dim, int):
        return np.where(static < 0, static + dim, static).astype(np.int64)
    indices = tf.cast(_t(indices), tf.int64)
    return tf.where(indices < 0, indices + tf.cast(dim, tf.int64), indices)


@op("Gather")
def _gather(ctx: Context, x: Any, indices: Any) -> Any:
    x = _t(x)
    axis = ctx.attr("axis", 0)
    axis = axis + _rank(ctx, x) if axis < 0 else axis
    return tf.gather(x, _normalised_indices(indices, _dims(x)[axis]), axis=axis)


@op("GatherElements")
def _gather_elements(ctx: Context, x: Any, indices: Any) -> Any:
    x = _t(x)
    axis = ctx.attr("axis", 0)
    axis = axis + _rank(ctx, x) if axis < 0 else axis
    return tf.experimental.numpy.take_along_axis(x, _normalised_indices(indices, _dims(x)[axis]), axis=axis)


@op("Expand")
def _expand(ctx: Context, x: Any, shape: Any) -> Any:
    x = _t(x)
    target = tf.broadcast_dynamic_shape(tf.shape(x, out_type=tf.int64), tf.cast(_t(shape), tf.int64))
    return tf.broadcast_to(x, target)


@op("Tile")
def _tile(ctx: Context, x: Any, repeats: Any) -> Any:
    return tf.tile(_t(x), tf.cast(_t(repeats), tf.int64))


@op("ConstantOfShape")
def _constant_of_shape(ctx: Context, shape: Any) -> Any:
    value = ctx.attr("value")
    fill = np.zeros((), np.float32) if value is None else np.asarray(value).reshape(())
    static = _maybe_static(shape)
    if static is not None:
        return np.full([int(d) for d in static.reshape(-1)], fill, dtype=fill.dtype)
    return tf.fill(tf.cast(_t(shape), tf.int64), tf.constant(fill))


@op("Range")
def _range(ctx: Context, start: Any, limit: Any, delta: Any) -> Any:
    start = _t(start)
    return tf.range(start, tf.cast(limit, start.dtype), tf.cast(delta, start.dtype), dtype=start.dtype)


@op("Pad")
def _pad(ctx: Context, x: Any, pads: Any = None, value: Any = None, axes: Any = None) -> Any:
    x = _t(x)
    rank = _rank(ctx, x)
    mode = ctx.attr("mode", "constant")
    if ctx.version < 11:
        pads, value = np.asarray(ctx.attr("pads"), np.int64), ctx.attr("value", 0.0)
    pad_values = [int(p) for p in _static(ctx, pads, "pads").reshape(-1)]
    axis_list = list(range(rank)) if axes is None else _axes(ctx, [int(a) for a in _static(ctx, axes, "axes")], rank)
    n = len(axis_list)
    paddings = [[0, 0] for _ in range(rank)]
    for k, axis in enumerate(axis_list):
        paddings[axis] = [pad_values[k], pad_values[k + n]]
    if any(p < 0 for pair in paddings for p in pair):
        raise ctx.fail("negative pads (cropping) are not supported")
    if mode == "constant":
        fill = 0 if value is None else tf.cast(tf.reshape(_t(value), []), x.dtype)
        return tf.pad(x, paddings, constant_values=fill)
    if mode == "reflect":
        return tf.pad(x, paddings, mode="REFLECT")
    if mode == "edge":
        for axis, (before, after) in enumerate(paddings):
            if before or after:
                n_dim = tf.shape(x, out_type=tf.int64)[axis]
                index = tf.clip_by_value(tf.range(-before, n_dim + after), 0, n_dim - 1)
                x = tf.gather(x, index, axis=axis)
        return x
    raise ctx.fail(f"mode {mode!r} is not supported")


@op("CumSum")
def _cumsum(ctx: Context, x: Any, axis: Any) -> Any:
    return tf.math.cumsum(
        _t(x),
        axis=int(_static(ctx, axis, "axis").reshape(())),
        exclusive=bool(ctx.attr("exclusive", 0)),
        reverse=bool(ctx.attr("reverse", 0)),
    )


@op("TopK")
def _topk(ctx: Context, x: Any, k: Any = None) -> Any:
    x = _t(x)
    rank = _rank(ctx, x)
    axis = ctx.attr("axis", -1)
    axis = axis + rank if axis < 0 else axis
    count = ctx.attr("k") if ctx.version < 10 else tf.cast(tf.reshape(_t(k), []), tf.int32)
    moved = axis != rank - 1
    if moved:
        perm = [*[i for i in range(rank) if i != axis], axis]
        x = tf.transpose(x, perm)
    largest = ctx.attr("largest", 1)
    values, indices = tf.math.top_k(x if largest else -x, k=count, sorted=True)
    values = values if largest else -values
    indices = tf.cast(indices, tf.int64)
    if moved:
        inverse = list(np.argsort(perm))
        values, indices = tf.transpose(values, inverse), tf.transpose(indices, inverse)
    return values, indices


@op("ArgMax", "ArgMin")
def _arg(ctx: Context, x: Any) -> Any:
    x = _t(x)
    if ctx.attr("select_last_index", 0):
        raise ctx.fail("select_last_index is not supported")
    axis = ctx.attr("axis", 0)
    fn = tf.argmax if ctx.node.op == "ArgMax" else tf.argmin
    result = fn(x, axis=axis, output_type=tf.int64)
    return tf.expand_dims(result, axis) if ctx.attr("keepdims", 1) else result


@op("Einsum")
def _einsum(ctx: Context, *xs: Any) -> Any:
    return tf.einsum(ctx.attr("equation").replace(" ", ""), *[_t(x) for x in xs])


# ---------------------------------------------------------------- reductions


def _reduce(fn: Callable[..., Any], since: int) -> Handler:
    def handler(ctx: Context, x: Any, axes: Any = None) -> Any:
        x = _t(x)
        found = _axes_input_or_attr(ctx, axes, since)
        keep = bool(ctx.attr("keepdims", 1))
        if not found:
            if ctx.attr("noop_with_empty_axes", 0):
                return tf.identity(x)
            found = list(range(_rank(ctx, x)))
        return fn(x, axis=_axes(ctx, found, _rank(ctx, x)), keepdims=keep)

    return handler


HANDLERS["ReduceSum"] = _reduce(tf.reduce_sum, 13)
HANDLERS["ReduceMean"] = _reduce(tf.reduce_mean, 18)
HANDLERS["ReduceMax"] = _reduce(tf.reduce_max, 18)
HANDLERS["ReduceMin"] = _reduce(tf.reduce_min, 18)
HANDLERS["ReduceProd"] = _reduce(tf.reduce_prod, 18)
HANDLERS["ReduceLogSumExp"] = _reduce(tf.reduce_logsumexp, 18)
HANDLERS["ReduceSumSquare"] = _reduce(lambda x, axis, keepdims: tf.reduce_sum(x * x, axis, keepdims), 18)
HANDLERS["ReduceL1"] = _reduce(lambda x, axis, keepdims: tf.reduce_sum(tf.abs(x), axis, keepdims), 18)
HANDLERS["ReduceL2"] = _reduce(lambda x, axis, keepdims: tf.sqrt(tf.reduce_sum(x * x, axis, keepdims)), 18)


@op("Softmax", "LogSoftmax")
def _softmax(ctx: Context, x: Any) -> Any:
    x = _t(x)
    fn = tf.nn.softmax if ctx.node.op == "Softmax" else tf.nn.log_softmax
    if ctx.version >= 13:
        return fn(x, axis=ctx.attr("axis", -1))
    # before opset 13 the input is seen as 2-D: [prod(dims[:axis]), prod(dims[axis:])]
    rank = _rank(ctx, x)
    axis = ctx.attr("axis", 1)
    axis = axis + rank if axis < 0 else axis
    if axis == rank - 1:
        return fn(x, axis=-1)
    shape = tf.shape(x)
    flat = tf.reshape(x, tf.stack([tf.reduce_prod(shape[:axis]), -1]))
    return tf.reshape(fn(flat, axis=-1), shape)


# ---------------------------------------------------------------- linear algebra and normalisation


@op("MatMul")
def _matmul(ctx: Context, a: Any, b: Any) -> Any:
    a, b = _t(a), _t(b)
    ra, rb = a.shape.rank, b.shape.rank
    if ra == 1 or rb == 1:  # numpy semantics for vectors
        a2 = tf.expand_dims(a, 0) if ra == 1 else a
        b2 = tf.expand_dims(b, -1) if rb == 1 else b
        out = tf.linalg.matmul(a2, b2)
        out = tf.squeeze(out, -2) if ra == 1 else out
        return tf.squeeze(out, -1) if rb == 1 else out
    if rb == 2 and ra is not None and ra > 2:  # x @ W: one 2-D product instead of a broadcast batch
        dims = _dims(a)
        out = tf.linalg.matmul(tf.reshape(a, [-1, tf.shape(a)[-1]]), b)
        return tf.reshape(out, _shape_tensor([*dims[:-1], _dims(b)[-1]]))
    return tf.linalg.matmul(a, b)


@op("Gemm")
def _gemm(ctx: Context, a: Any, b: Any, c: Any = None) -> Any:
    a, b = _t(a), _t(b)
    out = tf.linalg.matmul(a, b, transpose_a=bool(ctx.attr("transA", 0)), transpose_b=bool(ctx.attr("transB", 0)))
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    if alpha != 1.0:
        out = out * alpha
    if c is not None:
        out = out + (_t(c) if beta == 1.0 else beta * _t(c))
    return out


@op("LayerNormalization")
def _layer_norm(ctx: Context, x: Any, scale: Any, bias: Any = None) -> Any:
    x = _t(x)
    rank = _rank(ctx, x)
    axis = ctx.attr("axis", -1)
    axis = axis + rank if axis < 0 else axis
    axes = list(range(axis, rank))
    mean = tf.reduce_mean(x, axis=axes, keepdims=True)
    centred = x - mean
    variance = tf.reduce_mean(centred * centred, axis=axes, keepdims=True)
    inv_std = tf.math.rsqrt(variance + ctx.attr("epsilon", 1e-5))
    y = centred * inv_std * _t(scale)
    if bias is not None:
        y = y + _t(bias)
    return y, mean, inv_std


def _channel_param(value: Any, rank: int) -> tf.Tensor:
    """A [C] parameter shaped to broadcast over an NC... tensor."""
    return tf.reshape(_t(value), [-1] + [1] * (rank - 2))


@op("BatchNormalization")
def _batch_norm(ctx: Context, x: Any, scale: Any, bias: Any, mean: Any, var: Any) -> Any:
    x = _t(x)
    rank = _rank(ctx, x)
    inv = tf.math.rsqrt(_channel_param(var, rank) + ctx.attr("epsilon", 1e-5))
    return (x - _channel_param(mean, rank)) * inv * _channel_param(scale, rank) + _channel_param(bias, rank)


@op("InstanceNormalization")
def _instance_norm(ctx: Context, x: Any, scale: Any, bias: Any) -> Any:
    x = _t(x)
    rank = _rank(ctx, x)
    axes = list(range(2, rank))
    mean, variance = tf.nn.moments(x, axes=axes, keepdims=True)
    y = (x - mean) * tf.math.rsqrt(variance + ctx.attr("epsilon", 1e-5))
    return y * _channel_param(scale, rank) + _channel_param(bias, rank)


# ---------------------------------------------------------------- convolutions and pools (NCHW)


def _spatial_pads(ctx: Context, x: tf.Tensor, kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[tuple[int, int]]:  # fmt: skip
    """[(begin, end)] per spatial axis from `pads` or `auto_pad` (SAME_* needs static spatial sizes)."""
    n = len(kernel)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = ctx.attr("pads") or [0] * (2 * n)
        return [(0, 0)] * n if auto == "VALID" else [(int(pads[i]), int(pads[i + n])) for i in range(n)]
    sizes = x.shape.as_list()[2:]
    if any(s is None for s in sizes):
        raise ctx.fail(f"auto_pad {auto} needs static spatial sizes")
    out = []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        out.append((small, large) if auto == "SAME_UPPER" else (large, small))
    return out


def _to_nhwc(x: tf.Tensor) -> tf.Tensor:
    return tf.transpose(x, [0, 2, 3, 1])


def _to_nchw(x: tf.Tensor) -> tf.Tensor:
    return tf.transpose(x, [0, 3, 1, 2])


@op("Conv")
def _conv(ctx: Context, x: Any, w: Any, b: Any = None) -> Any:
    x, w = _t(x), _t(w)
    rank = _rank(ctx, x)
    if rank == 3:  # 1-D convolution as 2-D with height 1
        x, w = tf.expand_dims(x, 2), tf.expand_dims(w, 2)
        squeeze = True
    elif rank == 4:
        squeeze = False
    else:
        raise ctx.fail(f"{rank - 2}-D convolutions are not supported")
    kernel = w.shape.as_list()[2:]
    spatial = rank - 2
    strides = list(ctx.attr("strides") or [1] * spatial)
    dilations = list(ctx.attr("dilations") or [1] * spatial)
    if squeeze:
        strides, dilations = [1, *strides], [1, *dilations]
        pads_attr = ctx.attr("pads")
        if pads_attr:
            attrs = {**ctx.node.attrs, "pads": [0, pads_attr[0], 0, pads_attr[1]]}
            ctx = Context(Node(ctx.node.op, ctx.node.name, ctx.node.inputs, ctx.node.outputs, attrs), ctx.opset)
    pads = _spatial_pads(ctx, x, kernel, strides, dilations)
    group = int(ctx.attr("group", 1))
    channels = x.shape[1]
    nhwc = _to_nhwc(x)
    explicit = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
    out_channels = w.shape[0]
    if group == 1:
        y = tf.nn.conv2d(nhwc, tf.transpose(w, [2, 3, 1, 0]), strides=strides, padding=explicit, dilations=dilations)
    elif channels is not None and group == channels and w.shape[1] == 1:  # depthwise, channel multiplier m
        multiplier = out_channels // group
        filters = tf.transpose(tf.reshape(w, [group, multiplier, *kernel]), [2, 3, 0, 1])
        padded = tf.pad(nhwc, explicit)
        y = tf.nn.depthwise_conv2d(padded, filters, strides=[1, *strides, 1], padding="VALID", dilations=dilations)
    else:
        padded = tf.pad(nhwc, explicit)
        xs = tf.split(padded, group, axis=-1)
        ws = tf.split(tf.transpose(w, [2, 3, 1, 0]), group, axis=-1)
        y = tf.concat(
            [
                tf.nn.conv2d(a, f, strides=strides, padding="VALID", dilations=dilations)
                for a, f in zip(xs, ws, strict=True)
            ],
            axis=-1,
        )
    if b is not None:
        y = y + _t(b)
    y = _to_nchw(y)
    return tf.squeeze(y, 2) if squeeze else y


def _pool_window(ctx: Context, x: tf.Tensor) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    kernel = list(ctx.attr("kernel_shape"))
    if len(kernel) != 2:
        raise ctx.fail("only 2-D pooling is supported")
    strides = list(ctx.attr("strides") or [1, 1])
    dilations = list(ctx.attr("dilations") or [1, 1])
    if dilations != [1, 1]:
        raise ctx.fail("dilated pooling is not supported")
    pads = _spatial_pads(ctx, x, kernel, strides, dilations)
    if ctx.attr("ceil_mode", 0):
        sizes = x.shape.as_list()[2:]
        if any(s is None for s in sizes):
            raise ctx.fail("ceil_mode needs static spatial sizes")
        grown = []
        for size, k, s, (p0, p1) in zip(sizes, kernel, strides, pads, strict=True):
            out = -(-(size + p0 + p1 - k) // s) + 1
            if (out - 1) * s >= size + p0:  # the last window must start inside the input or left padding
                out -= 1
            grown.append((p0, max(p1, (out - 1) * s + k - size - p0)))
        pads = grown
    return kernel, strides, pads


@op("MaxPool")
def _max_pool(ctx: Context, x: Any) -> Any:
    x = _t(x)
    kernel, strides, pads = _pool_window(ctx, x)
    padded = tf.pad(_to_nhwc(x), [[0, 0], list(pads[0]), list(pads[1]), [0, 0]], constant_values=-np.inf)
    return _to_nchw(tf.nn.max_pool2d(padded, kernel, strides, "VALID"))


@op("AveragePool")
def _average_pool(ctx: Context, x: Any) -> Any:
    x = _t(x)
    kernel, strides, pads = _pool_window(ctx, x)
    paddings = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
    nhwc = _to_nhwc(x)
    summed = tf.nn.avg_pool2d(tf.pad(nhwc, paddings), kernel, strides, "VALID") * float(math.prod(kernel))
    if ctx.attr("count_include_pad", 0):
        count = float(math.prod(kernel))
    else:
        ones = tf.pad(tf.ones_like(nhwc[..., :1]), paddings)
        count = tf.nn.avg_pool2d(ones, kernel, strides, "VALID") * float(math.prod(kernel))
    return _to_nchw(summed / count)


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: Context, x: Any) -> Any:
    x = _t(x)
    axes = list(range(2, _rank(ctx, x)))
    fn = tf.reduce_mean if ctx.node.op == "GlobalAveragePool" else tf.reduce_max
    return fn(x, axis=axes, keepdims=True)


# ---------------------------------------------------------------- Resize (static sizes: e.g. position tables)


def _source_coordinates(ctx: Context, out_len: int, in_len: int, scale: float) -> np.ndarray:
    x = np.arange(out_len, dtype=np.float64)
    mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise ctx.fail(f"coordinate_transformation_mode {mode!r} is not supported")


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _resize_matrix(ctx: Context, in_len: int, out_len: int, scale: float) -> np.ndarray:
    """[out_len, in_len] weights of one axis, as onnxruntime computes them (no antialias)."""
    mode = ctx.attr("mode", "nearest")
    x = _source_coordinates(ctx, out_len, in_len, scale)
    weights = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.arange(out_len)
    if mode == "nearest":
        rounding = ctx.attr("nearest_mode", "round_prefer_floor")
        if rounding == "round_prefer_floor":
            index = np.where(x == np.floor(x) + 0.5, np.floor(x), np.round(x))
        elif rounding == "round_prefer_ceil":
            index = np.where(x == np.floor(x) + 0.5, np.ceil(x), np.round(x))
        elif rounding == "floor":
            index = np.floor(x)
        elif rounding == "ceil":
            index = np.ceil(x)
        else:
            raise ctx.fail(f"nearest_mode {rounding!r} is not supported")
        weights[rows, np.clip(index, 0, in_len - 1).astype(int)] = 1.0
        return weights
    if mode == "linear":
        x = np.clip(x, 0, in_len - 1)
        low = np.floor(x).astype(int)
        high = np.minimum(low + 1, in_len - 1)
        frac = x - low
        np.add.at(weights, (rows, low), 1.0 - frac)
        np.add.at(weights, (rows, high), frac)
        return weights
    if mode == "cubic":
        a = ctx.attr("cubic_coeff_a", -0.75)
        base = np.floor(x).astype(int)
        for offset in (-1, 0, 1, 2):
            index = base + offset
            w = _cubic(x - index, a)
            if ctx.attr("exclude_outside", 0):
                w = np.where((index < 0) | (index >= in_len), 0.0, w)
            np.add.at(weights, (rows, np.clip(index, 0, in_len - 1)), w)
        if ctx.attr("exclude_outside", 0):
            weights /= weights.sum(axis=1, keepdims=True)
        return weights
    raise ctx.fail(f"mode {mode!r} is not supported")


@op("Resize", "Upsample")
def _resize(ctx: Context, x: Any, roi: Any = None, scales: Any = None, sizes: Any = None) -> Any:
    x = _t(x)
    if ctx.node.op == "Upsample" or ctx.version < 11:  # (X, scales): asymmetric coordinates, no roi
        roi, scales, sizes = None, roi, None
        ctx = Context(Node(ctx.node.op, ctx.node.name, ctx.node.inputs, ctx.node.outputs,
                           {"coordinate_transformation_mode": "asymmetric", **ctx.node.attrs}), ctx.opset)  # fmt: skip
    if (
        ctx.attr("antialias", 0)
        or ctx.attr("axes") is not None
        or ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch"
    ):
        raise ctx.fail("antialias, axes and keep_aspect_ratio_policy are not supported")
    if ctx.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise ctx.fail("tf_crop_and_resize is not supported")
    in_shape = x.shape.as_list()
    if any(d is None for d in in_shape[2:]) or len(in_shape) < 3:
        raise ctx.fail("resizing needs static spatial sizes")
    size_values = _maybe_static(sizes)
    scale_values = _maybe_static(scales)
    if size_values is not None and size_values.size:
        out = [int(v) for v in size_values]
        factors = [o / i if i else 1.0 for o, i in zip(out[2:], in_shape[2:], strict=True)]
        if any(d is not None and d != o for d, o in zip(in_shape[:2], out[:2], strict=True)):
            raise ctx.fail("only the spatial axes may be resized")
    elif scale_values is not None and scale_values.size:
        factors = [float(v) for v in scale_values[2:]]
        out = [*in_shape[:2], *[int(np.floor(i * f)) for i, f in zip(in_shape[2:], factors, strict=True)]]
        if any(float(v) != 1.0 for v in scale_values[:2]):
            raise ctx.fail("only the spatial axes may be resized")
    else:
        raise ctx.fail("scales or sizes must be constants")
    y = x
    for k, (axis_in, axis_out, factor) in enumerate(zip(in_shape[2:], out[2:], factors, strict=True)):
        if axis_in == axis_out and factor == 1.0:
            continue
        matrix = tf.constant(_resize_matrix(ctx, axis_in, axis_out, factor), dtype=x.dtype)
        axis = 2 + k
        y = tf.experimental.numpy.moveaxis(tf.tensordot(y, matrix, axes=[[axis], [1]]), -1, axis)
    return y
