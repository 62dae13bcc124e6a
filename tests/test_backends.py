"""Backend adapters against the real things: Redis-protocol server (Tendis rules), Milvus Lite."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.milvus import MilvusVectorStore, filter_expression
from acg2vec_server.backends.redis import RedisMetadataStore
from acg2vec_server.domain.errors import BackendUnavailable, FailedPrecondition
from acg2vec_server.domain.types import (
    ModelRef,
    SearchFilter,
    VectorRow,
)
from tests.support.records import record


def test_tendis_unsupported_commands_are_disabled(redis_server: EmbeddedRedis):
    client = redis.Redis.from_url(redis_server.url, protocol=2)  # Tendis has no HELLO (RESP3)
    for command in (
        ("EVAL", "return 1", 0),
        ("SCRIPT", "FLUSH"),
        ("BLPOP", "k", 1),
        ("RANDOMKEY",),
        ("OBJECT", "ENCODING", "k"),
        ("SWAPDB", 0, 1),
        ("WAIT", 0, 0),
        ("TOUCH", "k"),
        ("ZPOPMIN", "k"),
        ("GEOADD", "g", 0, 0, "m"),
        ("WATCH", "k"),
        ("HELLO", 3),
    ):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command)
    with pytest.raises(redis.ResponseError):
        client.execute_command("SELECT", 1)
    assert client.ping()


async def test_pooled_connections_recover_at_once_after_a_redis_restart(tmp_path):
    """Every connection in the pool dies with the server; once it is back, no call may fail on one of them."""
    import asyncio

    server = EmbeddedRedis(tmp_path / "r")
    server.start()
    store = RedisMetadataStore(server.url, prefix="test:v1")
    try:
        await store.put(record("kept"))
        await asyncio.gather(*(store.get("kept") for _ in range(20)))  # 20 connections in the pool
        server.kill()
        server.start()
        results = await asyncio.gather(*(store.get("kept") for _ in range(20)), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert all(r is not None and r.id == "kept" for r in results)
    finally:
        await store.close()
        server.stop()


async def test_metadata_roundtrip_and_restart_keeps_data(tmp_path):
    server = EmbeddedRedis(tmp_path / "r")
    server.start()
    store = RedisMetadataStore(server.url, prefix="test:v1")
    try:
        original = record("a/b:1")
        await store.put(original)
        await store.add_pending("x")
        got = await store.get("a/b:1")
        assert got is not None and got.metadata == original.metadata and got.tags == original.tags
        np.testing.assert_array_equal(got.image_vector, original.image_vector)
        assert store.key("a/b:1") == "test:v1:ill:{a/b:1}"
        server.stop()
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await store.get("a/b:1")
        server.start()
        again = await store.get("a/b:1")
        assert again is not None and again.image_model == ModelRef("illust2vec", 3)
        assert await store.pending() == ["x"]
        assert await store.count() == 1
        await store.delete("a/b:1")
        assert await store.get("a/b:1") is None
    finally:
        await store.close()
        server.stop()


IMAGE, TEXT = ModelRef("img", 1), ModelRef("txt-model", 1)


def rows_of(n: int, image: ModelRef = IMAGE, text: ModelRef = TEXT, seed: int = 1) -> list[VectorRow]:
    rng = np.random.default_rng(seed)
    return [
        VectorRow(f"id{i}", rng.random(8, dtype=np.float32), rng.random(4, dtype=np.float32),
                  ["general", "explicit"][i % 2], ["cat", 'quote"tag'] if i % 3 == 0 else ["dog"],
                  {"src": f"s{i % 2}"}, image, text)
        for i in range(n)
    ]  # fmt: skip


async def test_milvus_store(milvus_uri: str):
    """The store's contract on each engine: rows, filters, paging, vectors by id, delete, dimension checks."""
    store = MilvusVectorStore(milvus_uri, "contract", index_type="HNSW")
    try:
        with pytest.raises(FailedPrecondition):
            await store.upsert([])
        await store.bind(IMAGE, 8, TEXT, 4)
        rows = rows_of(30)
        await store.upsert(rows)
        assert await store.count() == 30
        hits = await store.search("image", rows[4].image_vector, 5, 0, SearchFilter())
        assert hits[0].id == "id4" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        flt = SearchFilter(ratings=["general"], required_tags=['quote"tag'], fields={"src": "s0"})
        filtered = await store.search("image", rows[4].image_vector, 30, 0, flt)
        assert {h.id for h in filtered} == {f"id{i}" for i in range(0, 30, 6)}
        excluded = await store.search(
            "text", rows[3].text_vector, 30, 0, SearchFilter(excluded_tags=["dog"]), exclude_id="id3"
        )
        assert {h.id for h in excluded} == {f"id{i}" for i in range(0, 30, 3)} - {"id3"}
        page2 = await store.search("image", rows[4].image_vector, 5, 5, SearchFilter())
        assert not {h.id for h in page2} & {h.id for h in hits}
        vectors = await store.get_vectors(["id2"], "text")
        np.testing.assert_allclose(vectors["id2"], rows[2].text_vector, rtol=1e-6)
        await store.delete(["id4", "missing"])
        assert await store.count() == 29
        assert not await store.get_vectors(["id4"], "image")
        with pytest.raises(FailedPrecondition, match="dimension"):
            await store.bind(IMAGE, 16, TEXT, 4)
    finally:
        await store.close()


