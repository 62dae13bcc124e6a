"""A tiny-thumbnail part of the default illust2vec embedding: the verification signal of a near-duplicate re-rank,
folded into the vector itself so that search needs no stored pictures and no second pass.

The picture's content (the same in-graph content normalisation as the network's input: borders trimmed, background
whitened) shrunk to 16 x 16 keeping its aspect ratio, as luminance, standardised per picture (brightness, contrast
and greyscale drop out) and summed with its mirror image (a mirrored copy gives the same vector). At that size a
JPEG-compressed or quarter-sized copy of a 60-px icon is still the icon, where the network's features, made for
224 px, drift. The embedding is [projection * sqrt(1 - w), thumbnail * sqrt(w)], both parts unit vectors, so the
cosine of two embeddings is (1 - w) * cos(projections) + w * cos(thumbnails).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from acg2vec_models.preprocessing import ImagePreprocessing

SIZE = 16
#: 0..255 RGB -> 0..1, the content padded with white to a square, then 16 x 16.
PREPROCESSING = ImagePreprocessing(size=SIZE, resize="pad", offset=0.0, scale=255.0, content="trim")


@keras.saving.register_keras_serializable("acg2vec")
class ThumbnailDescriptor(layers.Layer):
    """[B, s, s, 3] in 0..1 -> [B, s * s] unit vectors (see the module docstring)."""

    def call(self, x):
        grey = ops.sum(x * ops.convert_to_tensor([0.299, 0.587, 0.114], dtype=x.dtype), axis=-1)
        grey = grey - ops.mean(grey, axis=(1, 2), keepdims=True)
        grey = grey / (ops.sqrt(ops.mean(ops.square(grey), axis=(1, 2), keepdims=True)) + 1e-3)
        flat = ops.reshape(grey + ops.flip(grey, axis=2), (-1, x.shape[1] * x.shape[2]))
        return flat / ops.maximum(ops.norm(flat, axis=-1, keepdims=True), 1e-6)


@keras.saving.register_keras_serializable("acg2vec")
class WeightedParts(layers.Layer):
    """[a, b] -> [unit(a) * sqrt(1 - weight), unit(b) * sqrt(weight)]: a unit vector whose cosine is the weighted
    sum of the parts' cosines."""

    def __init__(self, weight: float, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight

    def call(self, parts):
        a, b = parts
        a = a / ops.maximum(ops.norm(a, axis=-1, keepdims=True), 1e-12)
        b = b / ops.maximum(ops.norm(b, axis=-1, keepdims=True), 1e-12)
        return ops.concatenate([a * (1.0 - self.weight) ** 0.5, b * self.weight**0.5], axis=-1)

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}
