"""DeepDanbooru `resnet_custom_v3` (and its v1/v2/v4 siblings) in Keras 3, with a width factor for small copies.

Faithful to KichangKim/DeepDanbooru `model/resnet.py` + `model/layers`, so that published weights map onto it
layer for layer (acg2vec_models.importers.deepdanbooru):
- stem: 7x7/2 conv (filters[0] // 4) + BN + ReLU, 3x3/2 max pool ("same");
- each stage: one increasing bottleneck block (1x1 conv, 3x3 conv with stride 2 from stage 2 on, 1x1 conv
  whose BN starts at gamma 0; shortcut 1x1 conv + BN with the same stride; add; ReLU), then `repeats[i]`
  identity bottleneck blocks; inner width filters // 4; convs without bias, he_normal, "same" padding;
- tagger head: 1x1 conv to one channel per tag (no bias, no BN), global average pooling, sigmoid.
Layers carry the names Keras gives them in a fresh session (conv2d, batch_normalization_7, add_43, ...), so the
original project's layer names mean the same here.

illust2vec (ACG2vec) is the output of `add_43` (the 13th block of the 4th stage, before its ReLU) with global
average pooling: 1024-d at full width. deepix (ACG2vec's pix2score) puts ten pre-activation ResNetV2 blocks
(Keras `stack2`, 512 filters, output 2048 channels at full width) on that cut, global average pooling and
softmax heads over the popularity bins.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import keras
from keras import layers

from acg2vec_models.image.popularity_bins import BOOKMARK_EDGES, SANITY_EDGES, VIEW_EDGES

#: DeepDanbooru's model family: project.json "model" -> (filters, repeats).
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "resnet_custom_v1": ((256, 512, 1024, 2048, 4096), (2, 7, 35, 2, 2)),
    "resnet_custom_v2": ((256, 512, 1024, 1024, 1024, 2048), (2, 7, 40, 16, 16, 6)),
    "resnet_custom_v3": ((256, 512, 1024, 1024, 2048, 4096), (2, 7, 19, 19, 2, 2)),
    "resnet_custom_v4": ((256, 512, 1024, 1024, 1024, 2048), (2, 7, 10, 10, 10, 2)),
}
FILTERS_V3, REPEATS_V3 = VARIANTS["resnet_custom_v3"]
#: illust2vec cut: stage 3 (0-based, the 4th), block 12 of it (0 = the increasing block) -> `add_43` in v3.
ILLUST2VEC_STAGE = 3
ILLUST2VEC_BLOCK = 12
#: deepix (pix2score): ResNetV2 stack on the cut.
DEEPIX_FILTERS = 512
DEEPIX_BLOCKS = 10


@dataclass(frozen=True)
class ResNetSpec:
    """Shape of a resnet_custom-style network; width scales every filter count."""

    input_size: int = 512
    width: float = 1.0
    filters: tuple[int, ...] = FILTERS_V3
    repeats: tuple[int, ...] = REPEATS_V3

    @classmethod
    def variant(cls, name: str, input_size: int = 512, width: float = 1.0) -> ResNetSpec:
        if name not in VARIANTS:
            raise ValueError(f"unknown DeepDanbooru model {name!r}; known: {', '.join(VARIANTS)}")
        filters, repeats = VARIANTS[name]
        return cls(input_size=input_size, width=width, filters=filters, repeats=repeats)

    def stage_filters(self) -> list[int]:
        return [max(8, round(f * self.width)) for f in self.filters]

    def illust2vec_block(self) -> tuple[int, int]:
        """(stage, block) of the illust2vec cut; the stage's last block when it has fewer than 13."""
        return ILLUST2VEC_STAGE, min(ILLUST2VEC_BLOCK, self.repeats[ILLUST2VEC_STAGE])

    def illust2vec_layer(self) -> str:
        """Name of the Add layer illust2vec pools (`add_43` for resnet_custom_v3)."""
        stage, block = self.illust2vec_block()
        index = sum(1 + r for r in self.repeats[:stage]) + block
        return "add" if index == 0 else f"add_{index}"


class _Names:
    """Keras's automatic layer names (conv2d, conv2d_1, ...) as a fresh session would give them."""

    def __init__(self, folded: bool = False) -> None:
        self._seen: Counter[str] = Counter()
        self.folded = folded

    def __call__(self, base: str) -> str:
        n = self._seen[base]
        self._seen[base] += 1
        return base if n == 0 else f"{base}_{n}"


def _conv(x: keras.KerasTensor, names: _Names, filters: int, kernel: int, strides: int = 1) -> keras.KerasTensor:
    return layers.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False, kernel_initializer="he_normal",
        name=names("conv2d"),
    )(x)  # fmt: skip


def _conv_bn(
    x: keras.KerasTensor, names: _Names, filters: int, kernel: int, strides: int = 1, zero_gamma: bool = False
) -> keras.KerasTensor:
    if names.folded:  # serving copy: the BN folded into the conv's kernel and bias (image/folding.py)
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", name=names("conv2d"))(x)
    x = _conv(x, names, filters, kernel, strides)
    return layers.BatchNormalization(
        gamma_initializer="zeros" if zero_gamma else "ones", name=names("batch_normalization")
    )(x)


def _relu(x: keras.KerasTensor, names: _Names) -> keras.KerasTensor:
    return layers.Activation("relu", name=names("activation"))(x)


