"""Small models in the published formats the importers read, built the way their projects build them.

- DeepDanbooru: `create_resnet_custom_v3` (KichangKim/DeepDanbooru model/resnet.py + model/layers) written again
  with tf_keras (Keras 2, what DeepDanbooru used) at a width factor, saved as `model-resnet_custom_v3.h5` with
  project.json and tags.txt; `deepdanbooru_reference_input` is its `load_image_for_evaluate`.
- WD14: a Keras 2 SavedModel taking (448, 448, 3) BGR 0..255 with sigmoid outputs, beside selected_tags.csv;
  `wd14_reference_input` is SmilingWolf's wd-v1-4-tags preprocessing (Pillow + OpenCV semantics).
- ACG2vec: Keras 2 SavedModels whose input `b64_input_bytes` is URL-safe base64 of an encoded image, decoded,
  resized and scaled by a layer inside the model, as OysterQAQ/ACG2vec-model exported them for TF-Serving.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras
from PIL import Image

from acg2vec_models.image.deepdanbooru import VARIANTS
from acg2vec_models.vocab import DEEPDANBOORU_V3, WD14_SELECTED_TAGS

L = tf_keras.layers


# --- DeepDanbooru ------------------------------------------------------------------------------------------------
def _conv_bn(x, filters, kernel, strides=1, gamma="ones"):
    x = L.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal", use_bias=False)(x)
    return L.BatchNormalization(gamma_initializer=gamma)(x)


def _conv_bn_relu(x, filters, kernel, strides=1):
    return L.Activation("relu")(_conv_bn(x, filters, kernel, strides))


def _block(x, out, inter):
    c1 = _conv_bn_relu(x, inter, 1)
    c2 = _conv_bn_relu(c1, inter, 3)
    c3 = _conv_bn(c2, out, 1, gamma="zeros")
    return L.Activation("relu")(L.Add()([c3, x]))


def _increasing_block(x, out, inter, strides):
    c1 = _conv_bn_relu(x, inter, 1)
    c2 = _conv_bn_relu(c1, inter, 3, strides=strides)
    c3 = _conv_bn(c2, out, 1, gamma="zeros")
    shortcut = _conv_bn(x, out, 1, strides=strides)
    return L.Activation("relu")(L.Add()([c3, shortcut]))


def create_resnet_custom(x, output_dim: int, model_type: str, width: float):
    filters, repeats = VARIANTS[model_type]
    filters = [max(8, round(f * width)) for f in filters]
    x = _conv_bn_relu(x, filters[0] // 4, 7, strides=2)
    x = L.MaxPool2D(3, strides=2, padding="same")(x)
    for i, (f, r) in enumerate(zip(filters, repeats, strict=True)):
        x = _increasing_block(x, f, f // 4, strides=2 if i > 0 else 1)
        for _ in range(r):
            x = _block(x, f, f // 4)
    x = L.Conv2D(output_dim, 1, padding="same", kernel_initializer="he_normal", use_bias=False)(x)
    x = L.GlobalAveragePooling2D()(x)
    return L.Activation("sigmoid", dtype="float32")(x)


def build_deepdanbooru_project(
    folder: Path, size: int = 64, width: float = 1 / 32, model_type: str = "resnet_custom_v3", seed: int = 0
) -> tuple[Path, tf_keras.Model]:
    """A DeepDanbooru project folder with the real v3 vocabulary and a small model with random weights; returns
    the folder and the Keras 2 model it saved."""
    folder.mkdir(parents=True, exist_ok=True)
    tags = [t for t in DEEPDANBOORU_V3.read_text(encoding="utf-8").splitlines() if t.strip()]
    (folder / "tags.txt").write_text("\n".join(tags) + "\n", encoding="utf-8")
    (folder / "tags-character.txt").write_text("\n".join(t for t in tags if t == "hatsune_miku") + "\n")
    (folder / "project.json").write_text(
        json.dumps({"image_width": size, "image_height": size, "model": model_type, "minimum_tag_count": 20})
    )
    tf_keras.backend.clear_session()  # automatic names start at conv2d, add, ... as in DeepDanbooru's process
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input(shape=(size, size, 3), dtype=tf.float32)
    model = tf_keras.Model(inputs, create_resnet_custom(inputs, len(tags), model_type, width), name=model_type)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # trained-looking statistics, so that every weight matters to the output
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.2, 0.6, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)
            ])  # fmt: skip
    model.save(folder / f"model-{model_type}.h5", include_optimizer=False)
    return folder, model


def deepdanbooru_reference_input(encoded: bytes, size: int) -> np.ndarray:
    """DeepDanbooru's load_image_for_evaluate: decode_png(channels=3), tf.image.resize(AREA, keep aspect), then
    skimage's warp by the centring translation (bilinear, mode="edge"), / 255 -- the warp written with numpy."""
    image = tf.io.decode_png(encoded, channels=3)
    image = tf.image.resize(image, (size, size), method=tf.image.ResizeMethod.AREA, preserve_aspect_ratio=True)
    image = image.numpy().astype(np.float64)

    def place(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        pos = np.arange(size) - (size - n) / 2.0  # output pixel -> input coordinate
        lo = np.floor(pos).astype(int)
        frac = (pos - lo).reshape([-1 if d == axis else 1 for d in range(3)])
        first = np.take(a, np.clip(lo, 0, n - 1), axis=axis)
        second = np.take(a, np.clip(lo + 1, 0, n - 1), axis=axis)
        return (1 - frac) * first + frac * second

    return (place(place(image, 0), 1) / 255.0).astype(np.float32)


# --- WD14 --------------------------------------------------------------------------------------------------------
def build_wd14_model(folder: Path, size: int = 448, seed: int = 0) -> tuple[Path, tf_keras.Model]:
    """A Keras 2 SavedModel in WD14's interface (BGR 0..255 in, sigmoid per selected tag out) + selected_tags.csv."""
    rows = [r for r in WD14_SELECTED_TAGS.read_text(encoding="utf-8").splitlines()[1:] if r.split(",")[1:2] != [""]]
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(seed)
    inputs = tf_keras.Input(shape=(size, size, 3), name="input_1")
    x = L.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = L.AveragePooling2D(8)(x)
    x = L.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(len(rows), kernel_initializer=tf_keras.initializers.RandomNormal(stddev=3.0))(x)
    model = tf_keras.Model(inputs, L.Activation("sigmoid", name="predictions_sigmoid")(x))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(str(folder))  # Keras 2: a SavedModel folder, as the published wd-v1-4-*-tagger-v2 ones
    shutil.copy(WD14_SELECTED_TAGS, folder / "selected_tags.csv")
    return folder, model


def wd14_reference_input(encoded: bytes, size: int = 448) -> np.ndarray:
    """SmilingWolf's wd-v1-4-tags preprocessing: Pillow RGBA pasted on white, RGB -> BGR, make_square (pad with
    white to max(h, w, size), top/left = delta // 2), INTER_AREA down to size. Images here are at most twice the
    size in whole multiples, where INTER_AREA is OpenCV's integer box average (sum + half) // count."""
    image = Image.open(io.BytesIO(encoded)).convert("RGBA")
    canvas = Image.new("RGBA", image.size, "WHITE")
    canvas.paste(image, mask=image)
    bgr = np.asarray(canvas.convert("RGB"))[:, :, ::-1].astype(np.int64)
    h, w = bgr.shape[:2]
    side = max(h, w, size)
    top, left = (side - h) // 2, (side - w) // 2
    square = np.full((side, side, 3), 255, dtype=np.int64)
    square[top : top + h, left : left + w] = bgr
    if side > size:
        k = side // size
        assert k * size == side, "the reference handles whole multiples of the size only"
        square = (square.reshape(size, k, size, k, 3).sum(axis=(1, 3)) + k * k // 2) // (k * k)
    return square.astype(np.float32)


# --- ACG2vec -----------------------------------------------------------------------------------------------------
class Base64DecoderLayer(L.Layer):
    """ACG2vec's decoder layer: URL-safe base64 -> decode_image(channels=3) -> resize to target_size -> / 255."""

    def __init__(self, target_size, **kwargs):
        super().__init__(**kwargs)
        self.target_size = target_size

    def _one(self, b64: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(tf.io.decode_base64(b64), channels=3)
        image.set_shape((None, None, 3))
        return tf.cast(tf.image.resize(image, self.target_size), tf.float32) / 255

    def call(self, inputs):
        return tf.map_fn(self._one, inputs, fn_output_signature=tf.float32)


SPREAD = tf_keras.initializers.RandomNormal(stddev=3.0)  # outputs that differ visibly from image to image


def _acg2vec_trunk(size: int):
    image = tf_keras.Input((size, size, 3))
    x = L.Conv2D(8, 3, strides=2, activation="relu")(image)
    x = L.Conv2D(16, 3, strides=2, activation="relu")(x)
    return image, L.GlobalAveragePooling2D()(x)


def build_acg2vec_models(root: Path, size: int = 64, seed: int = 0) -> Path:
    """ACG2vec's TF-Serving folders: deepdanbooru (tags), img_semantics_feature_extract_model (vector),
    img_score_feature_extract_model (pix2score: bookmarks 15, views 15, sanity 5), each <name>/1/."""
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(seed)
    num_tags = len([t for t in DEEPDANBOORU_V3.read_text(encoding="utf-8").splitlines() if t.strip()])
    image, features = _acg2vec_trunk(size)
    tagger = tf_keras.Model(image, L.Dense(num_tags, activation="sigmoid", kernel_initializer=SPREAD)(features))
    image, features = _acg2vec_trunk(size)
    semantics = tf_keras.Model(image, features)
    image, features = _acg2vec_trunk(size)
    heads = [L.Dense(n, activation="softmax", kernel_initializer=SPREAD)(features) for n in (15, 15, 5)]
    pix2score = tf_keras.Model(image, heads, name="pix2score")
    for folder, inner in (
        ("deepdanbooru", tagger),
        ("img_semantics_feature_extract_model", semantics),
        ("img_score_feature_extract_model", pix2score),
    ):
        b64 = tf_keras.Input(shape=(), dtype=tf.string, name="b64_input_bytes")
        outer = tf_keras.Model(b64, inner(Base64DecoderLayer([size, size])(b64)))
        outer.save(str(root / folder / "1"))
    return root


def build_acg2vec_first_deepix(folder: Path, size: int = 32) -> Path:
    """The first deepix export: outputs bookmark_predict / view_predict / sanity_predict over 10 bins each."""
    tf_keras.backend.clear_session()
    b64 = tf_keras.Input(shape=(), dtype=tf.string, name="b64_input_bytes")
    x = L.Conv2D(8, 3, strides=2, activation="relu")(Base64DecoderLayer([size, size])(b64))
    x = L.GlobalAveragePooling2D()(x)
    names = ("bookmark_predict", "view_predict", "sanity_predict")
    outputs = [L.Dense(10, activation="softmax", name=n)(x) for n in names]
    tf_keras.Model(b64, outputs).save(str(folder / "1"))
    return folder


def acg2vec_request(encoded: bytes) -> bytes:
    """What ACG2vec's web app sends: Base64.getUrlEncoder().withoutPadding()."""
    return base64.urlsafe_b64encode(encoded).rstrip(b"=")
