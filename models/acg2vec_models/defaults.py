"""The default models that `acg2vec models build-defaults` installs: image models and the text model.

Each half lives beside its model code (`image/defaults.py`, `text/defaults.py`) and is built from what the
package registries carry, by our own code, with its result cached so that a second run is quick.
"""

from __future__ import annotations

from pathlib import Path

from acg2vec_models import steps


def build_default_models(
    root: Path, *, force: bool = False, limit: int | None = None, cache_dir: Path | None = None
) -> dict[str, Path]:
    """Install the default image models (tagger, illust2vec) and text model (acgvoc2vec) into root.

    `limit` trains the image models on that many images only (tests); `cache_dir` holds downloads, features
    and the text model's training data (default `.cache`)."""
    from acg2vec_models.image.defaults import build_default_image_models
    from acg2vec_models.text.defaults import build_default_text_model

    steps.reset()  # each step below records its wall time (acg2vec_models.steps); the CLI prints them
    paths = build_default_image_models(root, force=force, limit=limit, cache_dir=cache_dir)
    paths.update(build_default_text_model(root, force=force, cache_dir=cache_dir / "text" if cache_dir else None))
    return paths
