"""Helpers shared by the search and indexing benchmarks: a server process, health waits, latency statistics,
and a model repository whose embedders have chosen output sizes (for scale runs with synthetic vectors)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ACG2VEC = str(Path(sys.executable).parent / "acg2vec")
sys.path.insert(0, str(ROOT))


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


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
    from tests.helpers import copy_repository, dev_model_repository

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    embedding = keras.layers.Dense(image_dim)(keras.layers.GlobalAveragePooling2D()(inputs))
    export_image_embedder(keras.Model(inputs, embedding), ImagePreprocessing(size=32), folder / "illust2vec" / "1")
    export_text_module(HashingTextEncoder(dim=text_dim, buckets=1 << 12, seed=0), folder / "acgvoc2vec" / "1")
    copy_repository(dev_model_repository(), folder, only=["tagger"])
    repository.write_models_config(folder)
    marker.write_text("ok")
    return folder


class ServerProcess:
    """`acg2vec serve` as a child process on a free port, with the given ACG2VEC_* settings."""

    def __init__(self, log: Path, **settings: str):
        from acg2vec_server.backends.embedded_redis import free_port

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = {**os.environ, "ACG2VEC_METRICS_PORT": "0", "ACG2VEC_ACCESS_LOG": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
        env["ACG2VEC_AUTH"] = "none"  # local benchmark on loopback
        env |= {f"ACG2VEC_{k.upper()}": str(v) for k, v in settings.items()}
        self.log = log
        self.process = subprocess.Popen(
            [ACG2VEC, "serve", "--listen", self.target], env=env, stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
        )  # fmt: skip

    async def wait_serving(self, service: str = "", timeout_s: float = 1800) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.5)
        raise TimeoutError(f"server not SERVING after {timeout_s}s; see {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def rss_mb(self) -> float:
        return process_tree_rss_mb(self.process.pid)


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
