"""Turning scores into tags: MCut as the WD tagger apps compute it, the character floor, the precedence of
thresholds (request tag > request category > server tag > server default), the server's thresholds file, and
the rating names of the sources; through the real server with the development tagger."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tensorflow as tf

from acg2vec.v1 import tagging_pb2
from acg2vec_models.export import read_labels
from acg2vec_server.domain.models import Labels
from acg2vec_server.domain.tagging import CHARACTER_MCUT_FLOOR, Tagger, mcut_threshold, read_tag_thresholds
from acg2vec_server.domain.types import ModelRef, TagOptions
from acg2vec_testing.paths import SAMPLE_PNG


def wd_app_mcut(probs: np.ndarray) -> float:
    """SmilingWolf's wd-tagger app (app.py, `mcut_threshold`), written again: sorted descending, the largest
    difference between neighbours, its midpoint."""
    sorted_probs = probs[probs.argsort()[::-1]]
    difs = sorted_probs[:-1] - sorted_probs[1:]
    t = difs.argmax()
    return float((sorted_probs[t] + sorted_probs[t + 1]) / 2)


def test_mcut_cuts_halfway_across_the_largest_gap():
    assert mcut_threshold(np.array([0.2, 0.9, 0.3, 0.8])) == pytest.approx(0.55)  # the gap 0.8 -> 0.3
    rng = np.random.default_rng(7)
    for size in (2, 3, 10, 500, 6913):
        scores = rng.beta(0.3, 2.0, size).astype(np.float32)
        assert mcut_threshold(scores) == pytest.approx(wd_app_mcut(scores.astype(np.float64)), abs=1e-12)
    assert mcut_threshold(np.array([0.4, 0.4, 0.4])) == pytest.approx(0.4)  # no gap: nothing strictly above
    assert mcut_threshold(np.array([0.7])) == pytest.approx(0.7) and mcut_threshold(np.array([])) == float("inf")


def vocabulary(tagger: Tagger):
    names = ["rating_general", "rating_explicit", "long_hair", "solo", "smile", "hat", "alice", "bob", "carol"]
    categories = ["rating", "rating", "general", "general", "general", "general", "character", "character",
                  "character"]  # fmt: skip
    return tagger._vocabulary_of(Labels(1, names, np.array(categories, dtype=object)))


ROW = np.array([0.9, 0.1, 0.95, 0.9, 0.4, 0.3, 0.12, 0.02, 0.01], dtype=np.float32)


def kept(tagger: Tagger, options: TagOptions, row: np.ndarray = ROW) -> list[str]:
    v = vocabulary(tagger)
    return [v.labels.names[i] for i in np.flatnonzero(tagger.keep(row, v, options) & ~v.is_rating)]


def test_thresholds_apply_in_order_of_precedence():
    server = Tagger(None, 0.5, 64, {"smile": 0.35, "solo": 0.95})  # type: ignore[arg-type]
    assert kept(server, TagOptions()) == ["long_hair", "smile"]  # the server's tag thresholds, else 0.5
    # a category threshold in the request wins over the server's tag thresholds
    assert kept(server, TagOptions(thresholds={"general": 0.3})) == ["long_hair", "solo", "smile", "hat"]
    # a tag threshold in the request wins over everything; tags the model does not know are ignored
    options = TagOptions(thresholds={"general": 0.3}, tag_thresholds={"hat": 0.31, "alice": 0.1, "nobody": 0.0})
    assert kept(server, options) == ["long_hair", "solo", "smile", "alice"]


def test_mcut_per_category_with_the_character_floor():
    tagger = Tagger(None, 0.5, 64)  # type: ignore[arg-type]
    # general: 0.95, 0.9 | 0.4, 0.3 -> the cut at 0.65
    assert kept(tagger, TagOptions(modes={"general": "mcut"})) == ["long_hair", "solo"]
    # characters: 0.12 | 0.02, 0.01 would cut at 0.07; the floor of 0.15 keeps none
    assert kept(tagger, TagOptions(modes={"character": "mcut"}, thresholds={"general": 1.0})) == []
    higher = ROW.copy()
    higher[6:] = [0.6, 0.2, 0.18]  # the cut at 0.4, above the floor
    assert kept(tagger, TagOptions(modes={"character": "mcut"}, thresholds={"general": 1.0}), higher) == ["alice"]
    assert CHARACTER_MCUT_FLOOR == 0.15
    # MCut keeps scores strictly above the cut; a tag threshold still wins over it
    tied = ROW.copy()
    tied[2:6] = 0.5
    assert kept(tagger, TagOptions(modes={"general": "mcut"}, thresholds={"character": 1.0}), tied) == []
    options = TagOptions(modes={"general": "mcut"}, thresholds={"character": 1.0}, tag_thresholds={"hat": 0.5})
    assert kept(tagger, options, tied) == ["hat"]


def test_ratings_of_each_source_are_recognised():
    tagger = Tagger(None, 0.5, 64)  # type: ignore[arg-type]
    tags = tagger._tags(ROW, vocabulary(tagger), TagOptions(), ModelRef("tagger", 1), None)
    assert tags.rating == "general" and tags.rating_scores == pytest.approx({"general": 0.9, "explicit": 0.1})
    assert [t.name for t in tags.tags] == ["long_hair", "solo"]  # ratings are never tags


def test_the_server_thresholds_file_is_read_and_checked(tmp_path):
    csv_file = tmp_path / "thresholds.csv"
    csv_file.write_text('tag,threshold\nlong_hair,0.35\n"hat, red",0.9\n\n', encoding="utf-8")
    assert read_tag_thresholds(csv_file) == {"long_hair": 0.35, "hat, red": 0.9}
    csv_file.write_text("long_hair,0.35\nsolo,1\n", encoding="utf-8")  # no header
    assert read_tag_thresholds(csv_file) == {"long_hair": 0.35, "solo": 1.0}
    json_file = tmp_path / "thresholds.json"
    json_file.write_text(json.dumps({"long_hair": 0.35, "solo": 0}), encoding="utf-8")
    assert read_tag_thresholds(json_file) == {"long_hair": 0.35, "solo": 0.0}
    for text, match in (("long_hair,0.3\nsolo,1.5\n", r"thresholds.csv:2: each entry is a tag and a threshold"),
                        ("long_hair,0.3\nlong_hair,0.4\n", r"thresholds.csv:2: 'long_hair' is listed twice"),
                        ("long_hair,nan\n", "thresholds.csv:1")):  # fmt: skip
        csv_file.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=match):
            read_tag_thresholds(csv_file)
    json_file.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"write an object"):
        read_tag_thresholds(json_file)
    with pytest.raises(ValueError, match="cannot read the tag thresholds file"):
        read_tag_thresholds(tmp_path / "missing.csv")


# ---------------------------------------------------------------- through the real server (development tagger)
@pytest.fixture(scope="module")
def sample_scores(model_repo) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The development tagger's names, categories and scores for the sample image, straight from the SavedModel."""
    loaded = tf.saved_model.load(str(model_repo / "tagger" / "1"))
    names, category_list = read_labels(loaded)
    categories = np.array(category_list)
    scores = loaded.signatures["serving_default"](image_bytes=tf.constant([SAMPLE_PNG.read_bytes()]))["scores"]
    return names, categories, scores.numpy()[0]


