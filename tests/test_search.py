"""Search through the live server: reverse image search with edited copies, text queries, filters on rating and
tags, pagination across pages, exact re-ranking; the server's skip of unchanged items before inference. Each test
runs on both vector engines: Milvus Lite and the Milvus server (conftest's `engine`)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image, ImageDraw

from acg2vec.v1 import common_pb2, search_pb2
from acg2vec_server.app import Application
from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.domain.illustrations import Illustrations
from acg2vec_server.domain.illustrations.indexing import IndexItem
from acg2vec_server.domain.models import Models
from acg2vec_server.domain.tagging import Tagger
from acg2vec_server.domain.types import IllustrationMetadata
from acg2vec_testing.images import image_bytes
from acg2vec_testing.paths import SAMPLE_PNG, SHARED_IMAGES


@pytest_asyncio.fixture(autouse=True)
async def _clean_up(engine_app: Application) -> AsyncIterator[None]:
    """Removes what each test indexed, so that the shared server's other tests see their own data only."""
    yield
    assert engine_app.domain is not None
    for id in sorted(await engine_app.domain.illustrations.meta.ids()):
        if id.startswith(("rev-", "txt-", "pg-", "skip-", "del-")):
            await engine_app.domain.illustrations.delete(id)


def edited(data: bytes) -> bytes:
    """A reposted copy: downscaled to 3/4 and saved as a lossy JPEG. (The development models are untrained, so
    this test keeps to an edit that random features survive; benchmarks/search_demo.py crops, shifts colours and
    re-encodes openclipart images against the installed default models.)"""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w, h = im.size
        out = io.BytesIO()
        im.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BILINEAR).save(out, format="JPEG", quality=80)
    return out.getvalue()


async def index(engine_stubs, id: str, image: bytes, **fields: str) -> search_pb2.Illustration:
    response = await engine_stubs.search.IndexIllustration(
        search_pb2.IndexIllustrationRequest(id=id, image=image, metadata=search_pb2.IllustrationMetadata(fields=fields))
    )
    return response.illustration


async def test_pages_with_tied_scores_return_every_hit_once(engine_stubs):
    """Identical images give identical vectors, so scores tie; paging through them must still return each
    illustration exactly once (the order within a tie is by id, the same on every page)."""
    ids = [f"tie-{i:02d}" for i in range(23)]
    for i, id in enumerate(ids):
        await index(engine_stubs, id, image_bytes(1300 + i % 3), set="ties")
    query = search_pb2.VectorQuery(
        values=(
            await engine_stubs.search.GetIllustration(
                search_pb2.GetIllustrationRequest(id=ids[0], include_vectors=True)
            )
        ).illustration.image_vector.values,
        space=search_pb2.VECTOR_SPACE_IMAGE,
    )
    flt = search_pb2.SearchFilter(fields={"set": "ties"})
    for rerank in (False, True):
        seen, token = [], ""
        while True:
            page = await engine_stubs.search.Search(
                search_pb2.SearchRequest(vector=query, top_k=4, filter=flt, page_token=token, exact_rerank=rerank)
            )
            seen += [h.id for h in page.hits]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == ids, (
            f"rerank={rerank}: missing {set(ids) - set(seen)}, twice {len(seen) - len(set(seen))}"
        )
    for id in ids:
        await engine_stubs.search.DeleteIllustration(search_pb2.DeleteIllustrationRequest(id=id))


async def test_edited_copy_finds_its_original_first(engine_stubs):
    originals = {f"rev-{i}": image_bytes(1000 + i, size=(160, 120)) for i in range(12)}
    originals["rev-sample"] = SAMPLE_PNG.read_bytes()
    for path in sorted(SHARED_IMAGES.glob("*.jpg")) if SHARED_IMAGES.exists() else []:
        originals[f"rev-{path.stem}"] = path.read_bytes()
    for id, image in originals.items():
        await index(engine_stubs, id, image, set="reverse")
    for id, image in originals.items():
        response = await engine_stubs.search.Search(
            search_pb2.SearchRequest(
                image=edited(image), top_k=3, filter=search_pb2.SearchFilter(fields={"set": "reverse"})
            )
        )
        assert response.hits[0].id == id, [(h.id, h.score) for h in response.hits]


