"""Tagging: scores from the tagger model turned into thresholded, categorised tags and a rating.

Which tags a score keeps, for each tag (first that applies): the request's threshold for that tag
(TagOptions.tag_thresholds); its category's MCut or threshold in the request; the server's threshold for that tag
(ACG2VEC_TAG_THRESHOLDS_FILE, `read_tag_thresholds`); the server's default threshold. A threshold keeps scores at
or above it; an MCut keeps scores strictly above it, as the WD tagger apps do.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acg2vec_models.image.popularity_bins import BOOKMARK_EDGES, SANITY_EDGES, VIEW_EDGES
from acg2vec_server.domain.models import Labels, Models
from acg2vec_server.domain.types import RATING_TAGS, ImageTags, Popularity, PopularityBin, TagOptions, TagScore

CATEGORIES = ("general", "character", "copyright", "artist", "meta", "rating")
#: The WD tagger app (SmilingWolf's wd-tagger Space, app.py `predict`) never lets MCut cut characters below this.
CHARACTER_MCUT_FLOOR = 0.15


def bins(edges: tuple[float, ...], probabilities: np.ndarray) -> list[PopularityBin]:
    bounds = [0.0, *edges, float("inf")]
    return [PopularityBin(bounds[i], bounds[i + 1], float(p)) for i, p in enumerate(probabilities)]


def mcut_threshold(scores: np.ndarray) -> float:
    """MCut (Largeron, Moulin and Gery, IDA 2012) as SmilingWolf's wd-tagger app computes it (`mcut_threshold`):
    the scores sorted from high to low, the largest drop between neighbours (the first one on a tie), the cut
    halfway across it. Keep the scores strictly above it. Fewer than two scores have no gap: the cut is the
    highest score, so nothing is kept (as with equal scores, where every gap is 0)."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if ordered.size < 2:
        return float(ordered[0]) if ordered.size else math.inf
    t = int(np.argmax(ordered[:-1] - ordered[1:]))
    return float((ordered[t] + ordered[t + 1]) / 2)


