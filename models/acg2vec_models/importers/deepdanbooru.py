"""DeepDanbooru project folder -> tagger + illust2vec, on our Keras 3 `resnet_custom_*` with its weights copied.

A project folder (what KichangKim/DeepDanbooru's releases unpack to) holds `project.json` ("model",
"image_width", "image_height"), `tags.txt` (one tag a line, in output order; `tags-character.txt`,
`tags-general.txt` may say the categories) and `model-<model>.h5` (Keras 2 HDF5, `model.save(...)` of
`create_resnet_custom_v3(Input((h, w, 3)), len(tags))`) or a `.keras` file.

The HDF5 file is read with h5py (no Keras 2 rebuild of the ~600 layers). Weights map by creation order: the
n-th Conv2D / BatchNormalization of the source (Keras numbers its automatic names in creation order) goes to the
n-th of ours, shapes checked; `verify=True` also runs the source model with tf_keras and compares both.
Serving keeps DeepDanbooru's own preprocessing (`deepdanbooru_preprocessing`: alpha dropped, area resize keeping
the aspect ratio, centred with edge padding, values / 255).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acg2vec_models.importers import ImportFailed
from acg2vec_models.importers.common import finish, version_dir
from acg2vec_models.vocab import TagEntry, category_files, read_tags_txt

log = logging.getLogger(__name__)
_SUFFIX = re.compile(r"^(?P<base>[a-z0-9_]+?)(?:_(?P<n>\d+))?$")


@dataclass(frozen=True)
class Project:
    path: Path
    model_type: str
    input_size: int
    model_file: Path
    tags: list[TagEntry]


def read_project(path: Path) -> Project:
    """Reads project.json, the model file and the tags of a DeepDanbooru project folder."""
    from acg2vec_models.image.deepdanbooru import VARIANTS

    context_path = path / "project.json"
    if not context_path.exists():
        raise ImportFailed(f"{path} has no project.json: give the folder of a DeepDanbooru project")
    context = json.loads(context_path.read_text(encoding="utf-8"))
    model_type = str(context.get("model", ""))
    if model_type not in VARIANTS:
        raise ImportFailed(f"{context_path}: model {model_type!r} is not supported; supported: {', '.join(VARIANTS)}")
    width, height = int(context.get("image_width", 0)), int(context.get("image_height", 0))
    if width != height or width <= 0:
        raise ImportFailed(f"{context_path}: image_width {width} x image_height {height}; a square input is needed")
    candidates = [path / f"model-{model_type}.h5", path / f"model-{model_type}.keras"]
    found = [p for p in candidates if p.exists()] or sorted([*path.glob("model-*.h5"), *path.glob("model-*.keras")])
    if len(found) < 1:
        raise ImportFailed(f"{path} has no model-{model_type}.h5 (nor .keras): copy the model file into the folder")
    tags_path = path / "tags.txt"
    if not tags_path.exists():
        raise ImportFailed(f"{path} has no tags.txt: it lists the tags in the model's output order")
    tags = read_tags_txt(tags_path, category_files(path))
    return Project(path, model_type, width, found[0], tags)


@dataclass(frozen=True)
class SourceWeights:
    """What the published file holds, per weighted layer in creation order."""

    input_shape: tuple[int | None, ...]
    convs: list[tuple[str, list[np.ndarray]]]
    norms: list[tuple[str, list[np.ndarray]]]


def _creation_order(name: str) -> int:
    """Keras numbers automatic names in creation order: conv2d, conv2d_1, ..."""
    match = _SUFFIX.match(name)
    if match is None:
        raise ImportFailed(f"layer {name!r} has no Keras automatic name; cannot tell its place")
    return int(match["n"] or 0)


def _by_order(layers: list[tuple[str, str, list[np.ndarray]]], kind: str) -> list[tuple[str, list[np.ndarray]]]:
    chosen = [(name, weights) for name, cls, weights in layers if cls == kind and weights]
    return sorted(chosen, key=lambda item: _creation_order(item[0]))


def read_source_weights(model_file: Path) -> SourceWeights:
    """Reads a Keras 2 HDF5 model (DeepDanbooru's `model.save(...h5)`) with h5py, without rebuilding it; a
    `.keras` archive is loaded with Keras."""
    if model_file.suffix == ".keras":
        import keras

        model = keras.saving.load_model(str(model_file), compile=False)
        layers = [(layer.name, type(layer).__name__, list(layer.get_weights())) for layer in model.layers]
        shape = tuple(model.inputs[0].shape)
    else:
        import h5py

        try:
            with h5py.File(model_file, "r") as f:
                config = json.loads(f.attrs["model_config"])
                group = f["model_weights"]
                layers = []
                shape = ()
                for layer in config["config"]["layers"]:
                    cls, name = layer["class_name"], layer["config"]["name"]
                    if cls == "InputLayer":
                        shape = tuple(layer["config"].get("batch_input_shape") or layer["config"]["batch_shape"])
                    names = [n.decode() if isinstance(n, bytes) else n for n in group[name].attrs["weight_names"]]
                    layers.append((name, cls, [np.asarray(group[name][n]) for n in names]))
        except (OSError, KeyError) as e:
            raise ImportFailed(f"{model_file} is not a Keras HDF5 model with its config and weights ({e})") from None
    return SourceWeights(shape, _by_order(layers, "Conv2D"), _by_order(layers, "BatchNormalization"))


def _stage_filters(convs: list[tuple[str, list[np.ndarray]]], repeats: tuple[int, ...]) -> tuple[int, ...]:
    """Output channels of each stage, read from the third conv of its increasing block."""
    filters, index = [], 1  # conv 0 is the stem
    for r in repeats:
        filters.append(int(convs[index + 2][1][0].shape[-1]))
        index += 4 + 3 * r
    return tuple(filters)


def _fold(conv: list[np.ndarray], norm: list[np.ndarray], epsilon: float = 1e-3) -> list[np.ndarray]:
    """Conv kernel (no bias) + BN (gamma, beta, mean, variance; Keras's default epsilon) -> kernel, bias."""
    gamma, beta, mean, variance = (np.asarray(w, dtype=np.float64) for w in norm)
    scale = gamma / np.sqrt(variance + epsilon)
    kernel = np.asarray(conv[0], dtype=np.float64) * scale
    return [kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)]


def convert(source: SourceWeights, model_type: str, folded: bool = False) -> tuple[Any, Any]:
    """Our (encoder, tagger) with the source's weights; the width is read from the source's shapes.
    folded=True gives the serving copy, each conv + BN merged into one conv with a bias."""
    from acg2vec_models.image.deepdanbooru import VARIANTS, ResNetSpec, build_encoder, build_tagger

    shape = source.input_shape
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] is None:
        raise ImportFailed(f"the model takes {shape}; DeepDanbooru models take (batch, size, size, 3)")
    repeats = VARIANTS[model_type][1]
    expected = 1 + sum(4 + 3 * r for r in repeats) + 1
    if len(source.convs) != expected or len(source.norms) != expected - 1:
        raise ImportFailed(
            f"the model has {len(source.convs)} convolutions and {len(source.norms)} batch norms; {model_type} has "
            f"{expected} and {expected - 1}: is project.json's model right?"
        )
    num_tags = int(source.convs[-1][1][0].shape[-1])
    spec = ResNetSpec(input_size=int(shape[1]), filters=_stage_filters(source.convs, repeats), repeats=repeats)
    encoder = build_encoder(spec, folded=folded)
    tagger = build_tagger(encoder, num_tags)
    by_kind: dict[str, list[Any]] = {"Conv2D": [], "BatchNormalization": []}
    for layer in tagger.layers:
        if type(layer).__name__ in by_kind:
            by_kind[type(layer).__name__].append(layer)
    for group in by_kind.values():
        group.sort(key=lambda layer: _creation_order(layer.name))
    if folded:  # conv k of the encoder is followed by BN k; the head's conv (the last) has none
        weights = [_fold(c, n) for (_, c), (_, n) in zip(source.convs[:-1], source.norms, strict=True)]
        plan = [(by_kind["Conv2D"], [*weights, source.convs[-1][1]], [name for name, _ in source.convs])]
    else:
        plan = [(by_kind[kind], [w for _, w in theirs], [name for name, _ in theirs])
                for kind, theirs in (("Conv2D", source.convs), ("BatchNormalization", source.norms))]  # fmt: skip
    for ours, theirs, their_names in plan:
        for layer, weights, their_name in zip(ours, theirs, their_names, strict=True):
            wanted = [tuple(w.shape) for w in layer.get_weights()]
            if [tuple(w.shape) for w in weights] != wanted:
                raise ImportFailed(
                    f"{their_name}: weights {[w.shape for w in weights]} do not fit {layer.name} {wanted}"
                )
            layer.set_weights(weights)
    return encoder, tagger


