"""Dynamic batching: concurrent requests for one model run as one batch (bounded wait, bounded queue).

Why: one model run on 16 images costs far less than 16 runs on one image, so concurrent single requests
are worth joining. Requests for the same model and signature (with inputs that agree in all but the batch
axis) are concatenated along the batch axis, run as one call, and the outputs are split back per request.
When nothing of the model is running, the waiting requests go at once: there is nobody to wait for. What
arrives while the model is busy waits and forms the next batch; when more batches of a model may run at once
(`concurrency` > 1) and one is running, a further batch waits up to `max_wait_s` after its first request
to fill up.

Bounds, so that load cannot grow memory without limit:
- at most `max_queued` items wait per model; past it a request is refused with `Overloaded`
  (RESOURCE_EXHAUSTED with a retry hint) instead of queueing;
- at most `concurrency` batches of one model run at once (the rest keep collecting requests);
- a request of more than `max_size` items runs as chunks of `max_size`, one after the other, each queued
  behind what arrived meanwhile: a big model with a small batch size (a full-size imported tagger on a CPU)
  keeps answering everyone instead of running one caller's 64 images in one go;
- a chunk that waits and runs longer than `timeout_s` fails with UNAVAILABLE (and a retry hint) and its caller
  is freed; its work is dropped if it has not started (see below).

Each model may have its own `max_size` and `timeout_s` (`Batcher.policy_for`; settings
batch_max_size_per_model and inference_timeout_s_per_model).

A request whose caller went away (deadline passed, call cancelled) before its batch started is dropped
and never runs; a batch whose callers have all gone is cancelled (the in-process backend then drops it
if it has not started). If the model refuses a batch because of one bad input (the graph refuses the
whole batch), the batch is split in halves until the bad request is alone: only that request fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from acg2vec_server.domain.errors import BackendUnavailable, Overloaded
from acg2vec_server.domain.ports import InferenceInputError, split_model

log = logging.getLogger(__name__)

Outputs = tuple[dict[str, np.ndarray], int]
Predict = Callable[[str, Mapping[str, np.ndarray], str], Awaitable[Outputs]]

BATCH_ITEMS = Histogram(
    "acg2vec_inference_batch_items", "Items per model run (dynamic batching)", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)  # fmt: skip
QUEUED_ITEMS = Gauge("acg2vec_inference_queued_items", "Items waiting for inference", ["model"])
DROPPED = Counter(
    "acg2vec_inference_dropped_total", "Requests dropped before they ran: the caller went away", ["model"]
)
REFUSED = Counter("acg2vec_inference_refused_total", "Requests refused: the model's queue was full", ["model"])


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int = 32  # items in one model run; 1 turns batching off (the queue bound still applies)
    max_wait_s: float = 0.005  # how long a batch waits for more requests while the model is busy
    max_queued: int = 256  # items waiting per model before requests are refused
    concurrency: int = 1  # batches of one model running at once
    timeout_s: float | None = None  # longest wait + run of one request (or chunk) for the model; None: no limit


def timed_out(model: str, timeout_s: float) -> BackendUnavailable:
    """The error of a model call that took longer than its timeout (the batcher's, or a backend's deadline)."""
    return BackendUnavailable(
        "inference",
        f"model '{model}' did not answer within its {timeout_s:g} s inference timeout; retry later, send fewer "
        "images a call, or raise ACG2VEC_INFERENCE_TIMEOUT_S (ACG2VEC_INFERENCE_TIMEOUT_S_PER_MODEL for one model)",
    )


@dataclass(eq=False)
class _Job:
    inputs: Mapping[str, np.ndarray]
    size: int
    arrived: float
    shape: tuple
    future: asyncio.Future[Outputs] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    queued: bool = True
    #: The caller's context variables (its trace span among them): its batch runs in the first job's context.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


def batch_size_of(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The shared leading dimension of the inputs, or None when they cannot be batched."""
    sizes = {v.shape[0] if isinstance(v, np.ndarray) and v.ndim >= 1 else -1 for v in inputs.values()}
    if len(sizes) != 1:
        return None
    size = sizes.pop()
    return size if size > 0 else None


