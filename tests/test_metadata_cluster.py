"""The metadata adapter against a single Redis-protocol server and a local 3-node Redis Cluster (standing in for a
Tendis cluster: the commands Tendis lacks are disabled on every node), and the index/repair/delete protocol
on the cluster with real models and Milvus Lite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import pytest_asyncio
import redis
from redis.crc import key_slot

from acg2vec_server.app import Application
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.milvus import MilvusVectorStore
from acg2vec_server.backends.redis import RedisMetadataStore
from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.domain.illustrations.indexing import IndexItem
from acg2vec_server.domain.illustrations.search import Query
from acg2vec_server.domain.types import IllustrationMetadata, SearchFilter, VectorRow
from acg2vec_server.settings import Settings
from acg2vec_testing.images import image_bytes
from tests.support.records import record
from tests.support.redis_cluster import RedisCluster, cluster_info


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"), nodes=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest_asyncio.fixture(params=["single", "cluster"])
async def store(request, redis_server: EmbeddedRedis, redis_cluster: RedisCluster) -> AsyncIterator[RedisMetadataStore]:
    prefix = f"contract-{request.param}:v1"
    if request.param == "single":
        s = RedisMetadataStore(redis_server.url, prefix=prefix)
    else:
        s = RedisMetadataStore(redis_cluster.url, prefix=prefix, cluster=True)
    yield s
    await s.close()


async def test_after_every_node_restarts_the_cluster_re_forms_and_the_store_carries_on(tmp_path):
    """Every node restarts at once (in Kubernetes: every Tendis pod, each with a new IP; Tendis with domain-enabled
    keeps the nodes' DNS names, as these nodes keep their addresses): the nodes re-form the cluster by themselves,
    and the server's cluster client finds it again: what was written before is read after, and writes go on. A call
    made while the nodes are down fails as an outage (UNAVAILABLE), not with a crash."""
    cluster = RedisCluster(tmp_path, nodes=3)
    cluster.start()
    store = RedisMetadataStore(cluster.url, prefix="restart:v1", cluster=True)
    try:
        ids = [f"ill/{i}" for i in range(12)]
        await store.put_many([record(id, seed=i) for i, id in enumerate(ids)])
        cluster.stop()
        with pytest.raises(BackendUnavailable):
            await store.get("ill/1")
        cluster.restart()
        for _ in range(50):  # the client reconnects and re-reads the slot map on its next calls
            try:
                got = await store.get_many(ids)
                break
            except BackendUnavailable:
                await asyncio.sleep(0.1)
        assert sorted(got) == sorted(ids)
        await store.put(record("ill/after", seed=99))
        assert (await store.get("ill/after")) is not None and await store.count() == 13
    finally:
        await store.close()
        cluster.stop()


def test_every_cluster_node_refuses_what_tendis_lacks(redis_cluster: RedisCluster):
    for port in redis_cluster.ports:
        client = redis.Redis(host="127.0.0.1", port=port, protocol=2)
        for command in (("EVAL", "return 1", 0), ("RANDOMKEY",), ("TOUCH", "k"), ("BLPOP", "k", 1)):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)
        assert cluster_info(client)["cluster_state"] == "ok"
        client.close()


async def test_metadata_store_contract(store: RedisMetadataStore, redis_cluster: RedisCluster):
    ids = [f"ill/{i}" for i in range(40)]
    for i, id in enumerate(ids):
        await store.put(record(id, seed=i))
        await store.add_pending(id)
    if store.url == redis_cluster.url:  # the records really are spread over the three nodes' slot ranges
        assert len({key_slot(store.key(id).encode()) * 3 // 16384 for id in ids}) == 3
    got = await store.get_many([*ids, "missing"])
    assert sorted(got) == sorted(ids)
    np.testing.assert_array_equal(got["ill/7"].image_vector, record("ill/7", seed=7).image_vector)
    assert await store.pending() == sorted(ids)
    assert await store.count() == 40
    marked = await store.get("ill/3")
    marked.state = "deleting"
    await store.put(marked)
    assert (await store.get("ill/3")).state == "deleting"
    assert await store.acquire("ill/3", "me", 5000) == 1  # the lease, on the record's node
    assert await store.holds("ill/3", "me", 1) and await store.acquire("ill/3", "you", 5000) is None
    await store.release("ill/3", "me")
    assert await store.acquire("ill/3", "you", 5000) == 2
    await store.release("ill/3", "you")
    for id in ids:
        await store.delete(id)
        await store.remove_pending(id)
    assert await store.count() == 0 and await store.pending() == []
    assert await store.get("ill/0") is None


async def test_index_search_repair_delete_on_the_cluster(
    app: Application, redis_cluster: RedisCluster, milvus_uri: str
) -> None:
    """The write protocol with real models, the cluster and each vector engine (Milvus Lite, the Milvus server): a
    failed vector write is finished by repair, search finds what was indexed, delete removes both."""
    from acg2vec_server.domain.illustrations import Illustrations

    assert app.domain is not None
    domain = app.domain
    meta = RedisMetadataStore(redis_cluster.url, prefix="e2e:v1", cluster=True)
    vectors = MilvusVectorStore(milvus_uri, "cluster_test", index_type="FLAT")
    ill = Illustrations(domain.models, domain.tagger, meta, vectors, domain.limits)
    try:
        await ill.ensure_ready()
        items = [IndexItem(f"c{i}", image_bytes(300 + i), IllustrationMetadata(fields={"n": str(i)})) for i in range(6)]
        results = await ill.index(items)
        assert [r.outcome for r in results] == ["created"] * 6

        async def fail_vector_write(point: str) -> None:
            if point == "after_metadata":
                raise ConnectionError("milvus went away")

        ill.fault_hook = fail_vector_write
        with pytest.raises(ConnectionError):
            await ill.index([IndexItem("c-crash", image_bytes(399))])
        ill.fault_hook = None
        assert await meta.pending() == ["c-crash"]
        assert await vectors.count() == 6  # metadata written, Milvus not: the two disagree
        assert await ill.repair_stale() == 0  # first sight: could be a write in progress
        assert await ill.repair_stale() == 1  # still pending a probe later: finished
        assert await meta.pending() == [] and await vectors.count() == 7
        assert (await meta.get("c-crash")).state == "committed"

        page = await ill.search(Query(image=image_bytes(303)), 3, SearchFilter())
        assert page.hits[0].id == "c3"
        odd = await ill.search(Query(illustration_id="c3"), 10, SearchFilter(fields={"n": "1"}))
        assert [h.id for h in odd.hits] == ["c1"]
        # Milvus loses a row (restored from an older backup) and keeps one whose record is gone: the full pass
        await vectors.delete(["c2"])
        ones = (np.ones(d, np.float32) for d in vectors.dims)
        models = vectors.bound["image"], vectors.bound["text"]
        await vectors.upsert([VectorRow("orphan", *ones, "general", [], {}, *models)])
        assert await ill.reconcile() == (1, 1)
        assert await vectors.ids() == await meta.ids() == {f"c{i}" for i in range(6)} | {"c-crash"}
        for id in [f"c{i}" for i in range(6)] + ["c-crash"]:
            assert await ill.delete(id)
        assert await vectors.count() == 0 and await meta.count() == 0
    finally:
        await meta.close()
        await vectors.close()


def test_cluster_setting_needs_a_url():
    with pytest.raises(ValueError, match="redis_cluster needs redis_url"):
        Settings(redis_cluster=True, redis_url="")
