"""Stored illustrations: index, get, update, delete, search; metadata and vectors kept consistent.

Write protocol (no cross-store transactions exist, so every write is an intent that can be finished):
  1. SADD pending id            2. HSET record (state=pending, vectors included)
  3. Milvus upsert              4. HSET state=committed      5. SREM pending id
Delete: pending id, state=deleting, Milvus delete, DEL record, SREM. A crash anywhere leaves the id in
the pending set; `repair()` (run at start-up, by `acg2vec repair`, and before any read or write of
that id) finishes the job from the record, which holds the vectors. So Milvus never keeps an orphan
and no record stays unsearchable.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from acg2vec_server.backends.metadata import MetadataStore
from acg2vec_server.backends.vectors import MAX_WINDOW, VectorStore
from acg2vec_server.domain import inputs
from acg2vec_server.domain.inference import Models
from acg2vec_server.domain.tagging import Tagger
from acg2vec_server.domain.types import (
    IllustrationMetadata,
    IllustrationRecord,
    ModelRef,
    SearchFilter,
    Space,
    TagOptions,
    VectorRow,
)
from acg2vec_server.errors import Acg2vecError, FieldViolation, InvalidInput, NotFound

log = logging.getLogger(__name__)
Outcome = Literal["created", "updated", "unchanged"]
#: For fault tests: `ACG2VEC_CRASH_AT=after_metadata` makes the process die between the two writes.
CRASH_AT = os.environ.get("ACG2VEC_CRASH_AT", "")


@dataclass
class IndexItem:
    id: str
    image: bytes
    metadata: IllustrationMetadata = field(default_factory=IllustrationMetadata)


@dataclass
class IndexResult:
    id: str
    record: IllustrationRecord | None = None
    outcome: Outcome | None = None
    error: Acg2vecError | None = None


@dataclass
class Query:
    """Exactly one of image, illustration_id, vector (with space) or text."""

    image: bytes | None = None
    illustration_id: str | None = None
    vector: list[float] | None = None
    vector_space: Space | None = None
    text: str | None = None


@dataclass
class Hit:
    id: str
    score: float
    record: IllustrationRecord


@dataclass
class SearchPage:
    hits: list[Hit]
    next_page_token: str
    space: Space
    model: ModelRef | None


def tag_text(record_tags: list, metadata: IllustrationMetadata) -> str:
    """The text whose vector represents an illustration in the text space: its tags, as words."""
    words = [t.name.replace("_", " ") for t in record_tags if t.category != "rating"]
    return ", ".join(words) or metadata.title or "illustration"


def _version(record: IllustrationRecord | None) -> tuple[str, str] | None:
    return None if record is None else (record.write_id, record.state)


def to_row(record: IllustrationRecord) -> VectorRow:
    return VectorRow(
        record.id, record.image_vector, record.text_vector, record.rating,
        [t.name for t in record.tags], record.metadata.fields,
    )  # fmt: skip


class Illustrations:
    def __init__(
        self, models: Models, tagger: Tagger, meta: MetadataStore, vectors: VectorStore, limits: inputs.Limits,
        clock: Callable[[], float] = time.time,
    ):  # fmt: skip
        self.models, self.tagger, self.meta, self.vectors, self.limits = models, tagger, meta, vectors, limits
        self.clock = clock
        self.fault_hook: Callable[[str], Awaitable[None]] | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._pending_seen: set[str] = set()

    def _lock(self, id: str) -> asyncio.Lock:
        lock = self._locks.get(id)
        if lock is None:
            lock = self._locks[id] = asyncio.Lock()
        return lock

    async def ensure_ready(self) -> None:
        """Creates or checks the vector collection for the installed models' dimensions."""
        image = await self.models.describe(self.models.image)
        text = await self.models.describe(self.models.text)
        await self.vectors.ensure_collection(image.output_dim("embedding"), text.output_dim("embedding"))

    async def _fault(self, point: str) -> None:
        if point == CRASH_AT:
            os._exit(137)  # a real crash: no cleanup, no flush
        if self.fault_hook is not None:
            await self.fault_hook(point)

    # -- writes
    async def _write(self, record: IllustrationRecord) -> None:
        record.state, record.write_id = "pending", uuid.uuid4().hex
        await self.meta.add_pending(record.id)
        await self.meta.put(record)
        await self._fault("after_metadata")
        await self.vectors.upsert([to_row(record)])
        await self._fault("after_vectors")
        await self.meta.set_state(record.id, "committed")
        record.state = "committed"
        await self.meta.remove_pending(record.id)

    async def _repair_one(self, id: str) -> None:
        """Makes Milvus match the record, then settles the record. The record is read again after the Milvus
        write: if another process rewrote it meanwhile, the row is written again, so that a stale row never
        outlives the record it came from."""
        record = await self.meta.get(id)
        for _ in range(10):
            if record is None or record.state == "deleting":
                await self.vectors.delete([id])
            else:
                await self.vectors.upsert([to_row(record)])
            again = await self.meta.get(id)
            if _version(again) == _version(record):
                break
            record = again
        if record is not None and record.state == "deleting":
            await self.meta.delete(id)
        elif record is not None and record.state != "committed":
            await self.meta.set_state(id, "committed")
        await self.meta.remove_pending(id)

    async def repair(self, ids: list[str] | None = None) -> int:
        """Finishes interrupted writes and deletes (all pending ones, or these); returns how many it repaired."""
        ids = await self.meta.pending() if ids is None else ids
        for id in ids:
            async with self._lock(id):
                await self._repair_one(id)
        if ids:
            log.warning("repaired %d interrupted writes: %s", len(ids), ids[:20])
        return len(ids)

    async def reconcile(self, chunk: int = 512) -> tuple[int, int]:
        """The full pass (`acg2vec repair --full`): finishes pending work, then gives every committed record
        whose row Milvus lacks (e.g. Milvus restored from an older backup) its row again, and removes rows
        that have no record. Returns (rows restored, rows removed)."""
        await self.repair()
        stored, indexed = await self.meta.ids(), await self.vectors.ids()
        restored = removed = 0
        missing = sorted(stored - indexed)
        for start in range(0, len(missing), chunk):
            records = await self.meta.get_many(missing[start : start + chunk])
            rows = [to_row(r) for r in records.values() if r.state == "committed"]  # others: repair's work
            if rows:
                await self.vectors.upsert(rows)
                restored += len(rows)
        for id in sorted(indexed - stored):
            async with self._lock(id):
                if await self.meta.get(id) is None:  # written meanwhile? then it is no orphan
                    await self.vectors.delete([id])
                    removed += 1
        if restored or removed:
            log.warning("full repair: restored %d vector rows, removed %d orphans", restored, removed)
        return restored, removed

    async def repair_stale(self) -> int:
        """Repairs the ids that were already pending at the previous call (a write in progress is left alone);
        the health monitor calls it every probe, so a write that failed part-way is finished within two."""
        now = set(await self.meta.pending())
        stale = sorted(now & self._pending_seen)
        self._pending_seen = now - set(stale)
        return await self.repair(stale) if stale else 0

    async def _current(self, id: str) -> IllustrationRecord | None:
        record = await self.meta.get(id)
        if record is not None and record.state != "committed":
            await self._repair_one(id)
            record = await self.meta.get(id)
        return record

    async def index(self, items: list[IndexItem]) -> list[IndexResult]:
        """Indexes items with batched inference; per-item errors are returned, not raised."""
        results = [IndexResult(item.id) for item in items]
        valid: list[tuple[int, IndexItem]] = []
        for i, item in enumerate(items):
            try:
                inputs.check_id(item.id)
                inputs.check_fields(item.metadata.fields)
                valid.append((i, item))
            except Acg2vecError as e:
                results[i].error = e
        for i, record in await self._already_stored([item for _, item in valid]):
            results[valid[i][0]].record, results[valid[i][0]].outcome = record, "unchanged"
        valid = [(i, item) for i, item in valid if results[i].outcome is None]

        def check_images() -> list[tuple[int, IndexItem, bytes]]:
            checked = []
            for i, item in valid:
                try:
                    checked.append((i, item, inputs.check_image(item.image, self.limits)))
                except Acg2vecError as e:
                    results[i].error = e
            return checked

        todo = await asyncio.to_thread(check_images)  # a full decode per image: off the event loop
        if not todo:
            return results
        images = [image for _, _, image in todo]
        tags, image_vectors = await asyncio.gather(
            self.tagger.tag(images, TagOptions()), self.models.embed_images(images)
        )
        text_vectors = await self.models.embed_texts(
            [tag_text(t.tags, item.metadata) for t, (_, item, _) in zip(tags, todo, strict=True)]
        )

        async def store(i: int, item: IndexItem, t, iv, tv) -> None:
            try:
                results[i].record, results[i].outcome = await self._store(item, t, iv, tv)
            except Acg2vecError as e:
                results[i].error = e

        # Concurrently: the items' metadata writes share the Redis server's fsyncs (appendfsync always), and
        # the per-id locks still order two items with the same id.
        await asyncio.gather(
            *(
                store(i, item, t, iv, tv)
                for (i, item, _), t, iv, tv in zip(todo, tags, image_vectors, text_vectors, strict=True)
            )
        )
        return results

    async def _already_stored(self, items: list[IndexItem]) -> list[tuple[int, IllustrationRecord]]:
        """Items whose committed record has the same image bytes, metadata and current models: these need
        no inference (a resumed bulk run re-sends what it cannot know was stored; this makes that cheap)."""
        if not items:
            return []
        stored = await self.meta.get_many([item.id for item in items])
        same: list[tuple[int, IllustrationRecord]] = []
        for i, item in enumerate(items):
            record = stored.get(item.id)
            if (
                record is not None
                and record.state == "committed"
                and record.metadata == item.metadata
                and record.content_sha256 == hashlib.sha256(item.image).hexdigest()
            ):
                same.append((i, record))
        if not same:
            return []
        image = ModelRef(self.models.image, (await self.models.describe(self.models.image)).version)
        text = ModelRef(self.models.text, (await self.models.describe(self.models.text)).version)
        return [(i, r) for i, r in same if (r.image_model, r.text_model) == (image, text)]

    async def _store(self, item: IndexItem, tags, image_vector, text_vector) -> tuple[IllustrationRecord, Outcome]:
        sha = hashlib.sha256(item.image).hexdigest()
        async with self._lock(item.id):
            existing = await self._current(item.id)
            same_models = existing is not None and (existing.image_model, existing.text_model) == (
                image_vector.model,
                text_vector.model,
            )
            if (
                existing is not None
                and same_models
                and existing.content_sha256 == sha
                and existing.metadata == item.metadata
            ):
                return existing, "unchanged"
            now = self.clock()
            record = IllustrationRecord(
                id=item.id, metadata=item.metadata, tags=tags.tags, rating=tags.rating, content_sha256=sha,
                image_vector=image_vector.values, text_vector=text_vector.values,
                image_model=image_vector.model, text_model=text_vector.model,
                create_time=existing.create_time if existing else now, update_time=now,
            )  # fmt: skip
            await self._write(record)
            return record, "updated" if existing else "created"

    async def update_metadata(self, id: str, metadata: IllustrationMetadata) -> IllustrationRecord:
        inputs.check_id(id)
        inputs.check_fields(metadata.fields)
        async with self._lock(id):
            existing = await self._current(id)
            if existing is None:
                raise NotFound(f"no illustration with id {id!r}; index it first", [FieldViolation("id", "unknown")])
            if existing.metadata == metadata:
                return existing
            record = replace(existing, metadata=metadata, update_time=self.clock())
            await self._write(record)
            return record

    async def delete(self, id: str) -> bool:
        inputs.check_id(id)
        async with self._lock(id):
            existing = await self.meta.get(id)
            if existing is None:
                return False
            await self.meta.add_pending(id)
            await self.meta.set_state(id, "deleting")
            await self.vectors.delete([id])
            await self.meta.delete(id)
            await self.meta.remove_pending(id)
            return existing.state != "deleting"

    async def get(self, id: str) -> IllustrationRecord:
        inputs.check_id(id)
        record = await self._current(id)
        if record is None:
            raise NotFound(f"no illustration with id {id!r}", [FieldViolation("id", "unknown")])
        return record

    # -- search
    async def search(
        self, query: Query, top_k: int, flt: SearchFilter, page_token: str = "", exact_rerank: bool = False
    ) -> SearchPage:
        inputs.check_top_k(top_k, self.limits)
        exclude = ""
        model: ModelRef | None = None
        if query.image is not None:
            embedding = (await self.models.embed_images([inputs.check_image(query.image, self.limits)]))[0]
            vector, space, model = embedding.values, "image", embedding.model
            fingerprint = hashlib.sha256(query.image).hexdigest()
        elif query.illustration_id is not None:
            record = await self.get(query.illustration_id)
            vector, space, exclude = record.image_vector, "image", record.id
            fingerprint = f"id:{record.id}"
        elif query.text is not None:
            embedding = (await self.models.embed_texts([inputs.check_text(query.text, self.limits)]))[0]
            vector, space, model = embedding.values, "text", embedding.model
            fingerprint = f"text:{query.text}"
        elif query.vector is not None:
            space = query.vector_space or "image"
            vector = self._check_vector(query.vector, space)
            fingerprint = hashlib.sha256(np.asarray(vector, "<f4").tobytes()).hexdigest()
        else:
            raise InvalidInput(
                "set one query: image, illustration_id, vector or text", [FieldViolation("query", "unset")]
            )
        fingerprint = hashlib.sha256(
            json.dumps([fingerprint, space, flt.__dict__, exact_rerank], sort_keys=True).encode()
        ).hexdigest()[:16]
        offset = decode_page_token(page_token, fingerprint)
        if offset + top_k > MAX_WINDOW:
            raise InvalidInput(
                f"page window {offset}+{top_k} is past the deepest searchable result ({MAX_WINDOW}); narrow the filter",
                [FieldViolation("page_token", "too deep")],
            )
        if exact_rerank:
            window = min(MAX_WINDOW, max(4 * (offset + top_k), 64))
            candidates = await self.vectors.search(space, vector, window, 0, flt, exclude)
            stored = await self.vectors.get_vectors([c.id for c in candidates], space)
            scored = sorted(  # by score, ties by id, as in _ranked_window
                ((float(np.dot(stored[c.id], vector)), c.id) for c in candidates if c.id in stored),
                key=lambda s: (-s[0], s[1]),
            )
            page = [(id, s) for s, id in scored[offset : offset + top_k + 1]]
        else:
            page = await self._ranked_window(space, vector, offset, top_k, flt, exclude)
        has_more = len(page) > top_k
        page = page[:top_k]
        records = await self.meta.get_many([id for id, _ in page])
        hits = [Hit(id, score, records[id]) for id, score in page if id in records and records[id].state != "deleting"]
        token = encode_page_token(offset + top_k, fingerprint) if has_more else ""
        return SearchPage(hits, token, space, model)

    async def _ranked_window(
        self, space: Space, vector: np.ndarray, offset: int, top_k: int, flt: SearchFilter, exclude: str
    ) -> list[tuple[str, float]]:
        """Hits offset .. offset+top_k (one more to tell whether a next page exists), ranked by score and then id.

        Milvus orders equal scores (identical images) arbitrarily, and differently for each offset and limit, so
        paging with its own offset skips some tied hits and repeats others. Instead every page ranks the same
        window from the top, and the window grows until the tie at its far end is complete."""
        need = offset + top_k + 1
        window = min(MAX_WINDOW, need + 16)
        while True:
            hits = sorted(
                await self.vectors.search(space, vector, window, 0, flt, exclude), key=lambda h: (-h.score, h.id)
            )
            complete = len(hits) < window or len(hits) <= need or hits[-1].score < hits[need - 1].score
            if complete or window >= MAX_WINDOW:
                return [(h.id, h.score) for h in hits[offset:need]]
            window = min(MAX_WINDOW, window * 2)

    def _check_vector(self, values: list[float], space: Space) -> np.ndarray:
        dims = self.vectors.dims
        expected = dims[0 if space == "image" else 1] if dims else None
        vector = np.asarray(values, dtype=np.float32)
        if vector.ndim != 1 or (expected is not None and vector.shape[0] != expected):
            raise InvalidInput(
                f"vector has {vector.shape[0]} dimensions; the {space} space has {expected}",
                [FieldViolation("vector.values", f"expected {expected} values")],
            )
        if not np.all(np.isfinite(vector)) or not np.any(vector):
            raise InvalidInput(
                "vector must be finite and non-zero", [FieldViolation("vector.values", "not finite or zero")]
            )
        return vector / np.linalg.norm(vector)


def encode_page_token(offset: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": fingerprint}).encode()).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, query = int(data["o"]), str(data["q"])
    except (ValueError, KeyError, TypeError):
        raise InvalidInput(
            "page_token is not one this server issued; start again without it",
            [FieldViolation("page_token", "malformed")],
        ) from None
    if query != fingerprint or offset < 0:
        raise InvalidInput(
            "page_token belongs to a different query or filter; send the same query as the first page",
            [FieldViolation("page_token", "query mismatch")],
        )
    return offset
