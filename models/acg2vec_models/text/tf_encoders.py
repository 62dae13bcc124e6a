"""TensorFlow forward passes of sentence encoders, built from their weights (NumPy arrays), no PyTorch needed.

Each encoder maps (input_ids[N,L], attention_mask[N,L]) to vectors [N,D] exactly as the sentence-transformers
model does for the same ids (padding positions have mask 0 and do not change the result). They are tf.Modules,
so `export.py` saves their weights as SavedModel variables.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from acg2vec_models.text.use_m3_arch import BRANCH_DIM, ORDERS


def _layer_norm(x: tf.Tensor, gamma: tf.Variable, beta: tf.Variable, eps: float) -> tf.Tensor:
    mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + eps) * gamma + beta


def _variables(weights: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, tf.Variable]:
    return {
        k: tf.Variable(np.asarray(v, dtype=np.float32), trainable=False, name=(prefix + k).replace(".", "_"))
        for k, v in weights.items()
    }


class TextEncoder(tf.Module):
    """(input_ids, attention_mask) -> [N, D]; `dim` is D."""

    dim: int

    def __call__(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError


class UseM3TF(TextEncoder):
    """The multilingual USE network of use_m3.UseM3Encoder (weights: its state dict, as NumPy arrays)."""

    def __init__(self, weights: Mapping[str, np.ndarray], eps: float):
        super().__init__()
        self.w = _variables(weights)
        self.eps = eps
        self.dim = int(weights["pool.weight"].shape[0])

    def _linear(self, x: tf.Tensor, name: str, bias: bool = True) -> tf.Tensor:
        y = tf.matmul(x, self.w[f"{name}.weight"], transpose_b=True)
        return y + self.w[f"{name}.bias"] if bias else y

    @staticmethod
    def _windows(x: tf.Tensor, order: int, left: int) -> tf.Tensor:
        padded = tf.pad(x, [[0, 0], [left, order - 1 - left], [0, 0]])
        length = tf.shape(x)[1]
        return tf.concat([padded[:, k : k + length] for k in range(order)], axis=-1)

    def __call__(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        w = self.w
        mask = tf.cast(attention_mask, tf.float32)[..., None]
        emb = tf.gather(w["embedding.weight"], input_ids)
        x = _layer_norm(self._linear(emb, "proj"), w["proj_norm.weight"], w["proj_norm.bias"], self.eps) * mask
        parts = [emb]
        for i, (order, left) in enumerate(ORDERS):
            xs = x[..., i * BRANCH_DIM : (i + 1) * BRANCH_DIM]
            h = (tf.nn.relu(self._linear(self._windows(xs, order, left), f"conv1.{i}")) + xs) * mask
            parts.append(tf.nn.relu(self._linear(self._windows(h, order, left), f"conv2.{i}")) + h)
        feats = _layer_norm(tf.concat(parts, axis=-1), w["feature_norm.weight"], w["feature_norm.bias"], self.eps)
        lengths = tf.reduce_sum(mask, axis=1)
        summed = tf.reduce_sum(feats * mask, axis=1)
        pooled = (self._linear(summed, "pool", bias=False) + lengths * w["pool.bias"]) / tf.sqrt(lengths)
        y0 = tf.nn.relu(self._linear(pooled, "d0", bias=False))
        y1 = tf.nn.relu(self._linear(pooled, "p1", bias=False) + self._linear(y0, "d1", bias=False))
        y2 = tf.nn.relu(self._linear(y1, "d2", bias=False))
        z = tf.tanh(self._linear(y1, "p3", bias=False) + self._linear(y2, "d3", bias=False))
        return z * tf.math.rsqrt(tf.maximum(tf.reduce_sum(z * z, axis=-1, keepdims=True), self.eps))


_ACTIVATIONS = {
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: tf.nn.gelu(x, approximate=True),
    "relu": tf.nn.relu,
    "silu": tf.nn.silu,
    "swish": tf.nn.silu,
    "tanh": tf.tanh,
}


@dataclass(frozen=True)
class BertConfig:
    """The fields of a transformers config.json that the forward pass needs."""

    layers: int
    heads: int
    hidden: int
    activation: str
    eps: float
    position_offset: int  # RoBERTa family: positions start after the padding index and skip padding
    type_vocab_size: int

    @classmethod
    def from_json(cls, config: Mapping[str, object]) -> BertConfig:
        model_type = str(config.get("model_type", ""))
        if model_type not in BERT_FAMILY:
            raise ValueError(
                f"model_type '{model_type}' is not supported; the importer handles {', '.join(sorted(BERT_FAMILY))}"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"position_embedding_type '{config['position_embedding_type']}' is not supported")
        activation = str(config.get("hidden_act", "gelu"))
        if activation not in _ACTIVATIONS:
            raise ValueError(f"hidden_act '{activation}' is not supported ({', '.join(_ACTIVATIONS)})")
        roberta = model_type in ("roberta", "xlm-roberta", "camembert")
        return cls(
            layers=int(config["num_hidden_layers"]),  # type: ignore[call-overload]
            heads=int(config["num_attention_heads"]),  # type: ignore[call-overload]
            hidden=int(config["hidden_size"]),  # type: ignore[call-overload]
            activation=activation,
            eps=float(config.get("layer_norm_eps", 1e-12)),  # type: ignore[arg-type]
            position_offset=int(config.get("pad_token_id", 1)) + 1 if roberta else 0,  # type: ignore[call-overload]
            type_vocab_size=int(config.get("type_vocab_size", 0)),  # type: ignore[call-overload]
        )


BERT_FAMILY = {"bert", "roberta", "xlm-roberta", "camembert"}
_PREFIXES = ("bert.", "roberta.", "model.", "0.auto_model.")


def strip_prefixes(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checkpoint names without a wrapper prefix ('bert.embeddings...' -> 'embeddings...')."""
    out = {}
    for key, value in weights.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix) and (key[len(prefix) :].startswith(("embeddings.", "encoder."))):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


