"""Small, untrained but real models so that every RPC works end to end on a fresh machine in seconds.

`acg2vec models build-dev` writes them into the model repository. They use the real architectures
(DeepDanbooru resnet_custom_v3 at 1/16 width, the WD14 vocabulary) with random weights, batch-norm
statistics recalibrated on synthetic images so that scores vary from image to image. Trained or
imported models replace them by writing a higher version into the same repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEV_INPUT_SIZE = 128
DEV_WIDTH = 1 / 16
DEV_TEXT_DIM = 128


@dataclass(frozen=True)
class BuiltModels:
    paths: dict[str, Path]


def _synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with blobs: enough variety to set batch-norm statistics."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        base = rng.random(3)[None, None, :] * (1 - yy[..., None]) + rng.random(3)[None, None, :] * xx[..., None]
        cy, cx, r = rng.random(3) * [1, 1, 0.4]
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)[..., None] * rng.random(3)[None, None, :]
        images.append(np.clip(0.6 * base + blob, 0, 1))
    return np.asarray(images, dtype=np.float32)


ALL_PARTS = ("tagger", "illust2vec", "deepix", "acgvoc2vec")


def build_dev_models(root: Path, seed: int = 0, version: int = 1, parts: tuple[str, ...] = ALL_PARTS) -> BuiltModels:
    """Writes tagger, illust2vec, deepix and acgvoc2vec, or `parts` of them, to <root>/<name>/<version>."""
    import keras

    from acg2vec_models.export import export_deepix, export_image_embedder, export_tagger, export_text_module
    from acg2vec_models.image.deepdanbooru import ResNetSpec, build_image_models
    from acg2vec_models.preprocessing import ImagePreprocessing
    from acg2vec_models.text.hashing import HashingTextEncoder
    from acg2vec_models.vocab import WD14_SELECTED_TAGS, read_selected_tags_csv

    keras.utils.set_random_seed(seed)
    tags = read_selected_tags_csv(WD14_SELECTED_TAGS)
    models = build_image_models(ResNetSpec(input_size=DEV_INPUT_SIZE, width=DEV_WIDTH), num_tags=len(tags))
    calibration = _synthetic_images(32, DEV_INPUT_SIZE, seed)
    norms = [
        layer
        for m in (models.tagger, models.deepix)
        for layer in m.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in norms:
        layer.momentum = 0.0  # one training-mode pass sets the moving statistics to this batch's
    models.tagger(calibration, training=True)
    models.deepix(calibration, training=True)
    for layer in norms:
        layer.momentum = 0.99
    prep = ImagePreprocessing(size=DEV_INPUT_SIZE)
    exporters = {
        "tagger": lambda path: export_tagger(models.tagger, prep, tags, path),
        "illust2vec": lambda path: export_image_embedder(models.illust2vec, prep, path),
        "deepix": lambda path: export_deepix(models.deepix, prep, path),
        "acgvoc2vec": lambda path: export_text_module(HashingTextEncoder(dim=DEV_TEXT_DIM, seed=seed), path),
    }
    return BuiltModels(paths={name: exporters[name](root / name / str(version)) for name in parts})
