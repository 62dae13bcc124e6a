"""pillow_resize reproduces Pillow's Image.resize bit for bit: down, up, mixed, both pass orders, each filter."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFilter

from acg2vec_models.pillow_resize import pillow_resize

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS}  # fmt: skip


def _sizes(seed: int, count: int) -> list[tuple[int, int, int, int]]:
    """(in_w, in_h, out_w, out_h): random ones plus the cases that decide Pillow's pass order."""
    rng = np.random.default_rng(seed)
    chosen = [tuple(int(v) for v in rng.integers(8, 160, 4)) for _ in range(count)]
    return [*chosen, (60, 60, 70, 39), (400, 400, 300, 200), (400, 400, 300, 150), (417, 817, 448, 448),
            (80, 50, 80, 20), (50, 80, 20, 80), (64, 64, 64, 64)]  # fmt: skip


@pytest.mark.parametrize("name", list(FILTERS))
def test_pillow_resize_is_bit_identical_to_pillow(name):
    resize = tf.function(
        lambda image, h, w: pillow_resize(image, h, w, name),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32), *[tf.TensorSpec([], tf.int32)] * 2],
    )
    rng = np.random.default_rng(7)
    for in_w, in_h, out_w, out_h in _sizes(seed=len(name), count=25):
        noise = (rng.random((in_h, in_w, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.2))  # smooth: many values near ties
        expected = np.asarray(image.resize((out_w, out_h), FILTERS[name]))
        ours = resize(tf.constant(np.asarray(image), tf.float32), out_h, out_w).numpy()
        assert ours.shape == expected.shape
        mismatches = int((ours != expected).sum())
        assert mismatches == 0, f"{name} {in_w}x{in_h} -> {out_w}x{out_h}: {mismatches} values differ"
