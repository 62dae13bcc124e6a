"""Text -> picture retrieval on the held-out openclipart pictures: recall@1, recall@10 and MRR.

Gallery: every held-out picture. Queries: each distinct usable title carried by at most `MAX_TITLE_GROUP`
held-out pictures (a title on more is a collection name such as "Lemon SVG theme", not a description), and
each held-out description; the relevant pictures of a query are those carrying that exact text (case folded).
The rank of a query is 1 + the number of irrelevant pictures scoring above its best relevant one.

The hand translations (`benchmarks/data/openclipart_titles_en_ja_zh.jsonl`) cover the first titles of
`translation_candidates` (a fixed order by the title's SHA-256, plain words only): so that the English, Japanese
and Chinese numbers compare like with like, English is reported on the same titles as well.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from acg2vec_models.joint.data import PictureText

MAX_TITLE_GROUP = 3
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z' -]*$")


@dataclass(frozen=True)
class Query:
    text: str
    relevant: tuple[int, ...]  # gallery rows


@dataclass(frozen=True)
class Result:
    name: str
    queries: int
    recall_at_1: float
    recall_at_10: float
    mrr: float


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def title_queries(gallery: Sequence[PictureText]) -> list[Query]:
    groups: dict[str, list[int]] = {}
    first: dict[str, str] = {}
    for i, item in enumerate(gallery):
        if item.title:
            groups.setdefault(_key(item.title), []).append(i)
            first.setdefault(_key(item.title), item.title)
    return [Query(first[k], tuple(rows)) for k, rows in sorted(groups.items()) if len(rows) <= MAX_TITLE_GROUP]


def description_queries(gallery: Sequence[PictureText]) -> list[Query]:
    groups: dict[str, list[int]] = {}
    first: dict[str, str] = {}
    for i, item in enumerate(gallery):
        if item.description:
            groups.setdefault(_key(item.description), []).append(i)
            first.setdefault(_key(item.description), item.description)
    return [Query(first[k], tuple(rows)) for k, rows in sorted(groups.items())]


def translation_candidates(gallery: Sequence[PictureText]) -> list[Query]:
    """Title queries of plain words (letters, spaces, hyphens; 1-6 words), in a fixed order: the titles to
    translate by hand, first to last."""
    plain = [q for q in title_queries(gallery) if _PLAIN.match(q.text) and len(q.text.split()) <= 6]
    return sorted(plain, key=lambda q: hashlib.sha256(_key(q.text).encode()).hexdigest())


def read_translations(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def translated_queries(
    gallery: Sequence[PictureText], translations: Sequence[dict[str, str]]
) -> dict[str, list[Query]]:
    """language -> queries: each translated title with the relevant pictures of its English title."""
    by_title = {_key(q.text): q for q in title_queries(gallery)}
    out: dict[str, list[Query]] = {"en": [], "ja": [], "zh": []}
    for row in translations:
        query = by_title.get(_key(row["en"]))
        if query is None:
            continue  # not in this gallery (a --limit run)
        for language in out:
            out[language].append(Query(row[language], query.relevant))
    return out


def score(name: str, queries: Sequence[Query], query_vectors: np.ndarray, gallery_vectors: np.ndarray) -> Result:
    """Ranks by cosine (the vectors are L2-normalised by the caller)."""
    if not queries:
        return Result(name, 0, float("nan"), float("nan"), float("nan"))
    sims = np.asarray(query_vectors, np.float32) @ np.asarray(gallery_vectors, np.float32).T
    ranks = []
    for q, row in zip(queries, sims, strict=True):
        relevant = np.zeros(len(row), dtype=bool)
        relevant[list(q.relevant)] = True
        best = row[relevant].max()
        ranks.append(1 + int(np.sum(row[~relevant] > best)))
    r = np.array(ranks)
    return Result(name, len(r), float(np.mean(r <= 1)), float(np.mean(r <= 10)), float(np.mean(1.0 / r)))


def evaluate(
    gallery: Sequence[PictureText],
    gallery_vectors: np.ndarray,
    encode: Callable[[list[str]], np.ndarray],
    translations: Sequence[dict[str, str]] = (),
) -> list[Result]:
    """Every query set against one method's gallery vectors and its text encoder."""
    sets: list[tuple[str, list[Query]]] = [
        ("title -> image, en (all titles)", title_queries(gallery)),
        ("description -> image, en", description_queries(gallery)),
    ]
    for language, queries in translated_queries(gallery, translations).items():
        sets.append((f"title -> image, {language} (translated titles)", queries))
    results = []
    for name, queries in sets:
        vectors = encode([q.text for q in queries]) if queries else np.zeros((0, gallery_vectors.shape[1]))
        results.append(score(name, queries, vectors, gallery_vectors))
    return results
