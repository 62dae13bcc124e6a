"""Indexing throughput (images/s) end to end vs the bare models on the same images (prints numbers; not a test).

- bare: the SavedModels that indexing runs (tagger, illust2vec, and for the text space the joint model's image
  side when it is installed, else the text model on each image's tag text: the server's choice), called
  in-process in batches, nothing else; images/s = images / time.
- end to end: `acg2vec index` (the CLI, a separate process) streams the same images, as a manifest, into a
  fresh `acg2vec serve` (embedded Milvus Lite and Redis-protocol server, appendfsync always) with the same
  model repository: decoding checks, tagging, both embeddings, both stores, the gRPC stream. images/s = images /
  wall time of the CLI (the server is already up and warm).

Bare passes and end-to-end passes (each with new ids, so that nothing is skipped as unchanged) alternate in one
run (ABBA), so that a busy machine's drift hits both alike; the ratio is the mean end-to-end rate over the mean
bare rate. Goal (issue 16): >= 0.95. Images: the first --n openclipart PNGs of a fixed shuffle (fetched by
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

from _common import ACG2VEC, Ratio, interleaved, profiled, server_process

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


class Bare:
    """The models that indexing runs, in this process, one pass over the images at a time."""

    def __init__(self, repository: Path, batch: int):
        from acg2vec_server.backends.inprocess import InProcessBackend
        from acg2vec_server.domain.models import Models
        from acg2vec_server.domain.tagging import Tagger

        self.backend = InProcessBackend(repository)
        self.models = Models(self.backend, "tagger", "illust2vec", "acgvoc2vec", "deepix")
        self.tagger = Tagger(self.models, 0.5, 64)
        self.batch = batch

    async def prepare(self) -> str:
        """Chooses the text space's model as a fresh server does (no live collection yet)."""
        return await self.models.choose_text_space(None)

    async def one_pass(self, data: list[bytes]) -> float:
        from acg2vec_server.domain.illustrations.indexing import tag_text
        from acg2vec_server.domain.types import IllustrationMetadata, TagOptions

        start = time.perf_counter()
        for i in range(0, len(data), self.batch):
            chunk = data[i : i + self.batch]
            tags = await self.tagger.tag(chunk, TagOptions())
            await self.models.embed_images(chunk)
            await self.models.embed_for_text_space(chunk, [tag_text(t.tags, IllustrationMetadata()) for t in tags])
        return len(data) / (time.perf_counter() - start)


class EndToEnd:
    """`acg2vec index` (a process of its own) streaming the images into a running `acg2vec serve`."""

    def __init__(self, folder: Path, paths: list[Path], target: str, window: int):
        self.folder, self.paths, self.target, self.window = folder, paths, target, window
        self.passes = 0
        self.summary = ""

    def manifest(self, prefix: str, paths: list[Path]) -> Path:
        path = self.folder / f"{prefix}.jsonl"
        path.write_text(
            "".join(json.dumps({"id": f"{prefix}-{i}", "image": str(p)}) + "\n" for i, p in enumerate(paths))
        )
        return path

    async def one_pass(self, paths: list[Path] | None = None) -> float:
        paths = paths if paths is not None else self.paths
        self.passes += 1
        manifest = self.manifest(f"pass{self.passes}", paths)  # new ids: nothing is skipped as unchanged
        cli = [ACG2VEC, "index", "--target", self.target, "--no-journal", "--no-progress", "--window", str(self.window)]
        start = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *cli, str(manifest), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await process.communicate()
        elapsed = time.perf_counter() - start
        self.summary = out.decode().strip().splitlines()[0] if out else err.decode()[-500:]
        return len(paths) / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--images", type=Path, default=None, help="a folder of images instead of openclipart")
    parser.add_argument("--max-bytes", type=int, default=2_000_000, help="skip larger openclipart files")
    parser.add_argument("--batch", type=int, default=32, help="bare batch size = the server's max_batch_size")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="bare/end-to-end pass pairs")
    parser.add_argument("--profile", type=Path, default=None, help="folder for a py-spy profile of the server")
    parser.add_argument("--native", action="store_true", help="the profile with native (C/C++) frames")
    args = parser.parse_args()
    if args.images:
        paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[: args.n]
    else:
        paths = openclipart_images(args.n, args.max_bytes)
    data = [p.read_bytes() for p in paths]
    bare = Bare(args.repository, args.batch)
    print(json.dumps({"text_space": await bare.prepare()}))
    await bare.one_pass(data[: args.batch])  # warm-up: load the models, trace
    ratio = Ratio(f"indexing {len(paths)} images, end to end vs bare models", 0.95)
    with tempfile.TemporaryDirectory(prefix="acg2vec-bench-") as tmp:
        folder = Path(tmp)
        server = server_process(folder / "data", model_repository=args.repository, max_batch_size=args.batch)
        try:
            await server.start(timeout_s=1800)
            e2e = EndToEnd(folder, paths, server.target, args.window)
            await e2e.one_pass(paths[: args.batch])  # warm-up
            await interleaved(ratio, args.rounds, lambda: bare.one_pass(data), e2e.one_pass)
            if args.profile:  # after the rounds, so that sampling does not slow them
                args.profile.mkdir(parents=True, exist_ok=True)
                with profiled(server.process.pid, args.profile / "indexing.txt", args.native):
                    await e2e.one_pass()
            print(json.dumps({"summary": e2e.summary, "server_rss_mib": round(server.rss_mib())}))
        finally:
            server.stop(timeout_s=120)
            shutil.rmtree(folder / "data", ignore_errors=True)
            await bare.backend.close()
    print(ratio.line("images/s"))


if __name__ == "__main__":
    asyncio.run(main())
