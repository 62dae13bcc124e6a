"""`acg2vec index`: bulk indexing of a folder of images or a JSONL manifest through StreamIndexIllustrations.

Resumable and idempotent: every acknowledged item is appended to a local journal (id + a hash of the image
bytes and metadata), so a rerun skips what is done without sending it; what the journal misses (a kill
before the line was written, a lost journal, another machine) the server answers UNCHANGED without
running the models, because the id's stored content hash already matches. Sharding (`--shard-index`,
`--shard-count`) splits the ids by a stable hash, for Kubernetes Indexed Jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from acg2vec_server.cli_connection import client_kwargs, connection_options

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
OUTCOMES = {1: "created", 2: "updated", 3: "unchanged"}
#: Per-item answers worth another try: the server (or a backend behind it) is briefly unavailable.
RETRYABLE_ITEM_CODES = frozenset({14})  # UNAVAILABLE
MANIFEST_KEYS = frozenset({"id", "image", "title", "artist", "source_url", "fields", "tags"})


# -- what to index --------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One illustration to index; `error` set when the source line itself is unusable."""

    id: str
    path: Path | None
    title: str = ""
    artist: str = ""
    source_url: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    error: str = ""

    def metadata(self) -> dict[str, Any]:
        return {"title": self.title, "artist": self.artist, "source_url": self.source_url, "fields": self.fields}


def shard_of(id: str, count: int) -> int:
    """Stable shard of an id (same on every machine and Python run, unlike hash())."""
    return int.from_bytes(hashlib.sha256(id.encode()).digest()[:8], "big") % count


def folder_items(root: Path) -> Iterator[Item]:
    """Every image under root, sorted; the id is the relative path without its suffix."""
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        yield Item(id=path.relative_to(root).with_suffix("").as_posix(), path=path)


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string")
    return value


def manifest_item(line: str, number: int, folder: Path) -> Item | None:
    """One manifest line: {id, image, title?, artist?, source_url?, fields?, tags?}; None for a blank line.

    `image` is a path, relative to the manifest's folder unless absolute. `tags` (the source's own keywords,
    as in the openclipart manifest) are kept as the custom field `keywords`; the server computes its own tags.
    """
    if not line.strip():
        return None
    where = f"line {number}"
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        return Item(id=f"<{where}>", path=None, error=f"{where}: not valid JSON ({e}); fix or remove the line")
    id = record.get("id")
    if not isinstance(id, str) or not id:
        return Item(id=f"<{where}>", path=None, error=f"{where}: 'id' is missing or not a string")
    try:
        image = _text(record, "image")
        if not image:
            raise ValueError("'image' (a path) is missing")
        raw_fields = record.get("fields") or {}
        if not isinstance(raw_fields, dict):
            raise ValueError("'fields' must be an object of string values")
        fields: dict[str, str] = {}
        for key, value in raw_fields.items():
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError(f"fields.{key} must be a string, number or boolean")
            fields[str(key)] = value if isinstance(value, str) else json.dumps(value)
        tags = record.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("'tags' must be a list of strings")
        if tags:
            fields.setdefault("keywords", ", ".join(tags))
        path = Path(image)
        return Item(
            id=id, path=path if path.is_absolute() else folder / path, title=_text(record, "title"),
            artist=_text(record, "artist"), source_url=_text(record, "source_url"), fields=fields,
        )  # fmt: skip
    except ValueError as e:
        return Item(id=id, path=None, error=f"{where}: {e}")


def manifest_items(manifest: Path) -> Iterator[Item]:
    folder = manifest.resolve().parent
    with manifest.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            item = manifest_item(line, number, folder)
            if item is not None:
                yield item


def source_items(source: Path) -> Iterator[Item]:
    return folder_items(source) if source.is_dir() else manifest_items(source)


def count_items(source: Path, shard_index: int, shard_count: int) -> int | None:
    """Items of this shard, for the progress bar; None when the source cannot be read twice (a pipe)."""
    if source.is_dir():
        return sum(1 for item in folder_items(source) if shard_of(item.id, shard_count) == shard_index)
    if not source.is_file():
        return None
    n = 0
    with source.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                with contextlib.suppress(ValueError, AttributeError):
                    n += shard_of(str(json.loads(line).get("id", "")), shard_count) == shard_index
    return n


# -- journal of acknowledged items ----------------------------------------------------------------------------


