"""The default joint space `joint`, built by `acg2vec models build-defaults` after the image and text models.

Inputs, all cached: the openclipart train split of the image models (same split, same cached Lite0 features of
the train pictures, so no image is decoded again), the English texts of those pictures (data.py), and their
vectors from the installed acgvoc2vec. Training takes seconds; exporting the SavedModel most of the step. The
version carries `assets.extra/joint.json` (fingerprint, recipe, the towers it was built on); a second run finds
that fingerprint on the newest version and only checks.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from acg2vec_models import repository as repo
from acg2vec_models import steps
from acg2vec_models.joint.train import JointSpec

NAME = "joint"
NAMES = (NAME,)
MARKER = "joint.json"  # in <version>/assets.extra/
TEXT_MODEL = "acgvoc2vec"
_HERE = Path(__file__).resolve().parent
_CODE = (_HERE / "data.py", _HERE / "train.py", _HERE / "export.py", _HERE / "defaults.py")


@dataclass(frozen=True)
class Recipe:
    limit: int | None = None  # train on the first `limit` train pictures (tests)
    image_inputs: tuple[str, ...] = ("pooled", "descriptor")  # which cached backbone features the image head sees
    spec: JointSpec = field(default_factory=JointSpec)


def _log(message: str) -> None:
    print(f"[build-defaults] {message}", file=sys.stderr, flush=True)


def text_tower_id(root: Path) -> str:
    """What identifies the installed text tower: its version and a digest of its graph."""
    version = repo.latest_version(root, TEXT_MODEL)
    if version is None:
        raise RuntimeError(f"the joint space needs the text model {TEXT_MODEL!r} in {root}: build or import it first")
    graph = (root / TEXT_MODEL / str(version) / repo.SAVED_MODEL_FILE).read_bytes()
    return f"{TEXT_MODEL}/{version}/{hashlib.sha256(graph).hexdigest()[:12]}"


def fingerprint(root: Path, recipe: Recipe) -> str:
    from acg2vec_models.image import defaults as image_defaults

    image_recipe = replace(image_defaults.Recipe(), limit=recipe.limit)
    h = hashlib.sha256(
        json.dumps(
            {"recipe": asdict(recipe), "image": image_defaults.fingerprint(image_recipe), "text": text_tower_id(root)},
            sort_keys=True,
        ).encode()
    )
    for path in _CODE:
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def installed_fingerprint(root: Path) -> str | None:
    version = repo.latest_version(root, NAME)
    marker = root / NAME / str(version) / "assets.extra" / MARKER
    return json.loads(marker.read_text()).get("fingerprint") if version is not None and marker.exists() else None


# ------------------------------------------------------------------------------------------------ inputs
def text_vectors(root: Path, texts: list[str], cache_dir: Path) -> np.ndarray:
    """The installed acgvoc2vec's vectors of texts (as the server computes them), cached per tower and texts."""
    key = hashlib.sha256(json.dumps([text_tower_id(root), texts]).encode()).hexdigest()[:16]
    path = cache_dir / "joint" / f"text-vectors-{key}.npy"
    if path.exists():
        return np.load(path)
    from acg2vec_models.joint.export import text_tower_vectors

    vectors = text_tower_vectors(root / TEXT_MODEL / str(repo.latest_version(root, TEXT_MODEL)), texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), vectors)
    path.with_suffix(".tmp.npy").replace(path)
    return vectors


def image_features(features: dict[str, np.ndarray], recipe: Recipe) -> np.ndarray:
    return np.concatenate([features[name] for name in recipe.image_inputs], axis=1).astype(np.float32)


@dataclass
class TrainingSet:
    image_features: np.ndarray  # [P, F]
    texts: list[str]
    owners: list[int]  # texts[t] describes picture owners[t]


