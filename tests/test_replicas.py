"""Several server processes on one metadata store: the per-id lease and its fencing token (consistency.py).

Two `Illustrations` on one Redis-protocol server and one vector store, each with its own connections and its own
in-process locks, stand for two replicas (the multi-process storm with real `acg2vec serve` processes is in
tests/test_replica_storm.py). A replica that lost its lease changes nothing, a read never repairs outside the
lease, a delete is never undone by a late state change, damaged records are repaired (not a crash), and only
commands Tendis has reach the server (MONITOR).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from acg2vec.v1 import search_pb2
from acg2vec_server.app import Application
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.redis import COMMANDS_USED, RedisMetadataStore
from acg2vec_server.domain.errors import BackendUnavailable, NotFound
from acg2vec_server.domain.illustrations import Illustrations
from acg2vec_server.domain.illustrations.indexing import IndexItem
from acg2vec_server.domain.types import IllustrationMetadata
from acg2vec_testing.images import image_bytes
from acg2vec_testing.waiting import wait_until
from tests.support.records import record

#: Tendis 2.7.0's command table (github.com/Tencent/Tendis, src/tendisplus/commands/*.cpp, the names passed to
#: Command(...)), the commands a client may use; admin and replication commands left out.
TENDIS_COMMANDS = frozenset(
    """append bitcount bitfield bitop bitpos cas client cluster command config dbsize decr decrby del dump echo
    eval evalsha exec exists expire expireat get getbit getrange getset hdel hexists hget hgetall hincrby
    hincrbyfloat hkeys hlen hmget hmset hscan hset hsetnx hstrlen hvals incr incrby incrbyfloat info keys lindex
    linsert llen lpop lpush lpushx lrange lrem lset ltrim mget monitor mset msetnx multi object persist pexpire
    pexpireat pfadd pfcount pfmerge ping psetex pttl quit readonly readwrite rename renamenx restore role rpop
    rpoplpush rpush rpushx sadd scan scard script sdiff sdiffstore select set setbit setex setnx setrange sinter
    sinterstore sismember smembers smove sort spop srandmember srem sscan strlen substr sunion sunionstore time
    ttl type unlink zadd zcard zcount zincrby zinterstore zlexcount zrange zrangebylex zrangebyscore zrank zrem
    zremrangebylex zremrangebyrank zremrangebyscore zrevrange zrevrangebylex zrevrangebyscore zrevrank zscan
    zscore zunionstore""".upper().split()
)


class CountingStore(RedisMetadataStore):
    """The real adapter, counting lease attempts (to know that a replica is waiting for one)."""

    attempts = 0

    async def acquire(self, id: str, token: str, ttl_ms: int) -> int | None:
        self.attempts += 1
        return await super().acquire(id, token, ttl_ms)


@pytest_asyncio.fixture
async def replicas(app: Application) -> AsyncIterator[tuple[Illustrations, Illustrations]]:
    """Two replicas of the app's illustrations (same stores, own connections and locks)."""
    assert app.domain is not None
    d, mine = app.domain, app.domain.illustrations
    stores = [CountingStore(mine.meta.url, mine.meta.prefix) for _ in range(2)]  # type: ignore[attr-defined]
    pair = tuple(Illustrations(d.models, d.tagger, s, mine.vectors, d.limits, lease_ttl_s=5) for s in stores)
    yield pair  # type: ignore[misc]
    for s in stores:
        await s.close()


async def index(ill: Illustrations, id: str, n: int) -> None:
    [result] = await ill.index([IndexItem(id, image_bytes(n), IllustrationMetadata(fields={"w": str(n)}))])
    if result.error is not None:
        raise result.error


async def row_vector(ill: Illustrations, id: str) -> np.ndarray | None:
    return (await ill.vectors.get_vectors([id], "image")).get(id)


async def drop_lease(ill: Illustrations, id: str) -> None:
    """What a Tendis failover that lost the lease key looks like to its holder."""
    await ill.meta._redis.delete(ill.meta.lease_key(id))  # type: ignore[attr-defined]


