"""Images made in the test: small, deterministic, different for different seeds."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def image_bytes(seed: int = 0, size: tuple[int, int] = (96, 80), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A small deterministic picture: gradient plus a coloured disc; different seeds look different."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    base = (rng.random(3) * 255 * (xx[..., None] / w) + rng.random(3) * 255 * (yy[..., None] / h)) / 2
    cy, cx, r = rng.random() * h, rng.random() * w, 10 + rng.random() * 20
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)[..., None] * rng.random(3) * 255
    pixels = np.clip(base + disc, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format=fmt)
    return out.getvalue()