def read_tag_thresholds(path: Path) -> dict[str, float]:
    """The server's thresholds per tag: a JSON object {tag: threshold} (.json), or CSV rows `tag,threshold` with an
    optional header (any other suffix). Raises ValueError naming the line and the fix."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ValueError(f"cannot read the tag thresholds file {path} ({e.strerror}); fix the path, or unset it") from e
    if Path(path).suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f'{path}: not JSON ({e}); write an object {{"tag": threshold, ...}}') from None
        if not isinstance(data, dict):
            raise ValueError(f'{path}: write an object {{"tag": threshold, ...}}, not a {type(data).__name__}')
        rows = [(f"{path}: {tag!r}", tag, value) for tag, value in data.items()]
    else:
        rows = [
            (f"{path}:{number}", *[*cells, "", ""][:2])
            for number, cells in enumerate(csv.reader(io.StringIO(text)), 1)
            if cells and any(c.strip() for c in cells)
        ]
        if rows and _number(rows[0][2]) is None and rows[0][2].strip().lower() in ("threshold", "thresholds"):
            rows = rows[1:]  # the header
    thresholds: dict[str, float] = {}
    for where, tag, value in rows:
        number = _number(value)
        if not isinstance(tag, str) or not tag.strip() or number is None or not 0.0 <= number <= 1.0:
            raise ValueError(f"{where}: each entry is a tag and a threshold in [0, 1], e.g. `long_hair,0.35`")
        if tag.strip() in thresholds:
            raise ValueError(f"{where}: {tag.strip()!r} is listed twice; keep one threshold per tag")
        thresholds[tag.strip()] = number
    return thresholds


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


@dataclass(frozen=True)
class _Vocabulary:
    """What cutting needs of one labels version, worked out once: rows of each category, tag name -> row, and the
    threshold of each row before the request's options (the server's per-tag ones, else its default)."""

    labels: Labels
    rows: dict[str, np.ndarray]
    index: dict[str, int]
    defaults: np.ndarray
    is_rating: np.ndarray


class Tagger:
    def __init__(
        self, models: Models, default_threshold: float, default_top_k: int,
        tag_thresholds: Mapping[str, float] | None = None,
    ):  # fmt: skip
        self.models = models
        self.default_threshold = default_threshold
        self.default_top_k = default_top_k
        self.tag_thresholds = dict(tag_thresholds or {})  # the server's per tag
        self._vocabulary: _Vocabulary | None = None

    async def tag(self, images: list[bytes], options: TagOptions) -> list[ImageTags]:
        """Images must already be checked (domain.inputs.check_image)."""
        popularity: list[Popularity] | None = None
        if options.include_popularity:
            popularity = await self.popularity(images)
        outputs, ref = await self.models.run_images(self.models.tagger, images)
        vocabulary = self._vocabulary_of(await self.models.labels(ref.version))
        scores = np.asarray(outputs["scores"], dtype=np.float32)
        return [
            self._tags(row, vocabulary, options, ref, popularity[i] if popularity else None)
            for i, row in enumerate(scores)
        ]

    def _vocabulary_of(self, labels: Labels) -> _Vocabulary:
        if self._vocabulary is None or self._vocabulary.labels is not labels:
            index = {name: i for i, name in enumerate(labels.names)}
            defaults = np.full(len(labels.names), self.default_threshold, dtype=np.float64)
            for tag, threshold in self.tag_thresholds.items():
                if tag in index:
                    defaults[index[tag]] = threshold
            rows = {c: np.flatnonzero(labels.categories == c) for c in CATEGORIES}
            rows["general"] = np.flatnonzero(~np.isin(labels.categories, CATEGORIES[1:]))  # unknown ones too
            self._vocabulary = _Vocabulary(labels, rows, index, defaults, labels.categories == "rating")
        return self._vocabulary

    def keep(self, row: np.ndarray, vocabulary: _Vocabulary, options: TagOptions) -> np.ndarray:
        """Which rows of the score row pass their cut (ratings included; the caller sets them apart)."""
        thresholds = vocabulary.defaults.copy()
        strict = np.zeros(row.shape, dtype=bool)
        for category, threshold in options.thresholds.items():
            if category in vocabulary.rows:
                thresholds[vocabulary.rows[category]] = threshold
        for category, mode in options.modes.items():
            rows = vocabulary.rows.get(category)
            if mode != "mcut" or rows is None or category == "rating":
                continue
            cut = mcut_threshold(row[rows])
            thresholds[rows] = max(CHARACTER_MCUT_FLOOR, cut) if category == "character" else cut
            strict[rows] = True
        for tag, threshold in options.tag_thresholds.items():
            i = vocabulary.index.get(tag)
            if i is not None:  # tags the model does not know are ignored: one map may serve several models
                thresholds[i], strict[i] = threshold, False
        scores = row.astype(np.float64)
        return np.where(strict, scores > thresholds, scores >= thresholds)

    def _tags(self, row: np.ndarray, vocabulary: _Vocabulary, options: TagOptions, ref, popularity) -> ImageTags:
        labels = vocabulary.labels
        chosen = np.flatnonzero(self.keep(row, vocabulary, options) & ~vocabulary.is_rating)
        chosen = chosen[np.argsort(-row[chosen], kind="stable")][: options.top_k or self.default_top_k]
        tags = [TagScore(labels.names[i], float(row[i]), str(labels.categories[i])) for i in chosen]
        rating_scores = {
            RATING_TAGS[labels.names[i]]: float(row[i])
            for i in np.flatnonzero(vocabulary.is_rating)
            if labels.names[i] in RATING_TAGS
        }
        rating = max(rating_scores, key=rating_scores.__getitem__) if rating_scores else ""
        return ImageTags(tags, rating, rating_scores, ref, popularity)

    async def popularity(self, images: list[bytes]) -> list[Popularity]:
        outputs, ref = await self.models.run_images(self.models.popularity, images, optional=True)
        return [
            Popularity(
                bins(BOOKMARK_EDGES, outputs["bookmarks"][i]),
                bins(VIEW_EDGES, outputs["views"][i]),
                bins(SANITY_EDGES, outputs["sanity"][i]),
                ref,
            )
            for i in range(len(images))
        ]
