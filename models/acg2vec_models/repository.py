"""The model repository: TF-Serving's layout, the one contract between training/import and serving.

    <root>/<model>/<version>/saved_model.pb + variables/   (one SavedModel per version)
    <root>/models.config                                   (ModelServerConfig for tensorflow_model_server)

Signatures (what the service relies on):
  image models  serving_default(image_bytes: string[N]) -> tagger: scores[N,T];
                illust2vec: embedding[N,D]; deepix: bookmarks[N,15], views[N,15], sanity[N,5]
  tagger        labels() -> names: string[T], categories: string[T]
  text models   serving_default(text: string[N]) -> embedding[N,D]                (tokenised in the graph)
            or  serving_default(input_ids: int64[N,L], length: int64[N]) -> embedding[N,D],
                tokenizer() -> tokenizer_json: string[]  (the server tokenises; see text/tokens.py)
"""

from __future__ import annotations

import os
from pathlib import Path

SAVED_MODEL_FILE = "saved_model.pb"
MODELS_CONFIG = "models.config"


def versions(root: Path, name: str) -> list[int]:
    """Versions of a model that hold a SavedModel, ascending."""
    base = root / name
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / SAVED_MODEL_FILE).exists())


def latest_version(root: Path, name: str) -> int | None:
    found = versions(root, name)
    return found[-1] if found else None


def next_version_dir(root: Path, name: str) -> Path:
    """Directory for a new version (one above the highest present, files or not)."""
    base = root / name
    taken = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return base / str(max(taken, default=0) + 1)


def model_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and versions(root, p.name)) if root.is_dir() else []


def models_config(root: Path, base_path: str = "/models") -> str:
    """TF-Serving's ModelServerConfig (tensorflow_serving/config/model_server_config.proto) listing every model of
    the repository, with base paths as TF-Serving will see them, in the protobuf text format it reads."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()  # an empty repository is an empty list, not an unset config
    for name in model_names(root):
        model = config.model_config_list.config.add()
        model.name = name
        model.base_path = f"{base_path.rstrip('/')}/{name}"
        model.model_platform = "tensorflow"
    return text_format.MessageToString(config)


def write_models_config(root: Path, base_path: str = "/models") -> Path:
    """Writes <root>/models.config atomically (a temporary file renamed over it): TF-Serving polls the file and
    must never read half of one. The one writer of models.config (CLI, Dockerfile, the Kubernetes models Job)."""
    path = root / MODELS_CONFIG
    tmp = path.with_name(f".{MODELS_CONFIG}.{os.getpid()}.tmp")
    try:
        tmp.write_text(models_config(root, base_path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
