"""`build-defaults`' image half end to end on a small subset of openclipart (real download, real nsfwjs and Lite0
weights, real training and export), then a real server serving what it built."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from acg2vec.v1 import common_pb2, image_feature_pb2, image_feature_pb2_grpc, tagging_pb2, tagging_pb2_grpc
from acg2vec_models import repository
from acg2vec_models.dev import build_dev_models
from acg2vec_models.image import thumbnail
from acg2vec_models.image.defaults import MARKER, Recipe, build_default_image_models
from acg2vec_models.image.edits import edit
from acg2vec_models.image.heads import ProjectionSpec
from acg2vec_server.app import Application
from acg2vec_testing.paths import ROOT, SAMPLE_PNG, SHARED_IMAGES
from tests.support.servers import make_settings

LIMIT = 20


def letterboxed(data: bytes) -> bytes:
    """The first seeded "border" edit that is a letterbox (black bars) rather than a plain canvas."""
    for seed in range(16):
        copy = edit(data, "border", np.random.default_rng(seed))
        if Image.open(io.BytesIO(copy)).getpixel((0, 0)) == (0, 0, 0):
            return copy
    raise AssertionError("no letterbox among the first 16 border edits")


async def test_build_defaults_on_a_subset_is_served_with_tags_rating_and_features(tmp_path, redis_server):
    root = tmp_path / "models"
    paths = build_default_image_models(root, limit=LIMIT, cache_dir=ROOT / ".cache")
    assert set(paths) == {"tagger", "illust2vec"} and (root / MARKER).exists()
    assert "deepix" not in repository.model_names(root)  # openclipart has no popularity data
    # a second run only checks: same versions, nothing new written
    assert build_default_image_models(root, limit=LIMIT, cache_dir=ROOT / ".cache") == paths
    assert repository.versions(root, "tagger") == [int(paths["tagger"].name)]
    build_dev_models(root, parts=("acgvoc2vec",))  # the text half is not under test here
    repository.write_models_config(root)

    app = Application(make_settings(tmp_path / "data", root, redis_server.url))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            tagging = tagging_pb2_grpc.TaggingServiceStub(channel)
            picture = SHARED_IMAGES / "chika.jpg" if SHARED_IMAGES.is_dir() else SAMPLE_PNG
            options = tagging_pb2.TagOptions(top_k=5, thresholds=tagging_pb2.CategoryThresholds(general=0.0))
            tagged = await tagging.TagImage(tagging_pb2.TagImageRequest(image=picture.read_bytes(), options=options))
            result = tagged.result
            assert len(result.tags) == 5 and all(t.category == common_pb2.TAG_CATEGORY_GENERAL for t in result.tags)
            assert all(0.0 <= t.score <= 1.0 for t in result.tags)
            assert [t.score for t in result.tags] == sorted((t.score for t in result.tags), reverse=True)
            assert result.model.name == "tagger" and result.model.version == int(paths["tagger"].name)
            ratings = {r.rating: r.score for r in result.rating_scores}
            assert set(ratings) == {common_pb2.RATING_GENERAL, common_pb2.RATING_SENSITIVE, common_pb2.RATING_EXPLICIT}
            assert sum(ratings.values()) == pytest.approx(1.0, abs=1e-3)
            if SHARED_IMAGES.is_dir():  # nsfwjs calls this illustration a drawing: rating general
                assert result.rating == common_pb2.RATING_GENERAL

            feature = await image_feature_pb2_grpc.ImageFeatureServiceStub(channel).ExtractImageFeature(
                image_feature_pb2.ExtractImageFeatureRequest(image=picture.read_bytes())
            )
            vector = feature.feature
            thumbnail_dims = thumbnail.SIZE**2 if Recipe().thumbnail_weight else 0
            assert vector.dimension == ProjectionSpec().dim + thumbnail_dims == len(vector.values)
            assert vector.model.name == "illust2vec" and vector.normalized

            # near duplicates (issue 15): a letterboxed and a black-flattened copy of a transparent picture embed
            # next to it, nearer than another picture
            async def embed(data: bytes) -> np.ndarray:
                request = image_feature_pb2.ExtractImageFeatureRequest(image=data)
                answer = await image_feature_pb2_grpc.ImageFeatureServiceStub(channel).ExtractImageFeature(request)
                return np.asarray(answer.feature.values)

            sample = SAMPLE_PNG.read_bytes()  # 69 % transparent
            copies = {"letterbox": letterboxed(sample), "black": edit(sample, "black", np.random.default_rng(0))}
            original, other = await embed(sample), await embed(picture.read_bytes())
            for name, copy in copies.items():
                similarity = float(await embed(copy) @ original)
                assert similarity > max(0.9, float(other @ original)), name

            with pytest.raises(grpc.aio.AioRpcError) as info:
                await tagging.PredictPopularity(tagging_pb2.PredictPopularityRequest(image=picture.read_bytes()))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await app.stop(grace_s=0)
