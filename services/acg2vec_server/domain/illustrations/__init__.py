"""Stored illustrations: one record in the metadata store and one row per vector space in the vector store.

Holds `consistency.py` (the write protocol over the two stores, the per-id lease, repair), `indexing.py`
(index, update metadata, delete) and `search.py` (get, similarity search, paging); `Illustrations` below is
the one object the transport and the tools use. Imports the domain only (ports, models, tagging, types).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from acg2vec_server.domain.errors import Acg2vecError, FailedPrecondition
from acg2vec_server.domain.illustrations.consistency import Consistency
from acg2vec_server.domain.illustrations.indexing import Indexing, IndexItem, IndexResult
from acg2vec_server.domain.illustrations.search import Query, Search, SearchPage
from acg2vec_server.domain.inputs import Limits
from acg2vec_server.domain.models import Models
from acg2vec_server.domain.ports import MetadataStore, VectorStore
from acg2vec_server.domain.tagging import Tagger
from acg2vec_server.domain.types import IllustrationMetadata, IllustrationRecord, ModelRef, SearchFilter, Space

log = logging.getLogger(__name__)


class Illustrations:
    """Writes go to `writes` (indexing), reads to `reads` (search); both go through `consistency`."""

    def __init__(
        self, models: Models, tagger: Tagger, meta: MetadataStore, vectors: VectorStore, limits: Limits,
        clock: Callable[[], float] = time.time, lease_ttl_s: float = 30.0, serve_next: bool = False,
    ):  # fmt: skip
        self.models, self.meta, self.vectors = models, meta, vectors
        #: False: serve the live collections (the alias), embedding with the model versions that filled them.
        #: True: serve the newest installed versions' collections, never touching the alias (re-indexing for an
        #: upgrade while another server keeps serving the live ones; `acg2vec collections switch` ends it).
        self.serve_next = serve_next
        self._warned: set[tuple[str, int, int]] = set()
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
        """Binds the vector store to the collections this server serves and pins the embedding models to their
        versions (every health probe: a switch made elsewhere is followed within one probe interval).

        Live mode: each space's alias names the live collection, and with it the model version whose vectors it
        holds; that version keeps serving (queries and new rows) even when a newer one is installed, so two
        versions' vectors never meet. If that version is no longer installed: FAILED_PRECONDITION with the fix.
        With no alias yet (a new deployment) the newest installed versions become live."""
        try:
            await self._bind()
        except FailedPrecondition as e:
            self.vectors.unready_reason = e.message
            raise
        self.vectors.unready_reason = ""

    async def _bind(self) -> None:
        chosen: dict[Space, tuple[ModelRef, int]] = {}
        unaliased: list[Space] = []
        live_text = None if self.serve_next else await self.vectors.live("text", self.models.text_space_name)
        text_space = await self.models.choose_text_space(live_text.name if live_text else None)
        for space, name in (("image", self.models.image_name), ("text", text_space)):
            newest = await self.models.describe(name)
            ref = ModelRef(name, newest.version)
            live = None if self.serve_next else await self.vectors.live(space, name)
            if live is None and not self.serve_next:
                unaliased.append(space)
            if live is None or live == ref:
                chosen[space] = (ref, newest.output_dim("embedding"))
                continue
            pinned = await self._installed(space, live, ref)
            chosen[space] = (live, pinned.output_dim("embedding"))
            if (space, live.version, ref.version) not in self._warned:
                self._warned.add((space, live.version, ref.version))
                log.warning(
                    "%s version %d is installed, but the live %s collection holds version %d: this server keeps "
                    "serving version %d. To upgrade, re-index into version %d (`acg2vec serve --collections next`, "
                    "then `acg2vec index`) and run `acg2vec collections switch`",
                    name, ref.version, space, live.version, live.version, ref.version,
                )  # fmt: skip
        (image, image_dim), (text, text_dim) = chosen["image"], chosen["text"]
        await self.vectors.bind(image, image_dim, text, text_dim)
        self.models.pin(image.version, text.version)
        for space in unaliased:  # a new deployment: the newest versions become live
            await self.vectors.set_live(space, chosen[space][0])

    async def _installed(self, space: Space, live: ModelRef, newest: ModelRef):
        """The live version's description, or FAILED_PRECONDITION naming the fix."""
        fix = (
            f"reinstall {live.name} version {live.version} to keep serving it, or re-index into version "
            f"{newest.version} (`acg2vec serve --collections next`, then `acg2vec index`) and make it live with "
            f"`acg2vec collections switch`"
        )
        if live.name != newest.name:
            raise FailedPrecondition(
                f"the live {space} collection holds vectors of model {live.name} version {live.version}, but the "
                f"configured {space} model is {newest.name}; configure {live.name} again, or {fix.split(', or ')[1]}"
            )
        try:
            return await self.models.describe(f"{live.name}@{live.version}")
        except Acg2vecError:
            raise FailedPrecondition(
                f"the live {space} collection holds vectors of {live.name} version {live.version}, which is not "
                f"installed (the installed version is {newest.version}); {fix}"
            ) from None

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
