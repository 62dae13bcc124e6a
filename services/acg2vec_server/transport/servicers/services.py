"""The four acg2vec.v1 services. Each handler converts, delegates to the domain, converts back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from acg2vec.v1 import (
    image_feature_pb2 as ifp,
)
from acg2vec.v1 import (
    image_feature_pb2_grpc,
    search_pb2_grpc,
    tagging_pb2_grpc,
    text_feature_pb2_grpc,
)
from acg2vec.v1 import (
    search_pb2 as sp,
)
from acg2vec.v1 import (
    tagging_pb2 as tp,
)
from acg2vec.v1 import (
    text_feature_pb2 as txp,
)
from acg2vec_server.domain import inputs
from acg2vec_server.domain.errors import FieldViolation, InvalidInput
from acg2vec_server.domain.illustrations.indexing import IndexItem
from acg2vec_server.domain.illustrations.search import Query
from acg2vec_server.domain.service import Domain
from acg2vec_server.domain.types import ImageTags, TagOptions
from acg2vec_server.transport.servicers import convert
from acg2vec_server.transport.servicers.streaming import answer_batch, batches
from acg2vec_server.transport.status import handle_errors, item_error

Ctx = grpc.aio.ServicerContext


class TaggingServicer(tagging_pb2_grpc.TaggingServiceServicer):
    def __init__(self, domain: Domain):
        self.d = domain

    @handle_errors
    async def TagImage(self, request: tp.TagImageRequest, context: Ctx) -> tp.TagImageResponse:
        image = inputs.check_image(request.image, self.d.limits)
        [result] = await self.d.tagger.tag([image], convert.tag_options(request.options))
        return tp.TagImageResponse(result=convert.image_tags(result))

    @handle_errors
    async def BatchTagImages(self, request: tp.BatchTagImagesRequest, context: Ctx) -> tp.BatchTagImagesResponse:
        inputs.check_batch(len(request.images), self.d.limits, "images")
        images = inputs.collect(list(request.images), self.d.limits, "images")
        results = await self.d.tagger.tag(images, convert.tag_options(request.options))
        return tp.BatchTagImagesResponse(results=[convert.image_tags(r) for r in results])

    async def StreamTagImages(
        self, request_iterator: AsyncIterator[tp.StreamTagImagesRequest], context: Ctx
    ) -> AsyncIterator[tp.StreamTagImagesResponse]:
        def check(req: tp.StreamTagImagesRequest) -> tuple[TagOptions, bytes]:
            return convert.tag_options(req.options), inputs.check_image(req.image, self.d.limits)

        async def run(items: list[tuple[TagOptions, bytes]]) -> list[ImageTags]:
            return await self.d.tagger.tag([image for _, image in items], items[0][0])

        async for batch in batches(request_iterator, self.d.limits.max_batch_size):
            groups: dict[bytes, list[tp.StreamTagImagesRequest]] = {}  # one model call per distinct options
            for req in batch:
                groups.setdefault(req.options.SerializeToString(deterministic=True), []).append(req)
            for group in groups.values():
                async for answer in answer_batch(
                    group, check, run,
                    lambda r, t: tp.StreamTagImagesResponse(request_id=r.request_id, result=convert.image_tags(t)),
                    lambda r, error: tp.StreamTagImagesResponse(request_id=r.request_id, error=error),
                ):  # fmt: skip
                    yield answer

    @handle_errors
    async def PredictPopularity(
        self, request: tp.PredictPopularityRequest, context: Ctx
    ) -> tp.PredictPopularityResponse:
        image = inputs.check_image(request.image, self.d.limits)
        [result] = await self.d.tagger.popularity([image])
        return tp.PredictPopularityResponse(popularity=convert.popularity(result))


class ImageFeatureServicer(image_feature_pb2_grpc.ImageFeatureServiceServicer):
    def __init__(self, domain: Domain):
        self.d = domain

    @handle_errors
    async def ExtractImageFeature(
        self, request: ifp.ExtractImageFeatureRequest, context: Ctx
    ) -> ifp.ExtractImageFeatureResponse:
        [e] = await self.d.models.embed_images([inputs.check_image(request.image, self.d.limits)])
        return ifp.ExtractImageFeatureResponse(feature=convert.feature(e))

    @handle_errors
    async def BatchExtractImageFeatures(
        self, request: ifp.BatchExtractImageFeaturesRequest, context: Ctx
    ) -> ifp.BatchExtractImageFeaturesResponse:
        inputs.check_batch(len(request.images), self.d.limits, "images")
        embeddings = await self.d.models.embed_images(inputs.collect(list(request.images), self.d.limits, "images"))
        return ifp.BatchExtractImageFeaturesResponse(features=[convert.feature(e) for e in embeddings])

    async def StreamExtractImageFeatures(
        self, request_iterator: AsyncIterator[ifp.StreamExtractImageFeaturesRequest], context: Ctx
    ) -> AsyncIterator[ifp.StreamExtractImageFeaturesResponse]:
        async for batch in batches(request_iterator, self.d.limits.max_batch_size):
            async for answer in answer_batch(
                batch,
                lambda req: inputs.check_image(req.image, self.d.limits),
                self.d.models.embed_images,
                lambda req, e: ifp.StreamExtractImageFeaturesResponse(
                    request_id=req.request_id, feature=convert.feature(e)
                ),
                lambda req, error: ifp.StreamExtractImageFeaturesResponse(request_id=req.request_id, error=error),
            ):
                yield answer


class TextFeatureServicer(text_feature_pb2_grpc.TextFeatureServiceServicer):
    def __init__(self, domain: Domain):
        self.d = domain

    @handle_errors
    async def ExtractTextFeature(
        self, request: txp.ExtractTextFeatureRequest, context: Ctx
    ) -> txp.ExtractTextFeatureResponse:
        [e] = await self.d.models.embed_texts([inputs.check_text(request.text, self.d.limits)])
        return txp.ExtractTextFeatureResponse(feature=convert.feature(e))

    @handle_errors
    async def BatchExtractTextFeatures(
        self, request: txp.BatchExtractTextFeaturesRequest, context: Ctx
    ) -> txp.BatchExtractTextFeaturesResponse:
        inputs.check_batch(len(request.texts), self.d.limits, "texts")
        texts = [inputs.check_text(t, self.d.limits, f"texts[{i}]") for i, t in enumerate(request.texts)]
        embeddings = await self.d.models.embed_texts(texts)
        return txp.BatchExtractTextFeaturesResponse(features=[convert.feature(e) for e in embeddings])

    async def StreamExtractTextFeatures(
        self, request_iterator: AsyncIterator[txp.StreamExtractTextFeaturesRequest], context: Ctx
    ) -> AsyncIterator[txp.StreamExtractTextFeaturesResponse]:
        async for batch in batches(request_iterator, self.d.limits.max_batch_size):
            async for answer in answer_batch(
                batch,
                lambda req: inputs.check_text(req.text, self.d.limits),
                self.d.models.embed_texts,
                lambda req, e: txp.StreamExtractTextFeaturesResponse(
                    request_id=req.request_id, feature=convert.feature(e)
                ),
                lambda req, error: txp.StreamExtractTextFeaturesResponse(request_id=req.request_id, error=error),
            ):
                yield answer


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, domain: Domain):
        self.d = domain

    @handle_errors
    async def Search(self, request: sp.SearchRequest, context: Ctx) -> sp.SearchResponse:
        kind = request.WhichOneof("query")
        if kind == "vector":
            space = {sp.VECTOR_SPACE_IMAGE: "image", sp.VECTOR_SPACE_TEXT: "text"}.get(request.vector.space)
            if space is None:
                raise InvalidInput(
                    "vector.space must be VECTOR_SPACE_IMAGE or VECTOR_SPACE_TEXT",
                    [FieldViolation("vector.space", "unset")],
                )
            query = Query(vector=list(request.vector.values), vector_space=space)  # type: ignore[arg-type]
        elif kind == "image":
            query = Query(image=request.image)
        elif kind == "illustration_id":
            query = Query(illustration_id=request.illustration_id)
        elif kind == "text":
            query = Query(text=request.text)
        else:
            raise InvalidInput(
                "set one query: image, illustration_id, vector or text", [FieldViolation("query", "unset")]
            )
        page = await self.d.illustrations.search(
            query, request.top_k, convert.search_filter(request.filter), request.page_token, request.exact_rerank
        )
        return sp.SearchResponse(
            hits=[sp.SearchHit(id=h.id, score=h.score, illustration=convert.illustration(h.record)) for h in page.hits],
            next_page_token=page.next_page_token,
            space=convert.SPACE[page.space],
            model=convert.model_info(page.model),
        )

    @handle_errors
    async def IndexIllustration(
        self, request: sp.IndexIllustrationRequest, context: Ctx
    ) -> sp.IndexIllustrationResponse:
        [result] = await self.d.illustrations.index(
            [IndexItem(request.id, request.image, convert.metadata_from(request.metadata))]
        )
        if result.error is not None:
            raise result.error
        assert result.record is not None and result.outcome is not None
        return sp.IndexIllustrationResponse(
            illustration=convert.illustration(result.record), outcome=convert.OUTCOME[result.outcome]
        )

    async def StreamIndexIllustrations(
        self, request_iterator: AsyncIterator[sp.StreamIndexIllustrationsRequest], context: Ctx
    ) -> AsyncIterator[sp.StreamIndexIllustrationsResponse]:
        async for batch in batches(request_iterator, self.d.limits.max_batch_size):
            items = [IndexItem(r.id, r.image, convert.metadata_from(r.metadata)) for r in batch]
            try:
                results = await self.d.illustrations.index(items)
            except Exception as e:
                for item in items:
                    yield sp.StreamIndexIllustrationsResponse(id=item.id, error=item_error(e))
                continue
            for r in results:
                if r.error is not None:
                    yield sp.StreamIndexIllustrationsResponse(id=r.id, error=item_error(r.error))
                else:
                    assert r.outcome is not None
                    yield sp.StreamIndexIllustrationsResponse(id=r.id, outcome=convert.OUTCOME[r.outcome])

    @handle_errors
    async def GetIllustration(self, request: sp.GetIllustrationRequest, context: Ctx) -> sp.GetIllustrationResponse:
        record = await self.d.illustrations.get(request.id)
        return sp.GetIllustrationResponse(illustration=convert.illustration(record, request.include_vectors))

    @handle_errors
    async def UpdateIllustrationMetadata(
        self, request: sp.UpdateIllustrationMetadataRequest, context: Ctx
    ) -> sp.UpdateIllustrationMetadataResponse:
        record = await self.d.illustrations.update_metadata(request.id, convert.metadata_from(request.metadata))
        return sp.UpdateIllustrationMetadataResponse(illustration=convert.illustration(record))

    @handle_errors
    async def DeleteIllustration(
        self, request: sp.DeleteIllustrationRequest, context: Ctx
    ) -> sp.DeleteIllustrationResponse:
        return sp.DeleteIllustrationResponse(existed=await self.d.illustrations.delete(request.id))
