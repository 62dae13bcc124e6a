"""Writes a token-id text encoder as a SavedModel that carries its tokenizer (see repository.py, tokens.py).

serving_default(input_ids: int64[N,L], length: int64[N]) -> embedding: float32[N,D]
        (positions at or beyond a row's length are padding, whatever their ids hold: see tokens.py)
tokenizer(rows: int64[N]) -> tokenizer_json: string[N]   (Hugging Face tokenizers definition, truncation +
        padding set, once per row: TF-Serving's batching needs an input and the batch dimension, repository.py)
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from acg2vec_models.export import ROWS_SPEC, _write, per_row
from acg2vec_models.text.tf_encoders import TextEncoder
from acg2vec_models.text.tokens import IDS_INPUT, LENGTH_INPUT, TOKENIZER_OUTPUT, TOKENIZER_SIGNATURE

TOKEN_INPUTS = [
    tf.TensorSpec([None, None], tf.int64, name=IDS_INPUT),
    tf.TensorSpec([None], tf.int64, name=LENGTH_INPUT),
]


class _TokenTextModule(tf.Module):
    def __init__(self, encoder: TextEncoder, tokenizer_json: str):
        super().__init__()
        self.encoder = encoder
        # a variable, not a graph constant: saved_model.pb stays small (it is parsed for every GetModelMetadata)
        self.tokenizer_definition = tf.Variable(tokenizer_json, dtype=tf.string, trainable=False)

    @tf.function(input_signature=TOKEN_INPUTS)
    def encode(self, input_ids: tf.Tensor, length: tf.Tensor) -> dict[str, tf.Tensor]:
        mask = tf.sequence_mask(length, tf.shape(input_ids)[1], dtype=tf.int64)
        return {"embedding": self.encoder(input_ids, mask)}

    @tf.function(input_signature=[ROWS_SPEC])
    def tokenizer(self, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        return {TOKENIZER_OUTPUT: per_row(self.tokenizer_definition, rows)}


def export_token_text_model(encoder: TextEncoder, tokenizer_json: str, path: Path) -> Path:
    module = _TokenTextModule(encoder, tokenizer_json)
    return _write(module, {"serving_default": module.encode, TOKENIZER_SIGNATURE: module.tokenizer}, path)
