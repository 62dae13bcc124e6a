"""The journal of acknowledged items: what a rerun skips without sending it again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def content_key(image: bytes, metadata: dict[str, Any], models: str = "") -> str:
    """What the server compares: the image bytes, the user metadata and the embedding model versions (`models`,
    e.g. "illust2vec:1,acgvoc2vec:1"), so that after a model upgrade a rerun sends everything again."""
    digest = hashlib.sha256(hashlib.sha256(image).digest())
    digest.update(json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode())
    digest.update(models.encode())
    return digest.hexdigest()


def default_journal(source: Path, target: str, shard_index: int, shard_count: int) -> Path:
    """One journal per (source, server, shard) under the user's cache directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "acg2vec" / "index-journals"
    name = hashlib.sha256(f"{source.resolve()}|{target}|{shard_index}/{shard_count}".encode()).hexdigest()[:20]
    return base / f"{name}.jsonl"


class Journal:
    """Append-only JSONL of acknowledged items; a torn last line (killed mid-write) is ignored on load."""

    def __init__(self, path: Path | None):
        self.path = path
        self.done: dict[str, str] = {}
        self._file: Any = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        entry = json.loads(line)
                        self.done[entry["id"]] = entry["key"]
        torn = False
        if path.exists() and path.stat().st_size > 0:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self._file = path.open("a", encoding="utf-8")
        if torn:
            self._file.write("\n")  # a torn last line (killed mid-write) stays a line of its own

    def record(self, id: str, key: str, outcome: str) -> None:
        self.done[id] = key
        if self._file is not None:
            self._file.write(json.dumps({"id": id, "key": key, "outcome": outcome}, ensure_ascii=False) + "\n")
            self._file.flush()  # in the kernel's hands: a killed process loses nothing it acknowledged

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
