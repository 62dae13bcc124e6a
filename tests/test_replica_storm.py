"""Three `acg2vec serve` processes on one Redis-protocol server (Tendis commands disabled) and one Milvus server
process (the Milvus 2.3 standalone server), as the production overlay runs them: nine clients index, update and
delete the same 50 ids through all three for a few seconds while one replica is SIGKILLed and restarted.
Afterwards nothing is pending, `acg2vec repair --full` finds nothing to fix, each id is in both stores or in
neither, and each id's final state is one the acknowledged writes allow (the last acknowledged write wins). The
longer run: benchmarks/replicas.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from acg2vec_server.backends.milvus_standalone import MilvusStandalone
from acg2vec_testing.model_repository import copy_repository
from acg2vec_testing.replicas import Replicas, settled, storm_with_a_kill, verdict

STORM_S, KILL_AT_S = 15.0, 5.0
#: Five processes start first (the emulator loads three models; each replica warms up): about 40 s on an idle
#: machine, minutes on a busy one.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def milvus_uri(milvus_server: MilvusStandalone) -> str:
    """The Milvus server the replicas share: the session's Milvus 2.3 standalone server (the replicas use their own
    collections on it). `milvus_lite_server` (acg2vec_testing.replicas) is the lighter stand-in for other rigs."""
    return milvus_server.uri


@pytest_asyncio.fixture(scope="module")
async def replicas(tmp_path_factory: pytest.TempPathFactory, model_repo, milvus_uri: str) -> AsyncIterator[Replicas]:
    root = tmp_path_factory.mktemp("replicas")
    models = copy_repository(model_repo, root / "models", only=["tagger", "illust2vec", "acgvoc2vec"])
    # a short lease, so that the killed replica's ids are free again within the storm
    group = Replicas(root, models, milvus_uri, count=3, server_env={"ACG2VEC_LEASE_TTL_S": "6"})
    try:
        await group.start()
        yield group
    finally:
        await group.stop()


async def test_three_replicas_one_killed_under_a_storm_on_the_same_ids(replicas: Replicas):
    storm = await storm_with_a_kill(replicas, STORM_S, KILL_AT_S)
    await settled(replicas)
    out = replicas.repair("--full")
    assert "restored 0 vector rows from their records, removed 0 orphan rows" in out, out
    assert "repaired 0 illustrations" in out, out
    result = await verdict(replicas, storm)
    print(result.summary())
    assert result.acknowledged_writes > 50, result.summary()
    assert "INTERNAL" not in result.codes and "UNKNOWN" not in result.codes, [
        (op.kind, op.details) for op in storm.ops if op.code.name in ("INTERNAL", "UNKNOWN")
    ][:5]
    assert not result.partial, result.summary()
    assert not result.lost, result.summary()
    assert set(result.final.values()) - {""}, "the storm left no illustration at all"
