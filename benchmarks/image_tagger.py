"""Default tagger quality on the held-out openclipart split (prints numbers; not a test).

Macro mAP over the tags the tagger predicts (those with a held-out positive) and micro-F1 at the service's
default threshold (0.5), for:
  - the installed tagger SavedModel, end to end on the held-out images' bytes (--repository);
  - the same head trained on cached pretrained-backbone features (what build-defaults trains);
  - a tag-frequency baseline (every image gets the train split's tag frequencies);
  - the same head on a randomly initialised Lite0 (features of the first --random-train train images).

    .venv/bin/python benchmarks/image_tagger.py --repository var/models

Uses the backbone features cached by benchmarks/image_retrieval.py when present (else computes them).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from acg2vec_models.image.defaults import Recipe, backbone, load_dataset, preprocessing
from acg2vec_models.metrics import macro_map, micro_f1, multi_hot
from acg2vec_testing.paths import ROOT

THRESHOLD = 0.5


def report(name: str, scores: np.ndarray, labels: np.ndarray) -> None:
    print(json.dumps({"model": name, "macro mAP": round(macro_map(labels, scores), 3),
                      f"micro-F1@{THRESHOLD}": round(micro_f1(labels, scores, THRESHOLD), 3)}))  # fmt: skip


def pooled_features(model, records, batch: int = 32) -> np.ndarray:
    import keras

    from acg2vec_models.image.features import extract

    pool = keras.layers.GlobalAveragePooling2D()
    prep = preprocessing(Recipe())  # the default tagger's (content trimmed)
    return extract(lambda x: pool(model(x, training=False)["head"]), [r.image for r in records], prep, batch)["output"]


def savedmodel_scores(repository: Path, records, vocabulary: list[str], batch: int = 16) -> np.ndarray:
    import tensorflow as tf
    from tqdm import tqdm

    from acg2vec_models import repository as repo
    from acg2vec_models.export import read_labels

    version = repo.latest_version(repository, "tagger")
    loaded = tf.saved_model.load(str(repository / "tagger" / str(version)))
    names, _ = read_labels(loaded)
    columns = [names.index(t) for t in vocabulary]
    serve = loaded.signatures["serving_default"]
    rows = []
    for start in tqdm(range(0, len(records), batch), desc=f"tagger v{version}", unit="batch"):
        images = tf.constant([Path(r.image).read_bytes() for r in records[start : start + batch]])
        rows.append(serve(image_bytes=images)["scores"].numpy()[:, columns])
    return np.concatenate(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=None, help="evaluate this repository's tagger too")
    parser.add_argument("--random-train", type=int, default=2000, help="train images for the random-backbone head")
    parser.add_argument("--compute-features", action="store_true", help="extract features when none are cached")
    parser.add_argument("--linear-too", action="store_true", help="also a linear head on the pretrained features")
    args = parser.parse_args()

    from acg2vec_models.image.heads import train_tag_head

    recipe = Recipe()
    data = load_dataset(ROOT / ".cache", recipe)
    train_y, held_y = multi_hot(data.train, data.vocabulary), multi_hot(data.held_out, data.vocabulary)
    print(f"{len(data.train)} train / {len(data.held_out)} held-out images, {len(data.vocabulary)} tags "
          f"({int((held_y.sum(0) > 0).sum())} with a held-out positive)")  # fmt: skip

    frequency = np.tile(train_y.mean(axis=0), (len(data.held_out), 1))
    report("tag-frequency baseline", frequency, held_y)

    if args.random_train:
        random_lite0 = backbone(recipe, pretrained=False)
        subset = data.train[: args.random_train]
        random_head = train_tag_head(pooled_features(random_lite0, subset), train_y[: len(subset)], recipe.tag_head)
        random_scores = np.asarray(random_head(pooled_features(random_lite0, data.held_out)))
        report(f"random Lite0 + head ({len(subset)} train images)", random_scores, held_y)

    benchmarks = ROOT / ".cache" / "benchmarks" / "image_retrieval"
    variant = f"{recipe.content}-{recipe.view_kind}"  # image_retrieval.py's folders for the default recipe
    cache = next((c for c in (benchmarks / f"lite0-no-mirror-{variant}" / "gallery.npz",
                              benchmarks / f"lite0-{variant}" / "gallery.npz") if c.exists()), None)  # fmt: skip
    gallery = sorted(data.train + data.held_out, key=lambda r: r.id)
    if cache is not None:
        position = {r.id: i for i, r in enumerate(gallery)}
        pooled = np.load(cache)["head_gap"]
        train_x = pooled[[position[r.id] for r in data.train]]
        held_x = pooled[[position[r.id] for r in data.held_out]]
    elif args.compute_features:
        lite0 = backbone(recipe)
        train_x, held_x = pooled_features(lite0, data.train), pooled_features(lite0, data.held_out)
    else:
        print("no cached Lite0 features: run benchmarks/image_retrieval.py first, or pass --compute-features")
        train_x = held_x = None
    if train_x is not None:
        head = train_tag_head(train_x, train_y, recipe.tag_head)
        report("pretrained Lite0 + head (what build-defaults trains)", np.asarray(head(held_x)), held_y)
        for hidden in (0,) if args.linear_too else ():
            linear = train_tag_head(train_x, train_y, replace(recipe.tag_head, hidden=hidden))
            report("pretrained Lite0 + linear head", np.asarray(linear(held_x)), held_y)

    if args.repository:
        scores = savedmodel_scores(args.repository, data.held_out, data.vocabulary)
        report(f"installed tagger ({args.repository})", scores, held_y)


if __name__ == "__main__":
    main()
