"""A model upgrade never mixes embedding spaces (issue 13): index with illust2vec v1, install a v2 of the same
dimension with other weights; the live server keeps answering in v1's space (also after a restart), a second server
started with --milvus-collections next re-indexes into v2's own collections meanwhile, `acg2vec collections switch`
makes them live in one alias change, and the live server follows. At no point does a collection hold vectors of
two versions, and every search compares vectors of one version."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner

from acg2vec.v1 import image_feature_pb2, search_pb2
from acg2vec_server.app import Application
from acg2vec_server.backends.embedded_redis import EmbeddedRedis
from acg2vec_server.backends.milvus import MilvusVectorStore
from acg2vec_server.cli.main import main
from acg2vec_testing.images import image_bytes
from acg2vec_testing.model_repository import copy_repository, models_fingerprint
from acg2vec_testing.paths import ROOT
from acg2vec_testing.waiting import wait_until
from tests.support.servers import Stubs, make_settings

IDS = [f"up-{i}" for i in range(8)]


def illust2vec_v2() -> Path:
    """illust2vec version 2: the development model with another seed (same dimension, other weights), cached."""
    cache = ROOT / ".cache" / f"upgrade-models-{models_fingerprint()}"
    if not (cache / ".complete").exists():
        from acg2vec_models.dev import build_dev_models

        build_dev_models(cache, seed=7, version=2, parts=("illust2vec",))
        (cache / ".complete").write_text("ok")
    return cache / "illust2vec" / "2"


@contextlib.asynccontextmanager
async def server(settings) -> AsyncIterator[tuple[Application, Stubs]]:
    app = Application(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, Stubs(channel)
    finally:
        await app.stop(grace_s=0)


async def embed(stubs: Stubs, id: str) -> tuple[np.ndarray, int]:
    answer = await stubs.image.ExtractImageFeature(image_feature_pb2.ExtractImageFeatureRequest(image=picture(id)))
    return np.asarray(answer.feature.values, np.float32), answer.feature.model.version


def picture(id: str) -> bytes:
    return image_bytes(700 + IDS.index(id))


async def top_hit(stubs: Stubs, id: str) -> tuple[str, float, int]:
    """Reverse image search with the illustration's own picture: (first id, its score, model version of the query)."""
    page = await stubs.search.Search(search_pb2.SearchRequest(image=picture(id), top_k=3))
    return page.hits[0].id, page.hits[0].score, page.model.version


async def assert_one_version_per_collection(uri: str, base: str, embeddings: dict[int, dict[str, np.ndarray]]) -> None:
    """Every row of each image collection is the vector its own version gives for that picture (no mixed rows)."""
    store = MilvusVectorStore(uri, base, index_type="FLAT")
    try:
        infos = await store.collections()
        [text] = [c for c in infos if c.space == "text"]  # one text model version throughout
        for info in infos:
            if info.space != "image":
                continue
            assert info.model.version in embeddings, info
            await store.bind(info.model, info.dim, text.model, text.dim)
            rows = await store.get_vectors(IDS, "image")
            assert rows, f"{info.name} is empty"
            for id, vector in rows.items():
                assert float(np.dot(vector, embeddings[info.model.version][id])) > 0.9999, (info.name, id)
    finally:
        await store.close()


