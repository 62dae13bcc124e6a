"""The trained parts of the default image models, on a frozen pretrained backbone's cached features: a projection
trained contrastively for near-duplicate retrieval, a multi-label tag head, and the fixed map from nsfwjs'
classes to rating tags. Each trains in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers

#: nsfwjs class -> rating tag. openclipart has no rating labels, so the rating comes from nsfwjs MobileNetV2:
#: pictures it calls drawings or neutral photos are "general", suggestive ones ("Sexy") "sensitive", and
#: pornographic ones, drawn ("Hentai") or photographed ("Porn"), "explicit". nsfwjs has no class for
#: Danbooru's "questionable" in between, so the tagger has no such output.
RATING_FROM_NSFWJS: dict[str, str] = {
    "Drawing": "rating:general",
    "Neutral": "rating:general",
    "Sexy": "rating:sensitive",
    "Hentai": "rating:explicit",
    "Porn": "rating:explicit",
}
RATING_TAGS: tuple[str, ...] = ("rating:general", "rating:sensitive", "rating:explicit")


def rating_matrix(classes: Sequence[str]) -> np.ndarray:
    """[len(classes), len(RATING_TAGS)] 0/1 matrix: rating probabilities = class probabilities @ matrix."""
    matrix = np.zeros((len(classes), len(RATING_TAGS)), dtype=np.float32)
    for i, name in enumerate(classes):
        matrix[i, RATING_TAGS.index(RATING_FROM_NSFWJS[name])] = 1.0
    return matrix


# ------------------------------------------------------------------------------------------- projection
@dataclass(frozen=True)
class ProjectionSpec:
    dim: int = 512
    epochs: int = 60
    batch_size: int = 512
    temperature: float = 0.1
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def projection_model(input_dim: int, mean: np.ndarray, std: np.ndarray, dim: int) -> keras.Model:
    x = keras.Input((input_dim,), name="descriptor")
    z = layers.Normalization(mean=mean, variance=np.square(std), name="standardise")(x)
    z = layers.Dense(dim, use_bias=False, name="project")(z)
    return keras.Model(x, z, name="projection")


def train_projection(anchors: np.ndarray, positives: np.ndarray, spec: ProjectionSpec) -> keras.Model:
    """A linear map under which each anchor's nearest neighbour among the others' positives is its own (InfoNCE,
    both directions, in-batch negatives): anchors are clean images' descriptors, positives their near duplicates'."""
    keras.utils.set_random_seed(spec.seed)
    both = np.concatenate([anchors, positives])
    mean, std = both.mean(axis=0), both.std(axis=0) + 1e-6
    model = projection_model(anchors.shape[1], mean, std, spec.dim)
    optimizer = keras.optimizers.AdamW(spec.learning_rate, weight_decay=spec.weight_decay)
    anchors_t, positives_t = tf.constant(anchors, tf.float32), tf.constant(positives, tf.float32)

    @tf.function
    def step(index: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            a = tf.math.l2_normalize(model(tf.gather(anchors_t, index), training=True), axis=-1)
            p = tf.math.l2_normalize(model(tf.gather(positives_t, index), training=True), axis=-1)
            logits = tf.matmul(a, p, transpose_b=True) / spec.temperature
            labels = tf.range(tf.shape(index)[0])
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                + tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.transpose(logits))
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(spec.seed)
    n = len(anchors)
    for _ in range(spec.epochs):
        order = rng.permutation(n)
        for start in range(0, n - min(n, spec.batch_size) + 1, spec.batch_size):
            step(tf.constant(order[start : start + spec.batch_size]))
    return model


# --------------------------------------------------------------------------------------------- tag head
@dataclass(frozen=True)
class TagHeadSpec:
    hidden: int = 512
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 1e-3
    l2: float = 1e-4
    dropout: float = 0.2
    seed: int = 0


def train_tag_head(features: np.ndarray, labels: np.ndarray, spec: TagHeadSpec) -> keras.Model:
    """Multi-label logistic head (standardised features -> sigmoid per tag), binary cross-entropy."""
    keras.utils.set_random_seed(spec.seed)
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    x = keras.Input((features.shape[1],), name="features")
    h = layers.Normalization(mean=mean, variance=np.square(std), name="standardise")(x)
    h = layers.Dropout(spec.dropout, seed=spec.seed)(h)
    if spec.hidden:
        h = layers.Dense(spec.hidden, activation="relu", name="hidden")(h)
        h = layers.Dropout(0.5, seed=spec.seed)(h)
    scores = layers.Dense(
        labels.shape[1], activation="sigmoid", kernel_regularizer=keras.regularizers.l2(spec.l2), name="tags"
    )(h)
    model = keras.Model(x, scores, name="tag_head")
    model.compile(keras.optimizers.Adam(spec.learning_rate), "binary_crossentropy")
    model.fit(features, labels, batch_size=spec.batch_size, epochs=spec.epochs, verbose=0, shuffle=True)
    return model