def varied_pictures() -> list[bytes]:
    """Pictures that even the untrained development tagger tells apart (it gives each its own tag set)."""

    def png(im: Image.Image) -> bytes:
        out = io.BytesIO()
        im.save(out, "PNG")
        return out.getvalue()

    def strokes(seed: int, background: tuple[int, int, int]) -> bytes:
        rng = np.random.default_rng(seed)
        im = Image.new("RGB", (400, 400), background)
        draw = ImageDraw.Draw(im)
        for _ in range(40):
            ends = [tuple(int(v) for v in rng.integers(0, 400, 2)) for _ in range(2)]
            draw.line(ends, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=3)
        return png(im)

    def checkerboard(cell: int) -> bytes:
        board = (np.indices((400, 400)) // cell).sum(0) % 2 * 255
        return png(Image.fromarray(np.stack([board] * 3, -1).astype(np.uint8)))

    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    return [
        strokes(1, (255, 255, 255)),
        strokes(2, (0, 0, 0)),
        checkerboard(2),
        checkerboard(8),
        png(Image.fromarray(noise)),
    ]


async def test_text_query_searches_the_tag_text_space(engine_stubs):
    """An illustration's text vector is the vector of its tags as words: a query with its best tags finds it first.
    (How well free text matches is the text model's quality, measured by benchmarks/text_search_quality.py with
    the installed models; the development models here are untrained.)"""
    stored = [await index(engine_stubs, f"txt-{i}", image, set="text") for i, image in enumerate(varied_pictures())]
    assert len({tuple(t.name for t in ill.tags) for ill in stored}) >= 4, "the pictures should get different tags"
    for ill in stored:
        query = ", ".join(t.name.replace("_", " ") for t in ill.tags[:16])  # its best tags (the query has a limit)
        response = await engine_stubs.search.Search(
            search_pb2.SearchRequest(text=query, top_k=2, filter=search_pb2.SearchFilter(fields={"set": "text"}))
        )
        assert response.space == search_pb2.VECTOR_SPACE_TEXT and response.model.name == "acgvoc2vec"
        assert response.hits[0].illustration.tags == ill.tags, (query, [h.id for h in response.hits])


async def test_filters_pages_and_exact_rerank(engine_stubs):
    stored = [await index(engine_stubs, f"pg-{i}", image_bytes(1200 + i), set="pages") for i in range(12)]
    query = search_pb2.VectorQuery(
        values=(
            await engine_stubs.search.GetIllustration(
                search_pb2.GetIllustrationRequest(id="pg-0", include_vectors=True)
            )
        ).illustration.image_vector.values,
        space=search_pb2.VECTOR_SPACE_IMAGE,
    )
    flt = search_pb2.SearchFilter(fields={"set": "pages"})
    everything = await engine_stubs.search.Search(search_pb2.SearchRequest(vector=query, top_k=12, filter=flt))
    assert everything.hits[0].id == "pg-0" and len(everything.hits) == 12
    scores = [h.score for h in everything.hits]
    assert scores == sorted(scores, reverse=True)

    for rerank in (False, True):
        pages, token = [], ""
        while True:
            page = await engine_stubs.search.Search(
                search_pb2.SearchRequest(vector=query, top_k=5, filter=flt, page_token=token, exact_rerank=rerank)
            )
            pages.append([h.id for h in page.hits])
            token = page.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [5, 5, 2]
        assert [id for page in pages for id in page] == [h.id for h in everything.hits]

    def where(**conditions) -> search_pb2.SearchRequest:
        return search_pb2.SearchRequest(
            vector=query, top_k=12, filter=search_pb2.SearchFilter(fields={"set": "pages"}, **conditions)
        )

    # rating: only the asked ratings come back
    rating = stored[3].rating
    rated = await engine_stubs.search.Search(where(ratings=[rating]))
    assert {h.id for h in rated.hits} == {s.id for s in stored if s.rating == rating}
    other = next(r for r in (common_pb2.RATING_GENERAL, common_pb2.RATING_EXPLICIT) if r != rating)
    assert all(h.illustration.rating == other for h in (await engine_stubs.search.Search(where(ratings=[other]))).hits)
    # excluded tags: none of the hits carries one
    tag = stored[5].tags[0].name
    without = await engine_stubs.search.Search(where(excluded_tags=[tag]))
    assert {h.id for h in without.hits} == {s.id for s in stored if tag not in {t.name for t in s.tags}}
    assert "pg-5" not in {h.id for h in without.hits}


async def test_unchanged_items_need_no_inference(engine_app: Application, engine_stubs):
    """With the tagger gone, re-sending a stored item still answers UNCHANGED: nothing ran but two reads."""
    image = image_bytes(1300)
    await index(engine_stubs, "skip-1", image, k="v")
    assert engine_app.domain is not None
    d = engine_app.domain
    models = Models(d.models.backend, "no-such-tagger", d.models.image, d.models.text, d.models.popularity)
    blind = Illustrations(models, Tagger(models, 0.5, 64), d.illustrations.meta, d.illustrations.vectors, d.limits)
    [same] = await blind.index([IndexItem("skip-1", image, IllustrationMetadata(fields={"k": "v"}))])
    assert same.outcome == "unchanged" and same.error is None
    with pytest.raises(BackendUnavailable, match="no-such-tagger"):
        await blind.index([IndexItem("skip-1", image, IllustrationMetadata(fields={"k": "changed"}))])


async def test_a_record_being_deleted_is_not_a_hit_and_repair_removes_it(engine_app: Application, engine_stubs):
    image = image_bytes(1400)
    await index(engine_stubs, "del-1", image, set="del")
    assert engine_app.domain is not None
    ill = engine_app.domain.illustrations
    await ill.meta.add_pending("del-1")  # a delete that died after marking the record
    marked = await ill.meta.get("del-1")
    marked.state = "deleting"
    await ill.meta.put(marked)
    hits = await engine_stubs.search.Search(search_pb2.SearchRequest(image=image, top_k=5))
    assert "del-1" not in [h.id for h in hits.hits]
    assert await ill.repair(["del-1"]) == 1
    assert await ill.meta.get("del-1") is None
    assert not await ill.vectors.get_vectors(["del-1"], "image")
