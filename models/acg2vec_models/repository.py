"""The model repository: TF-Serving's layout, the one contract between training/import and serving.

    <root>/<model>/<version>/saved_model.pb + variables/   (one SavedModel per version)
    <root>/models.config                                   (ModelServerConfig for tensorflow_model_server)

Signatures (what the service relies on):
  image models  serving_default(image_bytes: string[N]) -> tagger: scores[N,T];
                illust2vec: embedding[N,D]; deepix: bookmarks[N,15], views[N,15], sanity[N,5]
  tagger        labels(rows: int64[N]) -> names: string[N,T], categories: string[N,T]   (the same row N times)
  text models   serving_default(text: string[N]) -> embedding[N,D]                (tokenised in the graph)
            or  serving_default(input_ids: int64[N,L], length: int64[N]) -> embedding[N,D],
                tokenizer(rows: int64[N]) -> tokenizer_json: string[N]  (the server tokenises; see text/tokens.py)

Every signature takes at least one input and every tensor, in and out, carries the batch dimension first:
TF-Serving with `--enable_batching` sends each Predict through its batch scheduler, which refuses a call
without input ("Batching Run() must have at least one input tensor") and an output whose 0th dimension is not
the batch's (docs/deployment.md lists the rules). So `labels` and `tokenizer`, which carry data rather than
compute on an input, take `rows` (values ignored) and repeat their answer once per row; callers send one row.
`batching_problems` finds what a SignatureDef shows of a breach; the exporters refuse to write one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SAVED_MODEL_FILE = "saved_model.pb"
MODELS_CONFIG = "models.config"
LABELS_SIGNATURE = "labels"
ROWS_INPUT = "rows"  # the batch input of the data signatures (labels, tokenizer): one answer per row


def batching_problems(signature_defs: Mapping[str, Any]) -> list[str]:
    """What in these SignatureDefs (saved_model.pb's, or GetModelMetadata's) TF-Serving's batching would refuse:
    a signature without input, a scalar input or output, or a fixed 0th dimension that cannot follow the batch.
    Empty when the signatures look batchable (the emulator checks the rest at run time, as TF-Serving does)."""
    problems = []
    for name, sig in sorted(signature_defs.items()):
        if name.startswith("__"):
            continue  # __saved_model_init_op: not a serving signature
        if not sig.inputs:
            problems.append(
                f"signature '{name}' takes no input: TF-Serving's batching refuses it (Batching Run() must have at "
                f"least one input tensor); give it a batch input such as '{ROWS_INPUT}: int64[N]'"
            )
        for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
            for key, info in sorted(tensors.items()):
                shape = info.tensor_shape
                if shape.unknown_rank:
                    continue
                if not shape.dim:
                    problems.append(
                        f"signature '{name}' {kind} '{key}' is a scalar: under TF-Serving's batching every {kind} "
                        "carries the batch dimension first"
                    )
                elif kind == "output" and shape.dim[0].size > 0:
                    problems.append(
                        f"signature '{name}' output '{key}' has a fixed 0th dimension ({shape.dim[0].size}): under "
                        "TF-Serving's batching it must be the batch size (one row per input row)"
                    )
    return problems


def check_batchable(path: Path) -> None:
    """Raises ValueError naming each problem when the SavedModel at path has a signature TF-Serving's batching
    would refuse (called by the exporters before a version folder appears)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / SAVED_MODEL_FILE).read_bytes())
    problems = batching_problems(saved.meta_graphs[0].signature_def)
    if problems:
        raise ValueError(f"{path}: signatures TF-Serving cannot serve with batching on: " + "; ".join(problems))


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
