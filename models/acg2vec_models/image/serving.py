"""In-graph preprocessing and SavedModel export for the default image models.

They resize with antialiased *bilinear* interpolation rather than the repository's area resize: most openclipart
pictures are smaller than the networks' input, and area upsampling (nearest-neighbour blocks) paints sharp block
edges whose pattern depends on the source size, which hurts near-duplicate retrieval of small pictures (R@1
0.51 -> 0.65 on small openclipart pictures, docs/image-models.md). A model may have several backbones (the
default tagger: EfficientNet-Lite0 for tags, nsfwjs MobileNetV2 for the rating), each with its own
preprocessing; each image is decoded once. Signatures as in repository.py. Only the model's variables are
tracked, not its layers, which keeps saving quick.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from acg2vec_models.export import labels_function
from acg2vec_models.preprocessing import ImagePreprocessing, decode_rgb, normalise_content
from acg2vec_models.repository import LABELS_SIGNATURE, check_batchable
from acg2vec_models.vocab import TagEntry

IMAGE_INPUT = tf.TensorSpec([None], tf.string, name="image_bytes")


def smooth_resize(rgb: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    """Float RGB -> prep.size square: bilinear with antialiasing; "pad" keeps the aspect ratio and pads with
    prep.pad_value, "stretch" ignores it."""
    size = prep.size
    if prep.resize == "stretch":
        return tf.ensure_shape(tf.image.resize(rgb, (size, size), method="bilinear", antialias=True), (size, size, 3))
    shape = tf.cast(tf.shape(rgb)[:2], tf.float32)
    ratio = tf.minimum(size / shape[0], size / shape[1])
    new_hw = tf.maximum(tf.cast(tf.round(shape * ratio), tf.int32), 1)
    resized = tf.image.resize(rgb, new_hw, method="bilinear", antialias=True)
    top, left = (size - new_hw[0]) // 2, (size - new_hw[1]) // 2
    padded = tf.pad(resized - prep.pad_value, [[top, size - new_hw[0] - top], [left, size - new_hw[1] - left], [0, 0]])
    return tf.ensure_shape(padded + prep.pad_value, (size, size, 3))


def preprocess_image(encoded: tf.Tensor, preps: Sequence[ImagePreprocessing]) -> tuple[tf.Tensor, ...]:
    """One encoded image -> one normalised network input per preprocessing (decoded once)."""
    rgb = decode_rgb(encoded)
    content = normalise_content(rgb) if any(p.content == "trim" for p in preps) else rgb
    out = []
    for prep in preps:
        image = smooth_resize(content if prep.content == "trim" else rgb, prep)
        if prep.channels == "BGR":
            image = image[..., ::-1]
        out.append((image - prep.offset) / prep.scale)
    return tuple(out)


def preprocess_batch(image_bytes: tf.Tensor, preps: Sequence[ImagePreprocessing]) -> list[tf.Tensor]:
    """[batch] encoded images -> one [batch, size, size, 3] network input per preprocessing."""
    specs = tuple(tf.TensorSpec((p.size, p.size, 3), tf.float32) for p in preps)
    return list(
        tf.map_fn(lambda b: preprocess_image(b, preps), image_bytes, fn_output_signature=specs, parallel_iterations=8)
    )


class _Untracked:
    def __init__(self, value: Any):
        self.value = value


class _ImageModule(tf.Module):
    def __init__(self, model: keras.Model, preps: Sequence[ImagePreprocessing], output: str):
        super().__init__()
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self._model = _Untracked(model)
        self._preps = tuple(preps)
        self._output = output

    @tf.function(input_signature=[IMAGE_INPUT])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = preprocess_batch(image_bytes, self._preps)
        result = self._model.value(inputs if len(inputs) > 1 else inputs[0], training=False)
        return {self._output: tf.cast(result, tf.float32)}


def _save(module: tf.Module, signatures: dict[str, Any], path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    for stale in (tmp, path):
        if stale.exists():
            shutil.rmtree(stale)
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    check_batchable(tmp)
    tmp.rename(path)  # a version folder appears complete or not at all (TF-Serving polls the repository)
    return path


def export_tagger(
    model: keras.Model, preps: Sequence[ImagePreprocessing], tags: Sequence[TagEntry], path: Path
) -> Path:
    """serving_default(image_bytes) -> scores[N,T]; labels(rows) -> names, categories. The Keras model takes one
    input per preprocessing."""
    labels = labels_function(tags)
    module = _ImageModule(model, preps, "scores")
    return _save(module, {"serving_default": module.serve, LABELS_SIGNATURE: labels}, path)


def export_embedder(model: keras.Model, preps: Sequence[ImagePreprocessing], path: Path) -> Path:
    """serving_default(image_bytes) -> embedding[N,D]. The Keras model takes one input per preprocessing."""
    module = _ImageModule(model, preps, "embedding")
    return _save(module, {"serving_default": module.serve}, path)
