"""Pillow's `Image.resize` (bilinear, bicubic, Lanczos) on 8-bit RGB, as TensorFlow ops: bit-identical.

Most published taggers are fed with Pillow (WD v3 pads and resizes with BICUBIC, Camie v2 with LANCZOS, PixAI
with BILINEAR), so an imported tagger must resample as Pillow does to score as it does. tf.image.resize with
antialias computes the same kernel but in float32 without Pillow's rounding, which leaves 0.01-0.3 % of the
values one level off; this module follows Pillow's C code (libImaging/Resample.c) instead:

- one pass per axis, each skipped when that size does not change; horizontal first, unless the height shrinks
  by more than twice as many pixels as the width (Pillow 13's rule, found by comparing both orders with it);
- for each output pixel `xx`: center = (xx + 0.5) * scale, support = filter support * max(scale, 1), the input
  pixels from int(center - support + 0.5) to int(center + support + 0.5) (clipped to the image), weights
  filter((x - center + 0.5) / max(scale, 1)) normalised to sum 1, then turned into 22-bit fixed point
  (rounded away from zero);
- each pass stores uint8: (sum of weight * pixel + 2^21) >> 22, clipped to 0..255.

The weights of a pass form a banded [out, in] matrix, applied as a float64 sparse product (exact for these
integers), so the cost is the band, not the whole matrix.
"""

from __future__ import annotations

import math
from typing import Literal

import tensorflow as tf

PillowFilter = Literal["bilinear", "bicubic", "lanczos"]
SUPPORT: dict[str, float] = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
PRECISION_BITS = 32 - 8 - 2


def _filter(x: tf.Tensor, name: PillowFilter) -> tf.Tensor:
    """Pillow's filters (float64): triangle, Keys cubic with a = -0.5, 3-lobed Lanczos."""
    ax = tf.abs(x)
    zero = tf.zeros_like(x)
    if name == "bilinear":
        return tf.where(ax < 1.0, 1.0 - ax, zero)
    if name == "bicubic":
        a = -0.5
        near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
        far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
        return tf.where(ax < 1.0, near, tf.where(ax < 2.0, far, zero))

    def sinc(v: tf.Tensor) -> tf.Tensor:
        pv = v * math.pi
        safe = tf.where(tf.equal(v, 0.0), tf.ones_like(pv), pv)
        return tf.where(tf.equal(v, 0.0), tf.ones_like(v), tf.sin(safe) / safe)

    return tf.where((x >= -3.0) & (x < 3.0), sinc(x) * sinc(x / 3.0), zero)


def _weights(in_size: tf.Tensor, out_size: tf.Tensor, name: PillowFilter) -> tf.sparse.SparseTensor:
    """Pillow's fixed-point weights of one pass as a sparse [out_size, in_size] matrix (precompute_coeffs)."""
    in_f, out_f = tf.cast(in_size, tf.float64), tf.cast(out_size, tf.float64)
    scale = in_f / out_f
    filter_scale = tf.maximum(scale, 1.0)
    support = SUPPORT[name] * filter_scale
    ksize = tf.cast(tf.math.ceil(support), tf.int64) * 2 + 1
    center = (tf.range(out_f, dtype=tf.float64) + 0.5) * scale
    first = tf.maximum(tf.floor(center - support + 0.5), 0.0)  # C's (int) cast; negatives clip to 0 either way
    count = tf.minimum(tf.floor(center + support + 0.5), in_f) - first
    j = tf.cast(tf.range(ksize), tf.float64)
    valid = j[None, :] < count[:, None]
    w = tf.where(valid, _filter((j[None, :] + first[:, None] - center[:, None] + 0.5) / filter_scale, name), 0.0)
    total = tf.reduce_sum(w, axis=1, keepdims=True)
    w = tf.where(tf.equal(total, 0.0), w, w / tf.where(tf.equal(total, 0.0), tf.ones_like(total), total))
    fixed = w * float(1 << PRECISION_BITS)
    fixed = tf.where(fixed < 0, tf.math.ceil(fixed - 0.5), tf.floor(fixed + 0.5))  # (int)(x -/+ 0.5)
    rows = tf.broadcast_to(tf.range(tf.cast(out_size, tf.int64))[:, None], tf.shape(fixed, out_type=tf.int64))
    cols = tf.cast(first, tf.int64)[:, None] + tf.range(ksize)[None, :]
    indices = tf.stack([tf.boolean_mask(rows, valid), tf.boolean_mask(cols, valid)], axis=1)
    shape = tf.stack([tf.cast(out_size, tf.int64), tf.cast(in_size, tf.int64)])
    return tf.sparse.SparseTensor(indices, tf.boolean_mask(fixed, valid), shape)


def _resample_rows(x: tf.Tensor, out_size: tf.Tensor, name: PillowFilter) -> tf.Tensor:
    """Resamples axis 0 of a float64 [n, m] matrix of 0..255 integers, storing uint8 as Pillow does."""
    summed = tf.sparse.sparse_dense_matmul(_weights(tf.shape(x)[0], out_size, name), x)
    half, one = float(1 << (PRECISION_BITS - 1)), float(1 << PRECISION_BITS)
    return tf.clip_by_value(tf.floor((summed + half) / one), 0.0, 255.0)


def pillow_resize(image: tf.Tensor, height: tf.Tensor | int, width: tf.Tensor | int, name: PillowFilter) -> tf.Tensor:
    """[h, w, 3] float32 whole values 0..255 -> [height, width, 3], as Pillow's resize((width, height), filter)."""
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    in_h, in_w = tf.shape(image)[0], tf.shape(image)[1]

    def horizontal(x: tf.Tensor) -> tf.Tensor:
        def resample() -> tf.Tensor:
            rows, columns = tf.shape(x)[0], tf.shape(x)[1]
            flat = tf.reshape(tf.transpose(x, [1, 0, 2]), tf.stack([columns, -1]))
            resized = _resample_rows(flat, width, name)
            return tf.transpose(tf.reshape(resized, tf.stack([width, rows, 3])), [1, 0, 2])

        return tf.cond(tf.equal(tf.shape(x)[1], width), lambda: x, resample)

    def vertical(x: tf.Tensor) -> tf.Tensor:
        def resample() -> tf.Tensor:
            rows, columns = tf.shape(x)[0], tf.shape(x)[1]
            resized = _resample_rows(tf.reshape(x, tf.stack([rows, -1])), height, name)
            return tf.reshape(resized, tf.stack([height, columns, 3]))

        return tf.cond(tf.equal(tf.shape(x)[0], height), lambda: x, resample)

    x = tf.cast(image, tf.float64)
    # Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks by more than twice
    # as many pixels as the width does; the order changes the rounding between the passes
    vertical_first = (height < in_h) & ((in_h - height) > 2 * (in_w - width))
    x = tf.cond(vertical_first, lambda: horizontal(vertical(x)), lambda: vertical(horizontal(x)))
    return tf.cast(x, tf.float32)
