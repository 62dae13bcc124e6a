"""Batch-norm folding for serving: every Conv2D whose only consumer is a BatchNormalization becomes one Conv2D
with a bias (W' = W * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps)), the BN an Identity.

Inference gives the same numbers (to float rounding); the graph has about half the ops and a fifth of the
variables, so a deep network (DeepDanbooru: ~900 layers) exports, loads and runs faster. Pre-activation BNs (that
follow an activation, as in deepix's ResNetV2 blocks) are left as they are.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers


class FoldedBatchNorm(layers.Layer):
    """What is left of a folded BatchNormalization: its input, unchanged (it takes the BN's call arguments)."""

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        return inputs


def _producer(tensor: Any) -> Any:
    return tensor._keras_history.operation


def foldable_pairs(model: keras.Model) -> dict[str, str]:
    """BatchNormalization name -> the Conv2D it can be folded into."""
    consumers: dict[int, int] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                consumers[id(tensor)] = consumers.get(id(tensor), 0) + 1
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        (tensor,) = layer._inbound_nodes[0].input_tensors
        conv = _producer(tensor)
        if (
            isinstance(conv, layers.Conv2D)
            and consumers.get(id(tensor)) == 1
            and conv.activation is keras.activations.linear
            and layer.axis in (-1, [-1], [3], 3)
            and layer.scale
            and layer.center
            and len(conv._inbound_nodes) == 1
        ):
            pairs[layer.name] = conv.name
    return pairs


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """An inference-only copy of `model` with each foldable Conv2D + BatchNormalization merged."""
    pairs = foldable_pairs(model)
    convs = {conv: norm for norm, conv in pairs.items()}

    def clone(layer: Any) -> Any:
        if layer.name in pairs:
            return FoldedBatchNorm(name=layer.name)
        config = layer.get_config()
        if layer.name in convs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in folded.layers:
        original = model.get_layer(layer.name)
        if layer.name in pairs:
            continue
        if layer.name in convs:
            norm = model.get_layer(convs[layer.name])
            gamma, beta, mean, var = (np.asarray(w, dtype=np.float64) for w in norm.get_weights())
            kernel = np.asarray(original.get_weights()[0], dtype=np.float64)
            bias = np.asarray(original.get_weights()[1], np.float64) if original.use_bias else np.zeros_like(beta)
            scale = gamma / np.sqrt(var + norm.epsilon)
            layer.set_weights([(kernel * scale).astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)])
        elif original.weights:
            layer.set_weights(original.get_weights())
    return folded


def fold_tagger_family(encoder: keras.Model, tagger: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Folded (tagger, illust2vec) for export, folding the shared encoder once and re-attaching the tagger head."""
    from acg2vec_models.image.deepdanbooru import build_illust2vec, build_tagger

    folded = fold_batch_norms(encoder)
    folded_tagger = build_tagger(folded, tagger.outputs[0].shape[-1])
    for layer in folded_tagger.layers[len(folded.layers) :]:
        if layer.weights:
            layer.set_weights(tagger.get_layer(layer.name).get_weights())
    return folded_tagger, build_illust2vec(folded)
