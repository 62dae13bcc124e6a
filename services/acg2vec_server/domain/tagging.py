"""Tagging: scores from the tagger model turned into thresholded, categorised tags and a rating."""

from __future__ import annotations

import numpy as np

from acg2vec_models.image.popularity_bins import BOOKMARK_EDGES, SANITY_EDGES, VIEW_EDGES
from acg2vec_server.domain.models import Labels, Models
from acg2vec_server.domain.types import RATING_TAGS, ImageTags, Popularity, PopularityBin, TagOptions, TagScore

CATEGORIES = ("general", "character", "copyright", "artist", "meta", "rating")


def bins(edges: tuple[float, ...], probabilities: np.ndarray) -> list[PopularityBin]:
    bounds = [0.0, *edges, float("inf")]
    return [PopularityBin(bounds[i], bounds[i + 1], float(p)) for i, p in enumerate(probabilities)]


class Tagger:
    def __init__(self, models: Models, default_threshold: float, default_top_k: int):
        self.models = models
        self.default_threshold = default_threshold
        self.default_top_k = default_top_k

    async def tag(self, images: list[bytes], options: TagOptions) -> list[ImageTags]:
        """Images must already be checked (domain.inputs.check_image)."""
        popularity: list[Popularity] | None = None
        if options.include_popularity:
            popularity = await self.popularity(images)
        outputs, ref = await self.models.run_images(self.models.tagger, images)
        labels = await self.models.labels(ref.version)
        scores = np.asarray(outputs["scores"], dtype=np.float32)
        return [
            self._tags(row, labels, options, ref, popularity[i] if popularity else None) for i, row in enumerate(scores)
        ]

    def _tags(self, row: np.ndarray, labels: Labels, options: TagOptions, ref, popularity) -> ImageTags:
        thresholds = np.array([options.thresholds.get(c, self.default_threshold) for c in CATEGORIES], dtype=np.float32)
        per_tag = thresholds[[CATEGORIES.index(c) if c in CATEGORIES else 0 for c in labels.categories]]
        is_rating = labels.categories == "rating"
        chosen = np.flatnonzero((row >= per_tag) & ~is_rating)
        chosen = chosen[np.argsort(-row[chosen], kind="stable")][: options.top_k or self.default_top_k]
        tags = [TagScore(labels.names[i], float(row[i]), str(labels.categories[i])) for i in chosen]
        rating_scores = {
            RATING_TAGS[labels.names[i]]: float(row[i])
            for i in np.flatnonzero(is_rating)
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
