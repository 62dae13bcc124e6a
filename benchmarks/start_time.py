"""Start-up: seconds from `acg2vec serve` to SERVING with built models, and the server's memory (prints numbers;
not a test).

Starts the server on the embedded defaults (in-process TensorFlow, Milvus Lite file, embedded Redis-protocol
server) with the given model repository three times on one data folder: the first start makes the stores, the
next ones are restarts. Reports seconds to SERVING (health "" = all four services), the server's RSS then, and
after one call of each kind (tag, image and text features, index, search), which loads and traces every model.
The first start of a fresh clone adds `scripts/setup.sh` and `acg2vec models build-defaults` (both print their
times; see README "Speed").

    .venv/bin/python benchmarks/start_time.py --models var/models
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import grpc
from _common import bench_images, embedded_server, process_tree_rss_mb

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
from acg2vec_testing.paths import ROOT


async def one_of_each(target: str, image: bytes) -> None:
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        await tagging_pb2_grpc.TaggingServiceStub(channel).TagImage(tagging_pb2.TagImageRequest(image=image))
        await image_feature_pb2_grpc.ImageFeatureServiceStub(channel).ExtractImageFeature(
            image_feature_pb2.ExtractImageFeatureRequest(image=image)
        )
        await text_feature_pb2_grpc.TextFeatureServiceStub(channel).ExtractTextFeature(
            text_feature_pb2.ExtractTextFeatureRequest(text="魔法少女")
        )
        search = search_pb2_grpc.SearchServiceStub(channel)
        await search.IndexIllustration(search_pb2.IndexIllustrationRequest(id="start-time", image=image))
        await search.Search(search_pb2.SearchRequest(text="girl", top_k=5))


async def main(args: argparse.Namespace) -> None:
    image = bench_images()[0]
    with tempfile.TemporaryDirectory(prefix="acg2vec-start-") as tmp:
        for attempt in range(args.starts):
            server = embedded_server(Path(tmp), args.models.resolve())
            started = time.monotonic()
            await server.start(timeout_s=600)
            serving = time.monotonic() - started
            assert server.process is not None
            rss = process_tree_rss_mb(server.process.pid)
            await one_of_each(server.target, image)
            warm = process_tree_rss_mb(server.process.pid)
            server.stop()
            kind = "first start (new data folder)" if attempt == 0 else "restart"
            print(
                f"{kind}: SERVING after {serving:.1f} s; RSS (server and its embedded Redis) {rss:.0f} MiB at SERVING, "
                f"{warm:.0f} MiB after one call of each kind",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--starts", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
