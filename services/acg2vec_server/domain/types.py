"""Plain domain types shared by the domain, the backends and the servicers' converters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

RATINGS: tuple[str, ...] = ("general", "sensitive", "questionable", "explicit")
#: Vocabulary names of rating tags -> rating: WD's bare names, DeepDanbooru's "rating:" ones (its rating:safe is
#: Danbooru's "general") and Camie v2's "rating_" ones (docs/image-models-import-train.md, "Ratings").
RATING_TAGS: dict[str, str] = {
    **{f"{prefix}{r}": r for prefix in ("", "rating:", "rating_") for r in RATINGS},
    "rating:safe": "general",
}  # fmt: skip
Space = Literal["image", "text"]
#: "damaged": the metadata store holds fields it cannot decode (repair removes the id from both stores).
RecordState = Literal["committed", "pending", "deleting", "damaged"]


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int


@dataclass(frozen=True)
class Embedding:
    values: np.ndarray  # float32 [D]
    model: ModelRef
    normalized: bool


@dataclass(frozen=True)
class TagScore:
    name: str
    score: float
    category: str


@dataclass(frozen=True)
class PopularityBin:
    lower: float
    upper: float
    probability: float


@dataclass(frozen=True)
class Popularity:
    bookmarks: list[PopularityBin]
    views: list[PopularityBin]
    sanity_level: list[PopularityBin]
    model: ModelRef


@dataclass(frozen=True)
class ImageTags:
    tags: list[TagScore]
    rating: str  # one of RATINGS, or "" when the model has no rating outputs
    rating_scores: dict[str, float]
    model: ModelRef
    popularity: Popularity | None = None


ThresholdMode = Literal["fixed", "mcut"]


@dataclass
class TagOptions:
    thresholds: dict[str, float] = field(default_factory=dict)  # category -> threshold
    top_k: int = 0
    include_popularity: bool = False
    tag_thresholds: dict[str, float] = field(default_factory=dict)  # tag name -> threshold (over its category's)
    modes: dict[str, ThresholdMode] = field(default_factory=dict)  # category -> how its cut is chosen


@dataclass
class IllustrationMetadata:
    title: str = ""
    artist: str = ""
    source_url: str = ""
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class IllustrationRecord:
    """What the metadata store holds for one illustration (vectors too, so Milvus can be rebuilt)."""

    id: str
    metadata: IllustrationMetadata
    tags: list[TagScore]
    rating: str
    content_sha256: str
    image_vector: np.ndarray
    text_vector: np.ndarray
    image_model: ModelRef
    text_model: ModelRef
    create_time: float
    update_time: float
    state: RecordState = "committed"
    write_id: str = ""
    #: The fencing token of the lease under which this version was stored (consistency.py).
    fence: int = 0


@dataclass(frozen=True)
class VectorRow:
    """What the vector store holds for one illustration: both vectors plus the filterable fields. Each vector goes
    into the collection of the model version that embedded it (never into another version's)."""

    id: str
    image_vector: np.ndarray
    text_vector: np.ndarray
    rating: str
    tags: list[str]
    fields: dict[str, str]
    image_model: ModelRef
    text_model: ModelRef


@dataclass
class SearchFilter:
    ratings: list[str] = field(default_factory=list)
    required_tags: list[str] = field(default_factory=list)
    excluded_tags: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorHit:
    id: str
    score: float
