"""In-graph image preprocessing, so that a SavedModel takes encoded bytes and TF-Serving does the work.

Every image signature of the model repository takes `image_bytes` (tf.string, [batch]) and decodes,
composites transparency on white, resizes and normalises inside the graph with these functions.
Imported models keep their source's own preprocessing: the presets below reproduce DeepDanbooru's
`load_image_for_evaluate`, SmilingWolf's WD14 and WD v3 reference apps, Camie v2's and PixAI's inference code
(docs/image-models-import-train.md); the "pillow_*" modes resample exactly as Pillow (pillow_resize.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import tensorflow as tf

from acg2vec_models.pillow_resize import PillowFilter, pillow_resize

#: "pad": area-resize keeping the aspect ratio, pad to a square with pad_value; "stretch": plain area resize;
#: "pad_edge": DeepDanbooru (area-resize keeping the aspect ratio, centre with sub-pixel offsets, pad by
#: repeating the edge pixels); "square_pad": WD14 (pad to a square of side max(h, w, size) with pad_value,
#: then area-downscale). With Pillow's `resample` filter: "pillow_square": WD v3 (pad to a square of side
#: max(h, w) with pad_value, then resize to size, up or down); "pillow_fit": Camie v2 (longer side to size, the
#: other int(size / aspect), pasted centred on a pad_value canvas); "pillow_stretch": PixAI (size x size).
ResizeMode = Literal["pad", "stretch", "pad_edge", "square_pad", "pillow_square", "pillow_fit", "pillow_stretch"]
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a model wants its pixels: size, aspect handling, value range and channel order."""

    size: int
    #: How the image becomes size x size (see ResizeMode).
    resize: ResizeMode = "pad"
    #: Pixel value of the padding, in 0..255 (white by default, as illustrations sit on white), or an RGB colour.
    pad_value: float | RGB = 255.0
    #: x' = (x - offset) / scale applied to 0..255 RGB values, e.g. (0, 255) gives [0, 1].
    offset: float = 0.0
    scale: float = 255.0
    #: Then per channel (in the order fed to the network) x'' = (x' - mean) / std, as torchvision's Normalize.
    mean: RGB | None = None
    std: RGB | None = None
    #: Pillow's filter for the "pillow_*" resize modes.
    resample: PillowFilter = "bicubic"
    #: Channel order fed to the network.
    channels: Literal["RGB", "BGR"] = "RGB"
    #: Transparency: "white" composites on white; "drop" ignores alpha (decoders asked for 3 channels do that).
    alpha: Literal["white", "drop"] = "white"
    #: Round to whole 0..255 values after compositing and after resizing, as uint8 pipelines (PIL, OpenCV) do.
    quantize: bool = False
    #: JPEG inverse DCT: "fast" is TensorFlow's default (what DeepDanbooru used); "accurate" is libjpeg's
    #: ISLOW, bit-identical to what Pillow decodes (WD14's reference reads images with Pillow).
    jpeg_dct: Literal["fast", "accurate"] = "fast"
    #: "full": the whole picture; "trim": the picture's content only (`normalise_content`: borders, canvas and
    #: margins trimmed, a dark or coloured background turned white), so that a letterboxed, pasted, rotated or
    #: black-flattened copy and the original are framed alike (the default illust2vec and tagger).
    content: Literal["full", "trim"] = "full"


def deepdanbooru_preprocessing(size: int) -> ImagePreprocessing:
    """DeepDanbooru: decode_png(channels=3), area resize keeping aspect, skimage edge-pad warp, / 255."""
    return ImagePreprocessing(size=size, resize="pad_edge", alpha="drop", offset=0.0, scale=255.0)


def wd14_preprocessing(size: int) -> ImagePreprocessing:
    """WD14 (SmilingWolf's wd-v1-4-tags app): alpha on white, BGR, pad to square on white, INTER_AREA, 0..255."""
    return ImagePreprocessing(
        size=size, resize="square_pad", pad_value=255.0, alpha="white", channels="BGR", offset=0.0, scale=1.0,
        quantize=True, jpeg_dct="accurate",
    )  # fmt: skip


def wd_v3_preprocessing(size: int) -> ImagePreprocessing:
    """WD v3 (SmilingWolf's wd-tagger app): Pillow decode, alpha composited on white, pad to a white square of
    side max(h, w), Pillow BICUBIC to size (only when the side differs), RGB -> BGR, 0..255 as float32."""
    return ImagePreprocessing(
        size=size, resize="pillow_square", resample="bicubic", pad_value=255.0, alpha="white", channels="BGR",
        offset=0.0, scale=1.0, quantize=True, jpeg_dct="accurate",
    )  # fmt: skip


#: ImageNet statistics, and their mean as the 8-bit pad colour Camie v2 uses.
IMAGENET_MEAN: RGB = (0.485, 0.456, 0.406)
IMAGENET_STD: RGB = (0.229, 0.224, 0.225)


def camie_v2_preprocessing(size: int) -> ImagePreprocessing:
    """Camie v2 (its inference code): Pillow decode, convert("RGB") (alpha dropped), longer side to size with
    LANCZOS keeping the aspect ratio (the other side truncated), pasted centred on (124, 116, 104), / 255,
    ImageNet mean / std."""
    return ImagePreprocessing(
        size=size, resize="pillow_fit", resample="lanczos", pad_value=(124.0, 116.0, 104.0), alpha="drop",
        offset=0.0, scale=255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, jpeg_dct="accurate",
    )  # fmt: skip


