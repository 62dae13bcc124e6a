"""Shared by the benchmarks (each imports it as `_common`: Python puts a script's own folder first on sys.path):
`acg2vec serve` as a process, images, the development models, a closed-loop load of concurrent clients with
latency percentiles and error counts by status code, synthetic vectors for the search benchmarks, and a model
repository whose embedders have chosen output sizes.

The server process, test images and development models are the test rig's (the installed `acg2vec_testing`
package, testing/), so that tests and benchmarks run the same code. Heavy imports (TensorFlow through the rig) are
made where they are used: a spawned loader process of search_scale.py imports this module too.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from acg2vec_testing.images import image_bytes
from acg2vec_testing.model_repository import copy_repository, dev_model_repository
from acg2vec_testing.paths import SHARED_IMAGES

if TYPE_CHECKING:
    from acg2vec_testing.rig import ServerProcess

ACG2VEC = str(Path(sys.executable).parent / "acg2vec")


# ------------------------------------------------------------------------------------------------ server and models
def server_process(data_dir: Path, **settings: object) -> ServerProcess:
    """`acg2vec serve` on a free port with the given settings as ACG2VEC_* variables (data and log in data_dir);
    `await server.start()` runs it."""
    from acg2vec_testing.rig import ServerProcess

    env = {f"ACG2VEC_{k.upper()}": str(v) for k, v in settings.items()}
    return ServerProcess(data_dir, {"TF_CPP_MIN_LOG_LEVEL": "2", **env})


def embedded_server(data_dir: Path, models: Path, **settings: object) -> ServerProcess:
    """`acg2vec serve` on the embedded defaults (in-process TensorFlow, Milvus Lite file, embedded Redis)."""
    defaults: dict[str, object] = {"model_repository": models, "redis_url": "", "log_level": "WARNING"}
    return server_process(data_dir, **(defaults | settings))


def bench_images() -> list[bytes]:
    """The shared anime illustrations (0.6-1.4 MP JPEGs) when present beside the checkout, else generated ones."""
    shared = sorted(SHARED_IMAGES.glob("*.jpg"))
    if shared:
        return [p.read_bytes() for p in shared]
    return [image_bytes(i, size=(800, 800), fmt="JPEG") for i in range(4)]


def models_or_dev(models: Path | None) -> Path:
    """The model repository to serve: the one given, or the development models (built once, cached)."""
    return models if models is not None else dev_model_repository()


def shaped_repository(folder: Path, image_dim: int, text_dim: int) -> Path:
    """illust2vec and acgvoc2vec with the given output sizes (tiny real SavedModels: pooling + a dense layer, and
    the hashing text encoder), plus the development tagger: enough for a server whose collection has the
    production dimensions, queried with raw vectors."""
    marker = folder / f".shaped-{image_dim}-{text_dim}"
    if marker.exists():
        return folder
    import keras

    from acg2vec_models import repository
    from acg2vec_models.export import export_image_embedder, export_text_module
    from acg2vec_models.preprocessing import ImagePreprocessing
    from acg2vec_models.text.hashing import HashingTextEncoder

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    embedding = keras.layers.Dense(image_dim)(keras.layers.GlobalAveragePooling2D()(inputs))
    export_image_embedder(keras.Model(inputs, embedding), ImagePreprocessing(size=32), folder / "illust2vec" / "1")
    export_text_module(HashingTextEncoder(dim=text_dim, buckets=1 << 12, seed=0), folder / "acgvoc2vec" / "1")
    copy_repository(dev_model_repository(), folder, only=["tagger"])
    repository.write_models_config(folder)
    marker.write_text("ok")
    return folder


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (Linux /proc), in MiB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pids += [int(c) for c in children]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


# ------------------------------------------------------------------------------------------------ synthetic vectors
CHUNK = 10_000


def mixture(n: int, dim: int, seed: int, clusters: int = 2000, spread: float = 0.6) -> np.ndarray:
    """n unit vectors from a fixed mixture of `clusters` Gaussian clusters (chunks are reproducible by seed)."""
    centers = np.random.default_rng(12345).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chunk(i: int, n: int, dim: int) -> np.ndarray:
    return mixture(min(CHUNK, n - i * CHUNK), dim, seed=1000 + i)


# ------------------------------------------------------------------------------------------------ latency and load
def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


@dataclass
class Stats:
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of successful calls
    codes: Counter[str] = field(default_factory=Counter)
    items: int = 0  # images or texts answered (a batch call counts its items)

    @property
    def ok(self) -> int:
        return self.codes["OK"]

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def errors(self) -> str:
        bad = {k: v for k, v in self.codes.items() if k != "OK"}
        return ", ".join(f"{k} {v}" for k, v in sorted(bad.items())) or "0"

    def row(self, name: str) -> str:
        return (
            f"| {name} | {self.clients} | {self.ok / self.seconds:.1f} | {self.items / self.seconds:.1f} | "
            f"{self.percentile(50) * 1000:.0f} | {self.percentile(99) * 1000:.0f} | {self.errors} |"
        )


HEADER = "| workload | clients | calls/s | items/s | p50 ms | p99 ms | errors |\n" + "| --- " * 7 + "|"

Call = Callable[[grpc.aio.Channel, int], Awaitable[int]]  # (channel, n) -> items answered


async def closed_loop(target: str, clients: int, seconds: float, call: Call, max_calls: int = 1_000_000) -> Stats:
    """`clients` concurrent callers, each sending its next call when the last one is answered, for `seconds`
    (or max_calls in all). Every caller has its own connection, as separate client processes would."""
    stats = Stats(clients)
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(clients)]
    deadline = time.monotonic() + seconds
    issued = 0

    async def caller(channel: grpc.aio.Channel) -> None:
        nonlocal issued
        while time.monotonic() < deadline and issued < max_calls:
            issued += 1
            start = time.monotonic()
            try:
                answered = await call(channel, issued)
            except grpc.aio.AioRpcError as e:
                stats.codes[e.code().name] += 1
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(0.05)  # a polite client backs off before it retries
                continue
            stats.latencies.append(time.monotonic() - start)
            stats.codes["OK"] += 1
            stats.items += answered

    begin = time.monotonic()
    try:
        await asyncio.gather(*(caller(c) for c in channels))
    finally:
        stats.seconds = time.monotonic() - begin
        for channel in channels:
            await channel.close()
    return stats


# ------------------------------------------------------------------------------------------------ ratios in one run
@dataclass
class Ratio:
    """A service rate over its bare engine's, measured in alternating rounds of one run: on a shared machine the
    load drifts, so each bare round sits beside a service round, and the order flips every round (ABBA)."""

    name: str
    goal: float
    bare: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        """Mean service rate / mean bare rate over the rounds."""
        return float(np.mean(self.service) / np.mean(self.bare)) if self.bare and self.service else float("nan")

    def line(self, unit: str) -> str:
        rounds = ", ".join(f"{s / b:.2f}" for b, s in zip(self.bare, self.service, strict=False))
        verdict = "met" if self.value >= self.goal else "MISSED"
        return (
            f"{self.name}: service {np.mean(self.service):.1f} vs bare {np.mean(self.bare):.1f} {unit} = "
            f"{self.value:.3f} (goal {self.goal}: {verdict}; rounds {rounds})"
        )


async def interleaved(
    ratio: Ratio, rounds: int, bare: Callable[[], Awaitable[float]], service: Callable[[], Awaitable[float]]
) -> Ratio:
    """`rounds` pairs of (bare, service) rates, bare first in even rounds and service first in odd ones."""
    for r in range(rounds):
        pair = (bare, service) if r % 2 == 0 else (service, bare)
        rates = {}
        for fn in pair:
            rates[fn] = await fn()
        ratio.bare.append(rates[bare])
        ratio.service.append(rates[service])
        print(f"  {ratio.name}, round {r + 1}: bare {rates[bare]:.1f}, service {rates[service]:.1f}", flush=True)
    return ratio


# ------------------------------------------------------------------------------------------------ profiles
@contextlib.contextmanager
def profiled(pid: int, out: Path | None, native: bool = False) -> Iterator[None]:
    """py-spy samples process `pid` while the block runs and writes collapsed stacks (one line per stack: frames
    joined by `;`, then the sample count) to `out`; `benchmarks/profile_summary.py` turns them into top frames.
    Nothing happens when out is None. py-spy is a dev dependency (`pip install py-spy`)."""
    if out is None:
        yield
        return
    argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw"]
    argv += ["--output", str(out), "--rate", "100", "--threads", *(["--native"] if native else [])]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    before, started = thread_cpu(pid), time.monotonic()
    try:
        yield
    finally:
        after, wall = thread_cpu(pid), time.monotonic() - started
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(120)
        except subprocess.TimeoutExpired:
            spy.kill()
        rows = [f"{tid}\t{after[tid][0] - before.get(tid, (0.0, ''))[0]:.3f}\t{after[tid][1]}" for tid in after]
        out.with_suffix(".cpu.tsv").write_text(f"wall\t{wall:.3f}\n" + "\n".join(rows) + "\n")
        print(f"profile of pid {pid}: {out} (CPU seconds per thread: {out.with_suffix('.cpu.tsv')})", flush=True)


def thread_cpu(pid: int) -> dict[int, tuple[float, str]]:
    """(CPU seconds (user + system), OS thread name) of each thread of a process, by native thread id (/proc)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            comm, fields = (task / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            values = fields.split()
            cpu[int(task.name)] = ((int(values[11]) + int(values[12])) / tick, comm)
    return cpu
