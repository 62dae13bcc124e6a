"""In-graph image preprocessing, so that a SavedModel takes encoded bytes and TF-Serving does the work.

Every image signature of the model repository takes `image_bytes` (tf.string, [batch]) and decodes,
composites transparency on white, resizes and normalises inside the graph with these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import tensorflow as tf

ResizeMode = Literal["pad", "stretch"]


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a model wants its pixels: size, aspect handling, value range and channel order."""

    size: int
    #: "pad": keep aspect ratio and pad to a square (DeepDanbooru, WD14); "stretch": plain resize.
    resize: ResizeMode = "pad"
    #: Pixel value of the padding, in 0..255 (white by default, as illustrations sit on white).
    pad_value: float = 255.0
    #: x' = (x - offset) / scale applied to 0..255 RGB values, e.g. (0, 255) gives [0, 1].
    offset: float = 0.0
    scale: float = 255.0
    #: Channel order fed to the network.
    channels: Literal["RGB", "BGR"] = "RGB"


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes one encoded image (JPEG/PNG/GIF/BMP/WebP) to float32 RGB 0..255, alpha composited on white."""
    image = tf.cast(tf.io.decode_image(image_bytes, channels=0, expand_animations=False, dtype=tf.uint8), tf.float32)
    opaque = tf.fill(tf.shape(image[..., :1]), 255.0)

    def gray() -> tf.Tensor:
        return tf.concat([image[..., :1]] * 3 + [opaque], axis=-1)

    def gray_alpha() -> tf.Tensor:
        return tf.concat([image[..., :1]] * 3 + [image[..., 1:2]], axis=-1)

    def rgb() -> tf.Tensor:
        return tf.concat([image[..., :3], opaque], axis=-1)

    def rgba() -> tf.Tensor:
        return image[..., :4]

    image = tf.switch_case(tf.shape(image)[-1] - 1, [gray, gray_alpha, rgb, rgba])
    color, alpha = image[..., :3], image[..., 3:4] / 255.0
    return color * alpha + 255.0 * (1.0 - alpha)


def resize_image(rgb: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    """Resizes one float RGB image to prep.size x prep.size, padding with prep.pad_value if asked."""
    size = prep.size
    if prep.resize == "stretch":
        return tf.image.resize(rgb, (size, size), method="area", antialias=True)
    shape = tf.cast(tf.shape(rgb)[:2], tf.float32)
    ratio = tf.minimum(size / shape[0], size / shape[1])
    new_hw = tf.maximum(tf.cast(tf.round(shape * ratio), tf.int32), 1)
    resized = tf.image.resize(rgb, new_hw, method="area", antialias=True)
    top = (size - new_hw[0]) // 2
    left = (size - new_hw[1]) // 2
    padded = tf.pad(
        resized - prep.pad_value,
        [[top, size - new_hw[0] - top], [left, size - new_hw[1] - left], [0, 0]],
    )
    return tf.ensure_shape(padded + prep.pad_value, (size, size, 3))


def preprocess_batch(image_bytes: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    """[batch] encoded images -> [batch, size, size, 3] normalised float32 network input."""

    def one(encoded: tf.Tensor) -> tf.Tensor:
        image = resize_image(decode_rgb(encoded), prep)
        if prep.channels == "BGR":
            image = image[..., ::-1]
        return (image - prep.offset) / prep.scale

    return tf.map_fn(
        one,
        image_bytes,
        fn_output_signature=tf.TensorSpec((prep.size, prep.size, 3), tf.float32),
        parallel_iterations=8,
    )
