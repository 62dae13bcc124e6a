"""Image model speed in-process: images/s through the SavedModels' serving signatures on encoded bytes (decode,
resize and normalise included), at batch 1, 8 and 32 (prints numbers; not a test).

Models: the installed default tagger and illust2vec (--repository), and the full-size DeepDanbooru
resnet_custom_v3 at 512x512 with random weights (its speed does not depend on the weights) behind the same
in-graph preprocessing.

    .venv/bin/python benchmarks/image_speed.py --repository var/models
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from acg2vec_testing.paths import ROOT, SAMPLE_PNG, SHARED_IMAGES

IMAGES = sorted(SHARED_IMAGES.glob("*.jpg")) or [SAMPLE_PNG]


def images_per_second(serve, batch: int, min_images: int) -> float:
    import tensorflow as tf

    data = [IMAGES[i % len(IMAGES)].read_bytes() for i in range(batch)]
    tensor = tf.constant(data)
    serve(image_bytes=tensor)  # warm-up (tracing, allocation)
    calls = max(1, min_images // batch)
    start = time.perf_counter()
    for _ in range(calls):
        serve(image_bytes=tensor)
    return calls * batch / (time.perf_counter() - start)


def resnet_serve():
    """Full-size resnet_custom_v3 tagger (512x512, DeepDanbooru v3 vocabulary size), random weights, behind the
    same in-graph preprocessing as its SavedModel's serving function (not saved: saving ~900 layers takes
    minutes and does not change the speed)."""
    import tensorflow as tf

    from acg2vec_models.export import IMAGE_INPUT
    from acg2vec_models.image.deepdanbooru import ResNetSpec, build_image_models
    from acg2vec_models.preprocessing import ImagePreprocessing, preprocess_batch
    from acg2vec_models.vocab import DEEPDANBOORU_V3, read_tags_txt

    model = build_image_models(ResNetSpec(), num_tags=len(read_tags_txt(DEEPDANBOORU_V3))).tagger
    prep = ImagePreprocessing(size=512)

    @tf.function(input_signature=[IMAGE_INPUT])
    def serve(image_bytes):
        return {"scores": model(preprocess_batch(image_bytes, prep), training=False)}

    return serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--min-images", type=int, default=32, help="images timed per batch size (after a warm-up)")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()

    import tensorflow as tf

    from acg2vec_models import repository as repo

    targets = {}
    for name in ("tagger", "illust2vec"):
        version = repo.latest_version(args.repository, name)
        if version is not None:
            path = args.repository / name / str(version)
            targets[f"{name} v{version}"] = lambda p=path: tf.saved_model.load(str(p)).signatures["serving_default"]
    if not args.skip_resnet:
        targets["resnet_custom_v3 512 (random weights)"] = resnet_serve
    for label, load in targets.items():
        serve = load()
        for batch in (int(b) for b in args.batches.split(",")):
            rate = images_per_second(serve, batch, args.min_images)
            print(json.dumps({"model": label, "batch": batch, "images/s": round(rate, 2)}), flush=True)


if __name__ == "__main__":
    main()
