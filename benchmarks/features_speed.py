"""Feature extraction through the service as a ratio of the same model in-process, text or image, at batch 1 and 64,
measured in one run: bare and service rounds alternate (prints numbers; not a test).

bare: the model repository's SavedModel through the server's own domain code in this process (Models over
InProcessBackend: tokenising and normalising included for text, encoded image bytes in, so decoding and resizing
in the graph count on both sides). service: `acg2vec serve` as its own process on the embedded defaults, one
client calling ExtractTextFeature / ExtractImageFeature at batch 1 and BatchExtract...Features at larger
batches, each call sent when the last is answered. Goals (issue 16): >= 0.95 at batch 64, >= 0.8 at batch 1.
Texts are held-out bangumi-data titles (zh / ja / en), images the shared illustrations (0.3-0.5 MB JPEGs).

    .venv/bin/python benchmarks/features_speed.py --kind text --models var/models
    .venv/bin/python benchmarks/features_speed.py --kind image --models var/models
    ... --profile var/profiles    # and a py-spy profile of the server per batch size (benchmarks/profile_summary.py)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from _common import Ratio, bench_images, embedded_server, interleaved, models_or_dev, profiled

from acg2vec.v1 import image_feature_pb2, image_feature_pb2_grpc, text_feature_pb2, text_feature_pb2_grpc
from acg2vec_testing.paths import ROOT

GOALS = {1: 0.8, 64: 0.95}


def texts(n: int) -> list[str]:
    from acg2vec_models.text.defaults import pairs_dataset

    cache = ROOT / ".cache" / "text"
    found = [t for a in pairs_dataset(cache).held_out() for ts in a.titles.values() for t in ts]
    return [found[i % len(found)] for i in range(n)]


async def rate(call: Callable[[int], Awaitable[None]], batch: int, seconds: float) -> float:
    """Items/s of `call(i)` (the i-th batch) repeated for `seconds`, one after the other."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        await call(done // batch)
        done += batch
    return done / (time.perf_counter() - start)


async def main(args: argparse.Namespace) -> None:
    from acg2vec_server.backends.inprocess import InProcessBackend
    from acg2vec_server.domain.models import Models

    models_dir = models_or_dev(args.models)
    items: list = texts(4096) if args.kind == "text" else bench_images()
    batches = [int(b) for b in args.batches.split(",")]

    def chunk(i: int, batch: int) -> list:
        start = (i * batch) % len(items)
        return [items[(start + j) % len(items)] for j in range(batch)]

    backend = InProcessBackend(models_dir, threads=2)
    domain = Models(backend, "tagger", args.image_model, args.text_model, "deepix")
    embed = domain.embed_texts if args.kind == "text" else domain.embed_images
    ratios = []
    with tempfile.TemporaryDirectory(prefix="acg2vec-features-") as tmp:
        server = embedded_server(
            Path(tmp), models_dir, max_batch_size=max(batches), text_model=args.text_model,
            image_feature_model=args.image_model, access_log="false", milvus_index_type="FLAT",
        )  # fmt: skip
        await server.start(service=f"acg2vec.v1.{'Text' if args.kind == 'text' else 'Image'}FeatureService")
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        try:
            async with grpc.aio.insecure_channel(server.target, options=options) as channel:
                if args.kind == "text":
                    stub = text_feature_pb2_grpc.TextFeatureServiceStub(channel)

                    async def remote(xs: list) -> None:
                        if len(xs) == 1:
                            await stub.ExtractTextFeature(text_feature_pb2.ExtractTextFeatureRequest(text=xs[0]))
                        else:
                            request = text_feature_pb2.BatchExtractTextFeaturesRequest(texts=xs)
                            await stub.BatchExtractTextFeatures(request)
                else:
                    istub = image_feature_pb2_grpc.ImageFeatureServiceStub(channel)

                    async def remote(xs: list) -> None:
                        if len(xs) == 1:
                            await istub.ExtractImageFeature(image_feature_pb2.ExtractImageFeatureRequest(image=xs[0]))
                        else:
                            request = image_feature_pb2.BatchExtractImageFeaturesRequest(images=xs)
                            await istub.BatchExtractImageFeatures(request)

                for batch in batches:
                    await embed(chunk(0, batch))  # warm-up: loading, tracing, the tokenizer
                    await remote(chunk(0, batch))

                    async def bare(b: int = batch) -> float:
                        return await rate(lambda i: embed(chunk(i, b)), b, args.seconds)

                    async def service(b: int = batch) -> float:
                        return await rate(lambda i: remote(chunk(i, b)), b, args.seconds)

                    ratio = Ratio(f"{args.kind} features, batch {batch}", GOALS.get(batch, 0.95))
                    ratios.append(await interleaved(ratio, args.rounds, bare, service))
                    if args.profile:  # after the ratio's rounds, so that sampling does not slow them
                        args.profile.mkdir(parents=True, exist_ok=True)
                        out = args.profile / f"{args.kind}-features-batch{batch}.txt"
                        with profiled(server.process.pid, out, args.native):
                            await service()
            rss = server.rss_mib()
        finally:
            server.stop()
            await backend.close()
    unit = "texts/s" if args.kind == "text" else "images/s"
    for ratio in ratios:
        print(ratio.line(unit))
    print(f"server RSS after the run: {rss:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("text", "image"), required=True)
    parser.add_argument("--models", type=Path, default=None, help="model repository (default: development models)")
    parser.add_argument("--text-model", default="acgvoc2vec")
    parser.add_argument("--image-model", default="illust2vec")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--rounds", type=int, default=4, help="bare/service round pairs per batch size")
    parser.add_argument("--seconds", type=float, default=8, help="length of each round")
    parser.add_argument("--profile", type=Path, default=None, help="folder for py-spy profiles of the server")
    parser.add_argument("--native", action="store_true", help="profiles with native (C/C++) frames")
    asyncio.run(main(parser.parse_args()))
