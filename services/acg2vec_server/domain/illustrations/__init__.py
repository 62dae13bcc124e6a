"""Stored illustrations: one record in the metadata store and one row per vector space in the vector store.

Holds `consistency.py` (the write protocol over the two stores, the per-id lease, repair), `indexing.py`
(index, update metadata, delete) and `search.py` (get, similarity search, paging); `Illustrations` below is
the one object the transport and the tools use. Imports the domain only (ports, models, tagging, types).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from acg2vec_server.domain.illustrations.consistency import Consistency
from acg2vec_server.domain.illustrations.indexing import Indexing, IndexItem, IndexResult
from acg2vec_server.domain.illustrations.search import Query, Search, SearchPage
from acg2vec_server.domain.inputs import Limits
from acg2vec_server.domain.models import Models
from acg2vec_server.domain.ports import MetadataStore, VectorStore
from acg2vec_server.domain.tagging import Tagger
from acg2vec_server.domain.types import IllustrationMetadata, IllustrationRecord, SearchFilter


class Illustrations:
    """Writes go to `writes` (indexing), reads to `reads` (search); both go through `consistency`."""

    def __init__(
        self, models: Models, tagger: Tagger, meta: MetadataStore, vectors: VectorStore, limits: Limits,
        clock: Callable[[], float] = time.time, lease_ttl_s: float = 30.0,
    ):  # fmt: skip
        self.models, self.meta, self.vectors = models, meta, vectors
        self.consistency = Consistency(meta, vectors, lease_ttl_s)
        self.writes = Indexing(models, tagger, self.consistency, limits, clock)
        self.reads = Search(models, meta, vectors, self.consistency, limits)

    @property
    def fault_hook(self) -> Callable[[str], Awaitable[None]] | None:
        """For fault tests: awaited at each step of the write protocol ("after_metadata", "after_vectors")."""
        return self.consistency.fault_hook

    @fault_hook.setter
    def fault_hook(self, hook: Callable[[str], Awaitable[None]] | None) -> None:
        self.consistency.fault_hook = hook

    async def ensure_ready(self) -> None:
        """Creates or checks the vector collection for the installed models' dimensions."""
        image = await self.models.describe(self.models.image)
        text = await self.models.describe(self.models.text)
        await self.vectors.ensure_collection(image.output_dim("embedding"), text.output_dim("embedding"))

    # writes
    async def index(self, items: list[IndexItem]) -> list[IndexResult]:
        """Indexes items with batched inference; per-item errors are returned, not raised."""
        return await self.writes.index(items)

    async def update_metadata(self, id: str, metadata: IllustrationMetadata) -> IllustrationRecord:
        return await self.writes.update_metadata(id, metadata)

    async def delete(self, id: str) -> bool:
        return await self.writes.delete(id)

    # reads
    async def get(self, id: str) -> IllustrationRecord:
        return await self.reads.get(id)

    async def search(
        self, query: Query, top_k: int, flt: SearchFilter, page_token: str = "", exact_rerank: bool = False
    ) -> SearchPage:
        return await self.reads.search(query, top_k, flt, page_token, exact_rerank)

    # repair
    async def repair(self, ids: list[str] | None = None) -> int:
        return await self.consistency.repair(ids)

    async def reconcile(self, chunk: int = 512) -> tuple[int, int]:
        return await self.consistency.reconcile(chunk)

    async def repair_stale(self) -> int:
        return await self.consistency.repair_stale()
