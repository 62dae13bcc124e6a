"""A PredictionService server over the official tensorflow-serving-api stubs, serving a model repository.

`tensorflow_model_server` has no package here, so tests, benchmarks and local development use this to exercise the
TF-Serving adapter over a real socket: same protos, same SavedModels, and TF-Serving's own rules, with the same
status codes and error texts. Its worth is its fidelity, so each rule below names the TF-Serving (or TensorFlow)
source file it copies (tensorflow/serving and tensorflow/tensorflow on GitHub; docs/deployment.md lists them too):

Predict, always (tensorflow_serving/servables/tensorflow/predict_util.cc):
  P1  an unknown signature: FAILED_PRECONDITION `Serving signature key "<name>" not found.`
  P2  more inputs than the signature has, or fewer (no defaults): INVALID_ARGUMENT `input size does not match
      signature: ...` (VerifyRequestInputsSize)
  P3  an unknown model, or a version not served: NOT_FOUND `Servable not found for request: Latest(<name>)` or
      `Specific(<name>, <version>)` (tensorflow_serving/core/basic_manager.cc, manager.h). A request naming a
      version (model_spec.version) gets that version when the repository has it (as with a model_version_policy
      that keeps it; the emulator does not read the policy)

With batching on (`--enable_batching`, the deployment's setting and this emulator's default), every Predict goes
through a batch scheduler: TF-Serving wraps each model's session with a BatchingSession whose default scheduler
takes every signature (tensorflow_serving/servables/tensorflow/bundle_factory_util.cc, WrapSessionForBatching).
  B1  no input tensor: INVALID_ARGUMENT `Batching Run() must have at least one input tensor`
  B2  a scalar input: INVALID_ARGUMENT `Batching Run() input tensors must have at least one dimension`
  B3  inputs of different 0th-dimension sizes: INVALID_ARGUMENT `Batching Run() input tensors must have equal
      0th-dimension size`                                   (B1-B3: tensorflow_serving/batching/batching_util.h,
                                                             ComputeTensorBatchSize)
  B4  a call of more rows than max_batch_size (no large-batch splitting): INVALID_ARGUMENT `Task size <n> is larger
      than maximum input batch size <max>`
  B5  a full queue (max_enqueued_batches): UNAVAILABLE `The batch scheduling queue to which this task was submitted
      is full; currently <n> batches enqueued and max_enqueued_batches is <max>`
                                                            (B4-B5: tensorflow/core/kernels/batching_util/
                                                             shared_batch_scheduler.h, ValidateBatchTaskQueueCapacity)
  B6  concurrent calls of one model and signature are merged into one run (up to max_batch_size rows, waiting at
      most batch_timeout_micros while a batch thread is free; num_batch_threads runs at once); an error of the run
      fails every call of the batch                         (shared_batch_scheduler.h; batching_session.cc)
  B7  inputs of different shapes (past the 0th dimension) in one batch: with pad_variable_length_inputs they are
      padded to the largest, with the first value of each call's tensor (batching_util.cc, AddPadding); without,
      FAILED_PRECONDITION `Tensors with name '<x>' from different tasks have different shapes and padding is turned
      off. ...`                                             (batching_session.cc, MergeInputTensors)
  B8  a batch is padded to the next allowed_batch_sizes entry by repeating the first row of the last call
                                                            (batching_session.cc, MergeInputTensors)
  B9  a scalar output: FAILED_PRECONDITION `Batched output tensor has 0 dimensions`
  B10 an output whose 0th dimension is not the batch's rows: FAILED_PRECONDITION `Batched output tensor's 0th
      dimension does not equal the sum of the 0th dimension sizes of the input tensors`
                                                            (B9-B10: batching_session.cc, SplitOutputTensors)
Not emulated: TF-Serving's model loading and version policy beyond "the newest version", the REST API, the
low-priority queue, large-batch splitting (off in the deployment), and the padding outputs of B7 other than
their shape (a real run sees the same padded input, so the model answers alike).

Run it with `acg2vec tfserving-emulator --listen 127.0.0.1:8500`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from acg2vec_models import repository
from acg2vec_server.backends.inprocess import InProcessBackend
from acg2vec_server.backends.signatures import read_signature_defs
from acg2vec_server.domain.ports import InferenceInputError, ModelDescription, ModelNotInstalled


@dataclass(frozen=True)
class BatchingParameters:
    """TF-Serving's BatchingParameters (session_bundle_config.proto): the fields the emulator honours. The
    defaults are the deployment's (k8s/base/tfserving/batching_parameters.txt; a test keeps them equal)."""

    max_batch_size: int = 64
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 256
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = True

    @classmethod
    def parse(cls, text: str) -> BatchingParameters:
        """Reads the protobuf text format of `--batching_parameters_file` (the fields above; others refused)."""
        values: dict[str, object] = {}
        allowed: list[int] = []
        body = re.sub(r"#.*", "", text)
        for name, wrapped, plain in re.findall(r"(\w+)\s*(?:\{\s*value\s*:\s*(\w+)\s*\}|:\s*(\w+))", body):
            raw = wrapped or plain
            if name == "allowed_batch_sizes":
                allowed.append(int(raw))
            elif name == "pad_variable_length_inputs":
                values[name] = raw == "true"
            elif name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
                values[name] = int(raw)
            elif name == "enable_large_batch_splitting" and raw == "false":
                continue
            else:
                raise ValueError(f"batching parameter '{name}' is not emulated; remove it or extend the emulator")
        params = cls(**values, allowed_batch_sizes=tuple(allowed))  # type: ignore[arg-type]
        if params.allowed_batch_sizes and params.allowed_batch_sizes[-1] != params.max_batch_size:
            raise ValueError(  # bundle_factory_util.cc, WrapSessionForBatching
                "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                f"{params.allowed_batch_sizes[-1]}; expected {params.max_batch_size}"
            )
        return params


