"""Blocking client on a grpc.Channel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

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

Req = TypeVar("Req")
Res = TypeVar("Res")


class Acg2vecClient(BaseClient):
    """Thin typed wrapper over the acg2vec.v1 stubs; methods build requests and return the response messages.

    Errors surface as grpc.RpcError (see the README); the raw stubs stay reachable as `tagging`,
    `image_features`, `text_features` and `search_service` for anything not wrapped here.
    """

    channel: grpc.Channel
    tagging: tagging_pb2_grpc.TaggingServiceStub
    image_features: image_feature_pb2_grpc.ImageFeatureServiceStub
    text_features: text_feature_pb2_grpc.TextFeatureServiceStub
    search_service: search_pb2_grpc.SearchServiceStub
    interceptor_types = (
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
        grpc.StreamStreamClientInterceptor,
    )

    def _connect(self) -> None:
        if self._credentials is None:
            self.channel = grpc.insecure_channel(self.target, options=self._channel_options)
        else:
            self.channel = grpc.secure_channel(self.target, self._credentials, options=self._channel_options)
        if self._interceptors:
            self.channel = grpc.intercept_channel(self.channel, *self._interceptors)
        self.tagging = tagging_pb2_grpc.TaggingServiceStub(self.channel)
        self.image_features = image_feature_pb2_grpc.ImageFeatureServiceStub(self.channel)
        self.text_features = text_feature_pb2_grpc.TextFeatureServiceStub(self.channel)
        self.search_service = search_pb2_grpc.SearchServiceStub(self.channel)
        self._health: Any = None

    # Lifecycle -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; in-flight calls are cancelled."""
        self.channel.close()

    def __enter__(self) -> Acg2vecClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _unary(self, method: Callable[..., Res], request: Req, timeout: float | None) -> Res:
        """One unary call, retried per the RetryPolicy (honouring RetryInfo) within one deadline for all attempts."""
        deadline = Deadline(self._timeout(timeout))
        attempt = 1
        while True:
            try:
                return method(request, timeout=deadline.remaining(), metadata=self._metadata)
            except grpc.RpcError as error:
                wait = wait_before_retry(self.retry_policy, error, attempt, deadline)  # type: ignore[arg-type]
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1

    # TaggingService ------------------------------------------------------------------------------

    def tag_image(
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
        return self._unary(self.tagging.TagImage, request, timeout)

    def tag_images(
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
        """Tags many images with one BatchTagImages call per chunk; results come back merged, in input order.

        `timeout` applies to each chunk's call.
        """
        options = rq.tag_options(
            top_k=top_k, thresholds=thresholds, include_popularity=include_popularity,
            tag_thresholds=tag_thresholds, modes=modes,
        )  # fmt: skip
        merged = tagging_pb2.BatchTagImagesResponse()
        for chunk in rq.chunked(images, self._batch_size(batch_size)):
            request = tagging_pb2.BatchTagImagesRequest(images=chunk, options=options)
            response = self._unary(self.tagging.BatchTagImages, request, timeout)
            merged.results.extend(response.results)
        return merged

    def stream_tag_images(
        self,
        items: Iterable[rq.TagStreamItem],
        *,
        top_k: int = 0,
        thresholds: Mapping[str, float] | None = None,
        include_popularity: bool = False,
        tag_thresholds: Mapping[str, float] | None = None,
        modes: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[tagging_pb2.StreamTagImagesResponse]:
        """Bulk tagging over one stream; items are (request_id, image) or ready requests, answers carry request_id.

        Per-item failures arrive as responses with `error` set; the returned iterator is also a grpc.Call,
        so `.cancel()` stops the stream.
        """
        options = rq.tag_options(
            top_k=top_k, thresholds=thresholds, include_popularity=include_popularity,
            tag_thresholds=tag_thresholds, modes=modes,
        )  # fmt: skip
        requests = (rq.stream_tag_request(item, options) for item in items)
        return self.tagging.StreamTagImages(requests, timeout=self._stream_timeout(timeout), metadata=self._metadata)

    def predict_popularity(
        self, image: bytes, *, timeout: float | None = None
    ) -> tagging_pb2.PredictPopularityResponse:
        """deepix predictions; FAILED_PRECONDITION when the server has no deepix model."""
        request = tagging_pb2.PredictPopularityRequest(image=image)
        return self._unary(self.tagging.PredictPopularity, request, timeout)

    # ImageFeatureService -------------------------------------------------------------------------

    def extract_image_feature(
        self, image: bytes, *, timeout: float | None = None
    ) -> image_feature_pb2.ExtractImageFeatureResponse:
        """illust2vec vector of one image."""
        request = image_feature_pb2.ExtractImageFeatureRequest(image=image)
        return self._unary(self.image_features.ExtractImageFeature, request, timeout)

    def extract_image_features(
        self, images: Sequence[bytes], *, batch_size: int | None = None, timeout: float | None = None
    ) -> image_feature_pb2.BatchExtractImageFeaturesResponse:
        """illust2vec vectors of many images, chunked into batch calls; merged in input order."""
        merged = image_feature_pb2.BatchExtractImageFeaturesResponse()
        for chunk in rq.chunked(images, self._batch_size(batch_size)):
            request = image_feature_pb2.BatchExtractImageFeaturesRequest(images=chunk)
            response = self._unary(self.image_features.BatchExtractImageFeatures, request, timeout)
            merged.features.extend(response.features)
        return merged

    def stream_extract_image_features(
        self, items: Iterable[rq.ImageFeatureStreamItem], *, timeout: float | None = None
    ) -> Iterator[image_feature_pb2.StreamExtractImageFeaturesResponse]:
        """Bulk extraction over one stream; items are (request_id, image) or ready requests."""
        requests = (rq.stream_image_feature_request(item) for item in items)
        return self.image_features.StreamExtractImageFeatures(
            requests, timeout=self._stream_timeout(timeout), metadata=self._metadata
        )

    # TextFeatureService --------------------------------------------------------------------------

    def extract_text_feature(
        self, text: str, *, timeout: float | None = None
    ) -> text_feature_pb2.ExtractTextFeatureResponse:
        """acgvoc2vec vector of one text."""
        request = text_feature_pb2.ExtractTextFeatureRequest(text=text)
        return self._unary(self.text_features.ExtractTextFeature, request, timeout)

    def extract_text_features(
        self, texts: Sequence[str], *, batch_size: int | None = None, timeout: float | None = None
    ) -> text_feature_pb2.BatchExtractTextFeaturesResponse:
        """acgvoc2vec vectors of many texts, chunked into batch calls; merged in input order."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a str")
        merged = text_feature_pb2.BatchExtractTextFeaturesResponse()
        for chunk in rq.chunked(texts, self._batch_size(batch_size)):
            request = text_feature_pb2.BatchExtractTextFeaturesRequest(texts=chunk)
            response = self._unary(self.text_features.BatchExtractTextFeatures, request, timeout)
            merged.features.extend(response.features)
        return merged

    def stream_extract_text_features(
        self, items: Iterable[rq.TextFeatureStreamItem], *, timeout: float | None = None
    ) -> Iterator[text_feature_pb2.StreamExtractTextFeaturesResponse]:
        """Bulk extraction over one stream; items are (request_id, text) or ready requests."""
        requests = (rq.stream_text_feature_request(item) for item in items)
        return self.text_features.StreamExtractTextFeatures(
            requests, timeout=self._stream_timeout(timeout), metadata=self._metadata
        )

    # SearchService -------------------------------------------------------------------------------

    def search(
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
        """Top-k similar illustrations to exactly one of image, illustration_id, vector (with space) or text.

        Pass the previous response's next_page_token (with the same query and filter) for the next page.
        """
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
        return self._unary(self.search_service.Search, request, timeout)

    def index_illustration(
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
        return self._unary(self.search_service.IndexIllustration, request, timeout)

    def stream_index_illustrations(
        self, items: Iterable[rq.IndexStreamItem], *, timeout: float | None = None
    ) -> Iterator[search_pb2.StreamIndexIllustrationsResponse]:
        """Bulk indexing; items are (id, image), (id, image, metadata) or request messages; answers in any order."""
        requests = (rq.stream_index_request(item) for item in items)
        return self.search_service.StreamIndexIllustrations(
            requests, timeout=self._stream_timeout(timeout), metadata=self._metadata
        )

    def get_illustration(
        self, id: str, *, include_vectors: bool = False, timeout: float | None = None
    ) -> search_pb2.GetIllustrationResponse:
        """One stored illustration; NOT_FOUND for an unknown id."""
        request = search_pb2.GetIllustrationRequest(id=id, include_vectors=include_vectors)
        return self._unary(self.search_service.GetIllustration, request, timeout)

    def update_illustration_metadata(
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
        return self._unary(self.search_service.UpdateIllustrationMetadata, request, timeout)

    def delete_illustration(self, id: str, *, timeout: float | None = None) -> search_pb2.DeleteIllustrationResponse:
        """Removes metadata and vectors; `existed` is False when there was nothing to delete."""
        request = search_pb2.DeleteIllustrationRequest(id=id)
        return self._unary(self.search_service.DeleteIllustration, request, timeout)

    # Health --------------------------------------------------------------------------------------

    def health_check(self, service: str = "", *, timeout: float | None = None) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 Check ("" = whole server, or e.g. "acg2vec.v1.SearchService"); a HealthCheckResponse."""
        messages, services = health_modules()
        if self._health is None:
            self._health = services.HealthStub(self.channel)
        request = messages.HealthCheckRequest(service=service)
        return self._unary(self._health.Check, request, timeout)
