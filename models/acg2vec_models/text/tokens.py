"""Tokenising outside the graph for text models that take token ids (TF core has no SentencePiece/WordPiece op).

Such a SavedModel carries its tokenizer: signature `tokenizer(rows)` returns `tokenizer_json` (once per row of
`rows`, as TF-Serving's batching wants: see repository.py), a Hugging Face
`tokenizers` definition with truncation and padding set, so a server needs nothing but the model (also from a
remote TF-Serving) to turn texts into `input_ids` [N, L] (right-padded) and `length` [N] (real tokens per row).
Lengths, not an attention mask: TF-Serving's batching pads [N, L] inputs of different requests with the
*first value* of each tensor (`pad_variable_length_inputs`), which would turn a mask's padding into ones;
a rank-1 `length` is never padded, and the graph derives the mask from it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_SIGNATURE = "tokenizer"
TOKENIZER_OUTPUT = "tokenizer_json"
IDS_INPUT = "input_ids"
LENGTH_INPUT = "length"


def serving_definition(tokenizer: Tokenizer, max_length: int, pad_id: int = 0, pad_token: str | None = None) -> str:
    """The tokenizer's JSON with truncation to max_length tokens and padding to the longest text of a batch."""
    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's tokenizer keeps its settings
    tok.enable_truncation(max_length)
    if pad_token is None:
        pad_token = tok.id_to_token(pad_id) or ""
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tok.to_str()


class TextTokenizer:
    """Texts -> {input_ids: int64 [N, L] right-padded, length: int64 [N]} with a model's tokenizer definition."""

    def __init__(self, definition: str):
        self._tokenizer = Tokenizer.from_str(definition)
        if self._tokenizer.padding is None:
            self._tokenizer.enable_padding()

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts))
        return {
            IDS_INPUT: np.array([e.ids for e in encodings], dtype=np.int64),
            LENGTH_INPUT: np.array([sum(e.attention_mask) for e in encodings], dtype=np.int64),
        }
