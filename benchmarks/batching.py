"""Dynamic batching: tagging throughput of 16 concurrent batch-1 clients through the service, as a ratio of the
bare model's best batched throughput, measured in one run (prints numbers; not a test).

Bare: the tagger SavedModel in-process (the server's own InProcessBackend, same images, encoded bytes in, so
decoding and resizing in the graph are counted on both sides), first at batch sizes 1..32 to find the best one.
Service: `acg2vec serve` on the embedded defaults, 16 clients each sending TagImage with one image and the next
as soon as the last is answered. Then rounds of the bare best batch and of the service alternate (ABBA), so that
a busy machine's drift hits both alike; the ratio is the mean service rate over the mean bare rate.
Goal (issue 16): >= 0.95. With --with-off the service is measured with batching off too
(ACG2VEC_BATCH_MAX_SIZE=1). Images per CPU-second (the server process without the clients) are printed too.

    .venv/bin/python benchmarks/batching.py                   # development models
    .venv/bin/python benchmarks/batching.py --models var/models
    ... --profile var/profiles    # and a py-spy profile of the server under the same load
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from _common import Ratio, bench_images, closed_loop, embedded_server, interleaved, models_or_dev, profiled

from acg2vec.v1 import tagging_pb2, tagging_pb2_grpc
from acg2vec_server.backends.inprocess import InProcessBackend
from acg2vec_testing.rig import ServerProcess


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bare(backend: InProcessBackend, images: list[bytes], size: int, seconds: float) -> float:
    batch = {"image_bytes": np.array([images[i % len(images)] for i in range(size)], dtype=object)}
    await backend.predict("tagger", batch)  # warm-up: tracing, allocation
    done, start, cpu = 0, time.monotonic(), time.process_time()
    while time.monotonic() - start < seconds:
        await backend.predict("tagger", batch)
        done += size
    rate = done / (time.monotonic() - start)
    per_cpu = done / (time.process_time() - cpu)
    print(f"bare tagger, batch {size:>2}: {rate:.1f} images/s, {per_cpu:.1f} per CPU-second", flush=True)
    return rate


async def service(server: ServerProcess, images: list[bytes], clients: int, seconds: float, label: str) -> float:
    async def tag(channel: grpc.aio.Channel, n: int) -> int:
        request = tagging_pb2.TagImageRequest(image=images[n % len(images)])
        await tagging_pb2_grpc.TaggingServiceStub(channel).TagImage(request, timeout=60)
        return 1

    runs = server.metric("acg2vec_inference_batch_items_count", model="tagger")
    items = server.metric("acg2vec_inference_batch_items_sum", model="tagger")
    cpu = cpu_seconds(server.process.pid)
    stats = await closed_loop(server.target, clients, seconds, tag)
    cpu = cpu_seconds(server.process.pid) - cpu
    runs = server.metric("acg2vec_inference_batch_items_count", model="tagger") - runs
    items = server.metric("acg2vec_inference_batch_items_sum", model="tagger") - items
    rate = stats.ok / stats.seconds
    print(
        f"service, {clients} clients x batch 1, {label}: {rate:.1f} images/s, "
        f"p50 {stats.percentile(50) * 1000:.0f} ms, p99 {stats.percentile(99) * 1000:.0f} ms, errors {stats.errors}, "
        f"mean model batch {items / max(runs, 1):.1f}, {stats.ok / cpu:.1f} per server CPU-second",
        flush=True,
    )
    return rate


async def main(args: argparse.Namespace) -> None:
    models, images = models_or_dev(args.models), bench_images()
    extra = dict(setting.split("=", 1) for setting in args.set)
    backend = InProcessBackend(models, threads=2)
    try:
        rates = {size: await bare(backend, images, size, args.bare_seconds) for size in args.sizes}
        best_size = max(rates, key=rates.__getitem__)
        ratio = Ratio(f"tagging, {args.clients} clients x batch 1 vs bare batch {best_size}", 0.95)
        with tempfile.TemporaryDirectory(prefix="acg2vec-batching-") as tmp:
            server = embedded_server(Path(tmp), models, **extra)
            await server.start(service="acg2vec.v1.TaggingService")
            try:
                await service(server, images, args.clients, min(5.0, args.seconds), "warm-up")
                await interleaved(
                    ratio, args.rounds,
                    lambda: bare(backend, images, best_size, args.seconds),
                    lambda: service(server, images, args.clients, args.seconds, str(extra or "defaults")),
                )  # fmt: skip
                if args.profile:  # after the rounds, so that sampling does not slow them
                    args.profile.mkdir(parents=True, exist_ok=True)
                    with profiled(server.process.pid, args.profile / "tagging-16x1.txt", args.native):
                        await service(server, images, args.clients, args.seconds, "profiled")
                print(f"server RSS: {server.rss_mib():.0f} MiB")
            finally:
                server.stop()
        off = None
        if args.with_off:
            with tempfile.TemporaryDirectory(prefix="acg2vec-batching-") as tmp:
                server = embedded_server(Path(tmp), models, **{**extra, "batch_max_size": "1"})
                await server.start(service="acg2vec.v1.TaggingService")
                try:
                    off = await service(server, images, args.clients, args.seconds, "batching off")
                finally:
                    server.stop()
    finally:
        await backend.close()
    print(ratio.line("images/s"))
    if off is not None:
        print(f"batching off: {off:.1f} images/s = {off / np.mean(ratio.bare):.2f} x bare best")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="model repository (default: development models)")
    parser.add_argument("--seconds", type=float, default=15, help="length of each round (bare or service)")
    parser.add_argument("--bare-seconds", type=float, default=6, help="length of each bare run finding the best size")
    parser.add_argument("--rounds", type=int, default=4, help="bare/service round pairs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="bare batch sizes")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], help="a server setting, e.g. inference_concurrency=1")
    parser.add_argument("--with-off", action="store_true", help="also measure the service with batching off")
    parser.add_argument("--profile", type=Path, default=None, help="folder for a py-spy profile of the server")
    parser.add_argument("--native", action="store_true", help="the profile with native (C/C++) frames")
    asyncio.run(main(parser.parse_args()))
