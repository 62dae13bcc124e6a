"""Metadata and vectors kept consistent: the write protocol, the per-id lease, and repair.

Write protocol (no cross-store transactions exist, so every write is an intent that can be finished):
  1. SADD pending id            2. put record (state=pending, vectors included)
  3. Milvus upsert              4. put record (state=committed)      5. SREM pending id
Delete: pending id, put state=deleting, Milvus delete, DEL record, SREM. A crash anywhere leaves the id in
the pending set; repair finishes the job from the record, which holds the vectors. So Milvus never keeps an
orphan and no record stays unsearchable. A state change rewrites the whole record in one command, so a record
deleted meanwhile is never re-created half-written. Repair runs from here only: at start-up and in `acg2vec
repair` (`repair`, `reconcile`), in the background (`BackgroundRepair`: writes that failed part-way), and for one
id when it is read or written (`settle`).

Several server processes share the stores, so every change of an id (write, delete, repair, and a read that
finds a record to settle) happens inside `exclusive(id)`: an in-process lock (one task per id and process
competes) and then the id's lease in the metadata store (`SET lease token NX PX ttl`, waited for up to the TTL,
so a crashed holder's lease runs out first) with a fencing token (INCR of the id's counter, stored in the
record). Before every state change the holder checks (`_check`) that its lease has not run out by its own
clock, that the store still has its token, and that no later holder (a greater fence) stored the record.
Without Lua or WATCH (Tendis has neither) a check and the write after it are two commands: the lease is only
trusted until `ttl - ttl/3` after it was asked for, so a write that passed its check lands while the lease is
still held unless the process stalls for ttl/3 between the two (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from acg2vec_server.domain.errors import Acg2vecError, BackendUnavailable
from acg2vec_server.domain.periodic import Periodic
from acg2vec_server.domain.ports import MetadataStore, VectorStore
from acg2vec_server.domain.types import IllustrationRecord, VectorRow

log = logging.getLogger(__name__)
#: For fault tests: `ACG2VEC_CRASH_AT=after_metadata` makes the process die between the two writes.
CRASH_AT = os.environ.get("ACG2VEC_CRASH_AT", "")


def to_row(record: IllustrationRecord) -> VectorRow:
    return VectorRow(
        record.id, record.image_vector, record.text_vector, record.rating,
        [t.name for t in record.tags], record.metadata.fields, record.image_model, record.text_model,
    )  # fmt: skip


class Busy(BackendUnavailable):
    """Another request holds the id's lease (and the caller chose not to wait for it)."""


@dataclass
class Lease:
    id: str
    token: str
    fence: int
    #: time.monotonic() after which the lease is no longer trusted (ttl - ttl/3 after it was asked for)
    trusted_until: float