class BertTF(TextEncoder):
    """BERT / RoBERTa / XLM-R encoder, then sentence-transformers' pooling, Dense layers and normalisation."""

    def __init__(
        self,
        config: BertConfig,
        weights: Mapping[str, np.ndarray],
        pooling: Sequence[str],
        dense: Sequence[tuple[Mapping[str, np.ndarray], str]] = (),
        normalize: bool = False,
    ):
        super().__init__()
        self.config = config
        needed = {k: v for k, v in strip_prefixes(weights).items() if k.startswith(("embeddings.", "encoder."))}
        needed.pop("embeddings.position_ids", None)
        self.w = _variables(needed)
        for mode in pooling:
            if mode not in ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken", "weightedmean"):
                raise ValueError(f"pooling mode '{mode}' is not supported")
        self.pooling = list(pooling)
        self.dense = [(_variables(w, f"dense{i}_"), act) for i, (w, act) in enumerate(dense)]
        for _, act in dense:
            if act not in _DENSE_ACTIVATIONS:
                raise ValueError(f"Dense activation '{act}' is not supported ({', '.join(_DENSE_ACTIVATIONS)})")
        self.normalize = normalize
        dim = config.hidden * len(self.pooling)
        for w, _ in dense:
            dim = int(w["linear.weight"].shape[0])
        self.dim = dim

    def _dense(self, x: tf.Tensor, name: str) -> tf.Tensor:
        return tf.matmul(x, self.w[f"{name}.weight"], transpose_b=True) + self.w[f"{name}.bias"]

    def _norm(self, x: tf.Tensor, name: str) -> tf.Tensor:
        return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.config.eps)

    def token_embeddings(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        c, w = self.config, self.w
        mask = tf.cast(attention_mask, tf.int32)
        if c.position_offset:
            positions = tf.cumsum(mask, axis=1) * mask + c.position_offset - 1
        else:
            positions = tf.broadcast_to(tf.range(tf.shape(input_ids)[1])[None, :], tf.shape(input_ids))
        x = tf.gather(w["embeddings.word_embeddings.weight"], input_ids)
        x += tf.gather(w["embeddings.position_embeddings.weight"], positions)
        if "embeddings.token_type_embeddings.weight" in w:
            x += w["embeddings.token_type_embeddings.weight"][0]  # one segment: token type 0 everywhere
        x = self._norm(x, "embeddings.LayerNorm")
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        head_dim = c.hidden // c.heads
        bias = (1.0 - tf.cast(mask, tf.float32))[:, None, None, :] * tf.float32.min  # [N,1,1,L]

        def heads(t: tf.Tensor) -> tf.Tensor:
            return tf.transpose(tf.reshape(t, [batch, length, c.heads, head_dim]), [0, 2, 1, 3])

        act = _ACTIVATIONS[c.activation]
        for i in range(c.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (heads(self._dense(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
            scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(head_dim) + bias
            context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
            context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch, length, c.hidden])
            x = self._norm(self._dense(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            hidden = act(self._dense(x, p + "intermediate.dense"))
            x = self._norm(self._dense(hidden, p + "output.dense") + x, p + "output.LayerNorm")
        return x

    def __call__(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        tokens = self.token_embeddings(input_ids, attention_mask)
        mask = tf.cast(attention_mask, tf.float32)[..., None]
        count = tf.maximum(tf.reduce_sum(mask, axis=1), 1e-9)
        outputs = []
        for mode in self.pooling:
            if mode == "cls":
                outputs.append(tokens[:, 0])
            elif mode == "max":
                outputs.append(tf.reduce_max(tf.where(mask > 0, tokens, tf.float32.min), axis=1))
            elif mode == "mean":
                outputs.append(tf.reduce_sum(tokens * mask, axis=1) / count)
            elif mode == "mean_sqrt_len_tokens":
                outputs.append(tf.reduce_sum(tokens * mask, axis=1) / tf.sqrt(count))
            elif mode == "weightedmean":
                weights = mask * tf.cast(tf.range(1, tf.shape(tokens)[1] + 1), tf.float32)[None, :, None]
                total = tf.maximum(tf.reduce_sum(weights, axis=1), 1e-9)
                outputs.append(tf.reduce_sum(tokens * weights, axis=1) / total)
            else:  # lasttoken (right padding: the last position with mask 1)
                last = tf.cast(tf.reduce_sum(mask[..., 0], axis=1), tf.int32) - 1
                outputs.append(tf.gather(tokens, tf.maximum(last, 0), batch_dims=1))
        x = tf.concat(outputs, axis=-1)
        for w, act in self.dense:
            x = tf.matmul(x, w["linear.weight"], transpose_b=True)
            if "linear.bias" in w:
                x += w["linear.bias"]
            x = _DENSE_ACTIVATIONS[act](x)
        if self.normalize:
            x = tf.math.l2_normalize(x, axis=-1, epsilon=1e-24)
        return x


_DENSE_ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": tf.tanh,
    "torch.nn.modules.linear.Identity": tf.identity,
    "torch.nn.modules.activation.ReLU": tf.nn.relu,
    "torch.nn.modules.activation.GELU": lambda x: tf.nn.gelu(x, approximate=False),
    "torch.nn.modules.activation.Sigmoid": tf.sigmoid,
    "torch.nn.modules.activation.SiLU": tf.nn.silu,
}
