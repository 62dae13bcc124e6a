"""Shared test helpers: images made in the test, model repository cache, a server on a free port."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "images"
SAMPLE_PNG = ROOT / "tests" / "data" / "sample.png"


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


def models_fingerprint() -> str:
    """Hash of the model code: the cached dev repository is rebuilt when it changes."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "models").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def dev_model_repository() -> Path:
    """Builds the development models once per model-code version (about a minute) and reuses them."""
    cache = ROOT / ".cache" / f"dev-models-{models_fingerprint()}"
    if not (cache / ".complete").exists():
        from acg2vec_models import repository
        from acg2vec_models.dev import build_dev_models

        if cache.exists():
            shutil.rmtree(cache)
        build_dev_models(cache)
        repository.write_models_config(cache)
        (cache / ".complete").write_text("ok")
    return cache


def copy_repository(source: Path, target: Path, only: list[str] | None = None) -> Path:
    """A private copy (symlinks to the cached SavedModels) that a test may add to or remove from."""
    target.mkdir(parents=True, exist_ok=True)
    for model_dir in source.iterdir():
        if model_dir.is_dir() and (only is None or model_dir.name in only):
            (target / model_dir.name).mkdir(exist_ok=True)
            for version in model_dir.iterdir():
                os.symlink(version, target / model_dir.name / version.name)
    return target
