"""Writes the joint space as one SavedModel: both towers and both heads, so one version number names the space.

    serving_default(<the text tower's inputs>) -> embedding[N,D]    text side (token ids + length, or text)
    tokenizer(rows: int64[N]) -> tokenizer_json[N]                   (when the text tower takes token ids)
    image(image_bytes: string[N]) -> embedding[N,D]                  image side, decoded and resized in the graph

The text side has the text model's own signature, so the server tokenises for it exactly as for the text model
(domain/models.py), also through TF-Serving. The text tower is the installed acgvoc2vec SavedModel, loaded and
tracked (its variables saved again here): a later acgvoc2vec version never changes this space's vectors.
Outputs are L2-normalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from acg2vec_models.export import ROWS_SPEC, per_row
from acg2vec_models.image.serving import IMAGE_INPUT, _save, preprocess_batch
from acg2vec_models.preprocessing import ImagePreprocessing
from acg2vec_models.repository import ROWS_INPUT
from acg2vec_models.text.tokens import TOKENIZER_OUTPUT, TOKENIZER_SIGNATURE

IMAGE_SIGNATURE = "image"


class _Untracked:
    def __init__(self, value: Any):
        self.value = value


class _JointModule(tf.Module):
    def __init__(self, text_tower: Any, text_head: keras.Model, image_model: keras.Model, prep: ImagePreprocessing):
        super().__init__()
        self.text_tower = text_tower  # a loaded SavedModel: tracked, so its variables are saved with this one
        self.text_variables = [getattr(v, "value", v) for v in text_head.variables]
        self.image_variables = [getattr(v, "value", v) for v in image_model.variables]
        self._text_head = _Untracked(text_head)
        self._image_model = _Untracked(image_model)
        self._prep = prep

    def text(self, **inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        vector = self.text_tower.signatures["serving_default"](**inputs)["embedding"]
        vector = tf.math.l2_normalize(tf.cast(vector, tf.float32), axis=-1)
        return {"embedding": tf.math.l2_normalize(self._text_head.value(vector, training=False), axis=-1)}

    def image(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        (batch,) = preprocess_batch(image_bytes, [self._prep])
        vector = tf.cast(self._image_model.value(batch, training=False), tf.float32)
        return {"embedding": tf.math.l2_normalize(vector, axis=-1)}


def text_tower_vectors(path: Path, texts: list[str], batch: int = 256) -> np.ndarray:
    """A repository text SavedModel's vectors (either interface), its inputs made as the server makes them."""
    from acg2vec_models.text.tokens import TextTokenizer

    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    tokenizer = None
    if TOKENIZER_SIGNATURE in loaded.signatures:
        definition = np.asarray(_tower_tokenizer(loaded)(tf.zeros([1], tf.int64))).reshape(-1)[0]
        tokenizer = TextTokenizer(definition.decode())
    out = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        inputs = tokenizer(chunk) if tokenizer else {"text": np.array([t.encode() for t in chunk], dtype=object)}
        out.append(serve(**{k: tf.constant(v) for k, v in inputs.items()})["embedding"].numpy())
    return np.concatenate(out).astype(np.float32)


def export_joint(
    text_model: Path, text_head: keras.Model, image_model: keras.Model, prep: ImagePreprocessing, path: Path
) -> Path:
    """text_model: a text SavedModel of the repository (either text interface); image_model: normalised image
    batch -> joint vector (backbone features + image head); text_head: text vector -> joint vector."""
    tower = tf.saved_model.load(str(text_model))
    module = _JointModule(tower, text_head, image_model, prep)
    text_spec = tower.signatures["serving_default"].structured_input_signature[1]
    specs = {name: tf.TensorSpec(s.shape, s.dtype, name=name) for name, s in text_spec.items()}
    signatures: dict[str, Any] = {
        "serving_default": tf.function(lambda **kw: module.text(**kw), autograph=False).get_concrete_function(**specs),
        IMAGE_SIGNATURE: tf.function(module.image, input_signature=[IMAGE_INPUT], autograph=False),
    }
    if TOKENIZER_SIGNATURE in tower.signatures:
        definition = np.asarray(_tower_tokenizer(tower)(tf.zeros([1], tf.int64))).reshape(-1)[0]
        module.tokenizer_definition = tf.Variable(definition, dtype=tf.string, trainable=False)
        signatures[TOKENIZER_SIGNATURE] = tf.function(
            lambda rows: {TOKENIZER_OUTPUT: per_row(module.tokenizer_definition, rows)}, input_signature=[ROWS_SPEC]
        )
    return _save(module, signatures, path)


def _tower_tokenizer(tower: Any) -> Any:
    """rows -> the text tower's tokenizer definition, whether its signature takes `rows` (current exports) or no
    input (exports made before TF-Serving's batching rule was followed)."""
    signature = tower.signatures[TOKENIZER_SIGNATURE]
    takes_rows = bool(signature.structured_input_signature[1])
    return lambda rows: (signature(**{ROWS_INPUT: rows}) if takes_rows else signature())[TOKENIZER_OUTPUT]
