"""Indexing throughput (images/s) end to end vs the bare models on the same images (prints numbers; not a test).

- bare: the SavedModels that indexing runs (tagger, illust2vec, and the text model on each image's tag text),
  called in-process in batches, nothing else; images/s = images / time.
- end to end: `acg2vec index` (the CLI, a separate process) streams the same images, as a manifest, into a
  fresh `acg2vec serve` (embedded Milvus Lite and Redis-protocol server, appendfsync always) with the same
  model repository: decoding checks, tagging, both embeddings, both stores, the gRPC stream. images/s = images /
  wall time of the CLI (the server is already up and warm).

Goal: end to end >= 80 % of bare. Images: the first --n openclipart PNGs of a fixed shuffle (fetched by
acg2vec_models.datasets.openclipart on a fresh machine), or any folder with --images.

    .venv/bin/python benchmarks/index_throughput.py --repository var/models --n 512
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _common import ACG2VEC, server_process

from acg2vec_testing.paths import ROOT


def openclipart_images(n: int, max_bytes: int) -> list[Path]:
    from acg2vec_models.datasets import openclipart

    manifest = openclipart.fetch(_cache_dir())
    records = [r for r in openclipart.read_manifest(manifest) if Path(r.image).stat().st_size <= max_bytes]
    random.Random(0).shuffle(records)
    return [Path(r.image) for r in records[:n]]


def _cache_dir() -> Path:
    shared = Path("/work/cache/datasets/openclipart")
    return shared if (shared / "manifest.jsonl").exists() else ROOT / ".cache" / "datasets" / "openclipart"


async def bare(repository: Path, images: list[bytes], batch: int) -> float:
    from acg2vec_server.backends.inprocess import InProcessBackend
    from acg2vec_server.domain.illustrations.indexing import tag_text
    from acg2vec_server.domain.models import Models
    from acg2vec_server.domain.tagging import Tagger
    from acg2vec_server.domain.types import IllustrationMetadata, TagOptions

    backend = InProcessBackend(repository)
    models = Models(backend, "tagger", "illust2vec", "acgvoc2vec", "deepix")
    tagger = Tagger(models, 0.5, 64)

    async def one_pass(data: list[bytes]) -> None:
        for i in range(0, len(data), batch):
            chunk = data[i : i + batch]
            tags = await tagger.tag(chunk, TagOptions())
            await models.embed_images(chunk)
            await models.embed_texts([tag_text(t.tags, IllustrationMetadata()) for t in tags])

    await one_pass(images[:batch])  # warm-up: load the models, trace
    start = time.perf_counter()
    await one_pass(images)
    elapsed = time.perf_counter() - start
    await backend.close()
    return len(images) / elapsed


async def end_to_end(repository: Path, paths: list[Path], window: int, batch: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="acg2vec-bench-") as tmp:
        folder = Path(tmp)
        manifest = folder / "manifest.jsonl"
        manifest.write_text("".join(json.dumps({"id": f"img{i}", "image": str(p)}) + "\n" for i, p in enumerate(paths)))
        warm = folder / "warm.jsonl"
        warm.write_text(
            "".join(json.dumps({"id": f"warm{i}", "image": str(p)}) + "\n" for i, p in enumerate(paths[:batch]))
        )
        server = server_process(folder / "data", model_repository=repository, max_batch_size=batch)
        try:
            await server.start(timeout_s=1800)
            cli = [
                ACG2VEC,
                "index",
                "--target",
                server.target,
                "--no-journal",
                "--no-progress",
                "--window",
                str(window),
            ]
            subprocess.run([*cli, str(warm)], check=True, capture_output=True)
            start = time.perf_counter()
            run = subprocess.run([*cli, str(manifest)], capture_output=True, text=True)
            elapsed = time.perf_counter() - start
        finally:
            server.stop(timeout_s=120)
            shutil.rmtree(folder / "data", ignore_errors=True)
    return len(paths) / elapsed, run.stdout.strip().splitlines()[0] if run.stdout else run.stderr[-500:]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--images", type=Path, default=None, help="a folder of images instead of openclipart")
    parser.add_argument("--max-bytes", type=int, default=2_000_000, help="skip larger openclipart files")
    parser.add_argument("--batch", type=int, default=32, help="bare batch size = the server's max_batch_size")
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    if args.images:
        paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[: args.n]
    else:
        paths = openclipart_images(args.n, args.max_bytes)
    data = [p.read_bytes() for p in paths]
    bare_rate = await bare(args.repository, data, args.batch)
    print(json.dumps({"bare_images_per_s": round(bare_rate, 2), "n": len(data), "batch": args.batch}))
    e2e_rate, summary = await end_to_end(args.repository, paths, args.window, args.batch)
    print(json.dumps({"end_to_end_images_per_s": round(e2e_rate, 2), "summary": summary}))
    print(json.dumps({"end_to_end_vs_bare": round(e2e_rate / bare_rate, 3), "goal": 0.8}))


if __name__ == "__main__":
    asyncio.run(main())
