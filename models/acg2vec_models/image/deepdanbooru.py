"""DeepDanbooru `resnet_custom_v3` in Keras 3, with a width factor so that tests can build small copies.

Stem: 7x7/2 conv (filters[0]/4) + 3x3/2 max pool; six bottleneck stages (an increasing block with a
1x1 projection shortcut, stride 2 from stage 2 on, then `repeats[i]` identity blocks); head: 1x1 conv
to one channel per tag, global average pooling, sigmoid. illust2vec is the output of stage 4
(1024 channels at full width) followed by global average pooling.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from acg2vec_models.image.popularity_bins import BOOKMARK_EDGES, SANITY_EDGES, VIEW_EDGES

FILTERS_V3: tuple[int, ...] = (256, 512, 1024, 1024, 2048, 4096)
REPEATS_V3: tuple[int, ...] = (2, 7, 19, 19, 2, 2)
#: Stage whose output illust2vec pools (0-based; the original's `add_43` at full size).
ILLUST2VEC_STAGE = 3


@dataclass(frozen=True)
class ResNetSpec:
    """Shape of a resnet_custom_v3-style network; width scales every filter count."""

    input_size: int = 512
    width: float = 1.0
    filters: tuple[int, ...] = FILTERS_V3
    repeats: tuple[int, ...] = REPEATS_V3

    def stage_filters(self) -> list[int]:
        return [max(8, round(f * self.width)) for f in self.filters]


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, strides: int = 1, relu: bool = True, zero_gamma: bool = False
) -> keras.KerasTensor:
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal")(
        x
    )
    x = layers.BatchNormalization(gamma_initializer="zeros" if zero_gamma else "ones")(x)
    return layers.ReLU()(x) if relu else x


def _bottleneck(x: keras.KerasTensor, filters: int, strides: int, project: bool) -> keras.KerasTensor:
    inner = max(4, filters // 4)
    y = _conv_bn(x, inner, 1)
    y = _conv_bn(y, inner, 3, strides=strides)
    y = _conv_bn(y, filters, 1, relu=False, zero_gamma=True)
    shortcut = _conv_bn(x, filters, 1, strides=strides, relu=False) if project else x
    return layers.ReLU()(layers.Add()([y, shortcut]))


def build_encoder(spec: ResNetSpec, name: str = "deepdanbooru_encoder") -> keras.Model:
    """Image [0,1] RGB -> list of stage outputs (one feature map per stage)."""
    filters = spec.stage_filters()
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    x = _conv_bn(inputs, max(4, filters[0] // 4), 7, strides=2)
    x = layers.MaxPool2D(3, strides=2, padding="same")(x)
    stages = []
    for i, (f, r) in enumerate(zip(filters, spec.repeats, strict=True)):
        x = _bottleneck(x, f, strides=2 if i > 0 else 1, project=True)
        for _ in range(r):
            x = _bottleneck(x, f, strides=1, project=False)
        stages.append(x)
    return keras.Model(inputs, stages, name=name)


@dataclass
class ImageModels:
    """The image family sharing one encoder: tagger (all stages), illust2vec (cut at a stage), deepix."""

    encoder: keras.Model
    tagger: keras.Model
    illust2vec: keras.Model
    deepix: keras.Model


def build_image_models(spec: ResNetSpec, num_tags: int) -> ImageModels:
    """Builds tagger, illust2vec and deepix on one shared encoder (weights shared, not copied)."""
    encoder = build_encoder(spec)
    x = layers.Conv2D(num_tags, 1, padding="same", use_bias=False, name="tag_logits")(encoder.outputs[-1])
    x = layers.BatchNormalization(name="tag_bn")(x)
    x = layers.GlobalAveragePooling2D()(x)
    scores = layers.Activation("sigmoid", dtype="float32", name="scores")(x)
    tagger = keras.Model(encoder.inputs, scores, name="tagger")

    stage = encoder.outputs[ILLUST2VEC_STAGE]
    illust2vec = keras.Model(encoder.inputs, layers.GlobalAveragePooling2D(name="illust2vec")(stage), name="illust2vec")

    filters = spec.stage_filters()[ILLUST2VEC_STAGE]
    y = _bottleneck(stage, filters, strides=2, project=True)
    y = _bottleneck(y, filters, strides=1, project=False)
    y = layers.GlobalAveragePooling2D()(y)
    heads = {
        "bookmarks": len(BOOKMARK_EDGES) + 1,
        "views": len(VIEW_EDGES) + 1,
        "sanity": len(SANITY_EDGES) + 1,
    }
    outputs = {k: layers.Dense(n, activation="softmax", dtype="float32", name=k)(y) for k, n in heads.items()}
    deepix = keras.Model(encoder.inputs, outputs, name="deepix")
    return ImageModels(encoder=encoder, tagger=tagger, illust2vec=illust2vec, deepix=deepix)
