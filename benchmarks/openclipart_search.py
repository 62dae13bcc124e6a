"""The issue's "done when" on the real openclipart set, and text -> illustration quality (prints numbers; not a test).

1. Indexes openclipart PNGs with `acg2vec index` (the CLI, through the gRPC stream) into a fresh server running
   the installed models, and prints the CLI's summary.
2. Reverse image search: for --edits indexed images, an edited copy (crop 90 %, downscale to 60 %, brightness
   +10 %, JPEG q70) is the query; reports R@1 / R@10 (the original first / in the top 10).
3. Text -> illustration (protocol): the images are split with openclipart.split_by_image (seed 0, 20 % held
   out, the split the image models train on, so only held-out images are indexed by default). A keyword is
   evaluated when at least --min-images held-out images carry it (the manifest's SVG keywords; the server never
   sees them: it indexes pixels only and computes its own tags). The query is the keyword as text; the
   relevant set R is the held-out images carrying it; recall@10 = |top10 ∩ R| / min(10, |R|), averaged over
   keywords (macro). The chance level (|R| / N averaged) is printed beside it.

    .venv/bin/python benchmarks/openclipart_search.py --repository var/models            # held-out split
    .venv/bin/python benchmarks/openclipart_search.py --repository var/models --all      # all 8,1xx PNGs
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _common import ACG2VEC, server_process

from acg2vec_testing.paths import ROOT


def edited(data: bytes) -> bytes:
    from PIL import Image, ImageEnhance

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im).convert("RGB")
        w, h = im.size
        im = im.crop((w // 20, h // 20, w - w // 20, h - h // 20))
        im = im.resize((max(1, im.width * 3 // 5), max(1, im.height * 3 // 5)))
        im = ImageEnhance.Brightness(im).enhance(1.1)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=70)
    return out.getvalue()


async def main() -> None:
    from acg2vec_models.datasets import openclipart

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--all", action="store_true", help="index every PNG, not only the held-out split")
    parser.add_argument("--limit", type=int, default=0, help="index at most this many (quick looks)")
    parser.add_argument("--edits", type=int, default=200)
    parser.add_argument("--min-images", type=int, default=5)
    parser.add_argument("--max-bytes", type=int, default=8_000_000, help="skip larger PNGs (a few are huge)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the server's data here (default: temporary)")
    args = parser.parse_args()

    shared = Path("/work/cache/datasets/openclipart")
    manifest_path = openclipart.fetch(shared if (shared / "manifest.jsonl").exists() else None)
    records = openclipart.read_manifest(manifest_path)
    _, held_out = openclipart.split_by_image(records)
    chosen = records if args.all else held_out
    chosen = [r for r in chosen if Path(r.image).stat().st_size <= args.max_bytes]
    if args.limit:
        chosen = chosen[: args.limit]

    with tempfile.TemporaryDirectory(prefix="acg2vec-openclipart-") as tmp:
        folder = args.data_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / "manifest.jsonl"
        openclipart.write_manifest(chosen, manifest)  # the dataset's own manifest format, as the CLI reads it
        server = server_process(folder / "data", model_repository=args.repository)
        try:
            await server.start(timeout_s=1800)
            start = time.perf_counter()
            run = subprocess.run(
                [ACG2VEC, "index", str(manifest), "--target", server.target, "--no-journal",
                 "--summary-json", str(folder / "summary.json")],
                capture_output=True, text=True,
            )  # fmt: skip
            elapsed = time.perf_counter() - start
            print(run.stdout.strip())
            summary = json.loads((folder / "summary.json").read_text())
            rate = round(len(chosen) / elapsed, 2)
            done = summary["indexed"] + summary["unchanged"]
            print(
                json.dumps(
                    {"indexed": done, "index_s": round(elapsed, 1), "images_per_s": rate, "exit": run.returncode}
                )
            )
            stored = [r for r in chosen if r.id not in summary["failed"]]
            await evaluate(server.target, stored, args)
        finally:
            server.stop(timeout_s=120)


async def evaluate(target: str, stored: list, args: argparse.Namespace) -> None:
    import grpc

    from acg2vec.v1 import search_pb2, search_pb2_grpc

    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        # reverse image search with edited copies
        sample = random.Random(1).sample(stored, min(args.edits, len(stored)))
        ranks = []
        for record in sample:
            response = await stub.Search(
                search_pb2.SearchRequest(image=edited(Path(record.image).read_bytes()), top_k=10)
            )
            ids = [h.id for h in response.hits]
            ranks.append(ids.index(record.id) if record.id in ids else 99)
        ranks_a = np.asarray(ranks)
        print(json.dumps({"reverse_search_queries": len(ranks), "R@1": round(float((ranks_a == 0).mean()), 3),
                          "R@10": round(float((ranks_a < 10).mean()), 3)}))  # fmt: skip
        example = sample[0]
        first = await stub.Search(search_pb2.SearchRequest(image=edited(Path(example.image).read_bytes()), top_k=3))
        print(json.dumps({"example_query": f"edited copy of {example.id}", "top3": [h.id for h in first.hits]}))

        # text -> illustration
        holders: dict[str, set[str]] = defaultdict(set)
        for record in stored:
            for tag in record.tags:
                holders[tag].add(record.id)
        keywords = sorted(k for k, ids in holders.items() if len(ids) >= args.min_images)
        recalls, chance = [], []
        for keyword in keywords:
            response = await stub.Search(search_pb2.SearchRequest(text=keyword, top_k=10))
            relevant = holders[keyword]
            hits = {h.id for h in response.hits}
            recalls.append(len(hits & relevant) / min(10, len(relevant)))
            chance.append(len(relevant) / len(stored))
        print(json.dumps({"text_keywords": len(keywords), "text_recall@10": round(float(np.mean(recalls)), 3),
                          "chance_recall@10": round(float(np.mean(chance)), 3), "min_images": args.min_images,
                          "indexed": len(stored)}))  # fmt: skip
        for keyword in [k for k in ("cat", "flower", "car", "tree", "bird") if k in holders][:3]:
            response = await stub.Search(search_pb2.SearchRequest(text=keyword, top_k=5))
            hits = [(h.id, keyword in {t for r in stored if r.id == h.id for t in r.tags}) for h in response.hits]
            print(json.dumps({"text_query": keyword, "top5 (id, carries the keyword)": hits}))


if __name__ == "__main__":
    asyncio.run(main())
