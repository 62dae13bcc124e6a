"""Micro-batching of bidirectional streams: read ahead (bounded), process what has arrived as one batch,
answer every item (errors per item, so the stream goes on)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from acg2vec.v1 import common_pb2
from acg2vec_server.domain.errors import Acg2vecError
from acg2vec_server.transport.status import item_error

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
V = TypeVar("V")
R = TypeVar("R")
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


async def answer_batch(
    batch: list[Req],
    check: Callable[[Req], V],
    run: Callable[[list[V]], Awaitable[list[R]]],
    ok: Callable[[Req, R], Resp],
    fail: Callable[[Req, common_pb2.ItemError], Resp],
) -> AsyncIterator[Resp]:
    """One answer per request: items that fail `check` get their error, the rest go through `run` as one
    batch; if the batch fails as a whole (e.g. a backend is down), every item gets that error."""
    good: list[tuple[Req, V]] = []
    for request in batch:
        try:
            good.append((request, check(request)))
        except Acg2vecError as e:
            yield fail(request, item_error(e))
    if not good:
        return
    try:
        results = await run([value for _, value in good])
    except Exception as e:
        for request, _ in good:
            yield fail(request, item_error(e))
        return
    for (request, _), result in zip(good, results, strict=True):
        yield ok(request, result)
