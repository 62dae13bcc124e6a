"""Runs a Keras image model over many encoded images with the default models' serving preprocessing (decode,
composite on white, bilinear resize, normalise: `image.serving`), decoding in parallel with tf.data.

Used to cache frozen-backbone features for training the default heads and for the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from acg2vec_models.image.serving import preprocess_image
from acg2vec_models.preprocessing import ImagePreprocessing
from acg2vec_models.progress import ON_TERMINAL_ONLY

Source = bytes | str | Path


def dataset(sources: Sequence[Source], prep: ImagePreprocessing, batch_size: int) -> tf.data.Dataset:
    """Batches of preprocessed images; each source is encoded bytes or a file path."""
    if all(isinstance(s, bytes) for s in sources):
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(sources), dtype=tf.string))
    else:
        paths = [str(s) for s in sources]
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, dtype=tf.string)).map(tf.io.read_file)
    ds = ds.map(lambda b: preprocess_image(b, [prep])[0], num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(2)


def extract(
    model: Callable[[tf.Tensor], dict[str, tf.Tensor] | tf.Tensor],
    sources: Sequence[Source],
    prep: ImagePreprocessing,
    batch_size: int = 32,
    desc: str = "features",
) -> dict[str, np.ndarray]:
    """Applies `model` (normalised batch -> tensor or dict of tensors) to every source, in order."""
    signature = [tf.TensorSpec((None, prep.size, prep.size, 3), tf.float32)]
    run = tf.function(model, input_signature=signature)  # one trace, whatever the last batch's size
    chunks: dict[str, list[np.ndarray]] = {}
    with tqdm(total=len(sources), desc=desc, unit="img", mininterval=2.0, disable=ON_TERMINAL_ONLY) as bar:
        for batch in dataset(sources, prep, batch_size):
            out = run(batch)
            for name, value in (out if isinstance(out, dict) else {"output": out}).items():
                chunks.setdefault(name, []).append(np.asarray(value))
            bar.update(int(batch.shape[0]))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}
