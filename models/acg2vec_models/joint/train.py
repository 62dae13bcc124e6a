"""Trains the joint space's two heads on cached tower outputs (LiT-style: both towers locked).

Image side: the locked Lite0 features of illust2vec's backbone (its head's average pool and the multi-layer GeM
descriptor) -> standardise -> MLP -> joint vector. Text side: the locked acgvoc2vec vector (L2-normalised) ->
linear map -> joint vector. A linear text head keeps the multilingual tower's geometry, so Japanese and Chinese
queries land near their English translations without ever being trained on. Loss: InfoNCE in both directions
with in-batch negatives (other pictures with the very same text are not counted as negatives); each step pairs
every picture with one of its English texts, drawn at random. Seconds
on a CPU for the ~5,500 training pictures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from acg2vec_models.text.retrieval import unit


@dataclass(frozen=True)
class JointSpec:
    dim: int = 512
    image_hidden: int = 2048  # 0: a linear image head
    dropout: float = 0.5
    epochs: int = 40
    batch_size: int = 256
    temperature: float = 0.05
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    seed: int = 0


def image_head(input_dim: int, mean: np.ndarray, std: np.ndarray, spec: JointSpec) -> keras.Model:
    x = keras.Input((input_dim,), name="image_features")
    h = layers.Normalization(mean=mean, variance=np.square(std), name="standardise")(x)
    h = layers.Dropout(spec.dropout, seed=spec.seed)(h)
    if spec.image_hidden:
        h = layers.Dense(spec.image_hidden, activation="gelu", name="hidden")(h)
    return keras.Model(x, layers.Dense(spec.dim, name="project")(h), name="joint_image_head")


def text_head(input_dim: int, spec: JointSpec) -> keras.Model:
    x = keras.Input((input_dim,), name="text_vector")
    return keras.Model(x, layers.Dense(spec.dim, name="project")(x), name="joint_text_head")


def train_heads(
    image_features: np.ndarray, text_vectors: np.ndarray, owners: Sequence[int], spec: JointSpec
) -> tuple[keras.Model, keras.Model]:
    """image_features [P, F] per picture; text_vectors [T, D] (any scale) with owners[t] = its picture's row."""
    keras.utils.set_random_seed(spec.seed)
    owners_np = np.asarray(owners, dtype=np.int64)
    by_picture: list[list[int]] = [[] for _ in range(len(image_features))]
    for t, p in enumerate(owners_np):
        by_picture[p].append(t)
    pictures = np.array([p for p, texts in enumerate(by_picture) if texts], dtype=np.int64)
    mean, std = image_features.mean(axis=0), image_features.std(axis=0) + 1e-6
    image = image_head(image_features.shape[1], mean, std, spec)
    text = text_head(text_vectors.shape[1], spec)
    variables = image.trainable_variables + text.trainable_variables
    optimizer = keras.optimizers.AdamW(spec.learning_rate, weight_decay=spec.weight_decay)
    images_t = tf.constant(image_features, tf.float32)
    texts_t = tf.constant(unit(text_vectors), tf.float32)
    # identical texts of different pictures (collection titles: "Lemon SVG theme" on 400) are not negatives
    _, text_ids = np.unique(np.asarray(text_vectors, np.float32), axis=0, return_inverse=True)
    text_ids_t = tf.constant(np.asarray(text_ids).reshape(-1), tf.int64)

    @tf.function
    def step(picture_index: tf.Tensor, text_index: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            a = tf.math.l2_normalize(image(tf.gather(images_t, picture_index), training=True), axis=-1)
            b = tf.math.l2_normalize(text(tf.gather(texts_t, text_index), training=True), axis=-1)
            logits = tf.matmul(a, b, transpose_b=True) / spec.temperature
            ids = tf.gather(text_ids_t, text_index)
            others = tf.logical_not(tf.eye(tf.size(ids), dtype=tf.bool))
            same = tf.logical_and(tf.equal(ids[:, None], ids[None, :]), others)
            logits = tf.where(same, tf.fill(tf.shape(logits), -1e9), logits)
            labels = tf.range(tf.shape(picture_index)[0])
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                + tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.transpose(logits))
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    rng = np.random.default_rng(spec.seed)
    batch = min(len(pictures), spec.batch_size)
    for _ in range(spec.epochs):
        order = rng.permutation(pictures)
        for start in range(0, len(order) - batch + 1, batch):
            chosen = order[start : start + batch]
            texts = [by_picture[p][rng.integers(len(by_picture[p]))] for p in chosen]
            step(tf.constant(chosen), tf.constant(np.array(texts, dtype=np.int64)))
    return image, text


def embed(head: keras.Model, x: np.ndarray, normalise_input: bool = False) -> np.ndarray:
    return unit(np.asarray(head.predict(unit(x) if normalise_input else x, batch_size=1024, verbose=0)))