def shape_key(inputs: Mapping[str, np.ndarray]) -> tuple:
    """Requests join one batch only when their inputs agree in everything but the batch axis."""
    return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))


class _ModelQueue:
    """The requests waiting for one model signature, and the task that batches them."""

    def __init__(self, model: str, signature: str, policy: BatchPolicy, predict: Predict):
        self.model, self.signature, self.policy, self.predict = model, signature, policy, predict
        self.label = split_model(model)[0]  # metrics by model name, whichever version is pinned
        self.jobs: deque[_Job] = deque()
        self.items = 0
        self.running = 0
        self.arrived = asyncio.Event()
        self.slots = asyncio.Semaphore(policy.concurrency)
        self.worker = asyncio.create_task(self._work(), name=f"batcher {model}/{signature}")
        self.splittable = True  # False once a model run returned outputs without the batch axis

    async def submit(self, inputs: Mapping[str, np.ndarray], size: int) -> Outputs:
        if self.items and self.items + size > self.policy.max_queued:
            REFUSED.labels(self.label).inc()
            raise Overloaded(
                f"the server is at capacity: {self.items} items already wait for model '{self.model}' "
                f"(limit {self.policy.max_queued}); retry after the suggested delay, or send fewer requests at once"
            )
        job = _Job(inputs, size, asyncio.get_running_loop().time(), shape_key(inputs))
        job.future.add_done_callback(lambda _: self._forget(job))
        self.jobs.append(job)
        self._count(size)
        self.arrived.set()
        return await job.future

    def _count(self, delta: int) -> None:
        self.items += delta
        QUEUED_ITEMS.labels(self.label).inc(delta)

    def _forget(self, job: _Job) -> None:
        """A job that ends while still queued (its caller was cancelled) leaves the queue at once."""
        if job.queued:
            job.queued = False
            self.jobs.remove(job)
            self._count(-job.size)
            DROPPED.labels(self.label).inc()

    def _take(self) -> list[_Job]:
        """The oldest job and the next ones of the same input shapes, up to max_size items."""
        first = self.jobs[0]
        batch, total = [first], first.size
        if self.splittable:
            for job in self.jobs:
                if job is not first and job.shape == first.shape:
                    if total + job.size > self.policy.max_size:
                        break
                    batch.append(job)
                    total += job.size
        for job in batch:
            job.queued = False
            self.jobs.remove(job)
            self._count(-job.size)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.slots.acquire()
            try:
                while not self.jobs:
                    self.arrived.clear()
                    await self.arrived.wait()
                if self.running:  # the model is busy: let the batch fill for a little while
                    deadline = self.jobs[0].arrived + self.policy.max_wait_s
                    while self.jobs and self.items < self.policy.max_size and (left := deadline - loop.time()) > 0:
                        self.arrived.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.arrived.wait(), left)
                batch = self._take() if self.jobs else []
            except BaseException:
                self.slots.release()
                raise
            if not batch:  # every waiting caller went away meanwhile
                self.slots.release()
                continue
            self.running += 1
            # in the context of the batch's first request, not the worker's (a copy of whichever request created
            # the queue): the model call is then part of that request's trace. The model's slot is freed as soon
            # as the model has answered, before the requests' answers are built, so that the next batch runs while
            # the event loop turns this one's outputs into responses (issue 16); on any other ending (failure,
            # cancellation) when the task is done, as before.
            release = self._releaser()
            task = asyncio.create_task(self._run(batch, release), context=batch[0].context.copy())
            task.add_done_callback(release)
            self._cancel_when_abandoned(batch, task)

    def _releaser(self) -> Callable[..., None]:
        """Frees one running batch's slot, once however often it is called (also as a done callback)."""
        freed = False

        def release(_: object = None) -> None:
            nonlocal freed
            if not freed:
                freed = True
                self.running -= 1
                self.slots.release()

        return release

    @staticmethod
    def _cancel_when_abandoned(batch: list[_Job], task: asyncio.Task[None]) -> None:
        def check(_: asyncio.Future[Outputs]) -> None:
            if all(job.future.cancelled() for job in batch) and not task.done():
                task.cancel()

        for job in batch:
            job.future.add_done_callback(check)

    async def _run(self, jobs: list[_Job], model_done: Callable[..., None] = lambda: None) -> None:
        """Runs jobs as one model call and settles their futures; `model_done` is called once the model has
        answered successfully, before the futures are settled (a refused batch is split and run again first)."""
        jobs = [job for job in jobs if not job.future.done()]
        if not jobs:
            return
        if len(jobs) == 1:
            inputs = jobs[0].inputs
        else:
            inputs = {k: np.concatenate([job.inputs[k] for job in jobs]) for k in jobs[0].inputs}
        total = sum(job.size for job in jobs)
        BATCH_ITEMS.labels(self.label).observe(total)
        try:
            outputs, version = await self.predict(self.model, inputs, self.signature)
        except InferenceInputError as e:
            if len(jobs) == 1:
                _settle(jobs[0], error=e)
                return
            half = len(jobs) // 2  # one bad input fails the whole batch: find it, fail only its request
            await self._run(jobs[:half])
            await self._run(jobs[half:])
            return
        except Exception as e:
            for job in jobs:
                _settle(job, error=e)
            return
        if len(jobs) == 1:
            model_done()
            _settle(jobs[0], result=(outputs, version))
            return
        if any(np.ndim(v) == 0 or np.shape(v)[0] != total for v in outputs.values()):
            log.warning("model %s/%s answers without a batch axis: running its requests one by one", *self.key)
            self.splittable = False
            for job in jobs:  # still holding the model's slot
                await self._run([job])
            return
        model_done()
        start = 0
        for job in jobs:
            _settle(job, result=({k: v[start : start + job.size] for k, v in outputs.items()}, version))
            start += job.size

    @property
    def key(self) -> tuple[str, str]:
        return self.model, self.signature

    async def close(self) -> None:
        self.worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.worker
        for job in list(self.jobs):
            job.future.cancel()