async def test_milvus_versions_never_share_a_collection(milvus_uri: str):
    """Rows go to the collections of the versions that embedded them; the alias names the live one and moves in one
    step; a bound store reads only its version's collection; the live collection cannot be dropped."""
    store = MilvusVectorStore(milvus_uri, "versions", index_type="FLAT")
    v2 = ModelRef(IMAGE.name, 2)
    try:
        assert await store.live("image", IMAGE.name) is None
        await store.bind(IMAGE, 8, TEXT, 4)
        await store.set_live("image", IMAGE)
        assert await store.live("image", IMAGE.name) == IMAGE
        await store.upsert(rows_of(6))
        newer = rows_of(4, image=v2, seed=2)  # version 2 of the image model: same ids, other vectors
        await store.upsert(newer)  # its collection does not exist yet: nothing stored, nothing mixed
        assert await store.ids("image", v2) == set()

        other = MilvusVectorStore(milvus_uri, "versions", index_type="FLAT")  # e.g. a server re-indexing
        try:
            await other.bind(v2, 8, TEXT, 4)
            await other.upsert(newer)
            assert await store.ids("image", v2) == {f"id{i}" for i in range(4)}
            assert await store.count() == 6  # the live collection kept its version-1 rows
            hit = (await store.search("image", newer[0].image_vector, 1, 0, SearchFilter()))[0]
            assert hit.score < 0.9999  # version 2's vector is not in the collection version 1 reads
            np.testing.assert_allclose((await other.get_vectors(["id0"], "image"))["id0"], newer[0].image_vector)

            infos = {(c.space, c.model.version): c for c in await store.collections()}
            assert infos["image", 1].live and not infos["image", 2].live and infos["image", 2].rows == 4
            await store.set_live("image", v2)
            assert await store.live("image", IMAGE.name) == v2
            with pytest.raises(FailedPrecondition, match="live"):
                await store.drop("image", v2)
            await store.drop("image", IMAGE)
            assert ("image", 1) not in {(c.space, c.model.version) for c in await store.collections()}
        finally:
            await other.close()
    finally:
        await store.close()


def test_filter_expression_escapes_user_values():
    expr = filter_expression(SearchFilter(ratings=["explicit"], required_tags=['a"b\\'], fields={"k": 'x" or id != "'}))
    assert expr == 'rating in [4] and array_contains_all(tags, ["a\\"b\\\\"]) and fields["k"] == "x\\" or id != \\""'


async def test_calls_to_a_milvus_server_run_concurrently(milvus_uri: str):
    """Searches on a Milvus server overlap (a bounded pool, `milvus_concurrency`); Milvus Lite takes one at a time."""
    import asyncio
    import threading

    class Counting(MilvusVectorStore):
        """The store, counting the Milvus calls in progress at once."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.now = self.most = 0
            self.lock = threading.Lock()

        async def _run(self, fn, *args, **kwargs):
            def counted(client, *a, **k):
                with self.lock:
                    self.now += 1
                    self.most = max(self.most, self.now)
                try:
                    return fn(client, *a, **k)
                finally:
                    with self.lock:
                        self.now -= 1

            return await super()._run(counted, *args, **kwargs)

    store = Counting(milvus_uri, "concurrent", index_type="FLAT", concurrency=4)
    try:
        await store.bind(IMAGE, 8, TEXT, 4)
        rows = rows_of(40)
        await store.upsert(rows)
        store.most = 0
        hits = await asyncio.gather(*(store.search("image", r.image_vector, 5, 0, SearchFilter()) for r in rows))
        assert [h[0].id for h in hits] == [r.id for r in rows]
        if store.is_lite:
            assert store.most == 1
        else:
            assert store.concurrency == 4 and store.most > 1, store.most
    finally:
        await store.close()