class ServingError(Exception):
    """A status TF-Serving answers with (code and its own message)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(eq=False)
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    done: asyncio.Future[tuple[dict[str, np.ndarray], int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Queue:
    """One batch queue: a model and signature (BatchingSession keys its schedulers by the tensor signature)."""

    def __init__(self, emulator: _Batching, model: str, signature: str):
        self.emulator, self.model, self.signature = emulator, model, signature
        self.params = emulator.params
        self.closed: deque[list[_Task]] = deque()
        self.open: list[_Task] = []
        self.open_since = 0.0
        self.wake = asyncio.Event()
        self.dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    def schedule(self, task: _Task) -> None:
        """shared_batch_scheduler.h: Queue::Schedule (B4, B5), then the task joins the open batch."""
        limit = self.params.max_batch_size
        if task.size > limit:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Task size {task.size} is larger than maximum input batch size {limit}",
            )
        open_size = sum(t.size for t in self.open)
        if open_size + task.size > limit:
            enqueued = len(self.closed) + 1
            if enqueued >= self.params.max_enqueued_batches:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full; currently "
                    f"{enqueued} batches enqueued and max_enqueued_batches is {self.params.max_enqueued_batches}",
                )
            self.closed.append(self.open)
            self.open, open_size = [], 0
        if not self.open:
            self.open_since = time.monotonic()
        self.open.append(task)
        if open_size + task.size >= limit:
            self.closed.append(self.open)
            self.open = []
        self.wake.set()

    async def _dispatch(self) -> None:
        """A batch goes when it is full, or when its first call has waited batch_timeout_micros and a batch thread
        is free (while every thread is busy the open batch keeps filling, as in TF-Serving)."""
        timeout = self.params.batch_timeout_micros / 1e6
        while True:
            if not self.closed:
                if not self.open:
                    await self.wake.wait()
                    self.wake.clear()
                    continue
                remaining = self.open_since + timeout - time.monotonic()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), remaining)
                    self.wake.clear()
                    continue
            await self.emulator.threads.acquire()
            if self.closed:
                batch = self.closed.popleft()
            else:
                batch, self.open = self.open, []
            if not batch:
                self.emulator.threads.release()
                continue
            self.emulator.running.add(asyncio.get_running_loop().create_task(self._run(batch)))

    async def _run(self, batch: list[_Task]) -> None:
        try:
            size = sum(t.size for t in batch)
            self.emulator.batch_sizes.append(size)
            padded = _round_up(size, self.params.allowed_batch_sizes)
            merged = _merge(batch, padded - size, self.params.pad_variable_length_inputs)
            try:
                outputs, version = await self.emulator.backend.predict(self.model, merged, self.signature)
            except ModelNotInstalled as e:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {e}") from None
            except (InferenceInputError, TypeError, ValueError) as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
            for index, answer in enumerate(_split(outputs, [t.size for t in batch], padded)):
                if not batch[index].done.done():
                    batch[index].done.set_result((answer, version))
        except Exception as e:  # one run for the whole batch: its error is every call's (batching_session.cc)
            error = e if isinstance(e, ServingError) else ServingError(grpc.StatusCode.INTERNAL, f"{e}")
            for task in batch:
                if not task.done.done():
                    task.done.set_exception(error)
        finally:
            self.emulator.threads.release()
            self.emulator.running.discard(asyncio.current_task())  # type: ignore[arg-type]


def _round_up(size: int, allowed: tuple[int, ...]) -> int:
    """batching_util.cc, RoundToLowestAllowedBatchSize."""
    return next((a for a in allowed if a >= size), size)


def _merge(batch: list[_Task], padding_rows: int, pad: bool) -> dict[str, np.ndarray]:
    """batching_session.cc, MergeInputTensors (B7, B8)."""
    merged = {}
    for name in batch[0].inputs:
        tensors = [t.inputs[name] for t in batch]
        if pad:
            ranks = {x.ndim for x in tensors}
            if len(ranks) == 1:
                widest = np.max([x.shape for x in tensors], axis=0)
                tensors = [_pad(x, tuple(widest[1:])) for x in tensors]
        else:
            for x in tensors[1:]:
                if x.shape[1:] != tensors[0].shape[1:]:
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Tensors with name '{name}' from different tasks have different shapes and padding is turned "
                        "off. Set pad_variable_length_inputs to true, or ensure that all tensors with the same name "
                        "have equal dimensions starting with the first dim.",
                    )
        if padding_rows:
            tensors.append(np.repeat(tensors[-1][:1], padding_rows, axis=0))
        merged[name] = np.concatenate(tensors, axis=0)
    return merged


def _pad(x: np.ndarray, widest: tuple[int, ...]) -> np.ndarray:
    """batching_util.cc, AddPadding: pads every dimension but the 0th to `widest` with the tensor's first value."""
    if x.shape[1:] == widest or x.size == 0:
        return x
    out = np.full((x.shape[0], *widest), x.flat[0], dtype=x.dtype)
    out[tuple(slice(0, s) for s in x.shape)] = x
    return out


