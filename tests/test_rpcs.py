"""Every RPC of every service, through the generated stubs, against the real server."""

from __future__ import annotations

import numpy as np
import pytest

from acg2vec.v1 import common_pb2, image_feature_pb2, search_pb2, tagging_pb2, text_feature_pb2
from acg2vec_testing.images import image_bytes
from acg2vec_testing.paths import SAMPLE_PNG, SHARED_IMAGES


async def test_tag_image_returns_scored_categorised_tags_and_rating(stubs):
    response = await stubs.tagging.TagImage(
        tagging_pb2.TagImageRequest(image=SAMPLE_PNG.read_bytes(), options=tagging_pb2.TagOptions(top_k=7))
    )
    result = response.result
    assert 0 < len(result.tags) <= 7
    scores = [t.score for t in result.tags]
    assert scores == sorted(scores, reverse=True)
    assert all(t.score >= 0.5 for t in result.tags)
    assert all(t.category != common_pb2.TAG_CATEGORY_UNSPECIFIED for t in result.tags)
    assert all(t.category != common_pb2.TAG_CATEGORY_RATING for t in result.tags)
    assert result.rating != common_pb2.RATING_UNSPECIFIED
    assert {r.rating for r in result.rating_scores} == {1, 2, 3, 4}
    assert result.model.name == "tagger" and result.model.version >= 1
    assert not result.HasField("popularity")


async def test_thresholds_per_category_filter_tags(stubs):
    image = SAMPLE_PNG.read_bytes()
    loose = tagging_pb2.CategoryThresholds(general=0.0, character=0.0, copyright=0.0, artist=0.0, meta=0.0)
    many = await stubs.tagging.TagImage(
        tagging_pb2.TagImageRequest(image=image, options=tagging_pb2.TagOptions(thresholds=loose, top_k=100))
    )
    assert len(many.result.tags) == 100
    cut = many.result.tags[40].score
    strict = tagging_pb2.CategoryThresholds(general=cut, character=cut, copyright=cut, artist=cut, meta=cut)
    few = await stubs.tagging.TagImage(
        tagging_pb2.TagImageRequest(image=image, options=tagging_pb2.TagOptions(thresholds=strict, top_k=100))
    )
    assert all(t.score >= cut for t in few.result.tags)
    assert [t.name for t in few.result.tags][:41] == [t.name for t in many.result.tags][:41]
    only_general = tagging_pb2.CategoryThresholds(general=0.0, character=1.0, copyright=1.0, artist=1.0, meta=1.0)
    general = await stubs.tagging.TagImage(
        tagging_pb2.TagImageRequest(image=image, options=tagging_pb2.TagOptions(thresholds=only_general, top_k=100))
    )
    assert {t.category for t in general.result.tags if t.score < 1.0} == {common_pb2.TAG_CATEGORY_GENERAL}


async def test_batch_tag_images_keeps_order(stubs):
    images = [image_bytes(seed) for seed in range(3)]
    batch = await stubs.tagging.BatchTagImages(tagging_pb2.BatchTagImagesRequest(images=images))
    assert len(batch.results) == 3
    single = await stubs.tagging.TagImage(tagging_pb2.TagImageRequest(image=images[1]))
    assert [t.name for t in batch.results[1].tags] == [t.name for t in single.result.tags]


async def test_stream_tag_images_answers_each_item_and_reports_bad_ones(stubs):
    async def requests():
        for i in range(5):
            yield tagging_pb2.StreamTagImagesRequest(request_id=f"r{i}", image=image_bytes(i))
        yield tagging_pb2.StreamTagImagesRequest(request_id="bad", image=b"not an image")
        bad_options = tagging_pb2.TagOptions(thresholds=tagging_pb2.CategoryThresholds(general=1.5))
        yield tagging_pb2.StreamTagImagesRequest(request_id="bad-options", image=image_bytes(0), options=bad_options)

    answers = {a.request_id: a async for a in stubs.tagging.StreamTagImages(requests())}
    assert set(answers) == {"r0", "r1", "r2", "r3", "r4", "bad", "bad-options"}
    assert answers["bad-options"].error.code == 3 and "thresholds.general" in answers["bad-options"].error.message
    assert all(answers[f"r{i}"].HasField("result") for i in range(5))
    assert answers["bad"].error.code == 3 and "not an image" in answers["bad"].error.message


