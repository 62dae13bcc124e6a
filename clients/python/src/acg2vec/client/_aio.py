"""asyncio client on a grpc.aio.Channel; mirrors Acg2vecClient method for method."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import grpc.aio

from acg2vec.client import _requests as rq
from acg2vec.client._base import BaseClient, health_modules
from acg2vec.client._retry import Deadline, wait_before_retry
from acg2vec.v1 import (
    image_feature_pb2,
    image_feature_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    tagging_pb2,
    tagging_pb2_grpc,
    text_feature_pb2,
    text_feature_pb2_grpc,
)

if TYPE_CHECKING:
    from grpc_health.v1 import health_pb2

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class _StreamCall(Protocol[R_co]):
    def __aiter__(self) -> AsyncIterator[R_co]: ...

    def cancel(self) -> bool: ...


async def _mapped(items: Iterable[T] | AsyncIterable[T], convert: Callable[[T], R]) -> AsyncIterator[R]:
    """Lets streaming methods take sync or async iterables; a slow sync iterable blocks the event loop."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield convert(item)
    else:
        for item in items:
            yield convert(item)


async def _responses(start: Callable[[], _StreamCall[R]]) -> AsyncIterator[R]:
    """Starts the call on first iteration and cancels it when the consumer stops early."""
    call = start()
    try:
        async for response in call:
            yield response
    finally:
        call.cancel()


_AIO_INTERCEPTOR_KINDS: tuple[tuple[type, str], ...] = (
    (grpc.aio.UnaryUnaryClientInterceptor, "intercept_unary_unary"),
    (grpc.aio.UnaryStreamClientInterceptor, "intercept_unary_stream"),
    (grpc.aio.StreamUnaryClientInterceptor, "intercept_stream_unary"),
    (grpc.aio.StreamStreamClientInterceptor, "intercept_stream_stream"),
)


def _one_per_kind(interceptors: Sequence[grpc.aio.ClientInterceptor]) -> list[grpc.aio.ClientInterceptor]:
    """grpc.aio registers an interceptor for the first RPC kind it implements only (grpc/grpc#31442), so one
    that implements several is passed as one forwarding interceptor per kind."""
    split: list[grpc.aio.ClientInterceptor] = []
    for interceptor in interceptors:
        kinds = [(kind, name) for kind, name in _AIO_INTERCEPTOR_KINDS if isinstance(interceptor, kind)]
        if len(kinds) <= 1:
            split.append(interceptor)
            continue
        for kind, name in kinds:
            forward = getattr(interceptor, name)
            split.append(
                type(
                    f"{kind.__name__}For{type(interceptor).__name__}", (kind,), {name: lambda _, *a, f=forward: f(*a)}
                )()
            )
    return split


