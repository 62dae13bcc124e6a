"""Writes SavedModels with the repository's signatures (see repository.py) around any Keras model.

Image signatures take encoded bytes and preprocess inside the graph, so TF-Serving does the decoding.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from acg2vec_models.preprocessing import ImagePreprocessing, preprocess_batch
from acg2vec_models.repository import LABELS_SIGNATURE, ROWS_INPUT, check_batchable
from acg2vec_models.vocab import TagEntry, validate

IMAGE_INPUT = tf.TensorSpec([None], tf.string, name="image_bytes")
TEXT_INPUT = tf.TensorSpec([None], tf.string, name="text")
#: The batch input of signatures that carry data (labels, tokenizer): values ignored, one answer row per row.
ROWS_SPEC = tf.TensorSpec([None], tf.int64, name=ROWS_INPUT)


def per_row(value: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """value repeated once per element of rows, along a new first axis: [len(rows), *value.shape]. TF-Serving's
    batching needs every output to carry the batch dimension (repository.py)."""
    value = tf.convert_to_tensor(value)
    return tf.tile(value[None], tf.concat([tf.shape(rows)[:1], tf.ones([tf.rank(value)], tf.int32)], axis=0))


def labels_function(tags: Sequence[TagEntry]) -> Callable[..., dict[str, tf.Tensor]]:
    """The tagger's `labels(rows: int64[N])` -> names: string[N,T], categories: string[N,T]."""
    validate(tags)
    names, categories = [t.name for t in tags], [t.category for t in tags]

    @tf.function(input_signature=[ROWS_SPEC])
    def labels(rows: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"names": per_row(tf.constant(names), rows), "categories": per_row(tf.constant(categories), rows)}

    return labels


def read_labels(loaded: Any) -> tuple[list[str], list[str]]:
    """(names, categories) from a loaded tagger SavedModel (tf.saved_model.load) through its labels signature."""
    out = loaded.signatures[LABELS_SIGNATURE](**{ROWS_INPUT: tf.zeros([1], tf.int64)})
    return [n.decode() for n in out["names"].numpy()[0]], [c.decode() for c in out["categories"].numpy()[0]]


class _Untracked:
    """Keeps an object out of the SavedModel's object graph (only what serving needs is saved)."""

    def __init__(self, value: Any):
        self.value = value


class _ImageModule(tf.Module):
    """Holds a Keras model and its preprocessing; outputs are named by `outputs`.

    Only the model's variables are tracked, not its layers: a SavedModel of a deep network (DeepDanbooru has
    ~900 layers) then saves in a fraction of the time, and serving needs nothing else."""

    def __init__(self, model: keras.Model, prep: ImagePreprocessing, outputs: Callable[[object], dict[str, tf.Tensor]]):
        super().__init__()
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self._model = _Untracked(model)
        self._prep = prep
        self._outputs = outputs

    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self._model.value(preprocess_batch(image_bytes, self._prep), training=False))


class _WrappedImageModule(tf.Module):
    """Any trackable callable (e.g. a loaded SavedModel's signature) behind the repository's image signature."""

    def __init__(self, source: Any, call: Callable[[tf.Tensor], dict[str, tf.Tensor]], prep: ImagePreprocessing | None):
        super().__init__()
        self.source = source  # tracked, so that its variables are saved with the wrapper
        self._call = call
        self._prep = prep

    def serve(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = image_bytes if self._prep is None else preprocess_batch(image_bytes, self._prep)
        return {k: tf.cast(v, tf.float32) for k, v in self._call(inputs).items()}


def _image_signature(module: _ImageModule | _WrappedImageModule) -> Callable[..., object]:
    """serving_default traced once (a tf.function attribute of the module would be traced again when saved),
    without autograph (the graph has no Python control flow on tensors)."""
    return tf.function(module.serve, input_signature=[IMAGE_INPUT], autograph=False).get_concrete_function()


def _write(module: tf.Module, signatures: dict[str, Callable[..., object]], path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    check_batchable(tmp)
    tmp.rename(path)  # a version directory appears complete or not at all (TF-Serving polls the folder)
    return path


def export_tagger(model: keras.Model, prep: ImagePreprocessing, tags: Sequence[TagEntry], path: Path) -> Path:
    """Tagger: serving_default(image_bytes) -> scores[N,T]; labels(rows) -> names, categories."""
    labels = labels_function(tags)
    module = _ImageModule(model, prep, lambda y: {"scores": tf.cast(y, tf.float32)})
    return _write(module, {"serving_default": _image_signature(module), LABELS_SIGNATURE: labels}, path)


def export_image_embedder(model: keras.Model, prep: ImagePreprocessing, path: Path) -> Path:
    """illust2vec-style encoder: serving_default(image_bytes) -> embedding[N,D] (not normalised)."""
    module = _ImageModule(model, prep, lambda y: {"embedding": tf.cast(y, tf.float32)})
    return _write(module, {"serving_default": _image_signature(module)}, path)


def export_deepix(model: keras.Model, prep: ImagePreprocessing, path: Path) -> Path:
    """deepix: serving_default(image_bytes) -> bookmarks, views, sanity (softmax distributions)."""
    module = _ImageModule(model, prep, lambda y: {k: tf.cast(v, tf.float32) for k, v in y.items()})  # type: ignore[attr-defined]
    return _write(module, {"serving_default": _image_signature(module)}, path)


def export_wrapped_image_model(
    source: Any,
    call: Callable[[tf.Tensor], dict[str, tf.Tensor]],
    path: Path,
    prep: ImagePreprocessing | None = None,
    tags: Sequence[TagEntry] | None = None,
) -> Path:
    """serving_default(image_bytes) -> call(preprocessed images, or the bytes themselves when prep is None);
    with tags, also labels(rows) -> names, categories. `source` holds the variables `call` uses."""
    module = _WrappedImageModule(source, call, prep)
    signatures: dict[str, Callable[..., object]] = {"serving_default": _image_signature(module)}
    if tags is not None:
        signatures[LABELS_SIGNATURE] = labels_function(tags)
    return _write(module, signatures, path)


def export_text_module(module: tf.Module, path: Path) -> Path:
    """Text encoder: a tf.Module whose `encode(text)` returns embedding[N,D]."""
    return _write(module, {"serving_default": module.encode}, path)  # type: ignore[attr-defined]
