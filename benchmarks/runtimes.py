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


def runners(name: str, model, repository: Path, jpegs: list[bytes], folder: Path) -> dict[str, Callable]:
    """runtime -> (batch -> a call running one batch), for every runtime that is installed."""
    import tensorflow as tf

    from acg2vec_models import repository as repo

    out: dict[str, Callable] = {}
    version = repo.latest_version(repository, name)
    if version is not None and jpegs:
        serve = tf.saved_model.load(str(repository / name / str(version))).signatures["serving_default"]

        def saved_model(batch: int) -> Callable[[], object]:
            data = tf.constant([jpegs[i % len(jpegs)] for i in range(batch)])
            return lambda: serve(image_bytes=data)

        out["TF SavedModel (JPEG bytes in)"] = saved_model
    specs = [tf.TensorSpec((None, *i.shape[1:]), tf.float32, name=f"input{k}") for k, i in enumerate(model.inputs)]
    fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False), input_signature=specs)

    def tensorflow(batch: int) -> Callable[[], object]:
        xs = [tf.constant(x) for x in inputs_for(model, batch)]
        return lambda: fn(*xs)

    out["TensorFlow"] = tensorflow
    try:
        import onnxruntime as ort
        import tf2onnx
    except ImportError as e:
        print(f"skipping ONNX Runtime and OpenVINO for {name}: {e.name} is not installed")
        return out
    onnx_path = folder / f"{name}.onnx"
    tf2onnx.convert.from_function(fn, input_signature=specs, opset=17, output_path=str(onnx_path))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def onnxruntime(batch: int) -> Callable[[], object]:
        feed = onnx_feed(session.get_inputs(), inputs_for(model, batch))
        return lambda: session.run(None, feed)

    out["ONNX Runtime"] = onnxruntime
    try:
        import openvino as ov
    except ImportError:
        print("skipping OpenVINO: not installed")
        return out
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)

    def openvino(batch: int) -> Callable[[], object]:
        feed = onnx_feed(session.get_inputs(), inputs_for(model, batch))
        request = compiled.create_infer_request()
        return lambda: request.infer(feed)

    out["OpenVINO"] = openvino
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--min-images", type=int, default=32, help="images timed per round (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the runtimes, in rotating order")
    args = parser.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    batches = [int(b) for b in args.batches.split(",")]
    jpegs = [p.read_bytes() for p in sorted(SHARED_IMAGES.glob("*.jpg"))]
    table: dict[tuple[str, str], dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in networks(args.cache_dir).items():
            runtimes = runners(name, model, args.repository, jpegs, Path(tmp))
            for batch in batches:
                calls = {runtime: make(batch) for runtime, make in runtimes.items()}
                rates: dict[str, list[float]] = {runtime: [] for runtime in calls}
                order = list(calls)
                for r in range(args.rounds):  # every runtime once per round, the order rotated: drift hits all alike
                    for runtime in order[r % len(order) :] + order[: r % len(order)]:
                        rates[runtime].append(rate(calls[runtime], batch, args.min_images))
                for runtime, values in rates.items():
                    table.setdefault((name, runtime), {})[batch] = float(np.median(values))
                    row = {
                        "model": name,
                        "runtime": runtime,
                        "batch": batch,
                        "images/s (median)": round(np.median(values), 1),
                    }
                    print(json.dumps(row | {"rounds": [round(v, 1) for v in values]}), flush=True)
    print("\n| model | runtime | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("| --- | --- |" + " ---: |" * len(batches))
    for (name, runtime), by_batch in table.items():
        print(f"| {name} | {runtime} | " + " | ".join(f"{by_batch[b]:.1f}" for b in batches) + " |")


if __name__ == "__main__":
    main()