def training_set(root: Path, recipe: Recipe, cache_dir: Path) -> TrainingSet:
    from acg2vec_models.image import defaults as image_defaults
    from acg2vec_models.image.descriptor import feature_model
    from acg2vec_models.image.features import extract
    from acg2vec_models.joint.data import picture_texts

    image_recipe = replace(image_defaults.Recipe(), limit=recipe.limit)
    dataset = image_defaults.load_dataset(cache_dir, image_recipe)
    folder = image_defaults.feature_cache_dir(dataset.train, image_recipe, cache_dir, "lite0")

    def compute() -> dict[str, np.ndarray]:
        model = feature_model(image_defaults.backbone(image_recipe), image_recipe.descriptor)
        prep = image_defaults.preprocessing(image_recipe)  # the image models' own (their cache is shared)
        return extract(model, [r.image for r in dataset.train], prep, image_recipe.batch_size, "train")

    features = image_defaults.cached(folder / "clean.npz", compute)  # the image models' own cache
    by_id = picture_texts(dataset.train, cache_dir / "joint" / "texts.jsonl")
    texts, owners = [], []
    for p, record in enumerate(dataset.train):
        for text in by_id[record.id].training_texts():
            texts.append(text)
            owners.append(p)
    return TrainingSet(image_features(features, recipe), texts, owners)


# ------------------------------------------------------------------------------------------------- build
def image_model(recipe: Recipe, head: Any) -> Any:
    """Normalised image batch -> joint vector: the locked backbone's features, then the trained head."""
    import keras
    from keras import layers

    from acg2vec_models.image import defaults as image_defaults
    from acg2vec_models.image.descriptor import feature_model

    image_recipe = image_defaults.Recipe()
    features = feature_model(image_defaults.backbone(image_recipe), image_recipe.descriptor)
    image = keras.Input(features.input_shape[1:], name="image")
    out = features(image)
    parts = [out[name] for name in recipe.image_inputs]
    return keras.Model(image, head(layers.Concatenate()(parts) if len(parts) > 1 else parts[0]), name="joint_image")


def build_default_joint_model(
    root: Path, *, force: bool = False, limit: int | None = None, cache_dir: Path | None = None
) -> dict[str, Path]:
    """Installs the joint space as a new version of `joint` unless the newest version is this recipe's."""
    from acg2vec_models.image import defaults as image_defaults
    from acg2vec_models.joint.export import export_joint
    from acg2vec_models.joint.train import train_heads

    recipe = Recipe(limit=limit)
    fp = fingerprint(root, recipe)
    if not force and installed_fingerprint(root) == fp:
        return {NAME: root / NAME / str(repo.latest_version(root, NAME))}
    cache_dir = (cache_dir or Path(".cache")).resolve()
    started = time.monotonic()
    with steps.step("joint data (image features, text tower vectors)"):
        data = training_set(root, recipe, cache_dir)
        _log(f"joint space: {len(data.image_features)} pictures, {len(data.texts)} English texts")
        vectors = text_vectors(root, data.texts, cache_dir)
    with steps.step("joint training (heads)"):
        image_head, text_head = train_heads(data.image_features, vectors, data.owners, recipe.spec)
    trained_s = time.monotonic() - started
    with steps.step("joint export (SavedModel)"):
        path = export_joint(
            root / TEXT_MODEL / str(repo.latest_version(root, TEXT_MODEL)),
            text_head,
            image_model(recipe, image_head),
            image_defaults.preprocessing(image_defaults.Recipe()),  # what its features were computed with
            repo.next_version_dir(root, NAME),
        )
    info = {
        "fingerprint": fp,
        "recipe": asdict(recipe),
        "text_tower": text_tower_id(root),
        "image_tower": "illust2vec's backbone: EfficientNet-Lite0 (ImageNet), locked",
        "pictures": len(data.image_features),
        "texts": len(data.texts),
        "train_seconds": round(trained_s, 1),
    }
    (path / "assets.extra").mkdir(exist_ok=True)
    (path / "assets.extra" / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return {NAME: path}
