"""Shared by the reliability benchmarks: a server process on embedded backends, test images, a closed-loop load
of concurrent clients with latency percentiles and error counts by status code."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import dev_model_repository, image_bytes  # noqa: E402
from tests.rig import ServerProcess  # noqa: E402

SHARED_IMAGES = sorted((ROOT.parent / "shared" / "data" / "images").glob("*.jpg"))


def bench_images() -> list[bytes]:
    """The shared anime illustrations (0.6-1.4 MP JPEGs) when present beside the checkout, else generated ones."""
    if SHARED_IMAGES:
        return [p.read_bytes() for p in SHARED_IMAGES]
    return [image_bytes(i, size=(800, 800), fmt="JPEG") for i in range(4)]


def models_or_dev(models: Path | None) -> Path:
    """The model repository to serve: the one given, or the development models (built once, cached)."""
    return models if models is not None else dev_model_repository()


def embedded_server(data_dir: Path, models: Path, **env: str) -> ServerProcess:
    """`acg2vec serve` on the embedded defaults (in-process TensorFlow, Milvus Lite file, embedded Redis)."""
    settings = {"ACG2VEC_MODEL_REPOSITORY": str(models), "ACG2VEC_REDIS_URL": "", "ACG2VEC_LOG_LEVEL": "WARNING"}
    return ServerProcess(data_dir, {**settings, **{f"ACG2VEC_{k.upper()}": str(v) for k, v in env.items()}})


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
