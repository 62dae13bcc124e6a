"""Metadata and vectors kept consistent: the write protocol, the per-id writer lock, and repair.

Write protocol (no cross-store transactions exist, so every write is an intent that can be finished):
  1. SADD pending id            2. HSET record (state=pending, vectors included)
  3. Milvus upsert              4. HSET state=committed      5. SREM pending id
Delete: pending id, state=deleting, Milvus delete, DEL record, SREM. A crash anywhere leaves the id in
the pending set; repair finishes the job from the record, which holds the vectors. So Milvus never keeps an
orphan and no record stays unsearchable. Repair runs from here only: at start-up and in `acg2vec repair`
(`repair`, `reconcile`), in the background (`BackgroundRepair`: writes that failed part-way), and for one id
when it is read or written (`settle`).

Every state change of an id happens inside `exclusive(id)`: today an in-process lock; the seam where a
cross-process lease with a fencing token goes (several replicas share one Tendis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

from acg2vec_server.domain.errors import Acg2vecError
from acg2vec_server.domain.periodic import Periodic
from acg2vec_server.domain.ports import MetadataStore, VectorStore
from acg2vec_server.domain.types import IllustrationRecord, VectorRow

log = logging.getLogger(__name__)
#: For fault tests: `ACG2VEC_CRASH_AT=after_metadata` makes the process die between the two writes.
CRASH_AT = os.environ.get("ACG2VEC_CRASH_AT", "")


def _version(record: IllustrationRecord | None) -> tuple[str, str] | None:
    return None if record is None else (record.write_id, record.state)


def to_row(record: IllustrationRecord) -> VectorRow:
    return VectorRow(
        record.id, record.image_vector, record.text_vector, record.rating,
        [t.name for t in record.tags], record.metadata.fields,
    )  # fmt: skip


class Consistency:
    def __init__(self, meta: MetadataStore, vectors: VectorStore):
        self.meta, self.vectors = meta, vectors
        self.fault_hook: Callable[[str], Awaitable[None]] | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._pending_seen: set[str] = set()

    @contextlib.asynccontextmanager
    async def exclusive(self, id: str) -> AsyncIterator[None]:
        """Holds the right to change `id` (both stores) until the block ends."""
        lock = self._locks.get(id)
        if lock is None:
            lock = self._locks[id] = asyncio.Lock()
        async with lock:
            yield

    async def _fault(self, point: str) -> None:
        if point == CRASH_AT:
            os._exit(137)  # a real crash: no cleanup, no flush
        if self.fault_hook is not None:
            await self.fault_hook(point)

    # -- the protocol (callers hold exclusive(id))
    async def write(self, record: IllustrationRecord) -> None:
        """Stores `record` in both stores (a new write_id; state committed at the end)."""
        record.state, record.write_id = "pending", uuid.uuid4().hex
        await self.meta.add_pending(record.id)
        await self.meta.put(record)
        await self._fault("after_metadata")
        await self.vectors.upsert([to_row(record)])
        await self._fault("after_vectors")
        await self.meta.set_state(record.id, "committed")
        record.state = "committed"
        await self.meta.remove_pending(record.id)

    async def remove(self, id: str) -> bool:
        """Deletes `id` from both stores; True if it existed (and was not already being deleted)."""
        existing = await self.meta.get(id)
        if existing is None:
            return False
        await self.meta.add_pending(id)
        await self.meta.set_state(id, "deleting")
        await self.vectors.delete([id])
        await self.meta.delete(id)
        await self.meta.remove_pending(id)
        return existing.state != "deleting"

    async def settle(self, id: str) -> IllustrationRecord | None:
        """The id's committed record, or None: a record left pending by an interrupted write or delete is
        finished first. The one place a read repairs (writers call it inside exclusive(id))."""
        record = await self.meta.get(id)
        if record is not None and record.state != "committed":
            await self._repair_one(id)
            record = await self.meta.get(id)
        return record

    # -- repair
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
            async with self.exclusive(id):
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
            async with self.exclusive(id):
                if await self.meta.get(id) is None:  # written meanwhile? then it is no orphan
                    await self.vectors.delete([id])
                    removed += 1
        if restored or removed:
            log.warning("full repair: restored %d vector rows, removed %d orphans", restored, removed)
        return restored, removed

    async def repair_stale(self) -> int:
        """Repairs the ids that were already pending at the previous call (a write in progress is left alone);
        BackgroundRepair calls it every round, so a write that failed part-way is finished within two."""
        now = set(await self.meta.pending())
        stale = sorted(now & self._pending_seen)
        self._pending_seen = now - set(stale)
        return await self.repair(stale) if stale else 0


class BackgroundRepair:
    """Every `interval_s` while the stores answer (`ready()`, from the health monitor's last probe): the writes
    that failed part-way (`repair_stale`); on the first round after the stores were unavailable, everything
    pending. Started and stopped by app.py."""

    def __init__(self, consistency: Consistency, interval_s: float, ready: Callable[[], bool]):
        self.consistency, self.interval_s, self.ready = consistency, interval_s, ready
        self._was_ready = ready()
        self._problem = ""
        self._periodic = Periodic(self.round, interval_s, "background repair")

    async def round(self) -> None:
        ready = self.ready()
        if ready:
            work = self.consistency.repair() if not self._was_ready else self.consistency.repair_stale()
            try:
                await asyncio.wait_for(work, timeout=max(2.0, self.interval_s * 2))
            except (Acg2vecError, TimeoutError) as e:
                message = getattr(e, "message", "") or f"{type(e).__name__}"
                if self._problem != message:
                    log.warning("repair failed: %s", message)
                self._problem = message
            else:
                if self._problem:
                    log.info("repair works again")
                self._problem = ""
        self._was_ready = ready

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