def pixai_preprocessing(size: int) -> ImagePreprocessing:
    """PixAI tagger (its handler and the ONNX port's preprocess.json): Pillow decode, alpha on white, Pillow
    BILINEAR to size x size (aspect ratio not kept), / 255, mean 0.5 / std 0.5."""
    return ImagePreprocessing(
        size=size, resize="pillow_stretch", resample="bilinear", alpha="white", offset=0.0, scale=255.0,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), quantize=True, jpeg_dct="accurate",
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


def _pillow_resize(rgb: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    size = prep.size
    pad = tf.constant(prep.pad_value, tf.float32)
    height, width = tf.shape(rgb)[0], tf.shape(rgb)[1]
    if prep.resize == "pillow_stretch":
        return tf.ensure_shape(pillow_resize(rgb, size, size, prep.resample), (size, size, 3))
    if prep.resize == "pillow_square":
        side = tf.maximum(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        square = tf.pad(rgb - pad, [[top, side - height - top], [left, side - width - left], [0, 0]]) + pad
        return tf.ensure_shape(pillow_resize(square, size, size, prep.resample), (size, size, 3))
    # pillow_fit: aspect = w / h in double precision, as Python computes it, then int() truncates
    aspect = tf.cast(width, tf.float64) / tf.cast(height, tf.float64)
    wide = aspect > 1.0
    new_w = tf.where(wide, size, tf.cast(tf.floor(size * aspect), tf.int32))
    new_h = tf.where(wide, tf.cast(tf.floor(size / aspect), tf.int32), size)
    new_w, new_h = tf.clip_by_value(new_w, 1, size), tf.clip_by_value(new_h, 1, size)
    resized = pillow_resize(rgb, new_h, new_w, prep.resample)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    placed = tf.pad(resized - pad, [[top, size - new_h - top], [left, size - new_w - left], [0, 0]]) + pad
    return tf.ensure_shape(placed, (size, size, 3))


def resize_image(rgb: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    """Resizes one float RGB image to prep.size x prep.size, padding with prep.pad_value if asked."""
    size = prep.size
    if prep.resize.startswith("pillow_"):
        return _pillow_resize(rgb, prep)
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


def _uniform_lines(rgb: tf.Tensor, tolerance: float, outliers: float) -> tf.Tensor:
    """[H] bool: rows of rgb whose pixels all lie within `tolerance` (per channel) of the row's mean colour, but
    for a fraction `outliers` of them (JPEG noise, a stray pixel)."""
    mean = tf.reduce_mean(rgb, axis=1, keepdims=True)
    off = tf.cast(tf.reduce_max(tf.abs(rgb - mean), axis=-1) > tolerance, tf.float32)
    return tf.reduce_sum(off, axis=1) <= outliers * tf.cast(tf.shape(rgb)[1], tf.float32)


def _content_span(uniform: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[start, end) between the first and last non-uniform line (everything when all lines are uniform)."""
    content = tf.cast(tf.where(tf.logical_not(uniform))[:, 0], tf.int32)
    empty = tf.equal(tf.size(content), 0)
    start = tf.cond(empty, lambda: 0, lambda: tf.reduce_min(content))
    end = tf.cond(empty, lambda: tf.size(uniform), lambda: tf.reduce_max(content) + 1)
    return start, end


def strip_uniform_border(rgb: tf.Tensor, tolerance: float = 32.0, outliers: float = 0.005) -> tf.Tensor:
    """Removes the uniform rows and columns around the picture (bars, canvas, margins), each of any colour."""
    top, bottom = _content_span(_uniform_lines(rgb, tolerance, outliers))
    rgb = rgb[top:bottom]
    left, right = _content_span(_uniform_lines(tf.transpose(rgb, [1, 0, 2]), tolerance, outliers))
    return rgb[:, left:right]


def whiten_background(rgb: tf.Tensor, tolerance: float = 32.0, share: float = 0.5) -> tf.Tensor:
    """When at least `share` of the outermost pixels have one colour that is not white (a transparent picture
    flattened onto black, a canvas showing through), pixels of that colour become white, fading out over a
    second `tolerance` (anti-aliased edges), as if the picture had been composited on white."""
    ring = tf.concat([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    colour = tf.sort(ring, axis=0)[tf.shape(ring)[0] // 2]  # per-channel median
    near = tf.reduce_max(tf.abs(ring - colour), axis=-1) <= tolerance
    background = tf.logical_and(
        tf.reduce_mean(tf.cast(near, tf.float32)) >= share, tf.reduce_min(colour) < 255.0 - tolerance
    )
    distance = tf.reduce_max(tf.abs(rgb - colour), axis=-1, keepdims=True)
    keep = tf.clip_by_value((distance - tolerance) / tolerance, 0.0, 1.0)
    return tf.where(background, rgb * keep + 255.0 * (1.0 - keep), rgb)


def normalise_content(rgb: tf.Tensor) -> tf.Tensor:
    """The picture's content, framed alike whatever surrounds it: uniform borders stripped twice (a canvas or
    bars, then the picture's own margins), then a non-white background whitened."""
    return whiten_background(strip_uniform_border(strip_uniform_border(rgb)))


def preprocess_image(encoded: tf.Tensor, prep: ImagePreprocessing) -> tf.Tensor:
    """One encoded image -> [size, size, 3] normalised float32 network input (serving and training share it)."""
    image = decode_rgb(encoded, prep.alpha, prep.jpeg_dct)
    if prep.content == "trim":
        image = normalise_content(image)
    if prep.quantize:
        image = tf.floor(image + 0.5)
    image = resize_image(image, prep)
    if prep.channels == "BGR":
        image = image[..., ::-1]
    image = (image - prep.offset) / prep.scale
    if prep.mean is not None or prep.std is not None:
        image = (image - tf.constant(prep.mean or (0.0, 0.0, 0.0))) / tf.constant(prep.std or (1.0, 1.0, 1.0))
    return image


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