async def tag(stubs, **options) -> list[tuple[str, float]]:
    request = tagging_pb2.TagImageRequest(image=SAMPLE_PNG.read_bytes(), options=tagging_pb2.TagOptions(**options))
    response = await stubs.tagging.TagImage(request)
    return [(t.name, t.score) for t in response.result.tags]


async def test_mcut_through_the_server(stubs, sample_scores):
    names, categories, scores = sample_scores
    general = np.flatnonzero(categories == "general")
    cut = wd_app_mcut(scores[general].astype(np.float64))
    expected = [names[i] for i in general[np.argsort(-scores[general], kind="stable")] if scores[i] > cut][:100]
    modes = tagging_pb2.CategoryModes(general=tagging_pb2.THRESHOLD_MODE_MCUT)
    got = await tag(stubs, modes=modes, top_k=100)
    assert [name for name, _ in got] == expected and expected  # the dev tagger's largest gap keeps some
    fixed = await tag(stubs, modes=tagging_pb2.CategoryModes(general=tagging_pb2.THRESHOLD_MODE_FIXED), top_k=100)
    assert fixed == await tag(stubs, top_k=100)  # FIXED is the default


async def test_tag_thresholds_through_the_server(stubs, sample_scores):
    names, categories, scores = sample_scores
    general = np.flatnonzero(categories == "general")
    low = names[general[int(np.argmin(scores[general]))]]  # the least likely tag, far below any threshold
    shut = tagging_pb2.CategoryThresholds(general=1.0)
    got = await tag(stubs, thresholds=shut, tag_thresholds={low: 0.0, "not_a_tag_of_this_model": 0.0})
    assert [name for name, _ in got] == [low]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await tag(stubs, tag_thresholds={low: 1.5})
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"options.tag_thresholds[{low!r}]" in error.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await tag(stubs, modes=tagging_pb2.CategoryModes(character=7))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "options.modes.character" in error.value.details()
