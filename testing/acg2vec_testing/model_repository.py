"""The development model repository, built once per model-code version and cached in the checkout's .cache, and
private copies of it that a test or benchmark may add to or remove from."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from acg2vec_testing.paths import ROOT


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
