"""Encoders that training starts from, by name: one entry per backbone family.

A backbone is a Keras model image -> [feature map for the tagger head, feature map that illust2vec pools and
deepix builds on], with the preprocessing its input wants (the same function serves and feeds training). To plug
in another family, add a function returning a `Backbone` to BACKBONES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acg2vec_models.preprocessing import ImagePreprocessing


@dataclass(frozen=True)
class BackboneOptions:
    """What a backbone may be built from; each entry reads the fields it needs."""

    path: Path | None = None
    variant: str = "resnet_custom_v3"
    width: float = 0.25
    input_size: int = 256
    repeats: tuple[int, ...] | None = None


@dataclass
class Backbone:
    encoder: Any  # keras.Model: image -> [features, cut]
    prep: ImagePreprocessing
    #: Width factor of the family (scales the deepix head), and what identifies the architecture for resumes.
    width: float = 1.0
    identity: dict[str, Any] = field(default_factory=dict)


def deepdanbooru(options: BackboneOptions) -> Backbone:
    """A fresh (randomly initialised) DeepDanbooru resnet_custom_* at a width; DeepDanbooru's preprocessing."""
    from acg2vec_models.image.deepdanbooru import ResNetSpec, build_encoder
    from acg2vec_models.preprocessing import deepdanbooru_preprocessing

    spec = ResNetSpec.variant(options.variant, options.input_size, options.width)
    if options.repeats is not None:
        if len(options.repeats) != len(spec.filters):
            raise ValueError(f"{options.variant} has {len(spec.filters)} stages; give {len(spec.filters)} repeats")
        spec = ResNetSpec(spec.input_size, spec.width, spec.filters, tuple(options.repeats))
    identity = {"backbone": "deepdanbooru", "variant": options.variant, "width": options.width,
                "input_size": options.input_size, "repeats": list(spec.repeats)}  # fmt: skip
    return Backbone(build_encoder(spec), deepdanbooru_preprocessing(spec.input_size), options.width, identity)


def deepdanbooru_project(options: BackboneOptions) -> Backbone:
    """A published DeepDanbooru project folder (weights imported as `acg2vec models import deepdanbooru` does)."""
    from acg2vec_models.image.deepdanbooru import ILLUST2VEC_STAGE, VARIANTS
    from acg2vec_models.importers.deepdanbooru import load_deepdanbooru
    from acg2vec_models.preprocessing import deepdanbooru_preprocessing

    if options.path is None:
        raise ValueError("the deepdanbooru-project backbone needs --backbone-path <DeepDanbooru project folder>")
    project, encoder, _ = load_deepdanbooru(options.path)
    width = encoder.outputs[1].shape[-1] / VARIANTS[project.model_type][0][ILLUST2VEC_STAGE]
    identity = {"backbone": "deepdanbooru-project", "path": str(options.path.resolve())}
    return Backbone(encoder, deepdanbooru_preprocessing(project.input_size), width, identity)


def keras_file(options: BackboneOptions) -> Backbone:
    """A Keras 3 model file (.keras) whose outputs are [feature map, cut feature map] or one feature map (used
    for both); input [size, size, 3] RGB in [0, 1], images padded to a square on white."""
    import keras

    if options.path is None:
        raise ValueError("the keras backbone needs --backbone-path <model.keras>")
    model = keras.saving.load_model(str(options.path), compile=False)
    outputs = model.outputs if len(model.outputs) == 2 else [model.outputs[0], model.outputs[0]]
    encoder = keras.Model(model.inputs[0], outputs, name="encoder")
    size = int(model.inputs[0].shape[1])
    identity = {"backbone": "keras", "path": str(options.path.resolve())}
    return Backbone(encoder, ImagePreprocessing(size=size), 1.0, identity)


BACKBONES: dict[str, Callable[[BackboneOptions], Backbone]] = {
    "deepdanbooru": deepdanbooru,
    "deepdanbooru-project": deepdanbooru_project,
    "keras": keras_file,
}


def build_backbone(name: str, options: BackboneOptions) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name](options)