def content_key(image: bytes, metadata: dict[str, Any]) -> str:
    """What the server compares: the image bytes and the user metadata."""
    digest = hashlib.sha256(hashlib.sha256(image).digest())
    digest.update(json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def default_journal(source: Path, target: str, shard_index: int, shard_count: int) -> Path:
    """One journal per (source, server, shard) under the user's cache directory."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "acg2vec" / "index-journals"
    name = hashlib.sha256(f"{source.resolve()}|{target}|{shard_index}/{shard_count}".encode()).hexdigest()[:20]
    return base / f"{name}.jsonl"


class Journal:
    """Append-only JSONL of acknowledged items; a torn last line (killed mid-write) is ignored on load."""

    def __init__(self, path: Path | None):
        self.path = path
        self.done: dict[str, str] = {}
        self._file: Any = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        entry = json.loads(line)
                        self.done[entry["id"]] = entry["key"]
        torn = False
        if path.exists() and path.stat().st_size > 0:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        self._file = path.open("a", encoding="utf-8")
        if torn:
            self._file.write("\n")  # a torn last line (killed mid-write) stays a line of its own

    def record(self, id: str, key: str, outcome: str) -> None:
        self.done[id] = key
        if self._file is not None:
            self._file.write(json.dumps({"id": id, "key": key, "outcome": outcome}, ensure_ascii=False) + "\n")
            self._file.flush()  # in the kernel's hands: a killed process loses nothing it acknowledged

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# -- the run ----------------------------------------------------------------------------------------------------


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
                key = await asyncio.to_thread(content_key, image, item.metadata())
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
    bar = tqdm(total=total, unit="img", desc="indexing", disable=not progress, mininterval=0.5, file=sys.stderr)
    items = (i for i in source_items(source) if shard_of(i.id, shard_count) == shard_index)
    client = AsyncAcg2vecClient(target, retries=0, stream_timeout_s=None, **connection)
    try:
        return await Indexer(client, journal, window=window, retries=retries, progress=bar).run(items)
    finally:
        bar.close()
        journal.close()
        await client.close()


@click.command("index")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@connection_options
@click.option("--shard-index", type=int, default=0, show_default=True, help="index only the ids of this shard")
@click.option("--shard-count", type=int, default=1, show_default=True, help="number of shards (Indexed Job size)")
@click.option("--window", type=click.IntRange(1, 4096), default=64, show_default=True, help="items in flight")
@click.option("--retries", type=click.IntRange(0, 100), default=8, show_default=True, help="retries on UNAVAILABLE")
@click.option(
    "--journal", "journal", type=click.Path(path_type=Path), default=None,
    help="journal of acknowledged items (default: one per source, target and shard under ~/.cache/acg2vec)",
)  # fmt: skip
@click.option("--no-journal", is_flag=True, help="keep no journal (the server still skips unchanged items)")
@click.option("--summary-json", type=click.Path(path_type=Path), default=None, help="also write the summary here")
@click.option("--progress/--no-progress", default=True, help="tqdm progress bar on stderr")
def index(
    source: Path, shard_index: int, shard_count: int, window: int, retries: int, journal: Path | None,
    no_journal: bool, summary_json: Path | None, progress: bool, **connection_flags: Any,
) -> None:  # fmt: skip
    """Index SOURCE (a folder of images, or a JSONL manifest) into the server at --target.

    Folder: every PNG/JPEG/GIF/BMP/WebP file, id = its path relative to the folder without the suffix.
    Manifest: one JSON object per line with id, image (a path, relative to the manifest's folder), and
    optionally title, artist, source_url, fields {name: value} and tags (kept as the field `keywords`).
    Idempotent and resumable: run it again after a failure or a kill. Exits 1 if any item failed.
    """
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise click.BadParameter(f"need 0 <= --shard-index < --shard-count, got {shard_index} of {shard_count}")
    connection = client_kwargs(**connection_flags)
    target = connection.pop("target")
    journal_path = None if no_journal else journal or default_journal(source, target, shard_index, shard_count)

    async def main() -> Summary:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await run_index(
            source, target, shard_index=shard_index, shard_count=shard_count, journal_path=journal_path,
            window=window, retries=retries, progress=progress, **connection,
        )  # fmt: skip

    try:
        summary = asyncio.run(main())
    except asyncio.CancelledError:
        click.echo("interrupted: acknowledged items are in the journal; run the same command to resume", err=True)
        sys.exit(130)
    click.echo(summary.text())
    if journal_path is not None:
        click.echo(f"journal: {journal_path}")
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary.to_json(), indent=1, ensure_ascii=False))
    sys.exit(0 if summary.ok else 1)
