"""The streaming loop: items go out on StreamIndexIllustrations with a bounded window; answers are journaled;
UNAVAILABLE items and broken streams are retried with backoff on a new stream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acg2vec.indexer.journal import Journal, content_key
from acg2vec.indexer.sources import Item, count_items, shard_of, source_items

OUTCOMES = {1: "created", 2: "updated", 3: "unchanged"}
#: Per-item answers worth another try: the server (or a backend behind it) is briefly unavailable.
RETRYABLE_ITEM_CODES = frozenset({14})  # UNAVAILABLE


@dataclass
class Summary:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    aborted: str = ""

    @property
    def indexed(self) -> int:
        return self.created + self.updated

    @property
    def ok(self) -> bool:
        return not self.failed and not self.aborted

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "indexed": self.indexed}

    def text(self, max_reasons: int = 20) -> str:
        lines = [
            f"indexed {self.indexed} (created {self.created}, updated {self.updated}), unchanged {self.unchanged}, "
            f"skipped {self.skipped} (already in the journal), failed {len(self.failed)}"
        ]
        if self.failed:
            reasons = Counter(reason.split(":", 1)[0] for reason in self.failed.values())
            lines.append("failures by kind: " + ", ".join(f"{k} x{n}" for k, n in reasons.most_common()))
            for id, reason in list(self.failed.items())[:max_reasons]:
                lines.append(f"  {id}: {reason}")
            if len(self.failed) > max_reasons:
                lines.append(f"  ... and {len(self.failed) - max_reasons} more (--summary-json has them all)")
        if self.aborted:
            lines.append(f"ABORTED: {self.aborted}; run the same command again to resume")
        return "\n".join(lines)


@dataclass
class _Entry:
    item: Item
    image: bytes
    key: str
    attempts: int = 0


@dataclass
class _Session:
    sent: dict[str, _Entry] = field(default_factory=dict)
    closed: bool = False


_END = object()


def _png(width: int, height: int) -> bytes:
    """A grey RGB PNG, written without an imaging library."""
    import struct
    import zlib

    def part(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + part(b"IHDR", header) + part(b"IDAT", zlib.compress(rows)) + part(b"IEND", b"")


#: What the indexer embeds once per run to learn the image model's version.
_TINY_PNG = _png(32, 32)


class Indexer:
    """Streams items with at most `window` unacknowledged; reopens the stream when the server goes away."""

    def __init__(
        self, client: Any, journal: Journal, window: int = 64, retries: int = 8, backoff_s: float = 0.5,
        max_backoff_s: float = 30.0, progress: Any = None,
    ):  # fmt: skip
        self.client, self.journal, self.window, self.retries = client, journal, window, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.progress = progress
        self.summary = Summary()
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._read_budget = asyncio.Semaphore(2 * window)  # items read but not finished: bounds memory
        self._outstanding = 0
        self._source_done = False
        self._seen: set[str] = set()
        #: The embedding model versions the server indexes with (part of every journal key), from `run`.
        self.models = ""

    # bookkeeping
    def _tick(self) -> None:
        if self.progress is not None:
            self.progress.update(1)

    def _finish(self) -> None:
        """One item is settled (indexed, unchanged, skipped or failed)."""
        self._outstanding -= 1
        self._read_budget.release()
        self._tick()
        self._maybe_end()

    def _maybe_end(self) -> None:
        if self._source_done and self._outstanding == 0:
            self._outbox.put_nowait(_END)

    def _fail(self, id: str, reason: str) -> None:
        self.summary.failed[id] = reason

    # reading the source (in a thread: files and pipes block)
    async def _produce(self, items: Iterator[Item]) -> None:
        def read(item: Item) -> tuple[bytes | None, str]:
            if item.error:
                return None, item.error
            assert item.path is not None
            try:
                return item.path.read_bytes(), ""
            except OSError as e:
                return None, f"cannot read {item.path}: {e.strerror or e}"

        try:
            while True:
                await self._read_budget.acquire()
                item = await asyncio.to_thread(next, items, None)
                if item is None:
                    self._read_budget.release()
                    break
                self._outstanding += 1
                if item.id in self._seen and not item.error:
                    self._fail(item.id + "#dup", f"duplicate id {item.id!r} in the source: only the first is indexed")
                    self._finish()
                    continue
                self._seen.add(item.id)
                image, error = await asyncio.to_thread(read, item)
                if image is None:
                    self._fail(item.id, f"SOURCE: {error}")
                    self._finish()
                    continue
                key = await asyncio.to_thread(content_key, image, item.metadata(), self.models)
                if self.journal.done.get(item.id) == key:
                    self.summary.skipped += 1
                    self._finish()
                    continue
                self._outbox.put_nowait(_Entry(item, image, key))
        finally:
            self._source_done = True
            self._maybe_end()

    # one stream
    async def _requests(self, session: _Session, inflight: asyncio.Semaphore) -> AsyncIterator[Any]:
        from acg2vec.v1 import search_pb2

        while True:
            await inflight.acquire()
            entry = await self._outbox.get()
            if session.closed or entry is _END:
                self._outbox.put_nowait(entry)  # for the next session (or the next reader of _END)
                return
            session.sent[entry.item.id] = entry
            item = entry.item
            yield search_pb2.StreamIndexIllustrationsRequest(
                id=item.id, image=entry.image,
                metadata=search_pb2.IllustrationMetadata(
                    title=item.title, artist=item.artist, source_url=item.source_url, fields=item.fields
                ),
            )  # fmt: skip

    def _answer(self, session: _Session, inflight: asyncio.Semaphore, response: Any) -> None:
        entry = session.sent.pop(response.id, None)
        if entry is None:
            return  # an answer for an item of an earlier stream, already re-sent
        inflight.release()
        if response.WhichOneof("result") == "outcome":
            outcome = OUTCOMES.get(response.outcome, "unchanged")
            setattr(self.summary, outcome, getattr(self.summary, outcome) + 1)
            self.journal.record(entry.item.id, entry.key, outcome)
            self._finish()
            return
        code, message = response.error.code, response.error.message
        if code in RETRYABLE_ITEM_CODES and entry.attempts < self.retries:
            entry.attempts += 1
            asyncio.get_running_loop().call_later(self._delay(entry.attempts), self._outbox.put_nowait, entry)
            return
        import grpc

        name = next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
        self._fail(entry.item.id, f"{name}: {message}")
        self._finish()

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    async def run(self, items: Iterator[Item]) -> Summary:
        import grpc

        self.models = await self._embedding_models()
        producer = asyncio.create_task(self._produce(items))
        failures = 0
        try:
            while True:
                session, inflight = _Session(), asyncio.Semaphore(self.window)
                try:
                    async for response in self.client.stream_index_illustrations(self._requests(session, inflight)):
                        self._answer(session, inflight, response)
                        failures = 0
                    if self._outbox.qsize() and self._outbox._queue[0] is _END:  # type: ignore[attr-defined]
                        break  # everything settled
                    # The server ended the stream early (e.g. it is shutting down): go on with a new one.
                    failures += 1
                    self._requeue(session)
                    if failures > self.retries:
                        self.summary.aborted = "the server keeps ending the stream early"
                        break
                    await asyncio.sleep(self._delay(failures))
                except grpc.aio.AioRpcError as e:
                    # INTERNAL "RST_STREAM": a connection cut. INTERNAL "Internal error from Core": grpc/grpc#36066,
                    # the aio client's write racing the server's early status (e.g. PERMISSION_DENIED for a token
                    # without the write scope) replaces that status; the next stream gets the real one.
                    retryable = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) or (
                        e.code() == grpc.StatusCode.INTERNAL
                        and any(s in (e.details() or "") for s in ("RST_STREAM", "Internal error from Core"))
                    )
                    failures += 1
                    self._requeue(session)
                    if not retryable or failures > self.retries:
                        self.summary.aborted = f"{e.code().name}: {e.details()}"
                        break
                    delay = self._delay(failures)
                    print(f"stream failed ({e.code().name}: {e.details()}); retrying in {delay:.1f}s", file=sys.stderr)
                    await asyncio.sleep(delay)
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        if self.summary.aborted:
            while not self._outbox.empty():
                entry = self._outbox.get_nowait()
                if entry is not _END:
                    self._fail(entry.item.id, f"NOT_SENT: {self.summary.aborted}")
        return self.summary

    async def _embedding_models(self) -> str:
        """ "name:version" of the image and text models the server embeds with, asked with one tiny image and one
        word; if it cannot tell (unreachable, no access to the feature services), a value no journal entry has:
        everything is sent, and the server answers UNCHANGED for what it has."""
        import grpc

        try:
            image = (await self.client.extract_image_feature(_TINY_PNG, timeout=60)).feature.model
            text = (await self.client.extract_text_feature("illustration", timeout=60)).feature.model
        except grpc.aio.AioRpcError as e:
            print(f"model versions unknown ({e.code().name}): the journal skips nothing this run", file=sys.stderr)
            return f"unknown-{random.random()}"
        return f"{image.name}:{image.version},{text.name}:{text.version}"

    def _requeue(self, session: _Session) -> None:
        """Items sent on a stream that ended without their answer go out again on the next one."""
        session.closed = True
        for entry in session.sent.values():
            self._outbox.put_nowait(entry)
        session.sent.clear()


async def run_index(
    source: Path, target: str, *, shard_index: int = 0, shard_count: int = 1, journal_path: Path | None,
    window: int = 64, retries: int = 8, progress: bool = True, **connection: Any,
) -> Summary:  # fmt: skip
    from tqdm import tqdm

    from acg2vec.client import AsyncAcg2vecClient

    total = await asyncio.to_thread(count_items, source, shard_index, shard_count)
    journal = Journal(journal_path)
    # on a terminal only (disable=None: off when stderr is not a TTY, e.g. in a pod), and never with --no-progress
    bar = tqdm(
        total=total, unit="img", desc="indexing", disable=None if progress else True, mininterval=0.5, file=sys.stderr
    )
    items = (i for i in source_items(source) if shard_of(i.id, shard_count) == shard_index)
    client = AsyncAcg2vecClient(target, retries=0, stream_timeout_s=None, **connection)
    try:
        return await Indexer(client, journal, window=window, retries=retries, progress=bar).run(items)
    finally:
        bar.close()
        journal.close()
        await client.close()