@pytest.mark.timeout(900)  # three servers and four CLI runs: minutes on a busy 2-core machine
async def test_upgrade_keeps_spaces_apart(tmp_path, model_repo, redis_server: EmbeddedRedis, milvus_uri: str):
    if not milvus_uri.startswith("http"):
        pytest.skip(
            "re-indexing while the live server serves takes two servers on one Milvus; a Milvus Lite file is held by "
            "one process (the same flow on Lite: stop, serve with --milvus-collections next, index, switch, serve)"
        )
    repo = copy_repository(model_repo, tmp_path / "models", only=["tagger", "illust2vec", "acgvoc2vec"])
    base, prefix = f"upg_{uuid.uuid4().hex[:8]}", f"upg-{uuid.uuid4().hex[:8]}:v1"
    common = dict(milvus_uri=milvus_uri, milvus_collection=base, redis_key_prefix=prefix)
    live_settings = make_settings(tmp_path / "live", repo, redis_server.url, **common)
    v2_model = illust2vec_v2()

    async with server(live_settings) as (_, live):
        for id in IDS:
            await live.search.IndexIllustration(search_pb2.IndexIllustrationRequest(id=id, image=picture(id)))
        v1 = {id: (await embed(live, id))[0] for id in IDS}
        assert await top_hit(live, "up-3") == ("up-3", pytest.approx(1.0, abs=1e-4), 1)

        (repo / "illust2vec" / "2").symlink_to(v2_model)  # version 2 installed while serving
        assert (await embed(live, "up-3"))[1] == 1, "the live server must keep embedding with version 1"
        assert await top_hit(live, "up-3") == ("up-3", pytest.approx(1.0, abs=1e-4), 1)

    async with (
        server(live_settings) as (_, live),  # restarted: still version 1, pinned by the live collection
        server(make_settings(tmp_path / "next", repo, redis_server.url, milvus_collections="next", **common)) as (
            _,
            upcoming,
        ),
    ):
        assert await top_hit(live, "up-3") == ("up-3", pytest.approx(1.0, abs=1e-4), 1)
        v2 = {id: (await embed(upcoming, id))[0] for id in IDS}
        assert (await embed(upcoming, "up-3"))[1] == 2
        assert max(float(np.dot(v1[id], v2[id])) for id in IDS) < 0.99, "v2 must differ from v1 for this test"
        for id in IDS[:4]:  # half re-indexed: the live server still answers in v1's space
            await upcoming.search.IndexIllustration(search_pb2.IndexIllustrationRequest(id=id, image=picture(id)))
            got = await live.search.GetIllustration(search_pb2.GetIllustrationRequest(id=id, include_vectors=True))
            assert got.illustration.image_vector.model.version == 2  # the record now holds v2's vectors
        for id in ("up-1", "up-6"):
            assert await top_hit(live, id) == (id, pytest.approx(1.0, abs=1e-4), 1)
            by_id = await live.search.Search(search_pb2.SearchRequest(illustration_id=id, top_k=1))
            assert by_id.hits[0].score == pytest.approx(float(np.dot(v1[id], v1[by_id.hits[0].id])), abs=1e-4)
        await assert_one_version_per_collection(milvus_uri, base, {1: v1, 2: v2})

        runner = CliRunner()
        env = {"ACG2VEC_REDIS_URL": redis_server.url, "ACG2VEC_MILVUS_URI": milvus_uri}
        flags = [
            "--milvus-collection", base, "--redis-key-prefix", prefix, "--model-repository", str(repo),
            "--data-dir", str(tmp_path / "cli"),
        ]  # fmt: skip

        def cli(*args: str):
            return asyncio.to_thread(runner.invoke, main, ["collections", *args, *flags], env=env)

        refused = await cli("switch", "--space", "image")
        assert refused.exit_code != 0 and "lacks 4 of 8" in refused.output, refused.output
        for id in IDS[4:]:
            await upcoming.search.IndexIllustration(search_pb2.IndexIllustrationRequest(id=id, image=picture(id)))
        switched = await cli("switch", "--space", "image")
        assert switched.exit_code == 0 and "live is now illust2vec v2" in switched.output, switched.output

        async def follows() -> bool:
            return (await embed(live, "up-3"))[1] == 2

        await wait_until(follows, 30, "the live server to follow the switch")
        for id in ("up-1", "up-6"):
            assert await top_hit(live, id) == (id, pytest.approx(1.0, abs=1e-4), 2)
        await assert_one_version_per_collection(milvus_uri, base, {1: v1, 2: v2})
        status = await cli("status")
        assert status.exit_code == 0 and f"{base}_image_illust2vec_v2" in status.output, status.output
        dropped = await cli("drop", "image", "1", "--yes")
        assert dropped.exit_code == 0, dropped.output


async def test_serve_starts_and_stops_its_own_milvus_server(tmp_path, model_repo, redis_server: EmbeddedRedis):
    """`acg2vec serve --milvus-standalone`: the server starts the Milvus standalone server with its data under the
    data dir (its own process group and pid file), serves search on it, and leaves no process behind at stop."""
    settings = make_settings(
        tmp_path / "var", model_repo, redis_server.url, milvus_standalone=True, redis_key_prefix="own-milvus:v1",
        milvus_standalone_port=0,
    )  # fmt: skip
    async with server(settings) as (app, stubs):
        milvus = app.core.milvus_standalone
        assert milvus is not None and milvus.base_dir == (tmp_path / "var" / "milvus-standalone").resolve()
        pid = milvus.pid
        assert pid is not None and milvus.pid_file.read_text().split() == [str(pid), str(milvus.port)]
        await stubs.search.IndexIllustration(search_pb2.IndexIllustrationRequest(id="up-0", image=picture("up-0")))
        assert await top_hit(stubs, "up-0") == ("up-0", pytest.approx(1.0, abs=1e-4), 1)
    assert group_members(pid) == [], "processes of the Milvus server's group are left"
    assert not milvus.pid_file.exists()
    with pytest.raises(ValueError, match="milvus_standalone"):
        make_settings(tmp_path / "x", model_repo, redis_server.url, milvus_standalone=True, milvus_uri="http://h:1")


def group_members(pgid: int) -> list[str]:
    """Living processes of a process group, from /proc (name and state)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            name, fields = stat.split(" (", 1)[1].rsplit(") ", 1)
            state, _, group = fields.split()[:3]
            if int(group) == pgid and state != "Z":
                found.append(f"{entry.name} {name} {state}")
    return found