def _settle(job: _Job, result: Outputs | None = None, error: BaseException | None = None) -> None:
    if job.future.done():  # the caller went away while its batch ran
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)  # type: ignore[arg-type]


class Batcher:
    """Runs model signatures through per-model queues; same interface as InferenceBackend.predict."""

    def __init__(
        self, predict: Predict, policy: BatchPolicy, max_sizes: Mapping[str, int] | None = None,
        timeouts: Mapping[str, float] | None = None,
    ):  # fmt: skip
        self._predict = predict
        self.policy = policy
        self.max_sizes = dict(max_sizes or {})
        self.timeouts = dict(timeouts or {})
        self._queues: dict[tuple[str, str], _ModelQueue] = {}

    def policy_for(self, model: str) -> BatchPolicy:
        """The policy with this model's own batch size and timeout, where it has them."""
        return replace(
            self.policy,
            max_size=self.max_sizes.get(split_model(model)[0], self.policy.max_size),
            timeout_s=self.timeouts.get(split_model(model)[0], self.policy.timeout_s),
        )

    async def predict(
        self, model: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default"
    ) -> Outputs:
        size = batch_size_of(inputs)
        if size is None:  # e.g. the labels signature: no batch axis, nothing to join
            return await self._within(model, self._predict(model, inputs, signature))
        key = (model, signature)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _ModelQueue(model, signature, self.policy_for(model), self._predict)
        if size <= queue.policy.max_size:
            return await self._within(model, queue.submit(inputs, size))
        step = queue.policy.max_size
        for _ in range(2):
            answers = []
            for start in range(0, size, step):  # one after the other: others' requests get in between
                chunk = {k: v[start : start + step] for k, v in inputs.items()}
                answers.append(await self._within(model, queue.submit(chunk, min(step, size - start))))
            versions = {version for _, version in answers}
            if len(versions) == 1:
                return {k: np.concatenate([out[k] for out, _ in answers]) for k in answers[0][0]}, versions.pop()
            log.info("model %s changed versions during a request of %d items: running it again", model, size)
        raise BackendUnavailable("inference", f"model '{model}' keeps changing versions; retry later")

    async def _within(self, model: str, call: Awaitable[Outputs]) -> Outputs:
        timeout = self.policy_for(model).timeout_s
        if timeout is None:
            return await call
        try:
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            raise timed_out(model, timeout) from None

    async def close(self) -> None:
        for queue in self._queues.values():
            await queue.close()
        self._queues.clear()
