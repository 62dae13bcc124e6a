"""Text model speed: texts/s in-process and through the service, at batch 1 and 64 (prints numbers; not a test).

in-process: the installed SavedModel through InProcessBackend (tokenising included, as the server does it);
service: BatchExtractTextFeatures over gRPC against a real server on this machine (in-process backend,
embedded stores); torch: the sentence-transformers model in PyTorch, for reference. Texts are held-out
bangumi-data titles (zh / ja / en mixed).

    .venv/bin/python benchmarks/text_speed.py --repository var/models

The service-vs-in-process ratios of issue 16 (separate server process, alternating rounds in one run) come from
benchmarks/features_speed.py --kind text; this script keeps the torch reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from acg2vec_testing.paths import ROOT


def titles(cache_dir: Path, n: int) -> list[str]:
    from acg2vec_models.text.defaults import pairs_dataset

    texts = [t for a in pairs_dataset(cache_dir).held_out() for ts in a.titles.values() for t in ts]
    return [texts[i % len(texts)] for i in range(n)]


def rate(run, texts: list[str], batch: int, min_texts: int) -> float:
    run(texts[:batch])  # warm-up (tracing, allocation, tokenizer fetch)
    calls = max(1, min_texts // batch)
    start = time.perf_counter()
    for i in range(calls):
        offset = (i * batch) % (len(texts) - batch)
        run(texts[offset : offset + batch])
    return calls * batch / (time.perf_counter() - start)


async def in_process(root: Path, model: str, texts: list[str], batches: list[int], min_texts: int) -> None:
    from acg2vec_server.backends.inprocess import InProcessBackend
    from acg2vec_server.domain.models import Models

    backend = InProcessBackend(root)
    models = Models(backend, "tagger", "illust2vec", model, "deepix")
    try:
        for batch in batches:
            await models.embed_texts(texts[:batch])  # warm-up (loading, tracing, tokenizer fetch)
            calls = max(1, min_texts // batch)
            started = time.perf_counter()
            for i in range(calls):
                offset = (i * batch) % (len(texts) - batch)
                await models.embed_texts(texts[offset : offset + batch])
            per_s = calls * batch / (time.perf_counter() - started)
            print(json.dumps({"path": "in-process", "model": model, "batch": batch, "texts/s": round(per_s, 1)}))
    finally:
        await backend.close()


async def through_service(root: Path, model: str, texts: list[str], batches: list[int], min_texts: int) -> None:
    import grpc

    from acg2vec.v1 import text_feature_pb2, text_feature_pb2_grpc
    from acg2vec_server.app import Application
    from acg2vec_server.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            listen="127.0.0.1:0", metrics_port=0, data_dir=Path(tmp), model_repository=root, text_model=model,
            access_log=False, milvus_index_type="FLAT", max_batch_size=max(batches), auth="none",
        )  # fmt: skip
        app = Application(settings)
        await app.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                stub = text_feature_pb2_grpc.TextFeatureServiceStub(channel)

                async def call(chunk: list[str]) -> None:
                    await stub.BatchExtractTextFeatures(text_feature_pb2.BatchExtractTextFeaturesRequest(texts=chunk))

                for batch in batches:
                    await call(texts[:batch])
                    calls = max(1, min_texts // batch)
                    started = time.perf_counter()
                    for i in range(calls):
                        offset = (i * batch) % (len(texts) - batch)
                        await call(texts[offset : offset + batch])
                    per_s = calls * batch / (time.perf_counter() - started)
                    print(json.dumps({"path": "service", "model": model, "batch": batch, "texts/s": round(per_s, 1)}))
        finally:
            await app.stop(grace_s=0)


def torch_reference(folder: Path, texts: list[str], batches: list[int], min_texts: int) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    for batch in batches:
        per_s = rate(lambda chunk, b=batch: model.encode(chunk, batch_size=b), texts, batch, min_texts)
        print(json.dumps({"path": "torch (sentence-transformers)", "batch": batch, "texts/s": round(per_s, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--model", default="acgvoc2vec")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "text")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--min-texts", type=int, default=640, help="texts timed per batch size (after a warm-up)")
    parser.add_argument("--torch", type=Path, default=None, help="also time this sentence-transformers folder")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    texts = titles(args.cache_dir, 4096)
    asyncio.run(in_process(args.repository, args.model, texts, batches, args.min_texts))
    asyncio.run(through_service(args.repository, args.model, texts, batches, args.min_texts))
    if args.torch:
        torch_reference(args.torch, texts, batches, args.min_texts)


if __name__ == "__main__":
    main()