async def test_the_lease_contract(replicas):
    a, b = (r.meta for r in replicas)
    assert await a.acquire("lc", "t1", 5000) == 1
    assert await b.acquire("lc", "t2", 5000) is None  # held
    assert await a.holds("lc", "t1", 1) and not await b.holds("lc", "t2", 1)
    await b.release("lc", "t2")  # not its lease: nothing happens
    assert await a.holds("lc", "t1", 1)
    await a.release("lc", "t1")
    assert await b.acquire("lc", "t2", 5000) == 2  # fencing tokens grow
    assert await b.holds("lc", "t2", 2)
    newer = record("lc")
    newer.fence = 3
    await a.put(newer)  # stored by a later holder (fence 3) than t2 (fence 2): t2 is stale
    assert not await b.holds("lc", "t2", 2)
    await b.release("lc", "t2")
    await a.delete("lc")
    assert await a.acquire("lc-expiring", "t3", 50) == 1
    await wait_until(lambda: b.acquire("lc-expiring", "t4", 5000), 5, "the lease to expire")
    await b.delete("lc-expiring")  # the fencing counter outlives the record for a day, then goes
    assert 0 < await b._redis.pttl(b.fence_key("lc-expiring")) <= 24 * 3600 * 1000


async def test_a_replica_that_lost_its_lease_changes_nothing(replicas):
    """Replica A's write loses its lease after the metadata write; B writes the id meanwhile. A's next state
    change is refused (UNAVAILABLE), so B's write stands in both stores."""
    a, b = replicas
    await index(a, "lost-1", 1)

    async def lose_lease_and_let_b_write(point: str) -> None:
        if point == "after_metadata":
            await drop_lease(a, "lost-1")
            await index(b, "lost-1", 2)

    a.fault_hook = lose_lease_and_let_b_write
    with pytest.raises(BackendUnavailable, match="lost its lease"):
        await index(a, "lost-1", 3)
    a.fault_hook = None
    record = await a.meta.get("lost-1")
    assert record.state == "committed" and record.metadata.fields == {"w": "2"}
    np.testing.assert_array_equal(await row_vector(a, "lost-1"), record.image_vector)
    assert await a.meta.pending() == []


async def test_a_state_change_after_a_concurrent_delete_recreates_nothing(replicas):
    """The old failure: a state update after a delete re-created a hash holding only `state` (KeyError b'meta'
    on every read). Now A's commit is refused once B has deleted the id, and the id is gone from both stores."""
    a, b = replicas
    await index(a, "gone-1", 4)

    async def lose_lease_and_let_b_delete(point: str) -> None:
        if point == "after_vectors":
            await drop_lease(a, "gone-1")
            assert await b.delete("gone-1")

    a.fault_hook = lose_lease_and_let_b_delete
    with pytest.raises(BackendUnavailable):
        await index(a, "gone-1", 5)
    a.fault_hook = None
    assert await a.meta.get("gone-1") is None and await row_vector(a, "gone-1") is None
    assert "gone-1" not in await a.meta.pending()
    with pytest.raises(NotFound):
        await b.get("gone-1")


async def test_a_stalled_writer_stops_by_its_own_clock(replicas):
    """A write that stalls past 2/3 of its lease makes no further change even if the store still has its token."""
    a, _ = replicas
    a.consistency.lease_ttl_s = 0.6

    async def stall(point: str) -> None:
        if point == "after_metadata":
            await asyncio.sleep(0.45)  # past 2/3 of 0.6 s: the lease may pass to another replica any moment

    a.fault_hook = stall
    try:
        with pytest.raises(BackendUnavailable, match="took longer than its lease"):
            await index(a, "slow-1", 6)
    finally:
        a.fault_hook, a.consistency.lease_ttl_s = None, 5
    assert (await a.meta.get("slow-1")).state == "pending" and "slow-1" in await a.meta.pending()
    assert (await a.get("slow-1")).metadata.fields == {"w": "6"}  # the read settles it, under the lease
    assert (await a.meta.get("slow-1")).state == "committed"


async def test_a_read_waits_for_the_write_in_progress_and_repairs_nothing_outside_the_lease(replicas):
    a, b = replicas
    await index(a, "busy-1", 7)
    writing, finish = asyncio.Event(), asyncio.Event()

    async def hold(point: str) -> None:
        if point == "after_metadata":
            writing.set()
            await finish.wait()

    a.fault_hook = hold
    write = asyncio.create_task(index(a, "busy-1", 8))
    await writing.wait()
    before = b.meta.attempts  # type: ignore[attr-defined]
    read = asyncio.create_task(b.get("busy-1"))
    await wait_until(lambda: b.meta.attempts > before + 1, 5, "the reader to wait for the lease")  # type: ignore[attr-defined]
    assert (await b.meta.get("busy-1")).state == "pending"  # the reader did not settle it under A's feet
    assert await b.consistency.repair(["busy-1"], wait=False) == 0  # the background repair skips it too
    finish.set()
    await write
    a.fault_hook = None
    assert (await read).metadata.fields == {"w": "8"}