class Consistency:
    def __init__(self, meta: MetadataStore, vectors: VectorStore, lease_ttl_s: float = 30.0):
        self.meta, self.vectors, self.lease_ttl_s = meta, vectors, lease_ttl_s
        self.fault_hook: Callable[[str], Awaitable[None]] | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._leases: dict[str, Lease] = {}  # the ids this process holds, inside exclusive()
        self._pending_seen: set[str] = set()

    @contextlib.asynccontextmanager
    async def exclusive(self, id: str, wait: bool = True) -> AsyncIterator[None]:
        """Holds the right to change `id` (both stores, across processes) until the block ends. Waits up to the
        lease TTL for another holder, or (wait=False) raises Busy at once."""
        lock = self._locks.get(id)
        if lock is None:
            lock = self._locks[id] = asyncio.Lock()
        if not wait and lock.locked():
            raise Busy("metadata", f"illustration {id!r} is being changed by another request")
        async with lock:
            lease = await self._acquire(id, wait)
            self._leases[id] = lease
            try:
                yield
            finally:
                del self._leases[id]
                await self._release(lease)

    async def _acquire(self, id: str, wait: bool = True) -> Lease:
        token, ttl_ms = uuid.uuid4().hex, max(1, int(self.lease_ttl_s * 1000))
        give_up, delay = time.monotonic() + self.lease_ttl_s, 0.002
        while True:
            asked = time.monotonic()
            fence = await self.meta.acquire(id, token, ttl_ms)
            if fence is not None:
                return Lease(id, token, fence, asked + self.lease_ttl_s * 2 / 3)
            if not wait:
                raise Busy("metadata", f"illustration {id!r} is being changed by another request")
            if time.monotonic() >= give_up:
                raise Busy(
                    "metadata",
                    f"illustration {id!r} is being changed by another request (its lease stayed taken for "
                    f"{self.lease_ttl_s:g}s); retry",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _release(self, lease: Lease) -> None:
        if time.monotonic() >= lease.trusted_until:
            return  # it may have passed on already: let it expire rather than delete another holder's
        with contextlib.suppress(BackendUnavailable):  # it expires by itself
            await self.meta.release(lease.id, lease.token)

    def _lease(self, id: str) -> Lease:
        lease = self._leases.get(id)
        if lease is None:
            raise RuntimeError(f"changing {id!r} outside exclusive({id!r})")
        return lease

    async def _check(self, lease: Lease) -> None:
        """Before every state change: the lease is still ours (by our clock and by the store) and no later
        holder stored the record. Otherwise the change is not made; what was done stays pending for repair."""
        if time.monotonic() >= lease.trusted_until:
            problem = f"took longer than its lease allows ({self.lease_ttl_s * 2 / 3:.1f}s of ACG2VEC_LEASE_TTL_S)"
        elif not await self.meta.holds(lease.id, lease.token, lease.fence):
            problem = "lost its lease to another request"
        else:
            return
        raise BackendUnavailable(
            "metadata", f"the change of illustration {lease.id!r} {problem}; repair finishes it, retry"
        )

    async def _fault(self, point: str) -> None:
        if point == CRASH_AT:
            os._exit(137)  # a real crash: no cleanup, no flush
        if self.fault_hook is not None:
            await self.fault_hook(point)

    # -- the protocol (callers hold exclusive(id))
    async def write(self, record: IllustrationRecord) -> None:
        """Stores `record` in both stores (a new write_id; state committed at the end)."""
        lease = self._lease(record.id)
        record.state, record.write_id, record.fence = "pending", uuid.uuid4().hex, lease.fence
        await self.meta.add_pending(record.id)
        await self._check(lease)
        await self.meta.put(record)
        await self._fault("after_metadata")
        await self._check(lease)
        await self.vectors.upsert([to_row(record)])
        await self._fault("after_vectors")
        await self._check(lease)
        record.state = "committed"
        await self.meta.put(record)
        await self.meta.remove_pending(record.id)

    async def remove(self, id: str) -> bool:
        """Deletes `id` from both stores; True if a readable illustration existed (and was not being deleted)."""
        lease = self._lease(id)
        existing = await self.meta.get(id)
        if existing is None:
            return False
        existed = existing.state in ("committed", "pending")
        await self.meta.add_pending(id)
        if existing.state != "damaged":
            existing.state, existing.fence = "deleting", lease.fence
            await self._check(lease)
            await self.meta.put(existing)
        await self._delete_both(lease)
        await self.meta.remove_pending(id)
        return existed

    async def _delete_both(self, lease: Lease) -> None:
        await self._check(lease)
        await self.vectors.delete([lease.id])
        await self._check(lease)
        await self.meta.delete(lease.id)

    async def settle(self, id: str) -> IllustrationRecord | None:
        """The id's committed record, or None: a record left pending by an interrupted write or delete is
        finished first (callers hold exclusive(id))."""
        record = await self.meta.get(id)
        if record is not None and record.state != "committed":
            await self._repair_one(id)
            record = await self.meta.get(id)
        return record

    async def read(self, id: str) -> IllustrationRecord | None:
        """`settle` for readers: a committed record is returned as it is; anything else is settled under the
        id's lease (so a read waits for a write in progress and never writes outside the lease)."""
        record = await self.meta.get(id)
        if record is None or record.state == "committed":
            return record
        async with self.exclusive(id):
            return await self.settle(id)

    # -- repair
    async def _repair_one(self, id: str) -> None:
        """Makes Milvus match the record, then settles the record (the caller holds exclusive(id))."""
        lease = self._lease(id)
        record = await self.meta.get(id)
        if record is None or record.state in ("deleting", "damaged"):
            if record is not None and record.state == "damaged":
                log.warning("the record of %r could not be decoded: removed from both stores; index it again", id)
            await self._delete_both(lease)
        elif record.state == "pending":
            await self._check(lease)
            await self.vectors.upsert([to_row(record)])
            record.state, record.fence = "committed", lease.fence
            await self._check(lease)
            await self.meta.put(record)
        await self.meta.remove_pending(id)

    async def repair(self, ids: list[str] | None = None, wait: bool = True) -> int:
        """Finishes interrupted writes and deletes (all pending ones, or these); returns how many it repaired.
        wait=False (start-up and the background repair) skips ids whose lease another request holds: they are
        tried again next round, once a live holder finished or a dead one's lease ran out."""
        ids = await self.meta.pending() if ids is None else ids
        done: list[str] = []
        for id in ids:
            try:
                async with self.exclusive(id, wait):
                    await self._repair_one(id)
            except Busy:
                continue
            done.append(id)
        if done:
            log.warning("repaired %d interrupted writes: %s", len(done), done[:20])
        return len(done)

    async def reconcile(self, chunk: int = 512) -> tuple[int, int]:
        """The full pass (`acg2vec repair --full`): finishes pending work, then gives every committed record
        whose row Milvus lacks (e.g. Milvus restored from an older backup) its row again, settles any other
        record Milvus lacks (e.g. a damaged one), and removes rows that have no record. Each id under its lease.
        Returns (rows restored, rows removed)."""
        await self.repair()
        stored, indexed = await self.meta.ids(), await self.vectors.ids()
        restored = removed = 0
        missing = sorted(stored - indexed)
        for start in range(0, len(missing), chunk):
            ids = missing[start : start + chunk]
            async with contextlib.AsyncExitStack() as held:
                for id in ids:  # in sorted order: two passes cannot wait for each other
                    await held.enter_async_context(self.exclusive(id))
                records = await self.meta.get_many(ids)
                rows = [to_row(r) for r in records.values() if r.state == "committed"]
                if rows:
                    for row in rows:
                        await self._check(self._lease(row.id))
                    await self.vectors.upsert(rows)
                    restored += len(rows)
                for record in records.values():
                    if record.state != "committed":
                        await self._repair_one(record.id)
        for id in sorted(indexed - stored):
            async with self.exclusive(id):
                if await self.meta.get(id) is None:  # written meanwhile? then it is no orphan
                    await self._check(self._lease(id))
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
        return await self.repair(stale, wait=False) if stale else 0


class BackgroundRepair:
    """Every `interval_s` while the stores answer (`ready()`, from the health monitor's last probe): the writes
    that failed part-way (`repair_stale`); on the first round after the stores were unavailable, everything
    pending. Ids whose lease another request holds are skipped, not waited for (tried again next round).
    Started and stopped by app.py."""

    def __init__(self, consistency: Consistency, interval_s: float, ready: Callable[[], bool]):
        self.consistency, self.interval_s, self.ready = consistency, interval_s, ready
        self._was_ready = ready()
        self._problem = ""
        self._periodic = Periodic(self.round, interval_s, "background repair")

    async def round(self) -> None:
        ready = self.ready()
        if ready:
            work = self.consistency.repair_stale() if self._was_ready else self.consistency.repair(wait=False)
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
