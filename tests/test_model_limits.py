"""Per-model batch size and inference timeout, so that a big model keeps the service responsive: requests over
the model's batch size run as chunks with other callers' requests in between; a request past its model's timeout
fails with UNAVAILABLE and leaves the queue; an in-process model stays busy while its thread runs; TF-Serving
gets the model's timeout as the deadline of its calls."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from acg2vec_server.backends.inprocess import InProcessBackend
from acg2vec_server.backends.tfserving import TFServingBackend
from acg2vec_server.domain.batching import Batcher, BatchPolicy
from acg2vec_server.domain.errors import BackendUnavailable
from acg2vec_server.settings import Settings
from acg2vec_server.testing.tfserving_emulator import start_emulator
from acg2vec_testing.model_repository import copy_repository
from acg2vec_testing.paths import SAMPLE_PNG
from tests.test_limits import GatedModel, queued, rows, started


async def test_a_request_over_the_models_batch_size_runs_in_chunks_with_others_in_between():
    model = GatedModel()
    batcher = Batcher(model.predict, BatchPolicy(max_size=8, max_wait_s=0.001, max_queued=100), max_sizes={"m": 2})
    try:
        first = await started(batcher, model, rows(1))
        big = await queued(batcher, rows(10, 11, 12, 13, 14))  # five items, the model takes two at a time
        other = await queued(batcher, rows(2))
        model.gate.set()
        (big_out, version), _, _ = await asyncio.gather(big, first, other)
        assert big_out["y"][:, 0].tolist() == [20, 22, 24, 26, 28] and version == 7
        assert model.calls == [[1], [10, 11], [2], [12, 13], [14]]  # `other` got in after the first chunk
    finally:
        await batcher.close()


async def test_a_request_past_its_models_timeout_fails_and_leaves_the_queue():
    model = GatedModel()
    policy = BatchPolicy(max_size=8, max_wait_s=0.001, max_queued=100, timeout_s=30)
    batcher = Batcher(model.predict, policy, timeouts={"m": 0.2})
    try:
        running = asyncio.create_task(batcher.predict("m", rows(1)))
        await model.started.wait()
        waiting = await queued(batcher, rows(2))
        for task in (running, waiting):
            with pytest.raises(BackendUnavailable, match=r"'m' did not answer within its 0.2 s inference timeout"):
                await task
        model.gate.set()
        assert (await batcher.predict("m", rows(3)))[0]["y"][0, 0] == 6  # the model serves again
        assert model.calls == [[1], [3]]  # the request that timed out while queued never ran
        assert batcher.policy_for("other").timeout_s == 30 and batcher.policy_for("m").max_size == 8
    finally:
        await batcher.close()


def test_per_model_timeouts_are_validated():
    assert Settings(inference_timeout_s_per_model="tagger=120, deepix=7.5").inference_timeouts() == {
        "tagger": 120.0,
        "deepix": 7.5,
    }
    with pytest.raises(ValueError, match=r"model=seconds pairs .* e.g. 'tagger=120"):
        Settings(inference_timeout_s_per_model="tagger=0")


async def test_an_in_process_model_stays_busy_until_its_thread_returns(tmp_path):
    """A TensorFlow call cannot be stopped: cancelling it waits for its thread, so the batcher's slot for the model
    stays taken meanwhile; work cancelled before its thread took it never runs."""
    backend = InProcessBackend(tmp_path, threads=1)
    ran: list[str] = []

    def work(name: str, seconds: float) -> str:
        time.sleep(seconds)
        ran.append(name)
        return name

    try:
        slow = asyncio.create_task(backend._run(work, "slow", 0.6))
        later = asyncio.create_task(backend._run(work, "later", 0))
        await asyncio.sleep(0.1)
        began = time.monotonic()
        later.cancel()
        slow.cancel()
        for task in (slow, later):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert time.monotonic() - began > 0.3  # the slow call's cancellation waited for its thread
        assert ran == ["slow"]  # "later" was dropped before a thread took it
    finally:
        await backend.close()


async def test_tfserving_gets_each_models_timeout_as_its_deadline(model_repo, tmp_path):
    server, port = await start_emulator(copy_repository(model_repo, tmp_path, only=["illust2vec"]))
    target = f"127.0.0.1:{port}"
    patient, hurried = (
        TFServingBackend(target, timeout_s=60),
        TFServingBackend(target, 60, timeouts={"illust2vec": 1e-4}),
    )
    images = {"image_bytes": np.array([SAMPLE_PNG.read_bytes()], dtype=object)}
    try:
        outputs, _ = await patient.predict("illust2vec", images)  # the default deadline: answered
        assert outputs["embedding"].shape[0] == 1
        await hurried.ping()  # connected: a deadline that passes now is the model's timeout, not an outage
        with pytest.raises(BackendUnavailable, match=r"'illust2vec' did not answer within its 0.0001 s inference"):
            await hurried.predict("illust2vec", images)
    finally:
        await patient.close()
        await hurried.close()
        await server.stop(0)