def _split(outputs: Mapping[str, np.ndarray], sizes: list[int], padded: int) -> list[dict[str, np.ndarray]]:
    """batching_session.cc, SplitOutputTensors (B9, B10)."""
    answers: list[dict[str, np.ndarray]] = [{} for _ in sizes]
    bounds = np.cumsum(sizes)[:-1]
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, "Batched output tensor has 0 dimensions")
        if value.shape[0] != padded:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the input "
                "tensors",
            )
        for answer, part in zip(answers, np.split(value[: sum(sizes)], bounds), strict=True):
            answer[name] = part
    return answers


def batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """batching_util.h, ComputeTensorBatchSize (B1-B3)."""
    if not inputs:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() must have at least one input tensor")
    sizes = set()
    for value in inputs.values():
        if value.ndim == 0:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have at least one dimension"
            )
        sizes.add(value.shape[0])
    if len(sizes) > 1:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have equal 0th-dimension size"
        )
    return sizes.pop()


class _Batching:
    """The server's batch scheduler (one per server, shared by every model: its threads too)."""

    def __init__(self, backend: InProcessBackend, params: BatchingParameters):
        self.backend, self.params = backend, params
        self.threads = asyncio.Semaphore(params.num_batch_threads)
        self.queues: dict[tuple[str, str, tuple[str, ...]], _Queue] = {}
        self.running: set[asyncio.Task[None]] = set()
        self.batch_sizes: list[int] = []  # rows of each run, before padding (tests check that calls were merged)

    async def run(self, model: str, inputs: dict[str, np.ndarray], signature: str) -> tuple[dict[str, np.ndarray], int]:
        task = _Task(inputs, batch_size(inputs))
        key = (model, signature, tuple(sorted(inputs)))
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = _Queue(self, model, signature)
        queue.schedule(task)
        return await task.done

    async def close(self) -> None:
        for queue in self.queues.values():
            queue.dispatcher.cancel()
        for task in [*self.running, *(q.dispatcher for q in self.queues.values())]:
            with contextlib.suppress(BaseException):
                await task


