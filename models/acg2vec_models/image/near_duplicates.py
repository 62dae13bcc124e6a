"""Near-duplicate views of an illustration and retrieval recall: the illust2vec benchmark's protocol, also used
to make the augmented views that the default illust2vec is trained to be invariant to.

A query is made from a gallery image by: a random crop keeping 80-95 % of each side, a downscale to half
size (never below 32 px on the short side), a slight colour shift (per-channel gain and offset), a
horizontal flip, and JPEG at quality 50 (transparency composited on white first).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = None  # the openclipart gallery holds a few very large (trusted) files


@dataclass(frozen=True)
class QueryRecipe:
    crop: tuple[float, float] = (0.80, 0.95)
    downscale: float = 0.5
    min_side: int = 32
    gain: float = 0.08  # per-channel multiplicative shift, +-
    offset: float = 8.0  # per-channel additive shift in 0..255, +-
    flip: bool = True
    jpeg_quality: int = 50


def load_rgb(data: bytes) -> Image.Image:
    """Decodes an image and composites any transparency on white (as the serving graph does)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def make_query(data: bytes, rng: np.random.Generator, recipe: QueryRecipe = QueryRecipe()) -> bytes:
    """One near-duplicate (JPEG bytes) of an encoded image."""
    image = load_rgb(data)
    w, h = image.size
    fw, fh = rng.uniform(*recipe.crop, size=2)
    cw, ch = max(1, round(w * fw)), max(1, round(h * fh))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = image.crop((left, top, left + cw, top + ch))
    scale = max(recipe.downscale, min(1.0, recipe.min_side / max(1, min(cw, ch))))
    image = image.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    gain = 1 + rng.uniform(-recipe.gain, recipe.gain, size=3)
    shift = rng.uniform(-recipe.offset, recipe.offset, size=3)
    pixels = np.clip(pixels * gain + shift, 0, 255).astype(np.uint8)
    if recipe.flip:
        pixels = pixels[:, ::-1]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=recipe.jpeg_quality)
    return out.getvalue()


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ranks_of_targets(queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each query's true gallery item under cosine similarity (ties count against it)."""
    sims = l2_normalise(queries.astype(np.float32)) @ l2_normalise(gallery.astype(np.float32)).T
    true = sims[np.arange(len(targets)), targets]
    return (sims > true[:, None]).sum(axis=1)


def recall_at(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k)) if len(ranks) else float("nan")
