"""Image files for fuzzing the decoding path: real files in many formats and modes, then truncated, corrupted,
spliced, or with headers that claim huge dimensions (decompression bombs). Shared by tests/test_fuzz.py
(hypothesis drives the random choices) and benchmarks/fuzz_images.py (a long seeded run).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import cache

import numpy as np
from PIL import Image

HUGE = (65535, 65535, 100_000, 2**31 - 1, 2**32 - 1, 40_000)
MAGIC = (b"\x89PNG\r\n\x1a\n", b"GIF89a", b"GIF87a", b"\xff\xd8\xff", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00")


def _picture(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), rng.integers(0, 256, (h, w))], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def _save(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kwargs)
    return out.getvalue()


@cache
def base_images() -> tuple[tuple[str, bytes], ...]:
    """(name, bytes) of small valid files: every format the service reads, odd modes, animations."""
    rgb = _picture((48, 40), 1)
    frames = [_picture((32, 32), s) for s in range(3)]
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    sixteen = Image.fromarray(np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30)
    palette_transparent = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette_transparent.info["transparency"] = 0
    files = [
        ("png-rgb", _save(rgb, "PNG")),
        ("png-rgba", _save(rgba, "PNG")),
        ("png-l", _save(rgb.convert("L"), "PNG")),
        ("png-la", _save(rgba.convert("LA"), "PNG")),
        ("png-p-transparent", _save(palette_transparent, "PNG")),
        ("png-1bit", _save(rgb.convert("1"), "PNG")),
        ("png-16bit", _save(sixteen, "PNG")),
        ("apng", _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)),
        ("jpeg", _save(rgb, "JPEG", quality=80)),
        ("jpeg-progressive", _save(rgb, "JPEG", progressive=True)),
        ("jpeg-gray", _save(rgb.convert("L"), "JPEG")),
        ("jpeg-cmyk", _save(rgb.convert("CMYK"), "JPEG")),
        ("gif", _save(rgb.convert("P"), "GIF")),
        ("gif-animated", _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)),
        ("gif-transparent", _save(palette_transparent, "GIF", transparency=0)),
        ("bmp", _save(rgb, "BMP")),
        ("bmp-palette", _save(rgb.convert("P"), "BMP")),
        ("webp", _save(rgb, "WEBP")),
        ("webp-lossless-alpha", _save(rgba, "WEBP", lossless=True)),
        ("webp-animated", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)),
        ("tiff", _save(rgb, "TIFF")),
        ("tiff-cmyk", _save(rgb.convert("CMYK"), "TIFF")),
        ("tiff-float", _save(Image.fromarray(np.linspace(0, 1, 40 * 48, dtype=np.float32).reshape(40, 48)), "TIFF")),
        ("tiff-multipage", _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])),
        ("ico", _save(rgb, "ICO")),
        ("tga", _save(rgb, "TGA")),
        ("ppm", _save(rgb, "PPM")),
    ]
    return tuple(files)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def claim_size(data: bytes, width: int, height: int) -> bytes:
    """The same file with its header claiming width x height (checksums fixed where the format has them)."""
    b = bytearray(data)
    if data.startswith(b"\x89PNG"):
        ihdr = struct.pack(">II", width, height) + bytes(b[24:29])
        return bytes(b[:8]) + png_chunk(b"IHDR", ihdr) + bytes(b[33:])
    if data.startswith(b"GIF"):
        b[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        at = data.find(b"\x2c", 13)  # first image descriptor
        if at > 0:
            b[at + 5 : at + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        return bytes(b)
    if data.startswith(b"\xff\xd8"):
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            at = data.find(marker)
            if at > 0:
                b[at + 5 : at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
        return bytes(b)
    if data.startswith(b"BM"):
        b[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
        return bytes(b)
    if data.startswith(b"P6\n"):
        header_end = data.index(b"255\n") + 4
        return f"P6\n{width} {height}\n255\n".encode() + data[header_end:]
    if data[2:3] == b"\x02" and len(data) > 18 and not data.startswith((b"\x89PNG", b"GIF", b"BM", b"RIFF")):  # TGA
        b[12:16] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        return bytes(b)
    if data.startswith(b"RIFF") and data[12:16] == b"VP8X":
        b[24:30] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + ((height - 1) & 0xFFFFFF).to_bytes(3, "little")
        return bytes(b)
    return data


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: none, truncation, flipped bytes, a huge claimed size, junk after a magic number,
    or the head of this file on the tail of another."""
    kind = rng.randrange(7)
    if kind == 0:
        return data
    if kind == 1:
        return data[: rng.randrange(len(data))]
    if kind == 2:
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 3:
        return claim_size(data, rng.choice(HUGE), rng.choice(HUGE))
    if kind == 4:
        return rng.choice(MAGIC) + rng.randbytes(rng.randrange(200))
    if kind == 5:
        other = rng.choice(base_images())[1]
        return data[: rng.randrange(1, len(data))] + other[rng.randrange(len(other)) :]
    return rng.randbytes(rng.randrange(1, 300))
