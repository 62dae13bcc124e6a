"""Training data: a JSONL manifest, one illustration a line.

    {"image": "path/to/file.png", "tags": ["tag", ...], "bookmarks": 120, "views": 3400, "sanity": 2}

`image` is absolute or relative to the manifest's folder; `tags` feed the tagger, the optional numbers feed deepix
(a missing one leaves that head out of the loss for the line). Other fields are ignored, so the openclipart
manifest (id, image, tags, title, artist) is one as it is.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    image: str
    tags: tuple[str, ...] = ()
    bookmarks: float | None = None
    views: float | None = None
    sanity: float | None = None


def _number(record: dict, key: str, where: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ManifestError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def read_manifest(path: Path) -> list[Example]:
    """All lines of the manifest; images must exist (a missing one is named with its line)."""
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not JSON ({e})") from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise ManifestError(f'{where}: each line needs "image": "<path>"')
        image = Path(record["image"])
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise ManifestError(f"{where}: image {image} does not exist")
        tags = record.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ManifestError(f'{where}: "tags" must be a list of strings')
        examples.append(
            Example(
                str(image),
                tuple(dict.fromkeys(t.strip() for t in tags if t.strip())),
                _number(record, "bookmarks", where),
                _number(record, "views", where),
                _number(record, "sanity", where),
            )
        )
    if not examples:
        raise ManifestError(f"manifest {path} has no lines")
    return examples


def split(examples: Sequence[Example], held_out_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Fixed-seed split by image path (the same image never lands on both sides)."""
    images = sorted({e.image for e in examples})
    order = np.random.default_rng(seed).permutation(len(images))
    n_held = round(len(images) * held_out_fraction)
    held = {images[i] for i in order[:n_held]}
    return [e for e in examples if e.image not in held], [e for e in examples if e.image in held]


def vocabulary(examples: Sequence[Example], min_count: int) -> list[str]:
    """Tags used by at least min_count training images, most frequent first (ties by name)."""
    counts = Counter(t for e in examples for t in e.tags)
    return sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
