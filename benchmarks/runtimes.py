"""Yardstick: the default image models' networks under TensorFlow, ONNX Runtime and OpenVINO on the same inputs
(prints numbers; not a test). The product keeps the TF-Serving contract; this says how far TensorFlow is from
the fastest runtime on this CPU.

The networks are the default tagger (EfficientNet-Lite0 + tag head, and nsfwjs MobileNetV2 for the ratings) and
illust2vec (Lite0, multi-layer GeM descriptor of the image and its mirror, projection), built by the same code
as `build-defaults` (acg2vec_models.image.defaults) with the heads' weights random: speed does not depend on them.
All three runtimes get the same preprocessed float batches (decoding and resizing excluded: they are not in
ONNX nor OpenVINO graphs), at two CPU threads. "TF SavedModel" is the installed model through its serving
signature on the encoded JPEGs, decode and resize included: what the service runs. The ONNX file comes from
tf2onnx and serves both ONNX Runtime and OpenVINO.

    .venv/bin/pip install tf2onnx==1.17.0 openvino==2026.4.1    # not project dependencies
    .venv/bin/python benchmarks/runtimes.py --repository var/models
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from acg2vec_testing.paths import ROOT, SHARED_IMAGES

THREADS = 2


def networks(cache: Path) -> dict[str, object]:
    """The default models' Keras networks (preprocessed inputs in), heads with random weights."""
    import keras

    from acg2vec_models.image import nsfwjs
    from acg2vec_models.image.defaults import Recipe, Trained, backbone, illust2vec_model, tagger_model
    from acg2vec_models.image.descriptor import descriptor_model
    from acg2vec_models.image.heads import projection_model

    recipe = Recipe()
    keras.utils.set_random_seed(0)
    lite0 = backbone(recipe)
    nsfw = nsfwjs.load_model("mobilenet_v2", cache / "packages" / "npm")
    dim = int(descriptor_model(lite0, recipe.descriptor).output.shape[-1])
    projection = projection_model(dim, np.zeros(dim), np.ones(dim), recipe.projection.dim)
    pooled = keras.Input((1280,))
    hidden = keras.layers.Dense(recipe.tag_head.hidden, activation="relu")(pooled)
    tag_head = keras.Model(pooled, keras.layers.Dense(104, activation="sigmoid")(hidden))
    trained = Trained(lite0, nsfw, projection, tag_head, [f"tag{i}" for i in range(104)])
    return {"tagger": tagger_model(trained), "illust2vec": illust2vec_model(trained, recipe)}


def inputs_for(model, batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (batch, *i.shape[1:])).astype(np.float32) for i in model.inputs]


def onnx_feed(onnx_inputs: list, xs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The network's inputs by name, plus ones for the constants tf2onnx left as inputs (the Normalization
    layers' mean and variance): their values do not change the speed."""
    feed = {f"input{k}": x for k, x in enumerate(xs)}
    for i in onnx_inputs:
        if i.name not in feed:
            feed[i.name] = np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
    return feed


def rate(run: Callable[[], object], batch: int, min_images: int) -> float:
    run()  # warm-up
    calls = max(2, min_images // batch)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return calls * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--min-images", type=int, default=64, help="images timed per batch size (after a warm-up)")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    from acg2vec_models import repository as repo

    batches = [int(b) for b in args.batches.split(",")]
    jpegs = [p.read_bytes() for p in sorted(SHARED_IMAGES.glob("*.jpg"))]
    results = []

    def report(model: str, runtime: str, batch: int, per_s: float) -> None:
        row = {"model": model, "runtime": runtime, "batch": batch, "images/s": round(per_s, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)

    for name, model in networks(args.cache_dir).items():
        version = repo.latest_version(args.repository, name)
        if version is not None and jpegs:
            serve = tf.saved_model.load(str(args.repository / name / str(version))).signatures["serving_default"]
            for batch in batches:
                data = tf.constant([jpegs[i % len(jpegs)] for i in range(batch)])
                per_s = rate(lambda d=data, f=serve: f(image_bytes=d), batch, args.min_images)
                report(name, "TF SavedModel (JPEG bytes in)", batch, per_s)
        specs = [tf.TensorSpec((None, *i.shape[1:]), tf.float32, name=f"input{k}") for k, i in enumerate(model.inputs)]
        fn = tf.function(lambda *xs, m=model: m(list(xs) if len(xs) > 1 else xs[0], training=False),
                         input_signature=specs)  # fmt: skip
        for batch in batches:
            xs = [tf.constant(x) for x in inputs_for(model, batch)]
            report(name, "TensorFlow", batch, rate(lambda xs=xs, f=fn: f(*xs), batch, args.min_images))
        try:
            import onnxruntime as ort
            import tf2onnx
        except ImportError as e:
            print(f"skipping ONNX Runtime and OpenVINO for {name}: {e.name} is not installed")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / f"{name}.onnx"
            tf2onnx.convert.from_function(fn, input_signature=specs, opset=17, output_path=str(onnx_path))
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            for batch in batches:
                feed = onnx_feed(session.get_inputs(), inputs_for(model, batch))
                per_s = rate(lambda f=feed, s=session: s.run(None, f), batch, args.min_images)
                report(name, "ONNX Runtime", batch, per_s)
            try:
                import openvino as ov
            except ImportError:
                print("skipping OpenVINO: not installed")
                continue
            core = ov.Core()
            compiled = core.compile_model(
                core.read_model(str(onnx_path)),
                "CPU",
                {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"},
            )
            for batch in batches:
                xs = onnx_feed(session.get_inputs(), inputs_for(model, batch))
                request = compiled.create_infer_request()
                report(name, "OpenVINO", batch, rate(lambda r=request, x=xs: r.infer(x), batch, args.min_images))
    print("\n| model | runtime | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("| --- | --- |" + " ---: |" * len(batches))
    keys = sorted(
        {(r["model"], r["runtime"]) for r in results},
        key=lambda k: [(r["model"], r["runtime"]) for r in results].index(k),
    )
    for model_name, runtime in keys:
        cells = [
            next(
                (
                    f"{r['images/s']}"
                    for r in results
                    if (r["model"], r["runtime"], r["batch"]) == (model_name, runtime, b)
                ),
                "",
            )
            for b in batches
        ]
        print(f"| {model_name} | {runtime} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
