"""A round of work every interval until stopped (the health probes, the background repair)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `work()` every `interval_s` (after a first wait) until `stop()`; a round that fails is logged."""

    def __init__(self, work: Callable[[], Awaitable[object]], interval_s: float, name: str):
        self.work, self.interval_s, self.name = work, interval_s, name
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def _loop(self) -> None:
        # A flag as well as cancel(): asyncio.wait_for in Python 3.11 can swallow a cancellation that
        # arrives as its inner call completes, which would leave this loop running forever.
        while not self._stopping:
            await asyncio.sleep(self.interval_s)
            try:
                await self.work()
            except Exception:
                log.exception("%s failed", self.name)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5)
