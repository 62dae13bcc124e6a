"""Several `acg2vec serve` processes on one Redis-protocol server and one Milvus server, as production runs them,
and a storm of clients that index, update and delete the same few ids through all of them while one replica is
SIGKILLed and restarted. Used by tests/test_replica_storm.py (short, with assertions) and benchmarks/replicas.py
(longer, a table of numbers).

`verdict` says what the storm left: every id must be in both stores or in neither, nothing pending, and each id's
final state must be one that the acknowledged writes allow (below: "the last acknowledged write wins").
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from acg2vec.v1 import search_pb2, search_pb2_grpc
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_testing.images import image_bytes
from acg2vec_testing.rig import BIN, MilvusLiteServer, ServerProcess, TFServingEmulator
from acg2vec_testing.waiting import wait_until

OK, NOT_FOUND = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND
#: Distinct images the storm indexes (each index call picks one; inference results are the models' own).
IMAGES = 12


@contextlib.asynccontextmanager
async def milvus_lite_server(root: Path):
    """`milvus-lite server` as a process; yields its URI (any Milvus server's URI can take its place)."""
    server = MilvusLiteServer(root / "milvus")
    await server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@dataclass
class Replicas:
    """A Redis-protocol server (Tendis commands disabled) and the TF-Serving emulator, and `count` servers on
    them and on the Milvus server at `milvus_uri` (their own collection), each with its own data directory."""

    root: Path
    models: Path
    milvus_uri: str
    count: int = 3
    server_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.redis = EmbeddedRedis(self.root / "redis")
        self.tfserving = TFServingEmulator(self.models, self.root)
        env = {
            "ACG2VEC_REDIS_URL": self.redis.url, "ACG2VEC_MILVUS_URI": self.milvus_uri,
            "ACG2VEC_MILVUS_COLLECTION": "replica_storm",
            "ACG2VEC_INFERENCE_BACKEND": "tfserving", "ACG2VEC_TFSERVING_TARGET": self.tfserving.target,
            "ACG2VEC_MODEL_REPOSITORY": str(self.models), "ACG2VEC_MILVUS_INDEX_TYPE": "FLAT",
            "ACG2VEC_HEALTH_PROBE_INTERVAL_S": "0.5", "ACG2VEC_INFERENCE_TIMEOUT_S": "30",
            "ACG2VEC_REDIS_TIMEOUT_S": "10", "ACG2VEC_MILVUS_TIMEOUT_S": "20", "ACG2VEC_GRACE_PERIOD_S": "2",
            **self.server_env,
        }  # fmt: skip
        self.servers = [ServerProcess(self.root / f"server-{i}", env) for i in range(self.count)]

    async def start(self) -> None:
        await asyncio.to_thread(self.redis.start)
        await self.tfserving.start()
        await asyncio.gather(*(s.start() for s in self.servers))

    async def stop(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self.servers))
        self.tfserving.stop()
        await asyncio.to_thread(self.redis.stop)

    def repair(self, *args: str) -> str:
        """`acg2vec repair ARGS` with the replicas' configuration; its output."""
        server = self.servers[0]
        done = subprocess.run(
            [str(BIN / "acg2vec"), "repair", *args], env=server.env, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise AssertionError(f"acg2vec repair {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout


@dataclass
class Op:
    """One call of the storm: a write (index, update, delete) or a read (get), with what it answered."""

    id: str
    kind: str
    token: str  # the value of the metadata field "w" that an index or update stores
    start: float
    end: float = 0.0
    code: grpc.StatusCode = OK
    details: str = ""

    @property
    def acked(self) -> bool:
        """It took effect: OK (an update of a missing id answers NOT_FOUND and changes nothing)."""
        return self.code == OK

    @property
    def maybe(self) -> bool:
        """It may have taken effect: acknowledged, or failed in a way that leaves it to repair."""
        return self.code not in (OK, NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


@dataclass
class Storm:
    """`clients` concurrent clients, each looping over random writes (and a read now and then) to the same `ids`,
    each call to the next replica in turn (as per-call balancing over a Service would; a replica that is down
    answers UNAVAILABLE at once and the next call goes to another)."""

    targets: list[str]
    ids: list[str]
    clients: int = 9
    seed: int = 0
    ops: list[Op] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        async with contextlib.AsyncExitStack() as stack:
            channels = [await stack.enter_async_context(grpc.aio.insecure_channel(t)) for t in self.targets]
            stubs = [search_pb2_grpc.SearchServiceStub(c) for c in channels]
            i = 0
            while not self._stop.is_set():
                i += 1
                search = stubs[(n + i) % len(stubs)]
                id, token = rng.choice(self.ids), f"c{n}-{i}"
                kind = rng.choices(["index", "update", "delete", "get"], [4, 2, 2, 1])[0]
                metadata = search_pb2.IllustrationMetadata(fields={"w": token})
                if kind == "index":
                    image = image_bytes(rng.randrange(IMAGES))
                    call = search.IndexIllustration(
                        search_pb2.IndexIllustrationRequest(id=id, image=image, metadata=metadata), timeout=30
                    )
                elif kind == "update":
                    call = search.UpdateIllustrationMetadata(
                        search_pb2.UpdateIllustrationMetadataRequest(id=id, metadata=metadata), timeout=30
                    )
                elif kind == "delete":
                    call = search.DeleteIllustration(search_pb2.DeleteIllustrationRequest(id=id), timeout=30)
                else:
                    call = search.GetIllustration(search_pb2.GetIllustrationRequest(id=id), timeout=30)
                op = Op(id, kind, token, time.monotonic())
                try:
                    await call
                except grpc.aio.AioRpcError as e:
                    op.code, op.details = e.code(), e.details() or ""
                op.end = time.monotonic()
                self.ops.append(op)

    @contextlib.asynccontextmanager
    async def running(self):
        tasks = [asyncio.create_task(self._client(n)) for n in range(self.clients)]
        try:
            yield self
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)

    @property
    def codes(self) -> Counter[str]:
        return Counter(op.code.name for op in self.ops)

    @property
    def writes(self) -> list[Op]:
        return [op for op in self.ops if op.kind != "get"]


def allowed_final_states(ops: list[Op]) -> set[str]:
    """The final states (a token, or "" for absent) that one id's writes allow. A write W is a possible last
    write unless an acknowledged write started after W ended (that one was ordered after W by its caller). An
    acknowledged write took effect; a failed one may have (repair finishes what it started). Before any
    acknowledged write the id is absent (ids are fresh)."""
    writes = [op for op in ops if op.kind != "get" and (op.acked or op.maybe)]
    acked = [op for op in writes if op.acked]
    allowed = {""} if not acked else set()
    for w in writes:
        if not any(a.start > w.end for a in acked):
            allowed.add("" if w.kind == "delete" else w.token)
    return allowed


@dataclass
class Verdict:
    operations: int
    acknowledged_writes: int
    codes: Counter[str]
    lost: list[str]  # ids whose final state no acknowledged history allows
    partial: list[str]  # ids in one store only, or still pending, or whose row is not the record's
    final: dict[str, str]

    def summary(self) -> str:
        return (
            f"{self.operations} operations, {self.acknowledged_writes} acknowledged writes, lost {len(self.lost)} "
            f"{self.lost[:5]}, partial {len(self.partial)} {self.partial[:5]}, codes {dict(self.codes)}"
        )


async def verdict(replicas: Replicas, storm: Storm) -> Verdict:
    """Reads the outcome through the stores themselves (the adapters) and a replica's API."""
    from acg2vec_server.app import Core

    core = await Core.open(replicas.servers[0].settings())
    try:
        ill = core.domain.illustrations
        await ill.ensure_ready()
        ids = set(storm.ids)
        stored, indexed = await ill.meta.ids() & ids, await ill.vectors.ids() & ids
        pending = set(await ill.meta.pending()) & ids
        records = await ill.meta.get_many(sorted(stored))
        partial = (stored ^ indexed) | pending | {id for id, r in records.items() if r.state != "committed"}
        final = {id: records[id].metadata.fields.get("w", "?") if id in records else "" for id in ids}
        async with grpc.aio.insecure_channel(replicas.servers[0].target) as channel:
            search = search_pb2_grpc.SearchServiceStub(channel)
            for id in sorted(stored - partial):  # the Milvus row carries the record's fields (a filter finds it)
                query = search_pb2.SearchRequest(
                    text="illustration", top_k=5, filter=search_pb2.SearchFilter(fields={"w": final[id]})
                )
                hits = (await search.Search(query, timeout=30)).hits
                if [h.id for h in hits] != [id]:
                    partial.add(id)
    finally:
        await core.close()
    by_id: dict[str, list[Op]] = {id: [] for id in ids}
    for op in storm.ops:
        by_id[op.id].append(op)
    lost = sorted(id for id in ids if final[id] not in allowed_final_states(by_id[id]))
    writes = storm.writes
    return Verdict(len(storm.ops), sum(op.acked for op in writes), storm.codes, lost, sorted(partial), final)


async def storm_with_a_kill(replicas: Replicas, storm_s: float, kill_at_s: float, clients: int = 9) -> Storm:
    """Runs the storm for storm_s; at kill_at_s SIGKILLs the last replica and starts it again at once."""
    ids = [f"storm-{i:02d}" for i in range(50)]
    storm = Storm([s.target for s in replicas.servers], ids, clients)
    victim = replicas.servers[-1]
    started = time.monotonic()
    async with storm.running():
        await asyncio.sleep(kill_at_s)
        victim.signal(signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait)  # type: ignore[union-attr]
        await victim.start()
        await asyncio.sleep(max(0.0, storm_s - (time.monotonic() - started)))
    return storm


async def settled(replicas: Replicas, timeout_s: float = 60) -> None:
    """Waits until nothing is pending: the replicas' background repair finishes what failed part-way (a killed
    replica's leases expire after ACG2VEC_LEASE_TTL_S first)."""
    from acg2vec_server.backends.redis import RedisMetadataStore

    store = RedisMetadataStore(replicas.redis.url)

    async def nothing_pending() -> bool:
        return not await store.pending()

    try:
        await wait_until(nothing_pending, timeout_s, "the replicas to repair what is pending")
    finally:
        await store.close()
