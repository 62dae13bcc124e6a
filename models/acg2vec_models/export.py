"""Writes SavedModels with the repository's signatures (see repository.py) around any Keras model.

Image signatures take encoded bytes and preprocess inside the graph, so TF-Serving does the decoding.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import tensorflow as tf

from acg2vec_models.preprocessing import ImagePreprocessing, preprocess_batch
from acg2vec_models.vocab import TagEntry, validate

IMAGE_INPUT = tf.TensorSpec([None], tf.string, name="image_bytes")
TEXT_INPUT = tf.TensorSpec([None], tf.string, name="text")


class _ImageModule(tf.Module):
    """Holds a Keras model and its preprocessing; outputs are named by `outputs`."""

    def __init__(self, model: keras.Model, prep: ImagePreprocessing, outputs: Callable[[object], dict[str, tf.Tensor]]):
        super().__init__()
        self.model = model
        self._prep = prep
        self._outputs = outputs

    @tf.function(input_signature=[IMAGE_INPUT])
    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self.model(preprocess_batch(image_bytes, self._prep), training=False))


def _write(module: tf.Module, signatures: dict[str, Callable[..., object]], path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    tmp.rename(path)  # a version directory appears complete or not at all (TF-Serving polls the folder)
    return path


def export_tagger(model: keras.Model, prep: ImagePreprocessing, tags: Sequence[TagEntry], path: Path) -> Path:
    """Tagger: serving_default(image_bytes) -> scores[N,T]; labels() -> names, categories."""
    validate(tags)
    module = _ImageModule(model, prep, lambda y: {"scores": tf.cast(y, tf.float32)})
    names, categories = [t.name for t in tags], [t.category for t in tags]

    @tf.function(input_signature=[])
    def labels() -> dict[str, tf.Tensor]:
        return {"names": tf.constant(names), "categories": tf.constant(categories)}

    return _write(module, {"serving_default": module.serve, "labels": labels}, path)


def export_image_embedder(model: keras.Model, prep: ImagePreprocessing, path: Path) -> Path:
    """illust2vec-style encoder: serving_default(image_bytes) -> embedding[N,D] (not normalised)."""
    module = _ImageModule(model, prep, lambda y: {"embedding": tf.cast(y, tf.float32)})
    return _write(module, {"serving_default": module.serve}, path)


def export_deepix(model: keras.Model, prep: ImagePreprocessing, path: Path) -> Path:
    """deepix: serving_default(image_bytes) -> bookmarks, views, sanity (softmax distributions)."""
    module = _ImageModule(model, prep, lambda y: {k: tf.cast(v, tf.float32) for k, v in y.items()})  # type: ignore[attr-defined]
    return _write(module, {"serving_default": module.serve}, path)


def export_text_module(module: tf.Module, path: Path) -> Path:
    """Text encoder: a tf.Module whose `encode(text)` returns embedding[N,D]."""
    return _write(module, {"serving_default": module.encode}, path)  # type: ignore[attr-defined]