async def test_popularity_bins(stubs):
    response = await stubs.tagging.PredictPopularity(tagging_pb2.PredictPopularityRequest(image=image_bytes(1)))
    p = response.popularity
    assert (len(p.bookmarks.bins), len(p.views.bins), len(p.sanity_level.bins)) == (15, 15, 5)
    assert sum(b.probability for b in p.bookmarks.bins) == pytest.approx(1.0, abs=1e-4)
    assert p.bookmarks.bins[0].upper == 10 and p.bookmarks.bins[-1].lower == 2700
    assert p.bookmarks.bins[p.bookmarks.most_likely_bin].probability == max(b.probability for b in p.bookmarks.bins)
    tagged = await stubs.tagging.TagImage(
        tagging_pb2.TagImageRequest(image=image_bytes(1), options=tagging_pb2.TagOptions(include_popularity=True))
    )
    assert tagged.result.popularity.model.name == "deepix"


async def test_image_features_are_normalised_and_deterministic(stubs):
    one = await stubs.image.ExtractImageFeature(image_feature_pb2.ExtractImageFeatureRequest(image=image_bytes(3)))
    f = one.feature
    assert f.dimension == len(f.values) > 0 and f.normalized and f.model.name == "illust2vec"
    assert np.linalg.norm(f.values) == pytest.approx(1.0, abs=1e-4)
    batch = await stubs.image.BatchExtractImageFeatures(
        image_feature_pb2.BatchExtractImageFeaturesRequest(images=[image_bytes(3), image_bytes(4)])
    )
    np.testing.assert_allclose(batch.features[0].values, f.values, atol=1e-5)
    assert not np.allclose(batch.features[1].values, f.values, atol=1e-3)


async def test_stream_image_features(stubs):
    async def requests():
        for i in range(4):
            yield image_feature_pb2.StreamExtractImageFeaturesRequest(request_id=str(i), image=image_bytes(i))

    answers = [a async for a in stubs.image.StreamExtractImageFeatures(requests())]
    assert sorted(a.request_id for a in answers) == ["0", "1", "2", "3"]
    assert all(a.feature.dimension > 0 for a in answers)


async def test_text_features_cross_lingual_stand_in_and_batch(stubs):
    one = await stubs.text.ExtractTextFeature(text_feature_pb2.ExtractTextFeatureRequest(text="魔法少女まどか☆マギカ"))
    assert one.feature.normalized and one.feature.model.name == "acgvoc2vec"
    batch = await stubs.text.BatchExtractTextFeatures(
        text_feature_pb2.BatchExtractTextFeaturesRequest(
            texts=["魔法少女まどか☆マギカ", "魔法少女小圆", "cooking recipes"]
        )
    )
    a, b, c = (np.array(f.values) for f in batch.features)
    np.testing.assert_allclose(a, one.feature.values, atol=1e-5)
    assert a @ b > a @ c  # shared characters: closer

    async def requests():
        yield text_feature_pb2.StreamExtractTextFeaturesRequest(request_id="x", text="long hair")
        yield text_feature_pb2.StreamExtractTextFeaturesRequest(request_id="empty", text="  ")

    answers = {a.request_id: a async for a in stubs.text.StreamExtractTextFeatures(requests())}
    assert answers["x"].feature.dimension == one.feature.dimension
    assert answers["empty"].error.code == 3


