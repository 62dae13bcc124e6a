"""Tag vocabularies with categories: DeepDanbooru v3 (tags.txt) and WD14 (selected_tags.csv)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
DEEPDANBOORU_V3 = HERE / "deepdanbooru-v3-tags.txt"
WD14_SELECTED_TAGS = HERE / "wd14-selected_tags.csv"

CATEGORIES: tuple[str, ...] = ("general", "character", "copyright", "artist", "meta", "rating")
#: Danbooru's numeric tag categories as used in WD14's selected_tags.csv.
DANBOORU_CATEGORY_IDS: dict[int, str] = {
    0: "general",
    1: "artist",
    3: "copyright",
    4: "character",
    5: "meta",
    9: "rating",
}


@dataclass(frozen=True)
class TagEntry:
    name: str
    category: str


def read_tags_txt(path: Path, categories: dict[str, str] | None = None) -> list[TagEntry]:
    """DeepDanbooru tags.txt: one tag a line; `rating:*` tags are ratings, others general unless mapped."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    categories = categories or {}
    return [TagEntry(n, "rating" if n.startswith("rating:") else categories.get(n, "general")) for n in names]


def read_selected_tags_csv(path: Path) -> list[TagEntry]:
    """WD14 selected_tags.csv: tag_id,name,category,count with Danbooru category ids."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("name")]  # the published file has a blank row
    return [TagEntry(r["name"], DANBOORU_CATEGORY_IDS.get(int(r["category"] or 0), "general")) for r in rows]


def category_files(project_dir: Path) -> dict[str, str]:
    """DeepDanbooru projects may ship tags-character.txt etc.; maps tag -> category from them."""
    mapping: dict[str, str] = {}
    for category in CATEGORIES:
        p = project_dir / f"tags-{category}.txt"
        if p.exists():
            mapping.update({t.strip(): category for t in p.read_text(encoding="utf-8").splitlines() if t.strip()})
    return mapping


def validate(entries: Iterable[TagEntry]) -> None:
    bad = sorted({e.category for e in entries} - set(CATEGORIES))
    if bad:
        raise ValueError(f"unknown tag categories {bad}; use one of {CATEGORIES}")
