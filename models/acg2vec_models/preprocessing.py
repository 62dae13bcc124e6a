"""In-graph image preprocessing, so that a SavedModel takes encoded bytes and TF-Serving does the work.

Every image signature of the model repository takes `image_bytes` (tf.string, [batch]) and decodes,
composites transparency on white, resizes and normalises inside the graph with these functions.
Imported models keep their source's own preprocessing: `DEEPDANBOORU` and `WD14` below reproduce
DeepDanbooru's `load_image_for_evaluate` and SmilingWolf's WD14 reference code (docs/image-models-import-train.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import tensorflow as tf

#: "pad": area-resize keeping the aspect ratio, pad to a square with pad_value; "stretch": plain area resize;
#: "pad_edge": DeepDanbooru (area-resize keeping the aspect ratio, centre with sub-pixel offsets, pad by
#: repeating the edge pixels); "square_pad": WD14 (pad to a square of side max(h, w, size) with pad_value,
#: then area-downscale).
ResizeMode = Literal["pad", "stretch", "pad_edge", "square_pad"]


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a model wants its pixels: size, aspect handling, value range and channel order."""

    size: int
    #: How the image becomes size x size (see ResizeMode).
    resize: ResizeMode = "pad"
    #: Pixel value of the padding, in 0..255 (white by default, as illustrations sit on white).
    pad_value: float = 255.0
    #: x' = (x - offset) / scale applied to 0..255 RGB values, e.g. (0, 255) gives [0, 1].
    offset: float = 0.0
    scale: float = 255.0
    #: Channel order fed to the network.
    channels: Literal["RGB", "BGR"] = "RGB"
    #: Transparency: "white" composites on white; "drop" ignores alpha (decoders asked for 3 channels do that).
    alpha: Literal["white", "drop"] = "white"
    #: Round to whole 0..255 values after compositing and after resizing, as uint8 pipelines (PIL, OpenCV) do.
    quantize: bool = False
    #: JPEG inverse DCT: "fast" is TensorFlow's default (what DeepDanbooru used); "accurate" is libjpeg's
    #: ISLOW, bit-identical to what Pillow decodes (WD14's reference reads images with Pillow).
    jpeg_dct: Literal["fast", "accurate"] = "fast"


def deepdanbooru_preprocessing(size: int) -> ImagePreprocessing:
    """DeepDanbooru: decode_png(channels=3), area resize keeping aspect, skimage edge-pad warp, / 255."""
    return ImagePreprocessing(size=size, resize="pad_edge", alpha="drop", offset=0.0, scale=255.0)


def wd14_preprocessing(size: int) -> ImagePreprocessing:
    """WD14 (SmilingWolf's wd-v1-4-tags app): alpha on white, BGR, pad to square on white, INTER_AREA, 0..255."""
    return ImagePreprocessing(
        size=size, resize="square_pad", pad_value=255.0, alpha="white", channels="BGR", offset=0.0, scale=1.0,
        quantize=True, jpeg_dct="accurate",
    )  # fmt: skip


def decode_rgb(
    image_bytes: tf.Tensor, alpha: Literal["white", "drop"] = "white", jpeg_dct: Literal["fast", "accurate"] = "fast"
) -> tf.Tensor:
    """Decodes one encoded image (JPEG/PNG/GIF/BMP/WebP) to float32 RGB 0..255, alpha composited on white
    (or dropped, as a decoder asked for three channels does)."""
    if jpeg_dct == "accurate":
        return tf.cond(
            tf.io.is_jpeg(image_bytes),
            lambda: tf.cast(tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"), tf.float32),
            lambda: decode_rgb(image_bytes, alpha),
        )
    if alpha == "drop":
        return tf.cast(tf.io.decode_image(image_bytes, channels=3, expand_animations=False), tf.float32)
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


def _shift_with_edge(image: tf.Tensor, axis: int, size: int) -> tf.Tensor:
    """Places `image` centred on `size` pixels along `axis`: out[i] = in[i - (size - n) / 2], linearly
    interpolated when the offset is a half pixel, positions outside repeating the edge pixel
    (skimage.transform.warp with order=1, mode="edge" for a pure translation)."""
    n = tf.shape(image)[axis]
    offset = tf.cast(size - n, tf.float32) / 2.0
    position = tf.range(size, dtype=tf.float32) - offset
    low = tf.floor(position)
    frac = position - low
    low = tf.cast(low, tf.int32)
    first = tf.gather(image, tf.clip_by_value(low, 0, n - 1), axis=axis)
    second = tf.gather(image, tf.clip_by_value(low + 1, 0, n - 1), axis=axis)
    shape = [1, 1, 1]
    shape[axis] = size
    frac = tf.reshape(frac, shape)
    return (1.0 - frac) * first + frac * second


def _aspect_size(rgb: tf.Tensor, size: int) -> tf.Tensor:
    """Height and width scaled to fit size x size, rounded as tf.image.resize(preserve_aspect_ratio=True) does."""
    shape = tf.cast(tf.shape(rgb)[:2], tf.float32)
    ratio = tf.minimum(size / shape[0], size / shape[1])
    return tf.maximum(tf.cast(tf.round(shape * ratio), tf.int32), 1)


def resize_image(rgb: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    """Resizes one float RGB image to prep.size x prep.size, padding with prep.pad_value if asked."""
    size = prep.size
    if prep.resize == "stretch":
        return tf.image.resize(rgb, (size, size), method="area", antialias=True)
    if prep.resize == "pad_edge":
        resized = tf.image.resize(rgb, _aspect_size(rgb, size), method="area")
        placed = _shift_with_edge(_shift_with_edge(resized, 0, size), 1, size)
        return tf.ensure_shape(placed, (size, size, 3))
    if prep.resize == "square_pad":
        height, width = tf.shape(rgb)[0], tf.shape(rgb)[1]
        side = tf.maximum(tf.maximum(height, width), size)
        top, left = (side - height) // 2, (side - width) // 2
        square = (
            tf.pad(rgb - prep.pad_value, [[top, side - height - top], [left, side - width - left], [0, 0]])
            + prep.pad_value
        )
        resized = tf.image.resize(square, (size, size), method="area")  # exact copy when side == size
        if prep.quantize:  # OpenCV's uint8 INTER_AREA rounds halves up
            resized = tf.clip_by_value(tf.floor(resized + 0.5), 0.0, 255.0)
        return tf.ensure_shape(resized, (size, size, 3))
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


def preprocess_image(encoded: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    """One encoded image -> [size, size, 3] normalised float32 network input (serving and training share it)."""
    image = decode_rgb(encoded, prep.alpha, prep.jpeg_dct)
    if prep.quantize:
        image = tf.floor(image + 0.5)
    image = resize_image(image, prep)
    if prep.channels == "BGR":
        image = image[..., ::-1]
    return (image - prep.offset) / prep.scale


def preprocess_batch(image_bytes: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    """[batch] encoded images -> [batch, size, size, 3] normalised float32 network input."""

    def one(encoded: tf.Tensor) -> tf.Tensor:
        return preprocess_image(encoded, prep)

    return tf.map_fn(
        one,
        image_bytes,
        fn_output_signature=tf.TensorSpec((prep.size, prep.size, 3), tf.float32),
        parallel_iterations=8,
    )
