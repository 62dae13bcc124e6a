"""Dynamic batching: tagging throughput of 16 concurrent batch-1 clients through the service, as a ratio of the
bare model's best batched throughput (prints numbers; not a test).

Bare: the tagger SavedModel in-process (the server's own InProcessBackend, same images, encoded bytes in, so
decoding and resizing in the graph are counted on both sides) at batch sizes 1..32; the best images/s is the
reference. Service: `acg2vec serve` on the embedded defaults, 16 clients each sending TagImage with one image
and the next as soon as the last is answered, with dynamic batching on (the defaults) and off
(ACG2VEC_BATCH_MAX_SIZE=1). Goal: ratio >= 0.8 with batching on. The bare best is measured again after the
service runs and the higher of the two is used (a busy machine drifts). Images per CPU-second (the bare
process; the server process without the clients) are printed too: on a shared machine they move far less
than images per second.

    .venv/bin/python benchmarks/batching.py                   # development models
    .venv/bin/python benchmarks/batching.py --models var/models --seconds 60
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
from _common import bench_images, closed_loop, embedded_server, models_or_dev

from acg2vec.v1 import tagging_pb2, tagging_pb2_grpc
from acg2vec_server.backends.inprocess import InProcessBackend


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bare(models: Path, images: list[bytes], sizes: list[int], seconds: float) -> dict[int, float]:
    backend = InProcessBackend(models, threads=2)
    rates = {}
    try:
        for size in sizes:
            batch = {"image_bytes": np.array([images[i % len(images)] for i in range(size)], dtype=object)}
            await backend.predict("tagger", batch)  # warm-up: tracing, allocation
            done, start, cpu = 0, time.monotonic(), time.process_time()
            while time.monotonic() - start < seconds:
                await backend.predict("tagger", batch)
                done += size
            rates[size] = done / (time.monotonic() - start)
            per_cpu = done / (time.process_time() - cpu)
            print(f"bare tagger, batch {size:>2}: {rates[size]:.1f} images/s, {per_cpu:.1f} per CPU-second", flush=True)
    finally:
        await backend.close()
    return rates


async def service(models: Path, images: list[bytes], clients: int, seconds: float, **settings: str) -> float:
    async def tag(channel: grpc.aio.Channel, n: int) -> int:
        request = tagging_pb2.TagImageRequest(image=images[n % len(images)])
        await tagging_pb2_grpc.TaggingServiceStub(channel).TagImage(request, timeout=60)
        return 1

    with tempfile.TemporaryDirectory(prefix="acg2vec-batching-") as tmp:
        server = embedded_server(Path(tmp), models, **settings)
        await server.start()
        try:
            await closed_loop(server.target, clients, min(5.0, seconds), tag)  # warm-up
            runs = server.metric("acg2vec_inference_batch_items_count", model="tagger")
            items = server.metric("acg2vec_inference_batch_items_sum", model="tagger")
            cpu = cpu_seconds(server.process.pid)
            stats = await closed_loop(server.target, clients, seconds, tag)
            cpu = cpu_seconds(server.process.pid) - cpu
            runs = server.metric("acg2vec_inference_batch_items_count", model="tagger") - runs
            items = server.metric("acg2vec_inference_batch_items_sum", model="tagger") - items
        finally:
            server.stop()
    rate = stats.ok / stats.seconds
    print(
        f"service, {clients} clients x batch 1, {settings or 'defaults'}: {rate:.1f} images/s, "
        f"p50 {stats.percentile(50) * 1000:.0f} ms, p99 {stats.percentile(99) * 1000:.0f} ms, errors {stats.errors}, "
        f"mean model batch {items / max(runs, 1):.1f}, {stats.ok / cpu:.1f} per server CPU-second",
        flush=True,
    )
    return rate


async def main(args: argparse.Namespace) -> None:
    models, images = models_or_dev(args.models), bench_images()
    rates = await bare(models, images, args.sizes, args.bare_seconds)
    best_size = max(rates, key=rates.__getitem__)
    extra = dict(setting.split("=", 1) for setting in args.set)
    on = await service(models, images, args.clients, args.seconds, **extra)
    off = None
    if not args.skip_off:
        off = await service(models, images, args.clients, args.seconds, **{**extra, "batch_max_size": "1"})
    again = await bare(models, images, [best_size], args.bare_seconds)
    best = max(rates[best_size], again[best_size])
    print(f"batching on: {on:.1f} images/s = {on / best:.2f} x bare best ({best:.1f} images/s at batch {best_size})")
    if off is not None:
        print(f"batching off: {off:.1f} images/s = {off / best:.2f} x bare best")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="model repository (default: development models)")
    parser.add_argument("--seconds", type=float, default=30, help="length of each service run")
    parser.add_argument("--bare-seconds", type=float, default=10, help="length of each bare run")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="bare batch sizes")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], help="a server setting, e.g. inference_concurrency=1")
    parser.add_argument("--skip-off", action="store_true", help="do not measure the service with batching off")
    asyncio.run(main(parser.parse_args()))
