"""Load on loopback: 16 and 64 concurrent clients against tagging, features and search, then an overload run
(prints numbers; not a test).

A server process on the embedded defaults (in-process TensorFlow with dynamic batching, Milvus Lite, embedded
Redis) serves the development models (or --models). After indexing --index illustrations and a warm-up, each
workload runs for --seconds per client count; every client has its own connection and sends its next call as
soon as the last is answered. Prints calls/s, items/s, p50/p99 latency of successful calls, errors by status
code, and the server's RSS after the warm-up and at the end. The overload run (64 clients, each sending batches
of 8 images, more than the inference queue holds) shows RESOURCE_EXHAUSTED instead of growing memory.

    .venv/bin/python benchmarks/load.py                       # 60 s per run: about 8 minutes
    .venv/bin/python benchmarks/load.py --seconds 20 --models var/models
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import grpc
from _common import HEADER, bench_images, closed_loop, embedded_server, models_or_dev

from acg2vec.v1 import (
    image_feature_pb2,
    image_feature_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    tagging_pb2,
    tagging_pb2_grpc,
    text_feature_pb2,
    text_feature_pb2_grpc,
)

TEXTS = ["long hair", "魔法少女", "school uniform, smile", "青い空と海", "1girl solo", "猫耳メイド"]


def workloads(images: list[bytes]) -> dict:
    async def tagging(channel: grpc.aio.Channel, n: int) -> int:
        request = tagging_pb2.TagImageRequest(image=images[n % len(images)])
        await tagging_pb2_grpc.TaggingServiceStub(channel).TagImage(request, timeout=60)
        return 1

    async def features(channel: grpc.aio.Channel, n: int) -> int:
        if n % 2:
            request = image_feature_pb2.ExtractImageFeatureRequest(image=images[n % len(images)])
            await image_feature_pb2_grpc.ImageFeatureServiceStub(channel).ExtractImageFeature(request, timeout=60)
        else:
            text = text_feature_pb2.ExtractTextFeatureRequest(text=TEXTS[n % len(TEXTS)])
            await text_feature_pb2_grpc.TextFeatureServiceStub(channel).ExtractTextFeature(text, timeout=60)
        return 1

    async def search(channel: grpc.aio.Channel, n: int) -> int:
        if n % 2:
            request = search_pb2.SearchRequest(image=images[n % len(images)], top_k=10)
        else:
            request = search_pb2.SearchRequest(text=TEXTS[n % len(TEXTS)], top_k=10)
        await search_pb2_grpc.SearchServiceStub(channel).Search(request, timeout=60)
        return 1

    return {"tagging": tagging, "features (image, text)": features, "search (text, image)": search}


def overload(images: list[bytes]):
    batch = tagging_pb2.BatchTagImagesRequest(images=[images[i % len(images)] for i in range(8)])

    async def call(channel: grpc.aio.Channel, n: int) -> int:
        await tagging_pb2_grpc.TaggingServiceStub(channel).BatchTagImages(batch, timeout=60)
        return 8

    return call


async def index(target: str, images: list[bytes], count: int) -> None:
    async def requests():
        for i in range(count):
            image, meta = images[i % len(images)], search_pb2.IllustrationMetadata(title=f"bench {i}")
            yield search_pb2.StreamIndexIllustrationsRequest(id=f"bench-{i}", image=image, metadata=meta)

    async with grpc.aio.insecure_channel(target) as channel:
        answers = [a async for a in search_pb2_grpc.SearchServiceStub(channel).StreamIndexIllustrations(requests())]
    failed = [a for a in answers if a.HasField("error")]
    assert not failed, failed[:3]


async def main(args: argparse.Namespace) -> None:
    images = bench_images()
    with tempfile.TemporaryDirectory(prefix="acg2vec-load-") as tmp:
        server = embedded_server(Path(tmp), models_or_dev(args.models))
        await server.start()
        try:
            await index(server.target, images, args.index)
            loads = workloads(images)
            runs = [(clients, name, call) for clients in args.clients for name, call in loads.items()]
            runs.append((64, "overload: batches of 8 images", overload(images)))
            for clients, _, call in runs[len(loads) :]:  # warm-up: every path, at the highest concurrency
                await closed_loop(server.target, clients, args.warmup, call)
            before = server.rss_mib()
            print(f"server RSS after indexing {args.index} and warm-up: {before:.0f} MiB\n")
            print(HEADER.replace(" errors |", " errors | server RSS MiB after |") + " --- |")
            for clients, name, call in runs:
                stats = await closed_loop(server.target, clients, args.seconds, call, args.max_calls)
                print(f"{stats.row(name)} {server.rss_mib():.0f} |", flush=True)
            server.check_alive()
            after = server.rss_mib()
            print(f"\nserver RSS at the end: {after:.0f} MiB ({(after - before) / before * 100:+.1f} %); still serving")
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="model repository (default: development models)")
    parser.add_argument("--seconds", type=float, default=60, help="length of each run")
    parser.add_argument("--warmup", type=float, default=5, help="warm-up per workload, before RSS is first read")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--max-calls", type=int, default=100_000, help="bound on calls per run")
    parser.add_argument("--index", type=int, default=200, help="illustrations indexed for search")
    asyncio.run(main(parser.parse_args()))
