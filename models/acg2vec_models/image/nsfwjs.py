"""nsfwjs (npm, MIT) models converted to Keras 3 by our own loader.

The npm package bundles each TF.js layers model as JavaScript: `models/<name>/model.min.js` exports
`{modelTopology, weightsManifest}` (a Keras 2.2 functional model config) and every
`group1-shard<i>of<n>.min.js` exports one base64 string, a shard of uint8-quantised weights
(`value = q * scale + min`). We fetch the pinned package from the npm registry over HTTPS (integrity checked; no npm),
read the literal each bundle exports in Python (`js_bundle`; no Node.js), dequantise the weights and rebuild the
layers in Keras 3. The classes are Drawing, Hentai, Neutral, Porn and
Sexy; the models take RGB / 255, stretched to 224 (MobileNetV2) or 299 (InceptionV3).
"""

from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from acg2vec_models.image import js_bundle
from acg2vec_models.preprocessing import ImagePreprocessing
from acg2vec_models.registries import npm

PACKAGE = "nsfwjs"
VERSION = "4.4.0"
#: The registry's integrity of nsfwjs-4.4.0.tgz (`dist.integrity` of https://registry.npmjs.org/nsfwjs/4.4.0).
INTEGRITY = "sha512-krC1fgeTLXtZwgdpKJ0jm7hqv0gTSRQQRL+FhOaxaJ9Wj92t42BO3csO2odwgTAgZgf2RvkwPtp0R8Aa7dc+MA=="
CLASSES: tuple[str, ...] = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")
INPUT_SIZES = {"mobilenet_v2": 224, "inception_v3": 299}
#: The last layer of the convolutional base (pooled, it is the backbone's feature vector).
BASE_OUTPUTS = {"mobilenet_v2": "out_relu", "inception_v3": "mixed10"}


def preprocessing(name: str) -> ImagePreprocessing:
    """nsfwjs divides by 255 and resizes bilinearly to a square, ignoring the aspect ratio."""
    return ImagePreprocessing(size=INPUT_SIZES[name], resize="stretch", offset=0.0, scale=255.0)


def default_cache_dir() -> Path:
    return Path(".cache") / "packages" / "npm"


def fetch(cache_dir: Path | None = None) -> Path:
    """Downloads the pinned nsfwjs tarball from the npm registry once, checks its integrity, unpacks it; returns the
    folder holding `models/<name>/`."""
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    target = cache_dir / f"{PACKAGE}-{VERSION}"
    models = target / "package" / "dist" / "models"
    if (target / ".complete").exists():
        return models
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        npm.unpack(npm.fetch_tarball(PACKAGE, VERSION, INTEGRITY, Path(tmp)), target)
    (target / ".complete").write_text(INTEGRITY)
    return models


@dataclass
class TfjsModel:
    topology: dict[str, Any]
    weights: dict[str, np.ndarray]


def read_bundle(model_dir: Path) -> TfjsModel:
    """Reads a model folder's bundles (model.min.js and its weight shards) and decodes the (quantised) weights."""
    bundle = js_bundle.exported_value((model_dir / "model.min.js").read_text(encoding="utf-8"))
    manifest = bundle["weightsManifest"]
    shards = [
        js_bundle.exported_value((model_dir / f"{path}.min.js").read_text(encoding="utf-8"))
        for group in manifest
        for path in group["paths"]
    ]
    data = b"".join(base64.b64decode(shard, validate=True) for shard in shards)
    weights, offset = {}, 0
    for group in manifest:
        for spec in group["weights"]:
            weights[spec["name"]], offset = _decode_weight(spec, data, offset)
    if offset != len(data):
        raise ValueError(f"{model_dir}: the manifest uses {offset} of {len(data)} weight bytes")
    return TfjsModel(bundle["modelTopology"], weights)


def _decode_weight(spec: dict[str, Any], data: bytes, offset: int) -> tuple[np.ndarray, int]:
    shape = tuple(spec["shape"])
    count = int(np.prod(shape)) if shape else 1
    quant = spec.get("quantization")
    if quant:
        dtype = np.dtype(quant["dtype"])
        raw = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        if "scale" not in quant:
            raise ValueError(f"{spec['name']}: only affine (min/scale) quantisation is supported")
        values = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
    else:
        dtype = np.dtype(spec["dtype"])
        values = np.frombuffer(data, dtype=dtype, count=count, offset=offset).astype(np.float32)
    return values.reshape(shape), offset + count * dtype.itemsize


