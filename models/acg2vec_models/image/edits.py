"""The edits a reverse-image-search query survives: one function per edit family, each turning an encoded picture
into an edited copy (encoded bytes), seeded. The near-duplicate benchmark (benchmarks/near_duplicates.py) queries
with them, and the default illust2vec's projection is trained on views made by them (`image.defaults.views`).

Families (the issue's list; parameters drawn uniformly in the ranges given):
- crop: a random window keeping 50-80 % of the picture's area (each side at least 40 %);
- downscale: each side divided by 4 (Lanczos), never below 8 px;
- jpeg: composited on white, JPEG quality 40-70;
- mirror: left-right flip;
- brightness_contrast: brightness and contrast each x0.7-1.3;
- greyscale: luminance only (transparency kept);
- rotate: -10..10 degrees (at least 2), the canvas grown to hold the corners (transparent, or white);
- border: half letterbox (the picture on white, black bars to 16:9 or 9:16 around it), half the picture pasted
  into a larger plain canvas (1.3-2.5x, a random grey or colour, a random place; transparency shows the canvas, as
  a screenshot of a page shows it);
- text: a short caption (3-10 characters, Pillow's default font scaled to 6-12 % of the height) at a random place;
- black: transparency flattened onto black instead of white, saved as JPEG quality 90 (opaque pictures are
  flattened the same way, which leaves them unchanged but for the JPEG).

Geometric and colour edits keep the transparency and save PNG (what an editor does with a transparent PNG);
jpeg and black save JPEG.
"""

from __future__ import annotations

import io
import string
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

Image.MAX_IMAGE_PIXELS = None  # the openclipart gallery holds a few very large (trusted) files

Edit = Callable[[Image.Image, np.random.Generator], tuple[Image.Image, str]]


def _rgba(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGBA")


def _on(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    background = Image.new("RGBA", image.size, (*colour, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def crop(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    w, h = image.size
    area = rng.uniform(0.5, 0.8)
    fw = rng.uniform(max(0.4, area), 1.0)  # side fractions whose product is the area, each >= 0.4
    fh = area / fw
    cw, ch = max(1, round(w * fw)), max(1, round(h * fh))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((left, top, left + cw, top + ch)), "PNG"


def downscale(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    w, h = image.size
    size = (max(8, round(w / 4)), max(8, round(h / 4)))
    return image.resize(size, Image.Resampling.LANCZOS), "PNG"


def jpeg(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    return _on(image, (255, 255, 255)), f"JPEG:{int(rng.integers(40, 71))}"


def mirror(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    return ImageOps.mirror(image), "PNG"


def brightness_contrast(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    alpha = image.getchannel("A")
    rgb = ImageEnhance.Brightness(image.convert("RGB")).enhance(rng.uniform(0.7, 1.3))
    rgb = ImageEnhance.Contrast(rgb).enhance(rng.uniform(0.7, 1.3))
    rgb.putalpha(alpha)
    return rgb, "PNG"


def greyscale(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    return image.convert("LA").convert("RGBA"), "PNG"


def rotate(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    angle = rng.uniform(2.0, 10.0) * rng.choice([-1.0, 1.0])
    return image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255, 0)), "PNG"


def border(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    w, h = image.size
    if rng.random() < 0.5:  # letterbox: black bars to a 16:9 (or 9:16) frame
        ratio = 16 / 9 if w >= h else 9 / 16
        cw, ch = (max(w, round(h * ratio)), h) if w / h < ratio else (w, max(h, round(w / ratio)))
        cw, ch = max(cw, w + 2), max(ch, h + 2)  # a frame of the picture's own ratio still gets thin bars
        colour = (0, 0, 0)
        left, top = (cw - w) // 2, (ch - h) // 2
        image = _on(image, (255, 255, 255)).convert("RGBA")  # a video frame is opaque
    else:  # a screenshot: the picture on a larger plain canvas, somewhere
        scale = rng.uniform(1.3, 2.5)
        cw, ch = round(w * scale), round(h * rng.uniform(1.3, 2.5))
        grey = int(rng.integers(0, 256))
        colour = (grey, grey, grey) if rng.random() < 0.5 else tuple(int(c) for c in rng.integers(0, 256, 3))
        left, top = int(rng.integers(0, cw - w + 1)), int(rng.integers(0, ch - h + 1))
    canvas = Image.new("RGBA", (cw, ch), (*colour, 255))
    canvas.alpha_composite(image, (left, top))
    return canvas.convert("RGB"), "PNG"


def text(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    out = image.copy()
    w, h = out.size
    caption = "".join(rng.choice(list(string.ascii_letters + string.digits + " "), int(rng.integers(3, 11))))
    font = ImageFont.load_default(size=max(6, round(h * rng.uniform(0.06, 0.12))))
    draw = ImageDraw.Draw(out)
    box = draw.textbbox((0, 0), caption, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    x, y = int(rng.integers(0, max(1, w - tw))), int(rng.integers(0, max(1, h - th)))
    fill = (255, 255, 255, 255) if rng.random() < 0.5 else (0, 0, 0, 255)
    stroke = (0, 0, 0, 255) if fill[0] == 255 else (255, 255, 255, 255)
    draw.text((x, y), caption, font=font, fill=fill, stroke_width=max(1, font.size // 10), stroke_fill=stroke)
    return out, "PNG"


def black(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    return _on(image, (0, 0, 0)), "JPEG:90"


FAMILIES: dict[str, Edit] = {
    "crop": crop,
    "downscale": downscale,
    "jpeg": jpeg,
    "mirror": mirror,
    "brightness_contrast": brightness_contrast,
    "greyscale": greyscale,
    "rotate": rotate,
    "border": border,
    "text": text,
    "black": black,
}


def edit(data: bytes, family: str, rng: np.random.Generator) -> bytes:
    """An edited copy (encoded bytes) of an encoded picture by one family's edit."""
    image, fmt = FAMILIES[family](_rgba(data), rng)
    out = io.BytesIO()
    if fmt.startswith("JPEG"):
        image.convert("RGB").save(out, format="JPEG", quality=int(fmt.split(":")[1]))
    else:
        image.save(out, format="PNG", compress_level=1)
    return out.getvalue()
