"""Builds request messages from Python arguments; shared by the sync and asyncio clients so they cannot drift."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeAlias, TypeVar

from acg2vec.v1 import (
    common_pb2,
    image_feature_pb2,
    search_pb2,
    tagging_pb2,
    text_feature_pb2,
)

T = TypeVar("T")

#: A rating as an enum value or a name: "general", "RATING_GENERAL" or DeepDanbooru's "safe".
RatingLike: TypeAlias = "common_pb2.Rating.ValueType | int | str"
#: A vector space as an enum value or a name: "image", "text" or "VECTOR_SPACE_IMAGE".
SpaceLike: TypeAlias = "search_pb2.VectorSpace.ValueType | int | str"
#: Stream items: a ready request message or (request_id, payload).
TagStreamItem: TypeAlias = "tagging_pb2.StreamTagImagesRequest | tuple[str, bytes]"
ImageFeatureStreamItem: TypeAlias = "image_feature_pb2.StreamExtractImageFeaturesRequest | tuple[str, bytes]"
TextFeatureStreamItem: TypeAlias = "text_feature_pb2.StreamExtractTextFeaturesRequest | tuple[str, str]"
#: Metadata for indexing: a message or a mapping with title/artist/source_url/fields keys.
MetadataLike: TypeAlias = "search_pb2.IllustrationMetadata | Mapping[str, object]"
#: Index stream items: a request message (stream or unary form) or (id, image[, metadata]).
IndexStreamItem: TypeAlias = (
    "search_pb2.StreamIndexIllustrationsRequest | search_pb2.IndexIllustrationRequest"
    " | tuple[str, bytes] | tuple[str, bytes, MetadataLike]"
)

_THRESHOLD_KEYS = ("general", "character", "copyright", "artist", "meta", "rating")
_MODE_KEYS = _THRESHOLD_KEYS[:-1]  # ratings are never cut
_RATING_ALIASES = {"safe": common_pb2.RATING_GENERAL}


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Splits a batch so that no RPC exceeds the server's max_batch_size."""
    if size <= 0:
        raise ValueError(f"batch_size must be > 0, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tag_options(
    *,
    top_k: int = 0,
    thresholds: Mapping[str, float] | None = None,
    include_popularity: bool = False,
    tag_thresholds: Mapping[str, float] | None = None,
    modes: Mapping[str, str | int] | None = None,
) -> tagging_pb2.TagOptions:
    """Threshold and mode keys are category names ("general", "character", ...); unset ones keep the server
    default. tag_thresholds: tag name -> threshold, over its category's. modes: category -> "fixed" or "mcut"
    (the adaptive cut of the WD tagger apps)."""
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    options = tagging_pb2.TagOptions(
        top_k=top_k, include_popularity=include_popularity, tag_thresholds=dict(tag_thresholds or {})
    )
    for key, value in (thresholds or {}).items():
        name = key.lower().removeprefix("tag_category_")
        if name not in _THRESHOLD_KEYS:
            raise ValueError(f"unknown threshold category {key!r}; expected one of {', '.join(_THRESHOLD_KEYS)}")
        setattr(options.thresholds, name, float(value))
    for key, mode in (modes or {}).items():
        name = key.lower().removeprefix("tag_category_")
        if name not in _MODE_KEYS:
            raise ValueError(f"unknown mode category {key!r}; expected one of {', '.join(_MODE_KEYS)}")
        setattr(options.modes, name, threshold_mode(mode))
    return options


def threshold_mode(value: str | int) -> tagging_pb2.ThresholdMode.ValueType:
    """ "fixed" / "mcut" (any case, with or without the THRESHOLD_MODE_ prefix) or the enum value."""
    if isinstance(value, str):
        try:
            return tagging_pb2.ThresholdMode.Value("THRESHOLD_MODE_" + value.upper().removeprefix("THRESHOLD_MODE_"))
        except ValueError:
            raise ValueError(f"unknown threshold mode {value!r}; expected fixed or mcut") from None
    return tagging_pb2.ThresholdMode.ValueType(int(value))


def rating(value: RatingLike) -> common_pb2.Rating.ValueType:
    """Accepts enum values and case-insensitive names so callers need not import the enum."""
    if isinstance(value, str):
        name = value.strip().lower().removeprefix("rating_")
        if name in _RATING_ALIASES:
            return _RATING_ALIASES[name]
        try:
            return common_pb2.Rating.Value(f"RATING_{name.upper()}")
        except ValueError:
            raise ValueError(f"unknown rating {value!r}") from None
    return common_pb2.Rating.ValueType(int(value))


def vector_space(value: SpaceLike) -> search_pb2.VectorSpace.ValueType:
    """Accepts enum values and names ("image", "text")."""
    if isinstance(value, str):
        name = value.strip().lower().removeprefix("vector_space_")
        try:
            return search_pb2.VectorSpace.Value(f"VECTOR_SPACE_{name.upper()}")
        except ValueError:
            raise ValueError(f"unknown vector space {value!r}") from None
    return search_pb2.VectorSpace.ValueType(int(value))


