"""Cross-lingual title retrieval on held-out anime: recall@1, recall@10 and MRR of the right anime.

For a direction src -> tgt, every held-out anime with titles in both languages asks one query (its first src
title); the gallery is every tgt title of every held-out anime. The rank of a query is 1 + the number of
other anime whose best-scoring gallery title scores higher than the right anime's best title (ties count in the
query's favour: identical titles of different anime cannot be told apart by any model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from acg2vec_models.datasets.bangumi import Anime

DIRECTIONS = (("ja", "zh-Hans"), ("zh-Hans", "ja"), ("ja", "en"), ("en", "ja"), ("zh-Hant", "zh-Hans"))

Encoder = Callable[[list[str]], np.ndarray]  # texts -> [N, D] vectors (normalised or not)


@dataclass(frozen=True)
class Retrieval:
    source: str
    target: str
    queries: int
    gallery: int  # titles in the target language
    recall_at_1: float
    recall_at_10: float
    mrr: float

    @property
    def direction(self) -> str:
        return f"{self.source}->{self.target}"


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero): cosine as a dot product."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def evaluate(
    encode: Encoder, anime: Sequence[Anime], directions: Sequence[tuple[str, str]] = DIRECTIONS
) -> list[Retrieval]:
    texts = sorted({t for a in anime for ts in a.titles.values() for t in ts})
    index = {t: i for i, t in enumerate(texts)}
    vectors = unit(encode(texts))
    results = []
    for src, tgt in directions:
        gallery = [(i, t) for i, a in enumerate(anime) for t in a.titles.get(tgt, [])]
        owner = np.array([i for i, _ in gallery])
        g = vectors[[index[t] for _, t in gallery]]
        queries = [(i, a.titles[src][0]) for i, a in enumerate(anime) if src in a.titles and tgt in a.titles]
        q = vectors[[index[t] for _, t in queries]]
        scores = q @ g.T  # [Q, G]
        # best score per (query, anime): the anime is as close as its closest title
        best = np.full((len(queries), len(anime)), -np.inf, dtype=np.float32)
        np.maximum.at(best.T, owner, scores.T)
        right = best[np.arange(len(queries)), [i for i, _ in queries]]
        ranks = 1 + (best > right[:, None]).sum(axis=1)
        r1, r10, mrr = float((ranks == 1).mean()), float((ranks <= 10).mean()), float((1.0 / ranks).mean())
        results.append(Retrieval(src, tgt, len(queries), len(gallery), r1, r10, mrr))
    return results


def table(rows: dict[str, list[Retrieval]]) -> str:
    """A markdown table: one row per (model, direction)."""
    lines = [
        "| model | direction | queries | gallery | R@1 | R@10 | MRR |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, results in rows.items():
        for r in results:
            lines.append(
                f"| {model} | {r.direction} | {r.queries} | {r.gallery} | {r.recall_at_1:.3f} | "
                f"{r.recall_at_10:.3f} | {r.mrr:.3f} |"
            )
    return "\n".join(lines)
