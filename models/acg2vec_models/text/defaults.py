"""Default text model. For now the development hashing encoder; replaced by the trained acgvoc2vec."""

from __future__ import annotations

from pathlib import Path

from acg2vec_models import repository as repo

NAMES = ("acgvoc2vec",)


def build_default_text_model(root: Path, *, force: bool = False) -> dict[str, Path]:
    from acg2vec_models.dev import build_dev_models

    if not force and set(NAMES) <= set(repo.model_names(root)):
        return {name: root / name / str(repo.latest_version(root, name)) for name in NAMES}
    built = build_dev_models(root, parts=NAMES)
    return {name: built.paths[name] for name in NAMES}