def _bottleneck(
    x: keras.KerasTensor, names: _Names, filters: int, strides: int, project: bool
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """One block; returns (sum before the ReLU, block output)."""
    inner = filters // 4
    y = _relu(_conv_bn(x, names, inner, 1), names)
    y = _relu(_conv_bn(y, names, inner, 3, strides=strides), names)
    y = _conv_bn(y, names, filters, 1, zero_gamma=True)
    shortcut = _conv_bn(x, names, filters, 1, strides=strides) if project else x
    added = layers.Add(name=names("add"))([y, shortcut])
    return added, _relu(added, names)


def build_encoder(spec: ResNetSpec, name: str = "deepdanbooru_encoder", folded: bool = False) -> keras.Model:
    """Image [0,1] RGB -> [last stage output, illust2vec cut (the Add output, before its ReLU)].

    folded=True builds the serving copy: each conv + BN is one conv with a bias (same names, no BN layers)."""
    names = _Names(folded)
    filters = spec.stage_filters()
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="input_1")
    x = _relu(_conv_bn(inputs, names, filters[0] // 4, 7, strides=2), names)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name=names("max_pooling2d"))(x)
    cut_stage, cut_block = spec.illust2vec_block()
    cut = None
    for i, (f, r) in enumerate(zip(filters, spec.repeats, strict=True)):
        for block in range(r + 1):
            added, x = _bottleneck(x, names, f, strides=2 if i > 0 and block == 0 else 1, project=block == 0)
            if (i, block) == (cut_stage, cut_block):
                cut = added
    assert cut is not None, "illust2vec cut outside the network"
    return keras.Model(inputs, [x, cut], name=name)


def build_tagger(encoder: keras.Model, num_tags: int, name: str = "tagger") -> keras.Model:
    """DeepDanbooru's head: 1x1 conv to the tags (no bias, no BN), global average pooling, sigmoid."""
    convs = sum(isinstance(layer, layers.Conv2D) for layer in encoder.layers)
    x = layers.Conv2D(
        num_tags, 1, padding="same", use_bias=False, kernel_initializer="he_normal", name=f"conv2d_{convs}"
    )(encoder.outputs[0])
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    scores = layers.Activation("sigmoid", dtype="float32", name="scores")(x)
    return keras.Model(encoder.inputs[0], scores, name=name)


def build_illust2vec(encoder: keras.Model, name: str = "illust2vec") -> keras.Model:
    pooled = layers.GlobalAveragePooling2D(name="illust2vec_pool")(encoder.outputs[1])
    return keras.Model(encoder.inputs[0], pooled, name=name)


def _preact_block(
    x: keras.KerasTensor, filters: int, name: str, conv_shortcut: bool = False, stride: int = 1
) -> keras.KerasTensor:
    """Keras ResNetV2 `block2` (pre-activation bottleneck), as ACG2vec's deepix uses it."""
    preact = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_preact_bn")(x)
    preact = layers.Activation("relu", name=f"{name}_preact_relu")(preact)
    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(preact)
    else:
        shortcut = layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x) if stride > 1 else x
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_1_conv")(preact)
    y = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.ZeroPadding2D(((1, 1), (1, 1)), name=f"{name}_2_pad")(y)
    y = layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_2_conv")(y)
    y = layers.BatchNormalization(epsilon=1.001e-5, name=f"{name}_2_bn")(y)
    y = layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    return layers.Add(name=f"{name}_out")([shortcut, y])


DEEPIX_HEADS: dict[str, int] = {
    "bookmarks": len(BOOKMARK_EDGES) + 1,
    "views": len(VIEW_EDGES) + 1,
    "sanity": len(SANITY_EDGES) + 1,
}


def build_deepix_head(
    cut: keras.KerasTensor, width: float = 1.0, blocks: int = DEEPIX_BLOCKS
) -> dict[str, keras.KerasTensor]:
    """Extra residual stage on the encoder cut + softmax heads (bookmarks 15, views 15, sanity 5 bins)."""
    filters = max(4, round(DEEPIX_FILTERS * width))
    y = _preact_block(cut, filters, "deepix_conv5_block1", conv_shortcut=True)
    for b in range(2, blocks + 1):
        y = _preact_block(y, filters, f"deepix_conv5_block{b}")
    y = layers.GlobalAveragePooling2D(name="deepix_avg_pool")(y)
    return {k: layers.Dense(n, activation="softmax", dtype="float32", name=k)(y) for k, n in DEEPIX_HEADS.items()}


def build_deepix(encoder: keras.Model, width: float = 1.0, name: str = "deepix") -> keras.Model:
    return keras.Model(encoder.inputs[0], build_deepix_head(encoder.outputs[1], width), name=name)


@dataclass
class ImageModels:
    """The image family sharing one encoder: tagger (all stages), illust2vec (cut at add_43), deepix."""

    encoder: keras.Model
    tagger: keras.Model
    illust2vec: keras.Model
    deepix: keras.Model


def build_image_models(spec: ResNetSpec, num_tags: int) -> ImageModels:
    """Builds tagger, illust2vec and deepix on one shared encoder (weights shared, not copied)."""
    encoder = build_encoder(spec)
    return ImageModels(
        encoder=encoder,
        tagger=build_tagger(encoder, num_tags),
        illust2vec=build_illust2vec(encoder),
        deepix=build_deepix(encoder, spec.width),
    )