async def test_index_get_update_search_delete(stubs):
    ids = [f"rpc-{i}" for i in range(4)]
    for i, id in enumerate(ids):
        meta = search_pb2.IllustrationMetadata(
            title=f"picture {i}", artist="tester", fields={"source": "even" if i % 2 == 0 else "odd"}
        )
        r = await stubs.search.IndexIllustration(
            search_pb2.IndexIllustrationRequest(id=id, image=image_bytes(100 + i), metadata=meta)
        )
        assert r.outcome == search_pb2.INDEX_OUTCOME_CREATED
        assert r.illustration.id == id and len(r.illustration.tags) > 0 and len(r.illustration.content_sha256) == 64

    again = await stubs.search.IndexIllustration(
        search_pb2.IndexIllustrationRequest(
            id=ids[0],
            image=image_bytes(100),
            metadata=search_pb2.IllustrationMetadata(title="picture 0", artist="tester", fields={"source": "even"}),
        )
    )
    assert again.outcome == search_pb2.INDEX_OUTCOME_UNCHANGED

    got = await stubs.search.GetIllustration(search_pb2.GetIllustrationRequest(id=ids[1], include_vectors=True))
    assert got.illustration.metadata.title == "picture 1" and got.illustration.image_vector.dimension > 0
    assert got.illustration.create_time.seconds > 0

    # by image: the indexed picture comes back first
    hits = (await stubs.search.Search(search_pb2.SearchRequest(image=image_bytes(102), top_k=3))).hits
    assert hits[0].id == ids[2] and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].illustration.metadata.title == "picture 2"
    # by id: itself left out
    by_id = await stubs.search.Search(search_pb2.SearchRequest(illustration_id=ids[2], top_k=10))
    assert ids[2] not in [h.id for h in by_id.hits] and len(by_id.hits) >= 3
    # by raw vector, with a custom-field filter
    vec = search_pb2.VectorQuery(values=got.illustration.image_vector.values, space=search_pb2.VECTOR_SPACE_IMAGE)
    odd = await stubs.search.Search(
        search_pb2.SearchRequest(vector=vec, top_k=10, filter=search_pb2.SearchFilter(fields={"source": "odd"}))
    )
    assert {h.id for h in odd.hits} == {"rpc-1", "rpc-3"}
    # by text, with a tag filter
    tag = got.illustration.tags[0].name
    by_text = await stubs.search.Search(
        search_pb2.SearchRequest(
            text=tag.replace("_", " "), top_k=5, filter=search_pb2.SearchFilter(required_tags=[tag])
        )
    )
    assert by_text.space == search_pb2.VECTOR_SPACE_TEXT and "rpc-1" in [h.id for h in by_text.hits]
    assert all(tag in [t.name for t in h.illustration.tags] for h in by_text.hits)
    # pagination
    page1 = await stubs.search.Search(
        search_pb2.SearchRequest(vector=vec, top_k=2, filter=search_pb2.SearchFilter(fields={"source": "even"}))
    )
    assert len(page1.hits) == 2 and page1.next_page_token == ""
    first = await stubs.search.Search(search_pb2.SearchRequest(vector=vec, top_k=1, exact_rerank=True))
    second = await stubs.search.Search(
        search_pb2.SearchRequest(vector=vec, top_k=1, exact_rerank=True, page_token=first.next_page_token)
    )
    assert first.next_page_token and first.hits[0].id != second.hits[0].id
    assert first.hits[0].score >= second.hits[0].score

    updated = await stubs.search.UpdateIllustrationMetadata(
        search_pb2.UpdateIllustrationMetadataRequest(
            id=ids[3], metadata=search_pb2.IllustrationMetadata(title="renamed", fields={"source": "even"})
        )
    )
    assert updated.illustration.metadata.title == "renamed"
    even = await stubs.search.Search(
        search_pb2.SearchRequest(vector=vec, top_k=10, filter=search_pb2.SearchFilter(fields={"source": "even"}))
    )
    assert "rpc-3" in {h.id for h in even.hits}

    for id in ids:
        assert (await stubs.search.DeleteIllustration(search_pb2.DeleteIllustrationRequest(id=id))).existed
    assert not (await stubs.search.DeleteIllustration(search_pb2.DeleteIllustrationRequest(id=ids[0]))).existed
    gone = await stubs.search.Search(search_pb2.SearchRequest(vector=vec, top_k=10))
    assert not {h.id for h in gone.hits} & set(ids)


async def test_stream_index(stubs):
    async def requests():
        for i in range(6):
            yield search_pb2.StreamIndexIllustrationsRequest(id=f"stream-{i}", image=image_bytes(200 + i))
        yield search_pb2.StreamIndexIllustrationsRequest(id="stream-bad", image=b"\x89PNG\r\n\x1a\n broken")
        yield search_pb2.StreamIndexIllustrationsRequest(id="bad id!", image=image_bytes(1))

    answers = {a.id: a async for a in stubs.search.StreamIndexIllustrations(requests())}
    assert all(answers[f"stream-{i}"].outcome == search_pb2.INDEX_OUTCOME_CREATED for i in range(6))
    assert answers["stream-bad"].error.code == 3 and answers["bad id!"].error.code == 3
    again = [a async for a in stubs.search.StreamIndexIllustrations(requests())]
    assert sum(a.outcome == search_pb2.INDEX_OUTCOME_UNCHANGED for a in again) == 6


@pytest.mark.skipif(not SHARED_IMAGES.exists(), reason="shared/data/images not present beside the checkout")
async def test_real_illustrations_are_tagged(stubs):
    for path in sorted(SHARED_IMAGES.glob("*.jpg")):
        response = await stubs.tagging.TagImage(tagging_pb2.TagImageRequest(image=path.read_bytes()))
        assert response.result.tags and response.result.rating != common_pb2.RATING_UNSPECIFIED


async def test_health_watch_streams_the_status_through_every_interceptor(stubs):
    """grpc_health's Watch is a coroutine that writes with context.write, not an async generator: the
    interceptors (observability, admission) must run it as such."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    call = health_pb2_grpc.HealthStub(stubs.channel).Watch(health_pb2.HealthCheckRequest(service="liveness"))
    first = await call.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()
