"""Text -> illustration on held-out openclipart: the joint image–text space against today's tag-text method
(prints a markdown table; not a test).

Gallery: the held-out pictures of the image models' split (seed 0, 20 %, split by picture). Queries: held-out
titles and descriptions in English, and the hand-translated titles (`benchmarks/data/openclipart_titles_en_ja_zh.jsonl`:
English on the same titles, Japanese, Chinese). Protocol: acg2vec_models/joint/evaluation.py. Both methods run
through the server's domain code (`Models`, `Tagger`) on the in-process backend: "tag text" embeds each
picture's predicted tags as words with acgvoc2vec (what Search(text) did before the joint model), "joint" embeds
the picture with the joint model's image side and the query with its text side. Picture vectors are cached under
the cache folder per model version.

    .venv/bin/python benchmarks/joint_search.py --repository var/models
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from acg2vec_testing.paths import ROOT

TRANSLATIONS = ROOT / "benchmarks" / "data" / "openclipart_titles_en_ja_zh.jsonl"


def _version_key(root: Path, names: list[str]) -> str:
    from acg2vec_models import repository as repo

    h = hashlib.sha256()
    for name in names:
        version = repo.latest_version(root, name)
        graph = (root / name / str(version) / repo.SAVED_MODEL_FILE).read_bytes() if version is not None else b""
        h.update(f"{name}/{version}/".encode() + hashlib.sha256(graph).digest())
    return h.hexdigest()[:16]


async def tag_texts(tagger, images: list[Path], batch: int) -> list[str]:
    """Each picture's tag text as indexing makes it (default tag options)."""
    from acg2vec_server.domain.illustrations.indexing import tag_text
    from acg2vec_server.domain.types import IllustrationMetadata, TagOptions

    out = []
    for start in range(0, len(images), batch):
        tags = await tagger.tag([p.read_bytes() for p in images[start : start + batch]], TagOptions())
        out.extend(tag_text(t.tags, IllustrationMetadata()) for t in tags)
    return out


async def gallery_vectors(models, images: list[Path], texts: list[str], batch: int) -> np.ndarray:
    """The pictures' text-space vectors as indexing makes them (joint image side, or the tag text's vector)."""
    out = []
    for start in range(0, len(images), batch):
        chunk = [p.read_bytes() for p in images[start : start + batch]]
        out.extend(e.values for e in await models.embed_for_text_space(chunk, texts[start : start + batch]))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache")
    parser.add_argument("--translations", type=Path, default=TRANSLATIONS)
    parser.add_argument("--limit", type=int, default=None, help="the first N held-out pictures only (quick looks)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--methods", default="tag text,joint")
    parser.add_argument("--tags-only", action="store_true", help="only tag the pictures (cached), then stop")
    args = parser.parse_args()

    from acg2vec_models.image import defaults as image_defaults
    from acg2vec_models.joint.data import picture_texts
    from acg2vec_models.joint.evaluation import evaluate, read_translations
    from acg2vec_server.backends.inprocess import InProcessBackend
    from acg2vec_server.domain.models import Models
    from acg2vec_server.domain.tagging import Tagger

    cache = args.cache_dir.resolve()
    held_out = image_defaults.load_dataset(cache, image_defaults.Recipe()).held_out[: args.limit]
    texts = picture_texts(held_out, cache / "joint" / "texts.jsonl")
    gallery = [texts[r.id] for r in held_out]
    translations = read_translations(args.translations)
    backend = InProcessBackend(args.repository.resolve())
    rows: dict[str, list] = {}
    for method in [m.strip() for m in args.methods.split(",")]:
        joint = "joint" if method == "joint" else "(no joint model)"
        models = Models(backend, "tagger", "illust2vec", "acgvoc2vec", "deepix", joint=joint)
        if asyncio.run(models.choose_text_space(None)) != models.joint_name and method == "joint":
            raise SystemExit(f"no joint model in {args.repository}: run `acg2vec models build-defaults` first")
        tagger = Tagger(models, 0.5, 64)
        names = ["joint"] if method == "joint" else ["tagger", "acgvoc2vec"]
        key = hashlib.sha256(json.dumps([_version_key(args.repository, names), [r.id for r in held_out]]).encode())
        path = cache / "joint" / f"eval-{method.replace(' ', '-')}-{key.hexdigest()[:16]}.npy"
        started = time.monotonic()
        images = [Path(r.image) for r in held_out]
        if path.exists():
            vectors = np.load(path)
        else:
            texts_of_tags: list[str] = [""] * len(images)
            if method != "joint":
                key_tags = hashlib.sha256(
                    json.dumps([_version_key(args.repository, ["tagger"]), [r.id for r in held_out]]).encode()
                ).hexdigest()[:16]
                tags_path = cache / "joint" / f"eval-tag-texts-{key_tags}.json"
                if not tags_path.exists():
                    tags_path.write_text(json.dumps(asyncio.run(tag_texts(tagger, images, args.batch))))
                texts_of_tags = json.loads(tags_path.read_text())
                if args.tags_only:
                    print(f"tag texts of {len(images)} pictures in {tags_path}")
                    return
            vectors = asyncio.run(gallery_vectors(models, images, texts_of_tags, args.batch))
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, vectors)
        print(f"{method}: {len(vectors)} pictures embedded in {time.monotonic() - started:.0f} s", flush=True)

        def encode(queries: list[str], models=models) -> np.ndarray:
            return np.stack([e.values for e in asyncio.run(models.embed_text_queries(queries))])

        rows[method] = evaluate(gallery, vectors, encode, translations)

    methods = list(rows)
    print(f"\nheld-out gallery: {len(gallery)} pictures (chance R@10 about {10 / len(gallery):.3f})\n")
    print("| queries | n | " + " | ".join(f"{m}: R@1 / R@10 / MRR" for m in methods) + " |")
    print("| --- | ---: |" + " --- |" * len(methods))
    for i, result in enumerate(rows[methods[0]]):
        cells = [
            f"{r.recall_at_1:.3f} / {r.recall_at_10:.3f} / {r.mrr:.3f}"
            for r in (rows[m][i] for m in methods)
        ]
        print(f"| {result.name} | {result.queries} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
