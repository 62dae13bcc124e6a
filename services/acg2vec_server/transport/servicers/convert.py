"""proto <-> domain conversions, in one place."""

from __future__ import annotations

from typing import Literal

from acg2vec.v1 import common_pb2, search_pb2, tagging_pb2
from acg2vec_server.domain import types
from acg2vec_server.domain.errors import FieldViolation, InvalidInput

CATEGORY = {
    "general": common_pb2.TAG_CATEGORY_GENERAL, "character": common_pb2.TAG_CATEGORY_CHARACTER,
    "copyright": common_pb2.TAG_CATEGORY_COPYRIGHT, "artist": common_pb2.TAG_CATEGORY_ARTIST,
    "meta": common_pb2.TAG_CATEGORY_META, "rating": common_pb2.TAG_CATEGORY_RATING,
}  # fmt: skip
RATING = {
    "general": common_pb2.RATING_GENERAL, "sensitive": common_pb2.RATING_SENSITIVE,
    "questionable": common_pb2.RATING_QUESTIONABLE, "explicit": common_pb2.RATING_EXPLICIT,
}  # fmt: skip
RATING_NAME = {v: k for k, v in RATING.items()}
MODE_CATEGORIES = ("general", "character", "copyright", "artist", "meta")  # CategoryModes' fields
THRESHOLD_MODE: dict[int, types.ThresholdMode | Literal["default"]] = {
    tagging_pb2.THRESHOLD_MODE_UNSPECIFIED: "default", tagging_pb2.THRESHOLD_MODE_FIXED: "fixed",
    tagging_pb2.THRESHOLD_MODE_MCUT: "mcut",
}  # fmt: skip
SPACE = {"image": search_pb2.VECTOR_SPACE_IMAGE, "text": search_pb2.VECTOR_SPACE_TEXT}
OUTCOME = {
    "created": search_pb2.INDEX_OUTCOME_CREATED, "updated": search_pb2.INDEX_OUTCOME_UPDATED,
    "unchanged": search_pb2.INDEX_OUTCOME_UNCHANGED,
}  # fmt: skip


def model_info(ref: types.ModelRef | None) -> common_pb2.ModelInfo | None:
    return common_pb2.ModelInfo(name=ref.name, version=ref.version) if ref else None


def feature(e: types.Embedding) -> common_pb2.FeatureVector:
    return common_pb2.FeatureVector(
        values=e.values.tolist(), dimension=int(e.values.shape[0]), normalized=e.normalized, model=model_info(e.model)
    )


def tag(t: types.TagScore) -> common_pb2.Tag:
    return common_pb2.Tag(
        name=t.name, score=t.score, category=CATEGORY.get(t.category, common_pb2.TAG_CATEGORY_GENERAL)
    )


def tag_options(options: tagging_pb2.TagOptions) -> types.TagOptions:
    thresholds = {
        name: getattr(options.thresholds, name)
        for name in CATEGORY
        if options.HasField("thresholds") and options.thresholds.HasField(name)
    }
    bad = [f"options.thresholds.{k}" for k, v in thresholds.items() if not 0.0 <= v <= 1.0]
    if options.top_k < 0:
        bad.append("options.top_k")
    bad += [f"options.tag_thresholds[{k!r}]" for k, v in options.tag_thresholds.items() if not 0.0 <= v <= 1.0]
    modes: dict[str, types.ThresholdMode] = {}
    if options.HasField("modes"):
        for name in MODE_CATEGORIES:
            mode = THRESHOLD_MODE.get(getattr(options.modes, name))
            if mode is None:
                bad.append(f"options.modes.{name}")
            elif mode != "default":
                modes[name] = mode
    if bad:
        raise InvalidInput(
            f"{', '.join(bad)} out of range: thresholds are in [0, 1], top_k >= 0 (0: server default), modes are "
            "THRESHOLD_MODE_FIXED or THRESHOLD_MODE_MCUT",
            [FieldViolation(f, "out of range") for f in bad],
        )
    return types.TagOptions(thresholds, options.top_k, options.include_popularity, dict(options.tag_thresholds), modes)


def distribution(bins: list[types.PopularityBin]) -> tagging_pb2.Distribution:
    probabilities = [b.probability for b in bins]
    return tagging_pb2.Distribution(
        bins=[tagging_pb2.DistributionBin(lower=b.lower, upper=b.upper, probability=b.probability) for b in bins],
        most_likely_bin=max(range(len(bins)), key=probabilities.__getitem__),
    )


def popularity(p: types.Popularity) -> tagging_pb2.Popularity:
    return tagging_pb2.Popularity(
        bookmarks=distribution(p.bookmarks), views=distribution(p.views),
        sanity_level=distribution(p.sanity_level), model=model_info(p.model),
    )  # fmt: skip


def image_tags(r: types.ImageTags) -> tagging_pb2.ImageTags:
    return tagging_pb2.ImageTags(
        tags=[tag(t) for t in r.tags],
        rating=RATING.get(r.rating, common_pb2.RATING_UNSPECIFIED),
        rating_scores=[tagging_pb2.RatingScore(rating=RATING[k], score=v) for k, v in r.rating_scores.items()],
        popularity=popularity(r.popularity) if r.popularity else None,
        model=model_info(r.model),
    )


def metadata_from(m: search_pb2.IllustrationMetadata) -> types.IllustrationMetadata:
    return types.IllustrationMetadata(m.title, m.artist, m.source_url, dict(m.fields))


def illustration(r: types.IllustrationRecord, include_vectors: bool = False) -> search_pb2.Illustration:
    out = search_pb2.Illustration(
        id=r.id,
        metadata=search_pb2.IllustrationMetadata(
            title=r.metadata.title, artist=r.metadata.artist, source_url=r.metadata.source_url, fields=r.metadata.fields
        ),
        tags=[tag(t) for t in r.tags],
        rating=RATING.get(r.rating, common_pb2.RATING_UNSPECIFIED),
        content_sha256=r.content_sha256,
    )
    out.create_time.FromNanoseconds(int(r.create_time * 1e9))
    out.update_time.FromNanoseconds(int(r.update_time * 1e9))
    if include_vectors:
        out.image_vector.CopyFrom(feature(types.Embedding(r.image_vector, r.image_model, True)))
        out.text_vector.CopyFrom(feature(types.Embedding(r.text_vector, r.text_model, True)))
    return out


def search_filter(f: search_pb2.SearchFilter) -> types.SearchFilter:
    bad = [r for r in f.ratings if r not in RATING_NAME]
    if bad:
        raise InvalidInput(
            f"filter.ratings has unknown values {bad}; use RATING_GENERAL..RATING_EXPLICIT",
            [FieldViolation("filter.ratings", "unknown rating")],
        )
    return types.SearchFilter(
        ratings=[RATING_NAME[r] for r in f.ratings],
        required_tags=list(f.required_tags),
        excluded_tags=list(f.excluded_tags),
        fields=dict(f.fields),
    )
