"""illust2vec near-duplicate retrieval on openclipart (prints numbers; not a test).

Gallery: every distinct openclipart picture within the build's pixel limit (6,883). Queries: 500 gallery
pictures (seeded) turned into near duplicates (crop 80-95 % per side, half size, colour shift, mirror, JPEG
q50: `acg2vec_models.image.near_duplicates`). Recall@1/@10 under cosine, for all queries and for those made
from held-out pictures (never seen by the trained projection). For each backbone it prints the steps of the
default recipe: plain average pooling, multi-layer GeM, + mirror averaging, + the contrastive projection that
`build-defaults` trains on the train split (same code, same features).

    .venv/bin/python benchmarks/image_retrieval.py                      # EfficientNet-Lite0 (the default)
    .venv/bin/python benchmarks/image_retrieval.py --backbone nsfwjs    # nsfwjs MobileNetV2

Backbone features are cached under .cache/benchmarks/ (about 15 min per backbone on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from acg2vec_models.image.defaults import Recipe, load_dataset, preprocessing, views
from acg2vec_models.image.near_duplicates import l2_normalise, make_query, ranks_of_targets, recall_at
from acg2vec_testing.paths import ROOT

NUM_QUERIES = 500


def backbone_fn(name: str, mirror: bool):
    """(normalised batch -> {tap_pool[_flip]: pooled}, preprocessing, taps) for a backbone."""
    import tensorflow as tf

    from acg2vec_models.image import efficientnet_lite, nsfwjs

    if name == "lite0":
        model = efficientnet_lite.pretrained_lite0(taps=(4, 10, 14))
        prep, maps = preprocessing(Recipe()), lambda x: model(x, training=False)  # the default's (content trimmed)
    else:
        net = nsfwjs.load_model("mobilenet_v2", ROOT / ".cache" / "packages" / "npm")
        prep, maps = nsfwjs.preprocessing("mobilenet_v2"), lambda x: {"head": net(x, training=False)[1]}

    def gem(x, p=3.0):
        return tf.reduce_mean(tf.maximum(x, 1e-6) ** p, axis=[1, 2]) ** (1 / p)

    def fn(x):
        n = tf.shape(x)[0]
        out = maps(tf.concat([x, x[:, :, ::-1]], 0) if mirror else x)
        res = {}
        for k, v in out.items():
            for pool, pooled in (("gap", tf.reduce_mean(v, axis=[1, 2])), ("gem", gem(tf.nn.relu(v)))):
                res[f"{k}_{pool}"] = pooled[:n]
                if mirror:
                    res[f"{k}_{pool}_flip"] = pooled[n:]
        return res

    return fn, prep


def cached(path: Path, compute):
    if path.exists():
        return dict(np.load(path))
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def descriptor(features: dict[str, np.ndarray], taps: list[str], mirror: bool, pool: str = "gem") -> np.ndarray:
    parts = []
    for tap in taps:
        v = features[f"{tap}_{pool}"]
        parts.append(l2_normalise(v + features[f"{tap}_{pool}_flip"] if mirror else v))
    return np.concatenate(parts, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", choices=("lite0", "nsfwjs"), default="lite0")
    parser.add_argument("--no-projection", action="store_true", help="skip the trained projection (no view features)")
    parser.add_argument("--no-mirror", action="store_true", help="skip the mirrored pass (half the extraction time)")
    args = parser.parse_args()

    from acg2vec_models.image.features import extract
    from acg2vec_models.image.heads import train_projection

    recipe = Recipe()
    data = load_dataset(ROOT / ".cache", recipe)
    gallery = sorted(data.train + data.held_out, key=lambda r: r.id)
    position = {r.id: i for i, r in enumerate(gallery)}
    held = np.array([r.id not in {t.id for t in data.train} for r in gallery])
    targets = np.random.default_rng(1).choice(len(gallery), NUM_QUERIES, replace=False)
    mirror = not args.no_mirror
    variant = args.backbone + ("" if mirror else "-no-mirror") + f"-{recipe.content}-{recipe.view_kind}"
    cache = ROOT / ".cache" / "benchmarks" / "image_retrieval" / variant
    fn, prep = backbone_fn(args.backbone, mirror)
    g = cached(cache / "gallery.npz", lambda: extract(fn, [r.image for r in gallery], prep, 32, "gallery"))

    def make_queries():
        images = [make_query(Path(gallery[i].image).read_bytes(), np.random.default_rng([2, int(i)])) for i in targets]
        return {"targets": targets, **extract(fn, images, prep, 32, "queries")}

    q = cached(cache / "queries.npz", make_queries)
    assert np.array_equal(q["targets"], targets)
    held_q = held[targets]
    print(f"backbone {args.backbone}: gallery {len(gallery)}, queries {len(targets)} ({held_q.sum()} held-out)")

    def report(name: str, gallery_x: np.ndarray, query_x: np.ndarray) -> None:
        r = ranks_of_targets(query_x, gallery_x, targets)
        row = {
            "variant": name,
            "dim": int(gallery_x.shape[1]),
            "R@1": round(recall_at(r, 1), 3),
            "R@10": round(recall_at(r, 10), 3),
            "held-out R@1": round(recall_at(r[held_q], 1), 3),
            "held-out R@10": round(recall_at(r[held_q], 10), 3),
        }
        print(json.dumps(row))

    taps = ["head"] if args.backbone == "nsfwjs" else list(recipe.descriptor.taps)
    report("average pool (head)", descriptor(g, ["head"], False, "gap"), descriptor(q, ["head"], False, "gap"))
    report("GeM (head)", descriptor(g, ["head"], False), descriptor(q, ["head"], False))
    if mirror:
        report("GeM (head) + mirror", descriptor(g, ["head"], True), descriptor(q, ["head"], True))
    if len(taps) > 1:
        report(f"GeM ({'+'.join(taps)})", descriptor(g, taps, False), descriptor(q, taps, False))
        if mirror:
            report(f"GeM ({'+'.join(taps)}) + mirror", descriptor(g, taps, True), descriptor(q, taps, True))
    if args.no_projection:
        return
    train_rows = np.array([position[r.id] for r in data.train])
    v = cached(cache / "views.npz", lambda: extract(fn, views(data.train, recipe), prep, 32, "views"))
    use_mirror = recipe.descriptor.mirror_average
    if use_mirror and not mirror:
        raise SystemExit("the recipe averages with the mirrored image: run without --no-mirror")
    gallery_d = descriptor(g, taps, use_mirror)
    projection = train_projection(gallery_d[train_rows], descriptor(v, taps, use_mirror), recipe.projection)
    project = lambda x: np.asarray(projection(x))  # noqa: E731
    label = "the default illust2vec" if args.backbone == "lite0" else "the default recipe"
    report(
        f"+ projection {recipe.projection.dim} ({label})", project(gallery_d), project(descriptor(q, taps, use_mirror))
    )


if __name__ == "__main__":
    main()