def load_deepdanbooru(path: Path, verify: bool = False, folded: bool = False) -> tuple[Project, Any, Any]:
    """(project, encoder, tagger) from a DeepDanbooru project folder, converted to our architecture (trainable,
    or folded for serving)."""
    project = read_project(path)
    encoder, tagger = convert(read_source_weights(project.model_file), project.model_type, folded)
    if tagger.outputs[0].shape[-1] != len(project.tags):
        raise ImportFailed(
            f"the model has {tagger.outputs[0].shape[-1]} outputs but tags.txt lists {len(project.tags)} tags"
        )
    if verify:
        _verify(project.model_file, tagger, project.input_size)
    return project, encoder, tagger


def _verify(model_file: Path, tagger: Any, size: int) -> None:
    """Runs the source model itself (Keras 2) and ours on one random image; refuses unless they agree."""
    import tf_keras

    source = tf_keras.models.load_model(str(model_file), compile=False)
    x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    diff = float(np.abs(np.asarray(source(x, training=False)) - np.asarray(tagger(x, training=False))).max())
    if diff > 1e-4:
        raise ImportFailed(f"the converted model differs from the source by {diff:.2g}; the layers do not line up")
    log.info("converted model matches the source (max difference %.2g)", diff)


def import_deepdanbooru(
    project_dir: Path,
    root: Path,
    tagger_name: str = "tagger",
    illust2vec_name: str = "illust2vec",
    verify: bool = False,
) -> dict[str, Path]:
    """Writes the tagger and illust2vec (cut at add_43 + pooling) as new versions into the repository."""
    from acg2vec_models.export import export_image_embedder, export_tagger
    from acg2vec_models.image.deepdanbooru import build_illust2vec
    from acg2vec_models.preprocessing import deepdanbooru_preprocessing

    project, encoder, tagger = load_deepdanbooru(project_dir, verify, folded=True)  # BNs folded for serving
    prep = deepdanbooru_preprocessing(project.input_size)
    illust2vec = build_illust2vec(encoder)
    paths = {
        tagger_name: export_tagger(tagger, prep, project.tags, version_dir(root, tagger_name)),
        illust2vec_name: export_image_embedder(illust2vec, prep, version_dir(root, illust2vec_name)),
    }
    finish(root)
    return paths
