"""What every importer shares: where new versions go, and reading a SavedModel's serving signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acg2vec_models import repository
from acg2vec_models.importers import ImportFailed


def version_dir(root: Path, name: str) -> Path:
    """The next version of `name` (TF-Serving serves the highest, so the import takes over at once)."""
    return repository.next_version_dir(root, name)


def finish(root: Path) -> None:
    repository.write_models_config(root)


def find_saved_model(path: Path) -> Path:
    """A SavedModel directory, or a TF-Serving model folder (<model>/<version>/): its highest version."""
    if (path / repository.SAVED_MODEL_FILE).exists():
        return path
    versions = sorted(
        (int(p.name), p) for p in path.iterdir() if p.name.isdigit() and (p / repository.SAVED_MODEL_FILE).exists()
    ) if path.is_dir() else []  # fmt: skip
    if not versions:
        raise ImportFailed(f"{path} holds no saved_model.pb (nor <version>/saved_model.pb); give a SavedModel folder")
    return versions[-1][1]


@dataclass(frozen=True)
class Signature:
    """A loaded SavedModel's serving_default: the function, its one input and its outputs with shapes."""

    loaded: Any
    function: Any
    input_name: str
    input_spec: Any
    outputs: dict[str, Any]


def load_signature(path: Path, signature: str = "serving_default") -> Signature:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if signature not in loaded.signatures:
        raise ImportFailed(f"{path} has no '{signature}' signature (it has {sorted(loaded.signatures)})")
    function = loaded.signatures[signature]
    _, kwargs = function.structured_input_signature
    if len(kwargs) != 1:
        raise ImportFailed(f"{path}: '{signature}' takes {sorted(kwargs)}; one image input was expected")
    ((input_name, input_spec),) = kwargs.items()
    return Signature(loaded, function, input_name, input_spec, dict(function.structured_outputs))
