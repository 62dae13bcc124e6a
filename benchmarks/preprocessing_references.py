"""How exactly our in-graph preprocessing reproduces the importers' sources, against the sources' own libraries.

DeepDanbooru's `load_image_for_evaluate` ends in skimage.transform.warp; SmilingWolf's WD14 app uses Pillow and
OpenCV. Neither library is a dependency of acg2vec (the tests use numpy transcriptions of the two steps), so this
script takes them from a folder of your choice:

    .venv/bin/pip install --target /tmp/refs -c constraints.txt scikit-image opencv-python-headless scipy
    .venv/bin/python benchmarks/preprocessing_references.py --refs /tmp/refs

It prints, per image and network size, the largest difference (in 0..255 units for WD14, 0..1 for DeepDanbooru)
and how many values differ at all.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--refs", type=Path, required=True, help="folder holding scikit-image and opencv (pip --target)"
    )
    args = parser.parse_args()
    sys.path.append(str(args.refs))  # after the venv: its numpy and Pillow win
    import cv2
    import skimage.transform
    import tensorflow as tf
    from PIL import Image

    from acg2vec_models.preprocessing import deepdanbooru_preprocessing, preprocess_batch, wd14_preprocessing
    from acg2vec_testing.images import image_bytes

    def deepdanbooru(raw: bytes, size: int) -> np.ndarray:
        image = tf.io.decode_png(raw, channels=3)
        image = tf.image.resize(image, (size, size), method="area", preserve_aspect_ratio=True).numpy()
        h, w = image.shape[:2]
        shift = skimage.transform.AffineTransform(translation=(-w / 2, -h / 2))
        shift += skimage.transform.AffineTransform(translation=(size / 2, size / 2))
        warped = skimage.transform.warp(image, shift.inverse, output_shape=(size, size), order=1, mode="edge")
        return warped / 255.0

    def wd14(raw: bytes, size: int) -> np.ndarray:
        image = Image.open(io.BytesIO(raw)).convert("RGBA")
        canvas = Image.new("RGBA", image.size, "WHITE")
        canvas.paste(image, mask=image)
        bgr = np.asarray(canvas.convert("RGB"))[:, :, ::-1]
        h, w = bgr.shape[:2]
        side = max(h, w, size)
        top, left = (side - h) // 2, (side - w) // 2
        bgr = cv2.copyMakeBorder(bgr, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=[255] * 3)
        if side > size:
            bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)
        return bgr.astype(np.float32)

    def transparent(raw: bytes) -> bytes:
        rgba = np.asarray(Image.open(io.BytesIO(raw)).convert("RGBA")).copy()
        rgba[..., 3] = np.linspace(0, 255, rgba.shape[1]).astype(np.uint8)[None, :]
        out = io.BytesIO()
        Image.fromarray(rgba).save(out, format="PNG")
        return out.getvalue()

    cases = {
        "png 96x80": image_bytes(0, size=(96, 80)),
        "png 97x81": image_bytes(1, size=(97, 81)),
        "jpeg 200x333": image_bytes(2, size=(200, 333), fmt="JPEG"),
        "png rgba 301x150": transparent(image_bytes(3, size=(301, 150))),
        "png gray 64x64": image_bytes(4, size=(64, 64), mode="L"),
        "png 1000x700": image_bytes(5, size=(1000, 700)),
        "png rgba 896x600": transparent(image_bytes(6, size=(896, 600))),
    }
    print(f"{'image':<18} {'size':>5} {'DeepDanbooru max|d|':>20} {'differ':>7} {'WD14 max|d|':>12} {'differ':>7}")
    for size in (64, 448, 512):
        for name, raw in cases.items():
            ours = preprocess_batch(tf.constant([raw]), deepdanbooru_preprocessing(size)).numpy()[0]
            theirs = deepdanbooru(raw, size)
            ours_wd = preprocess_batch(tf.constant([raw]), wd14_preprocessing(size)).numpy()[0]
            theirs_wd = wd14(raw, size)
            d_dd, d_wd = np.abs(ours - theirs), np.abs(ours_wd - theirs_wd)
            print(
                f"{name:<18} {size:>5} {d_dd.max():>20.3g} {int((d_dd > 1e-6).sum()):>7} "
                f"{d_wd.max():>12.3g} {int((d_wd > 0).sum()):>7}"
            )


if __name__ == "__main__":
    main()
