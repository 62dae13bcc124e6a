"""A long fuzz run over the image decoding path (prints numbers; not a test; tests/test_fuzz.py runs 500 rounds).

Each round takes one of acg2vec_testing.image_fuzz's files (every format and odd mode, animations), damages it at random
(truncation, flipped bytes, headers claiming huge dimensions, junk after a magic number, splices), runs the
domain check (domain/inputs.check_image) on it and, when the check accepts it, the tagger graph (through
domain.inference.Models, as the server does). Only InvalidInput or TooLarge may come out; any other error stops
the run with the seed and the file. RSS is printed every --every rounds: it must level off, not climb.

    .venv/bin/python benchmarks/fuzz_images.py                    # 20,000 rounds or 10 minutes
    .venv/bin/python benchmarks/fuzz_images.py --rounds 100000 --minutes 60 --seed 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import warnings
from collections import Counter
from pathlib import Path

from _common import models_or_dev

from acg2vec_server.backends.inprocess import InProcessBackend
from acg2vec_server.domain.batching import Batcher, BatchPolicy
from acg2vec_server.domain.errors import InvalidInput, TooLarge
from acg2vec_server.domain.inputs import Limits, check_image
from acg2vec_server.domain.models import Models
from acg2vec_server.settings import Settings
from acg2vec_testing.image_fuzz import base_images, mutate


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(args: argparse.Namespace) -> None:
    warnings.simplefilter("ignore")  # Pillow warns about every corrupt TIFF tag it skips
    s = Settings()
    limits = Limits(
        s.max_image_bytes, s.max_image_pixels, s.max_text_chars, s.max_batch_size, s.max_top_k,
        s.downscale_above_pixels,
    )  # fmt: skip
    backend = InProcessBackend(models_or_dev(args.models))
    models = Models(backend, "tagger", "illust2vec", "acgvoc2vec", "deepix", Batcher(backend.predict, BatchPolicy()))
    rng, pool = random.Random(args.seed), base_images()
    outcomes: Counter[str] = Counter()
    start, first = time.monotonic(), None
    try:
        for i in range(1, args.rounds + 1):
            name, data = rng.choice(pool)
            damaged = mutate(data, rng)
            try:
                checked = check_image(damaged, limits)
                await models.run_images(models.tagger, [checked])
                outcomes["accepted and tagged"] += 1
            except InvalidInput:
                outcomes["INVALID_ARGUMENT"] += 1
            except TooLarge:
                outcomes["RESOURCE_EXHAUSTED"] += 1
            except Exception:
                print(f"round {i} (seed {args.seed}, from {name}): unexpected error; the file is {damaged!r:.300}")
                raise
            if i % args.every == 0:
                rss = rss_mib()
                first = first or rss
                elapsed = time.monotonic() - start
                print(f"{i:>7} rounds  {elapsed:6.0f} s  RSS {rss:6.0f} MiB  {dict(outcomes)}", flush=True)
            if time.monotonic() - start > args.minutes * 60:
                break
    finally:
        await models.close()
        await backend.close()
    rss = rss_mib()
    growth = (rss - first) / first * 100 if first else 0.0
    rounds = sum(outcomes.values())
    print(f"done: {rounds} rounds, no unexpected error; RSS {first:.0f} -> {rss:.0f} MiB ({growth:+.1f} %)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None, help="model repository (default: development models)")
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=int, default=1000, help="print RSS every this many rounds")
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