class AsyncAcg2vecClient(BaseClient):
    """asyncio twin of Acg2vecClient: same constructor and methods, awaitable.

    Create it inside a running event loop (grpc.aio channels bind to the loop). Streaming methods take sync
    or async iterables and return async iterators. Errors surface as grpc.aio.AioRpcError (a grpc.RpcError).
    """

    channel: grpc.aio.Channel
    tagging: tagging_pb2_grpc.TaggingServiceAsyncStub
    image_features: image_feature_pb2_grpc.ImageFeatureServiceAsyncStub
    text_features: text_feature_pb2_grpc.TextFeatureServiceAsyncStub
    search_service: search_pb2_grpc.SearchServiceAsyncStub
    interceptor_types = (grpc.aio.ClientInterceptor,)

    def _connect(self) -> None:
        interceptors = _one_per_kind(self._interceptors) or None
        if self._credentials is None:
            self.channel = grpc.aio.insecure_channel(
                self.target, options=self._channel_options, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                self.target, self._credentials, options=self._channel_options, interceptors=interceptors
            )
        self.tagging = tagging_pb2_grpc.TaggingServiceStub(self.channel)
        self.image_features = image_feature_pb2_grpc.ImageFeatureServiceStub(self.channel)
        self.text_features = text_feature_pb2_grpc.TextFeatureServiceStub(self.channel)
        self.search_service = search_pb2_grpc.SearchServiceStub(self.channel)
        self._health: Any = None

    # Lifecycle -----------------------------------------------------------------------------------

    async def close(self, grace: float | None = None) -> None:
        """Closes the channel; in-flight calls get `grace` seconds, then are cancelled."""
        await self.channel.close(grace)

    async def __aenter__(self) -> AsyncAcg2vecClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _unary(self, method: Callable[..., Awaitable[R]], request: object, timeout: float | None) -> R:
        """One unary call, retried per the RetryPolicy (honouring RetryInfo) within one deadline for all attempts."""
        deadline = Deadline(self._timeout(timeout))
        attempt = 1
        while True:
            try:
                return await method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.aio.AioRpcError as error:
                wait = wait_before_retry(self.retry_policy, error, attempt, deadline)
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt += 1

    # TaggingService ------------------------------------------------------------------------------

    async def tag_image(
        self,
        image: bytes,
        *,
        top_k: int = 0,
        thresholds: Mapping[str, float] | None = None,
        include_popularity: bool = False,
        tag_thresholds: Mapping[str, float] | None = None,
        modes: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tagging_pb2.TagImageResponse:
        """Tags one encoded image; thresholds map category names ("general", ...) to minimum scores, modes
        map them to "fixed" or "mcut", tag_thresholds map tag names to their own thresholds."""
        options = rq.tag_options(
            top_k=top_k, thresholds=thresholds, include_popularity=include_popularity,
            tag_thresholds=tag_thresholds, modes=modes,
        )  # fmt: skip
        request = tagging_pb2.TagImageRequest(image=image, options=options)
        return await self._unary(self.tagging.TagImage, request, timeout)

    async def tag_images(
        self,
        images: Sequence[bytes],
        *,
        top_k: int = 0,
        thresholds: Mapping[str, float] | None = None,
        include_popularity: bool = False,
        tag_thresholds: Mapping[str, float] | None = None,
        modes: Mapping[str, str] | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
    ) -> tagging_pb2.BatchTagImagesResponse:
        """Tags many images, one BatchTagImages call per chunk (sequential, to not flood the server); merged."""
        options = rq.tag_options(
            top_k=top_k, thresholds=thresholds, include_popularity=include_popularity,
            tag_thresholds=tag_thresholds, modes=modes,
        )  # fmt: skip
        merged = tagging_pb2.BatchTagImagesResponse()
        for chunk in rq.chunked(images, self._batch_size(batch_size)):
            request = tagging_pb2.BatchTagImagesRequest(images=chunk, options=options)
            response = await self._unary(self.tagging.BatchTagImages, request, timeout)
            merged.results.extend(response.results)
        return merged

    def stream_tag_images(
        self,
        items: Iterable[rq.TagStreamItem] | AsyncIterable[rq.TagStreamItem],
        *,
        top_k: int = 0,
        thresholds: Mapping[str, float] | None = None,
        include_popularity: bool = False,
        tag_thresholds: Mapping[str, float] | None = None,
        modes: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[tagging_pb2.StreamTagImagesResponse]:
        """Bulk tagging over one stream; use with `async for`. Per-item failures arrive with `error` set."""
        options = rq.tag_options(
            top_k=top_k, thresholds=thresholds, include_popularity=include_popularity,
            tag_thresholds=tag_thresholds, modes=modes,
        )  # fmt: skip
        requests = _mapped(items, lambda item: rq.stream_tag_request(item, options))
        return _responses(
            lambda: self.tagging.StreamTagImages(
                requests, timeout=self._stream_timeout(timeout), metadata=self._metadata
            )
        )

    async def predict_popularity(
        self, image: bytes, *, timeout: float | None = None
    ) -> tagging_pb2.PredictPopularityResponse:
        """deepix predictions; FAILED_PRECONDITION when the server has no deepix model."""
        request = tagging_pb2.PredictPopularityRequest(image=image)
        return await self._unary(self.tagging.PredictPopularity, request, timeout)

    # ImageFeatureService -------------------------------------------------------------------------

    async def extract_image_feature(
        self, image: bytes, *, timeout: float | None = None
    ) -> image_feature_pb2.ExtractImageFeatureResponse:
        """illust2vec vector of one image."""
        request = image_feature_pb2.ExtractImageFeatureRequest(image=image)
        return await self._unary(self.image_features.ExtractImageFeature, request, timeout)

    async def extract_image_features(
        self, images: Sequence[bytes], *, batch_size: int | None = None, timeout: float | None = None
    ) -> image_feature_pb2.BatchExtractImageFeaturesResponse:
        """illust2vec vectors of many images, chunked into batch calls; merged in input order."""
        merged = image_feature_pb2.BatchExtractImageFeaturesResponse()
        for chunk in rq.chunked(images, self._batch_size(batch_size)):
            request = image_feature_pb2.BatchExtractImageFeaturesRequest(images=chunk)
            response = await self._unary(self.image_features.BatchExtractImageFeatures, request, timeout)
            merged.features.extend(response.features)
        return merged

    def stream_extract_image_features(
        self,
        items: Iterable[rq.ImageFeatureStreamItem] | AsyncIterable[rq.ImageFeatureStreamItem],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[image_feature_pb2.StreamExtractImageFeaturesResponse]:
        """Bulk extraction over one stream; items are (request_id, image) or ready requests."""
        requests = _mapped(items, rq.stream_image_feature_request)
        return _responses(
            lambda: self.image_features.StreamExtractImageFeatures(
                requests, timeout=self._stream_timeout(timeout), metadata=self._metadata
            )
        )

    # TextFeatureService --------------------------------------------------------------------------

    async def extract_text_feature(
        self, text: str, *, timeout: float | None = None
    ) -> text_feature_pb2.ExtractTextFeatureResponse:
        """acgvoc2vec vector of one text."""
        request = text_feature_pb2.ExtractTextFeatureRequest(text=text)
        return await self._unary(self.text_features.ExtractTextFeature, request, timeout)

    async def extract_text_features(
        self, texts: Sequence[str], *, batch_size: int | None = None, timeout: float | None = None
    ) -> text_feature_pb2.BatchExtractTextFeaturesResponse:
        """acgvoc2vec vectors of many texts, chunked into batch calls; merged in input order."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a str")
        merged = text_feature_pb2.BatchExtractTextFeaturesResponse()
        for chunk in rq.chunked(texts, self._batch_size(batch_size)):
            request = text_feature_pb2.BatchExtractTextFeaturesRequest(texts=chunk)
            response = await self._unary(self.text_features.BatchExtractTextFeatures, request, timeout)
            merged.features.extend(response.features)
        return merged

    def stream_extract_text_features(
        self,
        items: Iterable[rq.TextFeatureStreamItem] | AsyncIterable[rq.TextFeatureStreamItem],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[text_feature_pb2.StreamExtractTextFeaturesResponse]:
        """Bulk extraction over one stream; items are (request_id, text) or ready requests."""
        requests = _mapped(items, rq.stream_text_feature_request)
        return _responses(
            lambda: self.text_features.StreamExtractTextFeatures(
                requests, timeout=self._stream_timeout(timeout), metadata=self._metadata
            )
        )

    # SearchService -------------------------------------------------------------------------------

    async def search(
        self,
        *,
        image: bytes | None = None,
        illustration_id: str | None = None,
        vector: Sequence[float] | search_pb2.VectorQuery | None = None,
        space: rq.SpaceLike | None = None,
        text: str | None = None,
        top_k: int = 10,
        ratings: Iterable[rq.RatingLike] | None = None,
        required_tags: Iterable[str] | None = None,
        excluded_tags: Iterable[str] | None = None,
        fields: Mapping[str, str] | None = None,
        page_token: str = "",
        exact_rerank: bool = False,
        timeout: float | None = None,
    ) -> search_pb2.SearchResponse:
        """Top-k similar illustrations to exactly one of image, illustration_id, vector (with space) or text."""
        request = rq.search_request(
            image=image,
            illustration_id=illustration_id,
            vector=vector,
            space=space,
            text=text,
            top_k=top_k,
            ratings=ratings,
            required_tags=required_tags,
            excluded_tags=excluded_tags,
            fields=fields,
            page_token=page_token,
            exact_rerank=exact_rerank,
        )
        return await self._unary(self.search_service.Search, request, timeout)

    async def index_illustration(
        self,
        id: str,
        image: bytes,
        *,
        title: str = "",
        artist: str = "",
        source_url: str = "",
        fields: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> search_pb2.IndexIllustrationResponse:
        """Tags, embeds and stores an image under id; re-sending the same data is a no-op (UNCHANGED)."""
        metadata = rq.illustration_metadata(title=title, artist=artist, source_url=source_url, fields=fields)
        request = search_pb2.IndexIllustrationRequest(id=id, image=image, metadata=metadata)
        return await self._unary(self.search_service.IndexIllustration, request, timeout)

    def stream_index_illustrations(
        self,
        items: Iterable[rq.IndexStreamItem] | AsyncIterable[rq.IndexStreamItem],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[search_pb2.StreamIndexIllustrationsResponse]:
        """Bulk indexing; items are (id, image), (id, image, metadata) or request messages; answers in any order."""
        requests = _mapped(items, rq.stream_index_request)
        return _responses(
            lambda: self.search_service.StreamIndexIllustrations(
                requests, timeout=self._stream_timeout(timeout), metadata=self._metadata
            )
        )

    async def get_illustration(
        self, id: str, *, include_vectors: bool = False, timeout: float | None = None
    ) -> search_pb2.GetIllustrationResponse:
        """One stored illustration; NOT_FOUND for an unknown id."""
        request = search_pb2.GetIllustrationRequest(id=id, include_vectors=include_vectors)
        return await self._unary(self.search_service.GetIllustration, request, timeout)

    async def update_illustration_metadata(
        self,
        id: str,
        *,
        title: str = "",
        artist: str = "",
        source_url: str = "",
        fields: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> search_pb2.UpdateIllustrationMetadataResponse:
        """Replaces (not merges) the user metadata without recomputing tags or vectors."""
        metadata = rq.illustration_metadata(title=title, artist=artist, source_url=source_url, fields=fields)
        request = search_pb2.UpdateIllustrationMetadataRequest(id=id, metadata=metadata)
        return await self._unary(self.search_service.UpdateIllustrationMetadata, request, timeout)

    async def delete_illustration(
        self, id: str, *, timeout: float | None = None
    ) -> search_pb2.DeleteIllustrationResponse:
        """Removes metadata and vectors; `existed` is False when there was nothing to delete."""
        request = search_pb2.DeleteIllustrationRequest(id=id)
        return await self._unary(self.search_service.DeleteIllustration, request, timeout)

    # Health --------------------------------------------------------------------------------------

    async def health_check(self, service: str = "", *, timeout: float | None = None) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 Check ("" = whole server, or e.g. "acg2vec.v1.SearchService")."""
        messages, services = health_modules()
        if self._health is None:
            self._health = services.HealthStub(self.channel)
        request = messages.HealthCheckRequest(service=service)
        return await self._unary(self._health.Check, request, timeout)
