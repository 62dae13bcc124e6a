"""Metadata store: illustration records in a Redis-protocol server (Tendis in production).

Keys (namespaced and versioned by the prefix, default `acg2vec:v1`):
  <prefix>:ill:{<id>}     hash: one illustration (metadata, tags, vectors, state, fence); hash tag = its id
  <prefix>:lease:{<id>}   string: the token of the writer that holds the id's lease (SET NX PX; expires)
  <prefix>:fence:{<id>}   string: the id's fencing counter (INCR once per lease; expires a day after a delete)
  <prefix>:pending        set: ids whose two-store write or delete has not finished (repair work list)
Only single-key commands are used (a pipeline batches some, never as a transaction), so the layout is
cluster-safe (Tendis cluster / Redis Cluster); every command sent is in COMMANDS_USED, which are all in
Tendis's command table (checked by a test that watches the server with MONITOR). No Lua, no WATCH/MULTI
(Tendis has no WATCH), RESP2 only (Tendis has no HELLO).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.domain.ports import MetadataStore
from acg2vec_server.domain.types import IllustrationMetadata, IllustrationRecord, ModelRef, TagScore
from acg2vec_server.telemetry.backend_calls import instrumented

#: Every command this adapter sends (redis-py adds none: no HELLO with protocol 2, CLIENT SETINFO is off).
#: All are in Tendis 2.7's command table (src/tendisplus/commands/*.cpp); tests/test_metadata_cluster.py checks
#: with MONITOR that nothing else reaches the server.
COMMANDS_USED = frozenset(
    {"HGETALL", "HSET", "HGET", "DEL", "SADD", "SREM", "SMEMBERS", "SCAN", "PING", "SET", "GET", "INCRBY",
     "PERSIST", "PEXPIRE"}
)  # fmt: skip
try:  # redis-py >= 7.2 names the CLIENT SETINFO switch driver_info; older versions lib_name/lib_version
    from redis import DriverInfo  # noqa: F401

    NO_CLIENT_SETINFO: dict[str, Any] = {"driver_info": None}
except ImportError:
    NO_CLIENT_SETINFO = {"lib_name": None, "lib_version": None}
#: How long a deleted id's fencing counter is kept: far longer than any lease (so a stale holder still meets a
#: counter above its own), short enough that deleted ids do not leave keys behind for good.
FENCE_KEEP_MS = 24 * 3600 * 1000
#: Fields every complete record has; a hash without them is reported as "damaged" (never a crash).
REQUIRED_FIELDS = (b"state", b"meta", b"tags", b"rating", b"sha256", b"ivec", b"tvec", b"imodel", b"tmodel",
                   b"ctime", b"mtime")  # fmt: skip


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
        "fence": record.fence,
    }  # fmt: skip


def _damaged(id: str, h: dict[bytes, bytes]) -> IllustrationRecord:
    """What a hash that is not a complete record reads as: repair removes it (its content cannot be trusted)."""
    return IllustrationRecord(
        id=id, metadata=IllustrationMetadata(), tags=[], rating="", content_sha256="",
        image_vector=np.zeros(0, "<f4"), text_vector=np.zeros(0, "<f4"), image_model=ModelRef("", 0),
        text_model=ModelRef("", 0), create_time=0.0, update_time=0.0, state="damaged",
        write_id=h.get(b"write_id", b"").decode(errors="replace"),
    )  # fmt: skip


def _decode(id: str, h: dict[bytes, bytes]) -> IllustrationRecord:
    if any(f not in h for f in REQUIRED_FIELDS):
        return _damaged(id, h)
    try:
        return _decode_complete(id, h)
    except (ValueError, KeyError, TypeError, IndexError):  # json, float(), a field of the wrong shape
        return _damaged(id, h)


def _decode_complete(id: str, h: dict[bytes, bytes]) -> IllustrationRecord:
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
        fence=int(h.get(b"fence", b"0")),
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
            # RESP2 (Tendis has no HELLO) and no CLIENT SETINFO on connect: only COMMANDS_USED reach the server.
            "protocol": 2, **NO_CLIENT_SETINFO,
        }  # fmt: skip
        self._redis: Any = RedisCluster.from_url(url, **common) if cluster else aioredis.Redis.from_url(url, **common)
        # redis-py's asyncio pools fail a command outright ("Too many connections") once max_connections are busy;
        # callers queue here instead, so that a burst of requests waits rather than failing.
        self._slots = asyncio.Semaphore(max_connections)

    def key(self, id: str) -> str:
        return f"{self.prefix}:ill:{{{id}}}"

    def lease_key(self, id: str) -> str:
        return f"{self.prefix}:lease:{{{id}}}"

    def fence_key(self, id: str) -> str:
        return f"{self.prefix}:fence:{{{id}}}"

    @property
    def pending_key(self) -> str:
        return f"{self.prefix}:pending"

    async def _call(self, coro: Any) -> Any:
        try:
            async with self._slots:
                return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException) as e:
            # RedisClusterException (not a RedisError): no node of the cluster answers, e.g. while all restart
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

    async def delete(self, id: str) -> None:
        """Deletes the record; its fencing counter stays for FENCE_KEEP_MS (a stale writer still meets it)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self.key(id))
        pipe.pexpire(self.fence_key(id), FENCE_KEEP_MS)
        await self._call(pipe.execute())

    # -- the per-id lease (consistency.py says how the domain uses it)
    async def acquire(self, id: str, token: str, ttl_ms: int) -> int | None:
        """Takes the id's lease for `token` (SET NX PX) and returns a fencing token greater than every earlier
        one of this id (INCR); None when another holder has it."""
        if not await self._call(self._redis.set(self.lease_key(id), token, nx=True, px=ttl_ms)):
            return None
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(self.fence_key(id))
        pipe.persist(self.fence_key(id))  # a delete gave it an expiry
        try:
            fence, _ = await self._call(pipe.execute())
        except BaseException:  # failed or cancelled: do not leave the lease taken for its whole TTL
            with contextlib.suppress(Exception):
                await self._redis.delete(self.lease_key(id))
            raise
        return int(fence)

    async def holds(self, id: str, token: str, fence: int) -> bool:
        """Whether `token` still holds the lease and no later holder (a greater fence) stored the record."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self.lease_key(id))
        pipe.hget(self.key(id), "fence")
        lease, stored = await self._call(pipe.execute())
        return lease == token.encode() and (stored is None or int(stored) <= fence)

    async def release(self, id: str, token: str) -> None:
        """Gives the lease up if `token` holds it (GET, then DEL: the caller only releases a lease whose
        expiry is still well ahead, so it cannot have passed to another holder in between)."""
        if await self._call(self._redis.get(self.lease_key(id))) == token.encode():
            await self._call(self._redis.delete(self.lease_key(id)))

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
        except (RedisError, OSError, RedisClusterException) as e:
            raise BackendUnavailable(self.name, f"metadata store scan failed: {e}; retry later") from None
        return found

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