# ------------------------------------------------------------------------------------------ Keras 2 config
def _layer(class_name: str, config: dict[str, Any]) -> layers.Layer:
    """A Keras 3 layer from a Keras 2.2 layer config (only the layer kinds these models use)."""
    c = {k: v for k, v in config.items() if k in _KEEP.get(class_name, ())}
    name = config["name"]
    if class_name == "Activation":
        return layers.Activation(config["activation"], name=name)
    if class_name == "ReLU":
        return layers.ReLU(max_value=config.get("max_value"), name=name)
    factory = _FACTORIES.get(class_name)
    if factory is None:
        raise ValueError(f"layer kind {class_name} ({name}) is not supported by the nsfwjs loader")
    return factory(name=name, **c)


_KEEP = {
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "activation", "use_bias"),
    "DepthwiseConv2D": ("kernel_size", "strides", "padding", "depth_multiplier", "activation", "use_bias"),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale"),
    "Dense": ("units", "activation", "use_bias"),
    "ZeroPadding2D": ("padding",),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "AveragePooling2D": ("pool_size", "strides", "padding"),
    "Concatenate": ("axis",),
    "Dropout": ("rate",),
}
_FACTORIES = {
    "Conv2D": layers.Conv2D,
    "DepthwiseConv2D": layers.DepthwiseConv2D,
    "BatchNormalization": layers.BatchNormalization,
    "Dense": layers.Dense,
    "ZeroPadding2D": layers.ZeroPadding2D,
    "MaxPooling2D": layers.MaxPooling2D,
    "AveragePooling2D": layers.AveragePooling2D,
    "Concatenate": layers.Concatenate,
    "Dropout": layers.Dropout,
    "Flatten": layers.Flatten,
    "Add": layers.Add,
}
_WEIGHT_ORDER = {
    "Conv2D": ("kernel", "bias"),
    "DepthwiseConv2D": ("depthwise_kernel", "bias"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "Dense": ("kernel", "bias"),
}


def build_keras(model: TfjsModel, extra_outputs: tuple[str, ...] = ()) -> keras.Model:
    """Rebuilds the functional model and loads its weights. Outputs: the model's own outputs, then the
    layers named in `extra_outputs` (e.g. the convolutional base's last layer)."""
    config = model.topology["model_config"]["config"]
    tensors: dict[str, keras.KerasTensor] = {}
    inputs = []
    for spec in config["layers"]:
        cfg, kind, name = spec["config"], spec["class_name"], spec["name"]
        if kind == "InputLayer":
            tensors[name] = keras.Input(tuple(cfg["batch_input_shape"][1:]), name=name)
            inputs.append(tensors[name])
            continue
        layer = _layer(kind, cfg)
        if len(spec["inbound_nodes"]) != 1:
            raise ValueError(f"{name}: shared layers are not supported")
        args = [tensors[inbound[0]] for inbound in spec["inbound_nodes"][0]]
        tensors[name] = layer(args if kind in ("Add", "Concatenate") else args[0])
        if kind in _WEIGHT_ORDER:
            present = [w for w in _WEIGHT_ORDER[kind] if f"{name}/{w}" in model.weights]
            layer.set_weights([model.weights.pop(f"{name}/{w}") for w in present])
    if model.weights:
        raise ValueError(f"weights left unused: {sorted(model.weights)[:5]}")
    outputs = [tensors[o[0]] for o in config["output_layers"]] + [tensors[n] for n in extra_outputs]
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=config["name"])


def load_model(name: str, cache_dir: Path | None = None) -> keras.Model:
    """nsfwjs model `name` (mobilenet_v2 or inception_v3) as Keras: outputs [class probabilities, base map]."""
    models = fetch(cache_dir)
    tfjs = read_bundle(models / name)
    return build_keras(tfjs, extra_outputs=(BASE_OUTPUTS[name],))
