"""Micro-batching of bidirectional streams: read ahead (bounded), process what has arrived as one batch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def batches(requests: AsyncIterator[T], max_batch: int, read_ahead: int = 0) -> AsyncIterator[list[T]]:
    """Yields lists of up to max_batch requests; a slow consumer holds the reader back (bounded queue)."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=read_ahead or 2 * max_batch)

    async def reader() -> None:
        try:
            async for request in requests:
                await queue.put(request)
        finally:
            await queue.put(_END)

    task = asyncio.create_task(reader())
    try:
        done = False
        while not done:
            first = await queue.get()
            if first is _END:
                break
            batch: list[T] = [first]  # type: ignore[list-item]
            while len(batch) < max_batch and not queue.empty():
                item = queue.get_nowait()
                if item is _END:
                    done = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            yield batch
        await task  # surfaces a reader error (e.g. the client cancelled)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