def illustration_metadata(
    *,
    title: str = "",
    artist: str = "",
    source_url: str = "",
    fields: Mapping[str, str] | None = None,
) -> search_pb2.IllustrationMetadata:
    """The user-supplied part of an illustration."""
    return search_pb2.IllustrationMetadata(title=title, artist=artist, source_url=source_url, fields=fields or {})


def _metadata_from(value: MetadataLike) -> search_pb2.IllustrationMetadata:
    if isinstance(value, search_pb2.IllustrationMetadata):
        return value
    unknown = set(value) - {"title", "artist", "source_url", "fields"}
    if unknown:
        raise ValueError(f"unknown metadata keys: {sorted(unknown)}")
    fields = value.get("fields") or {}
    if not isinstance(fields, Mapping):
        raise TypeError("metadata 'fields' must be a mapping of str to str")
    return illustration_metadata(
        title=str(value.get("title", "")),
        artist=str(value.get("artist", "")),
        source_url=str(value.get("source_url", "")),
        fields={str(k): str(v) for k, v in fields.items()},
    )


def search_request(
    *,
    image: bytes | None = None,
    illustration_id: str | None = None,
    vector: Sequence[float] | search_pb2.VectorQuery | None = None,
    space: SpaceLike | None = None,
    text: str | None = None,
    top_k: int = 10,
    ratings: Iterable[RatingLike] | None = None,
    required_tags: Iterable[str] | None = None,
    excluded_tags: Iterable[str] | None = None,
    fields: Mapping[str, str] | None = None,
    page_token: str = "",
    exact_rerank: bool = False,
) -> search_pb2.SearchRequest:
    """Exactly one query kind is allowed because the proto models the query as a oneof."""
    given = [
        name
        for name, value in (("image", image), ("illustration_id", illustration_id), ("vector", vector), ("text", text))
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of image, illustration_id, vector, text (got {given or 'none'})")
    if space is not None and vector is None:
        raise ValueError("space only applies to a vector query")
    request = search_pb2.SearchRequest(top_k=top_k, page_token=page_token, exact_rerank=exact_rerank)
    if image is not None:
        request.image = image
    elif illustration_id is not None:
        request.illustration_id = illustration_id
    elif text is not None:
        request.text = text
    elif isinstance(vector, search_pb2.VectorQuery):
        if space is not None:
            raise ValueError("space is already part of the VectorQuery")
        request.vector.CopyFrom(vector)
    elif vector is not None:
        if space is None:
            raise ValueError('a vector query needs space= ("image" or "text")')
        request.vector.values.extend(float(v) for v in vector)
        request.vector.space = vector_space(space)
    if ratings:
        request.filter.ratings.extend(rating(r) for r in ratings)
    if required_tags:
        request.filter.required_tags.extend(required_tags)
    if excluded_tags:
        request.filter.excluded_tags.extend(excluded_tags)
    if fields:
        request.filter.fields.update(fields)
    return request


def stream_tag_request(item: TagStreamItem, options: tagging_pb2.TagOptions) -> tagging_pb2.StreamTagImagesRequest:
    """Tuples get the call-wide options; ready messages keep their own."""
    if isinstance(item, tagging_pb2.StreamTagImagesRequest):
        return item
    request_id, image = item
    return tagging_pb2.StreamTagImagesRequest(request_id=request_id, image=image, options=options)


def stream_image_feature_request(item: ImageFeatureStreamItem) -> image_feature_pb2.StreamExtractImageFeaturesRequest:
    if isinstance(item, image_feature_pb2.StreamExtractImageFeaturesRequest):
        return item
    request_id, image = item
    return image_feature_pb2.StreamExtractImageFeaturesRequest(request_id=request_id, image=image)


def stream_text_feature_request(item: TextFeatureStreamItem) -> text_feature_pb2.StreamExtractTextFeaturesRequest:
    if isinstance(item, text_feature_pb2.StreamExtractTextFeaturesRequest):
        return item
    request_id, text = item
    return text_feature_pb2.StreamExtractTextFeaturesRequest(request_id=request_id, text=text)


def stream_index_request(item: IndexStreamItem) -> search_pb2.StreamIndexIllustrationsRequest:
    """Accepts the unary request type too, so code written for index_illustration can be streamed."""
    if isinstance(item, search_pb2.StreamIndexIllustrationsRequest):
        return item
    if isinstance(item, search_pb2.IndexIllustrationRequest):
        return search_pb2.StreamIndexIllustrationsRequest(id=item.id, image=item.image, metadata=item.metadata)
    if len(item) == 2:
        illustration_id, image = item
        return search_pb2.StreamIndexIllustrationsRequest(id=illustration_id, image=image)
    if len(item) == 3:
        illustration_id, image, metadata = item
        return search_pb2.StreamIndexIllustrationsRequest(
            id=illustration_id, image=image, metadata=_metadata_from(metadata)
        )
    raise ValueError(f"expected (id, image) or (id, image, metadata), got a tuple of {len(item)}")
