"""What to index: a folder of images or a JSONL manifest, as items with metadata; stable sharding by id."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
MANIFEST_KEYS = frozenset({"id", "image", "title", "artist", "source_url", "fields", "tags"})


@dataclass
class Item:
    """One illustration to index; `error` set when the source line itself is unusable."""

    id: str
    path: Path | None
    title: str = ""
    artist: str = ""
    source_url: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    error: str = ""

    def metadata(self) -> dict[str, Any]:
        return {"title": self.title, "artist": self.artist, "source_url": self.source_url, "fields": self.fields}


def shard_of(id: str, count: int) -> int:
    """Stable shard of an id (same on every machine and Python run, unlike hash())."""
    return int.from_bytes(hashlib.sha256(id.encode()).digest()[:8], "big") % count


def folder_items(root: Path) -> Iterator[Item]:
    """Every image under root, sorted; the id is the relative path without its suffix."""
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        yield Item(id=path.relative_to(root).with_suffix("").as_posix(), path=path)


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    return value


def manifest_item(line: str, number: int, folder: Path) -> Item | None:
    """One manifest line: {id, image, title?, artist?, source_url?, fields?, tags?}; None for a blank line.

    `image` is a path, relative to the manifest's folder unless absolute. `tags` (the source's own keywords,
    as in the openclipart manifest) are kept as the custom field `keywords`; the server computes its own tags.
    """
    if not line.strip():
        return None
    where = f"line {number}"
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        return Item(id=f"<{where}>", path=None, error=f"{where}: not valid JSON ({e}); fix or remove the line")
    id = record.get("id")
    if not isinstance(id, str) or not id:
        return Item(id=f"<{where}>", path=None, error=f"{where}: 'id' is missing or not a string")
    try:
        image = _text(record, "image")
        if not image:
            raise ValueError("'image' (a path) is missing")
        raw_fields = record.get("fields") or {}
        if not isinstance(raw_fields, dict):
            raise ValueError("'fields' must be an object of string values")
        fields: dict[str, str] = {}
        for key, value in raw_fields.items():
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError(f"fields.{key} must be a string, number or boolean")
            fields[str(key)] = value if isinstance(value, str) else json.dumps(value)
        tags = record.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("'tags' must be a list of strings")
        if tags:
            fields.setdefault("keywords", ", ".join(tags))
        path = Path(image)
        return Item(
            id=id, path=path if path.is_absolute() else folder / path, title=_text(record, "title"),
            artist=_text(record, "artist"), source_url=_text(record, "source_url"), fields=fields,
        )  # fmt: skip
    except ValueError as e:
        return Item(id=id, path=None, error=f"{where}: {e}")


def manifest_items(manifest: Path) -> Iterator[Item]:
    folder = manifest.resolve().parent
    with manifest.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            item = manifest_item(line, number, folder)
            if item is not None:
                yield item


def source_items(source: Path) -> Iterator[Item]:
    return folder_items(source) if source.is_dir() else manifest_items(source)


def count_items(source: Path, shard_index: int, shard_count: int) -> int | None:
    """Items of this shard, for the progress bar; None when the source cannot be read twice (a pipe)."""
    if source.is_dir():
        return sum(1 for item in folder_items(source) if shard_of(item.id, shard_count) == shard_index)
    if not source.is_file():
        return None
    n = 0
    with source.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                with contextlib.suppress(ValueError, AttributeError):
                    n += shard_of(str(json.loads(line).get("id", "")), shard_count) == shard_index
    return n
