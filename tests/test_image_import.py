"""Importers: small models in each published format (built here, real vocabularies) go through
`acg2vec models import`, and the imported SavedModels on encoded bytes reproduce the source model run with the
source's own preprocessing; the real server then serves an imported tagger with the source's categories."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from click.testing import CliRunner
from PIL import Image

from acg2vec.v1 import common_pb2, tagging_pb2
from acg2vec_models.export import read_labels
from acg2vec_models.preprocessing import ImagePreprocessing, preprocess_batch
from acg2vec_models.vocab import WD14_SELECTED_TAGS, read_selected_tags_csv
from acg2vec_server.cli.main import main
from acg2vec_testing.images import image_bytes
from acg2vec_testing.model_repository import copy_repository, dev_model_repository
from tests.support.servers import serving
from tests.support.source_models import (
    acg2vec_request,
    build_acg2vec_first_deepix,
    build_acg2vec_models,
    build_deepdanbooru_project,
    build_wd14_model,
    deepdanbooru_reference_input,
    wd14_reference_input,
)


def transparent_png(seed: int, size: tuple[int, int]) -> bytes:
    """An RGBA picture whose alpha runs from 0 to 255: the sources treat transparency differently."""
    rgba = np.asarray(Image.open(io.BytesIO(image_bytes(seed, size=size))).convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1]).astype(np.uint8)[None, :]
    out = io.BytesIO()
    Image.fromarray(rgba).save(out, format="PNG")
    return out.getvalue()


IMAGES = [
    image_bytes(1),  # 96 x 80: centred with a half-pixel offset in DeepDanbooru
    image_bytes(2, size=(81, 97)),
    image_bytes(3, size=(50, 120), fmt="JPEG"),
    image_bytes(4, size=(64, 64), mode="L"),
    transparent_png(5, (120, 70)),
]


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def serve_fn(path: Path, signature: str = "serving_default"):
    return tf.saved_model.load(str(path)).signatures[signature]


def labels(path: Path) -> tuple[list[str], list[str]]:
    return read_labels(tf.saved_model.load(str(path)))


def test_deepdanbooru_project_imports_as_tagger_and_illust2vec(tmp_path):
    project, source = build_deepdanbooru_project(tmp_path / "project", size=64)
    repo = tmp_path / "repo"
    output = run_cli("models", "import", "deepdanbooru", str(project), "--repository", str(repo))
    assert "tagger" in output and "illust2vec" in output

    reference_input = np.stack([deepdanbooru_reference_input(b, 64) for b in IMAGES])
    expected = source(reference_input, training=False).numpy()
    scores = serve_fn(repo / "tagger" / "1")(image_bytes=tf.constant(IMAGES))["scores"].numpy()
    np.testing.assert_allclose(scores, expected, atol=2e-5)
    assert expected.std() > 0.01  # the outputs vary, so the comparison means something

    # ACG2vec's illust2vec: the original layer add_43 (13th block of the 4th stage) + global average pooling
    cut = tf_keras.Model(source.inputs, tf_keras.layers.GlobalAveragePooling2D()(source.get_layer("add_43").output))
    embedding = serve_fn(repo / "illust2vec" / "1")(image_bytes=tf.constant(IMAGES))["embedding"].numpy()
    assert embedding.shape == (len(IMAGES), source.get_layer("add_43").output.shape[-1])
    np.testing.assert_allclose(embedding, cut(reference_input).numpy(), atol=2e-5)

    # the check is sensitive to preprocessing: white padding (our default) instead of DeepDanbooru's edge padding
    padded_white = source(preprocess_batch(tf.constant(IMAGES[:1]), ImagePreprocessing(size=64)), training=False)
    assert np.abs(padded_white.numpy() - expected[:1]).max() > 1e-3

    names, categories = labels(repo / "tagger" / "1")
    tags = [t for t in (project / "tags.txt").read_text().splitlines() if t]
    assert names == tags and len(names) == 9176
    assert categories[names.index("hatsune_miku")] == "character"
    assert [c for n, c in zip(names, categories, strict=True) if n.startswith("rating:")] == ["rating"] * 3
    assert (repo / "models.config").read_text().count("config {") == 2


async def test_wd14_saved_model_imports_as_tagger_and_serves_its_categories(tmp_path, redis_server):
    source_dir, source = build_wd14_model(tmp_path / "wd14")
    images = [*IMAGES, image_bytes(6, size=(300, 896), fmt="JPEG")]  # 896 = 2 x 448: pad, then INTER_AREA
    repo = copy_repository(dev_model_repository(), tmp_path / "repo", only=["illust2vec", "deepix", "acgvoc2vec"])
    run_cli("models", "import", "wd14", str(source_dir), "--repository", str(repo))

    expected = source(np.stack([wd14_reference_input(b) for b in images])).numpy()
    scores = serve_fn(repo / "tagger" / "1")(image_bytes=tf.constant(images))["scores"].numpy()
    np.testing.assert_allclose(scores, expected, atol=2e-5)
    assert expected.std() > 0.05
    names, categories = labels(repo / "tagger" / "1")
    csv = read_selected_tags_csv(WD14_SELECTED_TAGS)
    assert names == [t.name for t in csv] and categories == [t.category for t in csv]
    assert categories.count("rating") == 4  # the repository's copy of selected_tags.csv: ratings and general tags
    await _served_wd14_tags(repo, tmp_path, redis_server.url, names, categories, scores[0])


async def _served_wd14_tags(
    repo: Path, tmp_path: Path, redis_url: str, names: list[str], categories: list[str], scores: np.ndarray
) -> None:
    """The server answers the imported tagger's scores with the csv's categories and its rating tags as ratings."""
    async with serving(repo, tmp_path / "data", redis_url, "wd14:v1") as stubs:
        loose = tagging_pb2.CategoryThresholds(general=0.0, character=0.0)
        response = await stubs.tagging.TagImage(
            tagging_pb2.TagImageRequest(image=IMAGES[0], options=tagging_pb2.TagOptions(thresholds=loose, top_k=50))
        )
    result = response.result
    ranked = [i for i in np.argsort(-scores, kind="stable") if categories[i] != "rating"][:50]
    assert [t.name for t in result.tags][:10] == [names[i] for i in ranked][:10]
    np.testing.assert_allclose([t.score for t in result.tags], scores[ranked], atol=1e-5)
    assert {t.category for t in result.tags} == {common_pb2.TAG_CATEGORY_GENERAL}
    ratings = {"general": common_pb2.RATING_GENERAL, "sensitive": common_pb2.RATING_SENSITIVE,
               "questionable": common_pb2.RATING_QUESTIONABLE, "explicit": common_pb2.RATING_EXPLICIT}  # fmt: skip
    served = {r.rating: r.score for r in result.rating_scores}
    assert served == pytest.approx({ratings[names[i]]: float(scores[i]) for i in range(4)}, abs=1e-5)
    assert result.rating == max(served, key=served.__getitem__)
    assert result.model.name == "tagger" and result.model.version == 1


def test_acg2vec_tf_serving_folders_serve_through_our_signature(tmp_path):
    source = build_acg2vec_models(tmp_path / "acg2vec", size=48)
    repo = tmp_path / "repo"
    output = run_cli("models", "import", "acg2vec", str(source), "--repository", str(repo))
    assert all(role in output for role in ("tagger", "illust2vec", "deepix"))

    request = tf.constant([acg2vec_request(b) for b in IMAGES])  # what ACG2vec's web app sends
    ours = tf.constant(IMAGES)
    pairs = [
        ("deepdanbooru", "tagger", {"scores": None}),
        ("img_semantics_feature_extract_model", "illust2vec", {"embedding": None}),
        ("img_score_feature_extract_model", "deepix", {"bookmarks": "pix2score", "views": "pix2score_1",
                                                       "sanity": "pix2score_2"}),
    ]  # fmt: skip
    for folder, role, outputs in pairs:
        original = serve_fn(source / folder / "1")(b64_input_bytes=request)
        imported = serve_fn(repo / role / "1")(image_bytes=ours)
        assert set(imported) == set(outputs)
        for ours_name, their_name in outputs.items():
            theirs = original[their_name] if their_name else next(iter(original.values()))
            np.testing.assert_allclose(imported[ours_name].numpy(), theirs.numpy(), atol=1e-6)
            assert theirs.numpy().std() > 1e-3
    assert serve_fn(repo / "deepix" / "1")(image_bytes=ours)["bookmarks"].shape == (len(IMAGES), 15)
    names, _ = labels(repo / "tagger" / "1")
    assert len(names) == 9176 and names[-3:] == ["rating:safe", "rating:questionable", "rating:explicit"]


@pytest.mark.parametrize(
    ("kind", "make", "message"),
    [
        ("deepdanbooru", lambda p: p, "project.json"),
        ("wd14", lambda p: p, "saved_model.pb"),
        ("acg2vec", build_acg2vec_first_deepix, "10 bins"),
    ],
)
def test_import_refuses_what_it_cannot_serve_and_says_why(tmp_path, kind, make, message):
    source = tmp_path / "deepix"
    source.mkdir()
    make(source)
    result = CliRunner().invoke(main, ["models", "import", kind, str(source), "--repository", str(tmp_path / "r")])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("saved_model.pb"))
