"""Speed of a full-size EVA02-Large WD v3 tagger imported through the ONNX route (prints numbers; not a test).

The model is timm's eva02_large_patch14_448 shape (24 blocks, width 1024, 16 heads, SwiGLU, rotary embedding;
tests/support/onnx_sources.py's EVA02 at full size) with random weights -- its speed does not depend on them --,
exported to ONNX in WD v3's interface (NHWC 448 BGR, sigmoid out) and imported with `import_onnx_tagger`.
Measured: images/s through the SavedModel's serving signature in-process on encoded JPEGs (Pillow-exact
preprocessing in the graph included), at batch 1 and 8; with --onnxruntime also onnxruntime on the same ONNX file
and already preprocessed input, for reference. The export and the import are cached in --work.

    nice .venv/bin/python benchmarks/onnx_tagger_speed.py [--work .cache/bench-eva02-large] [--onnxruntime]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
IMAGES = sorted((ROOT.parent / "shared" / "data" / "images").glob("*.jpg"))


def export(work: Path) -> Path:
    import shutil

    import torch

    from acg2vec_models.vocab import WD14_SELECTED_TAGS
    from tests.support.onnx_sources import Eva, NhwcProbabilities, _export, wd_tags

    folder = work / "source"
    if (folder / ".complete").exists():
        return folder
    torch.manual_seed(0)
    model = NhwcProbabilities(Eva(448, 14, len(wd_tags()), depth=24, dim=1024, heads=16)).eval()
    params = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    _export(model, torch.rand(1, 448, 448, 3) * 255, folder / "model.onnx", "input", ["output"])
    shutil.copy(WD14_SELECTED_TAGS, folder / "selected_tags.csv")
    (folder / ".complete").write_text(json.dumps({"parameters": params, "export_s": time.perf_counter() - started}))
    return folder


def imported(work: Path, source: Path) -> Path:
    from acg2vec_models.importers.onnx_tagger import import_onnx_tagger

    repo = work / "repo"
    done = repo / ".complete"
    if done.exists():
        return Path(done.read_text())
    started = time.perf_counter()
    result = import_onnx_tagger(source, repo, name="tagger")
    print(f"import: {time.perf_counter() - started:.0f} s ({result.interface}, {len(result.op_types)} op types)")
    done.write_text(str(result.path))
    return result.path


def rate(call, batch: int, calls: int) -> float:
    call(batch)  # warm-up: tracing, allocation, graph optimisation
    started = time.perf_counter()
    for _ in range(calls):
        call(batch)
    return calls * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench-eva02-large")
    parser.add_argument("--calls", type=int, default=2, help="timed calls per batch size (after one warm-up)")
    parser.add_argument("--onnxruntime", action="store_true")
    args = parser.parse_args()
    source = export(args.work)
    info = json.loads((source / ".complete").read_text())
    print(f"EVA02-Large (WD v3 interface): {info['parameters'] / 1e6:.0f} M parameters, "
          f"{(source / 'model.onnx').stat().st_size / 2**20:.0f} MiB ONNX")  # fmt: skip
    path = imported(args.work, source)
    gc.collect()

    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    data = [IMAGES[i % len(IMAGES)].read_bytes() for i in range(8)]
    rows = {}
    for batch in (1, 8):
        rows[f"SavedModel, encoded JPEGs, batch {batch}"] = rate(
            lambda b: serve(image_bytes=tf.constant(data[:b])), batch, args.calls
        )
    if args.onnxruntime:
        import numpy as np
        import onnxruntime

        from acg2vec_models.preprocessing import preprocess_batch, wd_v3_preprocessing

        session = onnxruntime.InferenceSession(str(source / "model.onnx"), providers=["CPUExecutionProvider"])
        pixels = preprocess_batch(tf.constant(data), wd_v3_preprocessing(448)).numpy().astype(np.float32)
        for batch in (1, 8):
            rows[f"onnxruntime, preprocessed input, batch {batch}"] = rate(
                lambda b: session.run(None, {"input": pixels[:b]}), batch, args.calls
            )
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    for name, value in rows.items():
        print(f"{name}: {value:.3f} images/s")


if __name__ == "__main__":
    main()
