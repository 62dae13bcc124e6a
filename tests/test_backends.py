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


async def test_milvus_lite_store(tmp_path):
    store = MilvusVectorStore(str(tmp_path / "m.db"), "t", index_type="HNSW")
    try:
        with pytest.raises(FailedPrecondition):
            await store.upsert([])
        await store.ensure_collection(8, 4)
        rng = np.random.default_rng(1)
        rows = [
            VectorRow(f"id{i}", rng.random(8, dtype=np.float32), rng.random(4, dtype=np.float32),
                      ["general", "explicit"][i % 2], ["cat", 'quote"tag'] if i % 3 == 0 else ["dog"],
                      {"src": f"s{i % 2}"})
            for i in range(30)
        ]  # fmt: skip
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
        with pytest.raises(FailedPrecondition, match="dimensions"):
            await store.ensure_collection(16, 4)
    finally:
        await store.close()


def test_filter_expression_escapes_user_values():
    expr = filter_expression(SearchFilter(ratings=["explicit"], required_tags=['a"b\\'], fields={"k": 'x" or id != "'}))
    assert expr == 'rating in [4] and array_contains_all(tags, ["a\\"b\\\\"]) and fields["k"] == "x\\" or id != \\""'
