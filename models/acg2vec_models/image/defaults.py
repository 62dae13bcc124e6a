"""Default image models. For now the development models (untrained); replaced by trained defaults."""

from __future__ import annotations

from pathlib import Path

from acg2vec_models import repository as repo

NAMES = ("tagger", "illust2vec", "deepix")


def build_default_image_models(root: Path, *, force: bool = False) -> dict[str, Path]:
    from acg2vec_models.dev import build_dev_models

    if not force and set(NAMES) <= set(repo.model_names(root)):
        return {name: root / name / str(repo.latest_version(root, name)) for name in NAMES}
    built = build_dev_models(root, parts=NAMES)
    return {name: built.paths[name] for name in NAMES}
