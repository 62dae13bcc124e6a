"""Metadata store: illustration records in a Redis-protocol server (Tendis in production).

Keys (namespaced and versioned by the prefix, default `acg2vec:v1`):
  <prefix>:ill:{<id>}   hash: one illustration (metadata, tags, vectors, state); hash tag = its id
  <prefix>:pending      set: ids whose two-store write or delete has not finished (repair work list)
Only single-key commands are used, so the layout is cluster-safe (Tendis cluster / Redis Cluster),
and none of the commands Tendis lacks (Lua, blocking pops, SELECT n, ...).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.domain.ports import MetadataStore
from acg2vec_server.domain.types import IllustrationMetadata, IllustrationRecord, ModelRef, RecordState, TagScore
from acg2vec_server.telemetry.backend_calls import instrumented


def _encode(record: IllustrationRecord) -> dict[str, Any]:
    return {
        "state": record.state,
        "write_id": record.write_id,
        "meta": json.dumps(
            {"title": record.metadata.title, "artist": record.metadata.artist,
             "source_url": record.metadata.source_url, "fields": record.metadata.fields},
            ensure_ascii=False,
        ),
        "tags": json.dumps([[t.name, t.score, t.category] for t in record.tags], ensure_ascii=False),
        "rating": record.rating,
        "sha256": record.content_sha256,
        "ivec": np.asarray(record.image_vector, dtype="<f4").tobytes(),
        "tvec": np.asarray(record.text_vector, dtype="<f4").tobytes(),
        "imodel": json.dumps([record.image_model.name, record.image_model.version]),
        "tmodel": json.dumps([record.text_model.name, record.text_model.version]),
        "ctime": repr(record.create_time),
        "mtime": repr(record.update_time),
    }  # fmt: skip


def _decode(id: str, h: dict[bytes, bytes]) -> IllustrationRecord:
    meta = json.loads(h[b"meta"])
    imodel, tmodel = json.loads(h[b"imodel"]), json.loads(h[b"tmodel"])
    return IllustrationRecord(
        id=id,
        metadata=IllustrationMetadata(meta["title"], meta["artist"], meta["source_url"], dict(meta["fields"])),
        tags=[TagScore(n, float(s), c) for n, s, c in json.loads(h[b"tags"])],
        rating=h[b"rating"].decode(),
        content_sha256=h[b"sha256"].decode(),
        image_vector=np.frombuffer(h[b"ivec"], dtype="<f4").copy(),
        text_vector=np.frombuffer(h[b"tvec"], dtype="<f4").copy(),
        image_model=ModelRef(imodel[0], int(imodel[1])),
        text_model=ModelRef(tmodel[0], int(tmodel[1])),
        create_time=float(h[b"ctime"]),
        update_time=float(h[b"mtime"]),
        state=h[b"state"].decode(),  # type: ignore[arg-type]
        write_id=h.get(b"write_id", b"").decode(),
    )


@instrumented("redis", MetadataStore)
class RedisMetadataStore:
    name = "metadata"

    def __init__(
        self, url: str, prefix: str = "acg2vec:v1", timeout_s: float = 5.0, cluster: bool = False,
        max_connections: int = 64,
    ):  # fmt: skip
        self.url = url
        self.prefix = prefix
        common: dict[str, Any] = {
            "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "max_connections": max_connections,
            # After a Redis restart every pooled connection is dead, and without a retry each one fails a call
            # (UNAVAILABLE) while Redis is up again. Retry connection errors twice on a fresh connection, quickly;
            # not timeouts, so that a hung Redis still fails within socket_timeout. Our writes are idempotent.
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2, supported_errors=(RedisConnectionError,)),
        }  # fmt: skip
        self._redis: Any = RedisCluster.from_url(url, **common) if cluster else aioredis.Redis.from_url(url, **common)
        # redis-py's asyncio pools fail a command outright ("Too many connections") once max_connections are busy;
        # callers queue here instead, so that a burst of requests waits rather than failing.
        self._slots = asyncio.Semaphore(max_connections)

    def key(self, id: str) -> str:
        return f"{self.prefix}:ill:{{{id}}}"

    @property
    def pending_key(self) -> str:
        return f"{self.prefix}:pending"

    async def _call(self, coro: Any) -> Any:
        try:
            async with self._slots:
                return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise BackendUnavailable(
                self.name, f"metadata store (Redis protocol) at {self.url} is unreachable: {e}; retry later"
            ) from None
        except RedisError as e:
            raise BackendUnavailable(self.name, f"metadata store error: {e}") from None

    async def get(self, id: str) -> IllustrationRecord | None:
        h = await self._call(self._redis.hgetall(self.key(id)))
        return _decode(id, h) if h else None

    async def get_many(self, ids: list[str]) -> dict[str, IllustrationRecord]:
        if not ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for id in ids:
            pipe.hgetall(self.key(id))
        rows = await self._call(pipe.execute())
        return {id: _decode(id, h) for id, h in zip(ids, rows, strict=True) if h}

    async def put(self, record: IllustrationRecord) -> None:
        await self._call(self._redis.hset(self.key(record.id), mapping=_encode(record)))

    async def put_many(self, records: list[IllustrationRecord]) -> None:
        """Bulk load (one pipeline; split per node on a cluster); not part of the write protocol."""
        pipe = self._redis.pipeline(transaction=False)
        for record in records:
            pipe.hset(self.key(record.id), mapping=_encode(record))
        await self._call(pipe.execute())

    async def set_state(self, id: str, state: RecordState) -> None:
        await self._call(self._redis.hset(self.key(id), "state", state))

    async def delete(self, id: str) -> None:
        await self._call(self._redis.delete(self.key(id)))

    async def add_pending(self, id: str) -> None:
        await self._call(self._redis.sadd(self.pending_key, id))

    async def remove_pending(self, id: str) -> None:
        await self._call(self._redis.srem(self.pending_key, id))

    async def pending(self) -> list[str]:
        members: Iterable[bytes] = await self._call(self._redis.smembers(self.pending_key))
        return sorted(m.decode() for m in members)

    async def count(self) -> int:
        """Number of stored illustrations (SCAN; for tools and tests, not hot paths)."""
        n = 0
        async for _ in self._redis.scan_iter(match=f"{self.prefix}:ill:*", count=1000):
            n += 1
        return n

    async def ids(self) -> set[str]:
        """Every stored id (SCAN over every node; for the full repair pass, not hot paths)."""
        found: set[str] = set()
        start = len(self.prefix) + len(":ill:{")
        try:
            async for key in self._redis.scan_iter(match=f"{self.prefix}:ill:*", count=1000):
                found.add(key.decode()[start:-1])
        except (RedisError, OSError) as e:
            raise BackendUnavailable(self.name, f"metadata store scan failed: {e}; retry later") from None
        return found

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