def _model(spec: model_pb2.ModelSpec) -> str:
    """The backend's name for the servable a ModelSpec asks for: `name`, or `name@version` for a specific one."""
    return f"{spec.name}@{spec.version.value}" if spec.HasField("version") else spec.name


async def _describe(backend: InProcessBackend, spec: model_pb2.ModelSpec) -> ModelDescription:
    """The servable's description, or NOT_FOUND as TF-Serving words it (core/manager.h, ServableRequest)."""
    try:
        return await backend.describe(_model(spec))
    except ModelNotInstalled as e:
        request = f"Specific({spec.name}, {spec.version.value})" if spec.HasField("version") else f"Latest({spec.name})"
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}: {e}") from None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, backend: InProcessBackend, batching: _Batching | None):
        self.backend = backend
        self.batching = batching

    async def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        name, model = request.model_spec.name, _model(request.model_spec)
        signature = request.model_spec.signature_name or "serving_default"
        description = await _describe(self.backend, request.model_spec)
        info = description.signatures.get(signature)
        if info is None:  # predict_util.cc, RunPredict (P1)
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature}" not found.')
        sent, wanted = set(request.inputs), set(info.inputs)
        if len(sent) != len(wanted):  # predict_util.cc, VerifyRequestInputsSize (P2; our signatures have no defaults)
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{','.join(sorted(sent))}}}) "
                f"!= len({{{','.join(sorted(wanted))}}}). Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.",
            )
        inputs: dict[str, np.ndarray] = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        if self.batching is not None:
            outputs, version = await self.batching.run(model, inputs, signature)
        else:
            try:
                outputs, version = await self.backend.predict(model, inputs, signature)
            except ModelNotInstalled as e:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {e}") from None
            except (InferenceInputError, TypeError, ValueError) as e:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = name
        response.model_spec.signature_name = signature
        response.model_spec.version.value = version
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        try:
            return await self._predict(request)
        except ServingError as e:
            await context.abort(e.code, e.message)
            raise  # unreachable: abort raises

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        name = request.model_spec.name
        try:
            description = await _describe(self.backend, request.model_spec)
        except ServingError as e:
            await context.abort(e.code, e.message)
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, value in read_signature_defs(self.backend.root / name / str(description.version)).items():
            defs.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = description.version
        response.metadata["signature_def"].Pack(defs)
        return response


class Emulator:
    """A running emulator: its gRPC server, port and batch scheduler (None with batching off)."""

    def __init__(self, server: grpc.aio.Server, port: int, batching: _Batching | None):
        self.server, self.port, self.batching = server, port, batching

    @property
    def batch_sizes(self) -> list[int]:
        """Rows of each model run so far (before padding); empty with batching off."""
        return self.batching.batch_sizes if self.batching is not None else []

    async def stop(self, grace: float | None = 0) -> None:
        await self.server.stop(grace)
        if self.batching is not None:
            await self.batching.close()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as (emulator, port), as callers of the earlier (server, port) do: `emulator.stop(0)` works."""
        return iter((self, self.port))


DEFAULT_BATCHING = BatchingParameters()


async def start_emulator(
    root: Path,
    address: str = "127.0.0.1:0",
    threads: int = 2,
    batching: BatchingParameters | None = DEFAULT_BATCHING,
    backend: InProcessBackend | None = None,
    channel_arguments: Sequence[tuple[str, int | str]] = (),
) -> Emulator:
    """Loads every model of the repository (as tensorflow_model_server does before it serves), then starts
    the emulator on address, with TF-Serving's batching (`--enable_batching`) unless batching is None.
    `backend` (an in-process backend of the same repository, e.g. a test's) saves loading the models again;
    `channel_arguments` go to the gRPC server, as tensorflow_model_server's `--grpc_channel_arguments` do."""
    if backend is None:
        backend = InProcessBackend(root, threads=max(threads, batching.num_batch_threads if batching else 0))
    for name in repository.model_names(root):
        await backend.describe(name)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
            *channel_arguments,
        ]
    )
    scheduler = _Batching(backend, batching) if batching is not None else None
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(backend, scheduler), server)
    port = server.add_insecure_port(address)
    await server.start()
    return Emulator(server, port, scheduler)
