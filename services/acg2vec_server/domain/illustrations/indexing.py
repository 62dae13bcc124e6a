"""Writing illustrations: index (batched inference, then the write protocol per item), update metadata, delete."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from acg2vec_server.domain import inputs
from acg2vec_server.domain.errors import Acg2vecError, FieldViolation, NotFound
from acg2vec_server.domain.illustrations.consistency import Consistency
from acg2vec_server.domain.models import Models
from acg2vec_server.domain.tagging import Tagger
from acg2vec_server.domain.types import IllustrationMetadata, IllustrationRecord, ModelRef, TagOptions

Outcome = Literal["created", "updated", "unchanged"]


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


def tag_text(record_tags: list, metadata: IllustrationMetadata) -> str:
    """The text whose vector represents an illustration in the text space when no joint image–text model fills
    it: its tags, as words."""
    words = [t.name.replace("_", " ") for t in record_tags if t.category != "rating"]
    return ", ".join(words) or metadata.title or "illustration"


class Indexing:
    def __init__(
        self, models: Models, tagger: Tagger, consistency: Consistency, limits: inputs.Limits,
        clock: Callable[[], float] = time.time,
    ):  # fmt: skip
        self.models, self.tagger, self.consistency, self.limits = models, tagger, consistency, limits
        self.clock = clock

    async def index(self, items: list[IndexItem]) -> list[IndexResult]:
        """Indexes items with batched inference; per-item errors are returned, not raised."""
        self.consistency.vectors.require()  # before any inference: vectors of a version nobody serves are useless
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
        text_vectors = await self.models.embed_for_text_space(
            images, [tag_text(t.tags, item.metadata) for t, (_, item, _) in zip(tags, todo, strict=True)]
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
        stored = await self.consistency.meta.get_many([item.id for item in items])
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
        image = ModelRef(self.models.image_name, (await self.models.describe(self.models.image)).version)
        text_space = self.models.text_space
        text = ModelRef(self.models.text_space_name, (await self.models.describe(text_space)).version)
        return [(i, r) for i, r in same if (r.image_model, r.text_model) == (image, text)]

    async def _store(self, item: IndexItem, tags, image_vector, text_vector) -> tuple[IllustrationRecord, Outcome]:
        sha = hashlib.sha256(item.image).hexdigest()
        async with self.consistency.exclusive(item.id):
            existing = await self.consistency.settle(item.id)
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
            await self.consistency.write(record)
            return record, "updated" if existing else "created"

    async def update_metadata(self, id: str, metadata: IllustrationMetadata) -> IllustrationRecord:
        inputs.check_id(id)
        inputs.check_fields(metadata.fields)
        async with self.consistency.exclusive(id):
            existing = await self.consistency.settle(id)
            if existing is None:
                raise NotFound(f"no illustration with id {id!r}; index it first", [FieldViolation("id", "unknown")])
            if existing.metadata == metadata:
                return existing
            record = replace(existing, metadata=metadata, update_time=self.clock())
            await self.consistency.write(record)
            return record

    async def delete(self, id: str) -> bool:
        inputs.check_id(id)
        async with self.consistency.exclusive(id):
            return await self.consistency.remove(id)