async def test_damaged_records_are_repaired_not_a_crash(replicas):
    """A hash that is not a whole record (e.g. left by the old state update after a delete) reads as damaged:
    Get answers NOT_FOUND after removing it, and the full repair pass removes the ones nobody reads."""
    a, _ = replicas
    raw = a.meta._redis  # type: ignore[attr-defined]
    await index(a, "dmg-read", 9)
    await raw.hset(a.meta.key("dmg-read"), mapping={"meta": "{not json", "state": "committed"})
    await raw.hset(a.meta.key("dmg-full"), "state", "committed")  # no row in Milvus: the full pass finds it
    await raw.hset(a.meta.key("dmg-pending"), "state", "pending")
    await a.meta.add_pending("dmg-pending")
    assert (await a.meta.get("dmg-full")).state == "damaged"
    assert (await a.meta.get_many(["dmg-read"]))["dmg-read"].state == "damaged"
    with pytest.raises(NotFound):
        await a.get("dmg-read")
    assert await row_vector(a, "dmg-read") is None
    await a.reconcile()
    for id in ("dmg-read", "dmg-full", "dmg-pending"):
        assert await a.meta.get(id) is None
    assert "dmg-pending" not in await a.meta.pending()


@contextlib.asynccontextmanager
async def monitor(server: EmbeddedRedis) -> AsyncIterator[list[str]]:
    """The name of every command the server executes meanwhile (MONITOR)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"MONITOR\r\n")
    assert (await reader.readline()).startswith(b"+OK")
    lines: list[str] = []

    async def read() -> None:
        while line := await reader.readline():
            lines.append(line.decode(errors="replace"))

    task = asyncio.create_task(read())
    names: list[str] = []
    try:
        yield names
    finally:
        marker = f"monitor-end-{uuid.uuid4().hex}"  # executed after everything before it: then all is seen
        client = aioredis.Redis.from_url(server.url, protocol=2)
        await client.get(marker)
        await client.aclose()
        await wait_until(lambda: any(marker in line for line in lines), 10, "MONITOR to show the end marker")
        task.cancel()
        writer.close()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task
        # +<time> [0 <client>] "COMMAND" "arg" ...
        names += [line.split('"')[1].upper() for line in lines if '"' in line and marker not in line]


async def test_only_commands_tendis_has_reach_the_server(app: Application, stubs, redis_server: EmbeddedRedis):
    """The whole service (index, update, get, search, delete, repair, a new connection's handshake) sends only
    COMMANDS_USED, and each is in Tendis's command table."""
    assert COMMANDS_USED <= TENDIS_COMMANDS
    assert app.domain is not None
    ill = app.domain.illustrations
    fresh = RedisMetadataStore(ill.meta.url, ill.meta.prefix)  # type: ignore[attr-defined]
    async with monitor(redis_server) as seen:
        await fresh.ping()  # the handshake of a new connection: no HELLO, no CLIENT SETINFO
        request = search_pb2.IndexIllustrationRequest(id="cmd-1", image=image_bytes(10))
        await stubs.search.IndexIllustration(request)
        await stubs.search.GetIllustration(search_pb2.GetIllustrationRequest(id="cmd-1"))
        metadata = search_pb2.IllustrationMetadata(title="t")
        await stubs.search.UpdateIllustrationMetadata(
            search_pb2.UpdateIllustrationMetadataRequest(id="cmd-1", metadata=metadata)
        )
        await stubs.search.Search(search_pb2.SearchRequest(text="illustration", top_k=3))
        await stubs.search.DeleteIllustration(search_pb2.DeleteIllustrationRequest(id="cmd-1"))
        await ill.reconcile()
    await fresh.close()
    assert {"SET", "INCRBY", "HSET", "HGETALL", "SCAN", "DEL"} <= set(seen)  # it saw the service at work
    assert set(seen) - {"MONITOR"} <= COMMANDS_USED, sorted(set(seen) - COMMANDS_USED)
