"""Near-duplicate preprocessing (issue 15): the edit families the benchmark queries with, and the in-graph content
normalisation that frames an edited copy like its original (uniform borders stripped, a non-white background
whitened). The served model's side is in test_image_defaults.py (a letterboxed and a black-flattened copy embed
close to the original through the built illust2vec)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from acg2vec_models.image.edits import FAMILIES, edit
from acg2vec_models.preprocessing import ImagePreprocessing, decode_rgb, normalise_content, preprocess_image
from acg2vec_testing.paths import SAMPLE_PNG

ORIGINAL = SAMPLE_PNG.read_bytes()  # 320 x 240, 69 % transparent


def content(data: bytes) -> np.ndarray:
    return normalise_content(decode_rgb(tf.constant(data))).numpy()


def resized(data: bytes) -> np.ndarray:
    return preprocess_image(tf.constant(data), ImagePreprocessing(size=64, content="trim")).numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_edit_family_makes_a_seeded_decodable_copy(family: str):
    first = edit(ORIGINAL, family, np.random.default_rng(1))
    assert first == edit(ORIGINAL, family, np.random.default_rng(1))  # seeded
    with Image.open(io.BytesIO(first)) as image:
        image.load()
    assert first != ORIGINAL


def test_content_of_a_letterboxed_pasted_or_black_flattened_copy_matches_the_original():
    original = content(ORIGINAL)
    height, width = original.shape[:2]
    assert (height, width) < (240, 320)  # the transparent margin is trimmed
    copies = {f"border {seed}": edit(ORIGINAL, "border", np.random.default_rng(seed)) for seed in range(4)}
    copies["black"] = edit(ORIGINAL, "black", np.random.default_rng(0))
    corners = {Image.open(io.BytesIO(copies[f"border {seed}"])).getpixel((0, 0)) for seed in range(4)}
    assert (0, 0, 0) in corners and len(corners) > 1  # letterboxes (black bars) and plain canvases both
    for name, data in copies.items():
        got = content(data)
        assert abs(got.shape[0] - height) <= 2 and abs(got.shape[1] - width) <= 2, name
        h, w = min(height, got.shape[0]), min(width, got.shape[1])
        assert np.mean(np.abs(got[:h, :w] - original[:h, :w])) < 12.0, name
        # and the whole picture, as the network sees it, is the original's
        assert np.mean(np.abs(resized(data) - resized(ORIGINAL))) < 0.1, name


def test_a_picture_without_uniform_borders_is_left_whole_and_a_blank_one_does_not_vanish():
    noise = np.random.default_rng(0).integers(0, 256, (40, 50, 3)).astype(np.float32)
    assert np.array_equal(normalise_content(tf.constant(noise)).numpy(), noise)
    blank = tf.fill((30, 20, 3), 17.0)
    assert normalise_content(blank).shape == (30, 20, 3)


def test_a_rotated_copy_is_trimmed_to_its_content():
    rotated = content(edit(ORIGINAL, "rotate", np.random.default_rng(0)))
    original = content(ORIGINAL)
    # the rotation grows the canvas; trimmed, the copy is about as large as the original's content
    assert rotated.shape[0] < original.shape[0] * 1.3 and rotated.shape[1] < original.shape[1] * 1.3
