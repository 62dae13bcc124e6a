"""The retrieval descriptor on a backbone: GeM-pooled maps of several layers, each part L2-normalised; optionally
(`mirror_average`) the pooled maps are summed with the mirrored image's first, an exact left-right invariance at
twice the cost. Changing this file changes the cached features (see defaults.py), so it holds only what the
features depend on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable("acg2vec")
class GeMPool(layers.Layer):
    """Generalised-mean pooling over the spatial axes of a non-negative map (p=1 is average pooling)."""

    def __init__(self, p: float = 3.0, **kwargs):
        super().__init__(**kwargs)
        self.p = p

    def call(self, x):
        x = ops.maximum(x, 1e-6)
        return ops.power(ops.mean(ops.power(x, self.p), axis=(1, 2)), 1.0 / self.p)

    def get_config(self):
        return {**super().get_config(), "p": self.p}


@keras.saving.register_keras_serializable("acg2vec")
class MirrorImage(layers.Layer):
    """Flips a batch of images left-right."""

    def call(self, x):
        return ops.flip(x, axis=2)


@keras.saving.register_keras_serializable("acg2vec")
class PartNormalise(layers.Layer):
    """L2-normalises each consecutive part of the last axis (one part per pooled layer) and concatenates."""

    def __init__(self, sizes: Sequence[int], **kwargs):
        super().__init__(**kwargs)
        self.sizes = list(sizes)

    def call(self, x):
        parts, start = [], 0
        for size in self.sizes:
            part = x[:, start : start + size]
            parts.append(part / ops.maximum(ops.norm(part, axis=-1, keepdims=True), 1e-12))
            start += size
        return ops.concatenate(parts, axis=-1)

    def get_config(self):
        return {**super().get_config(), "sizes": self.sizes}


@dataclass(frozen=True)
class DescriptorSpec:
    """Which backbone maps are pooled into the retrieval descriptor, and how."""

    taps: tuple[str, ...] = ("head", "block14", "block10")
    gem_p: float = 3.0
    mirror_average: bool = False


def raw_descriptor(maps: dict[str, keras.KerasTensor], spec: DescriptorSpec) -> keras.KerasTensor:
    """Concatenated GeM-pooled maps (block outputs have no activation: their positive part is pooled)."""
    pooled = [GeMPool(spec.gem_p)(layers.ReLU()(maps[tap])) for tap in spec.taps]
    return layers.Concatenate()(pooled) if len(pooled) > 1 else pooled[0]


def descriptor_model(backbone: keras.Model, spec: DescriptorSpec) -> keras.Model:
    """Normalised image -> descriptor (each pooled part L2-normalised; mirror-averaged if the spec says so)."""
    image = keras.Input(backbone.input_shape[1:], name="image")
    desc = raw_descriptor(backbone(image), spec)
    if spec.mirror_average:
        desc = layers.Add()([desc, raw_descriptor(backbone(MirrorImage()(image)), spec)])
    sizes = [int(backbone.output[tap].shape[-1]) for tap in spec.taps]
    return keras.Model(image, PartNormalise(sizes)(desc), name="descriptor")


def feature_model(backbone: keras.Model, spec: DescriptorSpec) -> keras.Model:
    """Normalised image -> {"descriptor": retrieval descriptor, "pooled": the head's average pool (tag head)}."""
    image = keras.Input(backbone.input_shape[1:], name="image")
    pooled = layers.GlobalAveragePooling2D()(backbone(image)["head"])
    return keras.Model(image, {"descriptor": descriptor_model(backbone, spec)(image), "pooled": pooled})
