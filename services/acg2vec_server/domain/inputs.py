"""Validation of what callers send: images, texts, ids, sizes. Every refusal says what to fix."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from acg2vec_server.domain.errors import FieldViolation, InvalidInput, TooLarge

Image.MAX_IMAGE_PIXELS = None  # we apply our own, configurable limit (and a clearer message) below
#: Formats the in-graph decoder reads as they are; others are re-encoded to PNG first.
GRAPH_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP"})
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,255}$")
FIELD_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
FORMATS_HINT = "send the encoded bytes of a JPEG, PNG, GIF, BMP or WebP file"


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int
    max_image_pixels: int
    max_text_chars: int
    max_batch_size: int
    max_top_k: int
    #: Images with more pixels reach the model graph downscaled (0: never); see Settings.downscale_above_pixels.
    downscale_above_pixels: int = 0


def check_image(data: bytes, limits: Limits, field: str = "image") -> bytes:
    """Returns bytes the model graph can decode, or raises InvalidInput / TooLarge naming the field."""
    if not data:
        raise InvalidInput(f"{field} is empty: {FORMATS_HINT}", [FieldViolation(field, "empty")])
    if len(data) > limits.max_image_bytes:
        raise TooLarge(
            f"{field} is {len(data)} bytes, over the limit of {limits.max_image_bytes}; downscale or recompress it",
            [FieldViolation(field, "too many bytes")],
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > limits.max_image_pixels:
                raise TooLarge(
                    f"{field} is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{limits.max_image_pixels}; downscale it",
                    [FieldViolation(field, "too many pixels")],
                )
            if limits.downscale_above_pixels and width * height > limits.downscale_above_pixels:
                return downscaled(im, limits.downscale_above_pixels)
            if im.format in GRAPH_FORMATS and im.mode not in ("CMYK", "I", "I;16", "F"):
                intact(im, data)
                return data
            im.load()  # a full decode: truncated or corrupt data fails here, not in the model
            out = io.BytesIO()
            im.convert("RGBA" if "A" in im.getbands() else "RGB").save(out, format="PNG")
            return out.getvalue()
    except (TooLarge, InvalidInput):
        raise
    except UnidentifiedImageError:
        raise InvalidInput(
            f"{field} is not an image: {FORMATS_HINT}", [FieldViolation(field, "not an image")]
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInput(
            f"{field} is corrupt or truncated ({e}); {FORMATS_HINT}", [FieldViolation(field, "corrupt image")]
        ) from None


def intact(im: Image.Image, data: bytes) -> None:
    """Raises OSError or SyntaxError when an image the graph will decode is visibly damaged, without decoding it:
    the graph decodes it anyway, and a decode here cost as much CPU as the model (issue 16, docs/performance.md).
    PNG: every chunk's CRC and the closing IEND (truncation, changed bytes). JPEG: Pillow has read the markers up
    to the first scan; the end-of-image marker must follow it (truncation). GIF, BMP: decoded (rare, cheap to
    keep exact). Damage these checks miss (a consistent but broken deflate or entropy-coded stream) fails in the
    graph's decoder, which answers INVALID_ARGUMENT for that image too (domain/models.py)."""
    if im.format == "PNG":
        im.verify()
    elif im.format == "JPEG":
        if data.rfind(b"\xff\xd9") < _first_scan(data):  # from the end: usually found in its last 2 bytes
            raise OSError("image file is truncated (no end-of-image marker)")
    else:
        im.load()


def _first_scan(data: bytes) -> int:
    """Offset of the first start-of-scan marker in a JPEG (its header segments walked by length, as Pillow reads
    them: fill bytes 0xFF and stray 0x00 after a marker's 0xFF are skipped)."""
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise SyntaxError("broken JPEG marker structure")
        pos += 1
        while pos < len(data) and data[pos] in (0xFF, 0x00):
            pos += 1
        if pos >= len(data):
            break
        marker = data[pos]
        if marker == 0xDA:
            return pos
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            pos += 1
            continue
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 3], "big")
    raise OSError("image file is truncated (no scan)")


def downscaled(im: Image.Image, max_pixels: int) -> bytes:
    """The image decoded (so damage still fails here) and shrunk to at most max_pixels with a box filter, as a
    fast PNG: the graph, which needs about 36 bytes per pixel to decode and resize, only sees a small image."""
    width, height = im.size
    scale = (max_pixels / (width * height)) ** 0.5
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    if im.format == "JPEG":
        im.draft(im.mode, size)  # decodes at the smallest DCT scale that is still at least `size`
    im.load()
    alpha = "A" in im.getbands() or "transparency" in im.info
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if alpha else "RGB")
    small = im.resize(size, Image.Resampling.BOX, reducing_gap=2.0).convert("RGBA" if alpha else "RGB")
    out = io.BytesIO()
    small.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def check_text(text: str, limits: Limits, field: str = "text") -> str:
    if not text or not text.strip():
        raise InvalidInput(f"{field} is empty: send non-empty UTF-8 text", [FieldViolation(field, "empty")])
    if len(text) > limits.max_text_chars:
        raise TooLarge(
            f"{field} has {len(text)} characters, over the limit of {limits.max_text_chars}; split it",
            [FieldViolation(field, "too long")],
        )
    return text


def check_batch(n: int, limits: Limits, field: str) -> None:
    if n == 0:
        raise InvalidInput(f"{field} is empty: send at least one item", [FieldViolation(field, "empty")])
    if n > limits.max_batch_size:
        raise TooLarge(
            f"{field} has {n} items, over the batch limit of {limits.max_batch_size}; split the batch "
            "or use the streaming RPC",
            [FieldViolation(field, "too many items")],
        )


def check_top_k(top_k: int, limits: Limits, field: str = "top_k") -> int:
    if top_k <= 0 or top_k > limits.max_top_k:
        raise InvalidInput(
            f"{field} is {top_k}; it must be between 1 and {limits.max_top_k}",
            [FieldViolation(field, f"must be in [1, {limits.max_top_k}]")],
        )
    return top_k


def check_id(id: str, field: str = "id") -> str:
    if not ID_PATTERN.match(id or ""):
        raise InvalidInput(
            f"{field} {id!r} is not a valid id: 1-256 characters of [A-Za-z0-9_.:/@-], starting with a letter or digit",
            [FieldViolation(field, "invalid id")],
        )
    return id


def check_fields(fields: dict[str, str], field: str = "metadata.fields") -> dict[str, str]:
    bad = [k for k in fields if not FIELD_KEY_PATTERN.match(k)]
    if bad:
        raise InvalidInput(
            f"{field} keys {bad} are invalid: use [A-Za-z_][A-Za-z0-9_]{{0,63}}",
            [FieldViolation(f"{field}[{k}]", "invalid key") for k in bad],
        )
    return fields


def collect(items: list[bytes], limits: Limits, field: str) -> list[bytes]:
    """Checks every image of a batch; reports all bad ones at once as field violations."""
    checked: list[bytes] = []
    violations: list[FieldViolation] = []
    first: InvalidInput | TooLarge | None = None
    for i, data in enumerate(items):
        try:
            checked.append(check_image(data, limits, f"{field}[{i}]"))
        except (InvalidInput, TooLarge) as e:
            violations += e.violations
            first = first or e
    if first is not None:
        raise type(first)(
            first.message + (f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""), violations
        )
    return checked
