"""A small text encoder that tokenises inside the graph: hashed character 1-3-grams, mean-pooled.

CJK text has no spaces, so characters and their n-grams are the tokens; nothing becomes [UNK].
Untrained it already maps texts that share characters to nearby vectors (random projections of
n-gram counts); it is the development stand-in until a trained acgvoc2vec is installed.
"""

from __future__ import annotations

import tensorflow as tf

from acg2vec_models.export import TEXT_INPUT


class HashingTextEncoder(tf.Module):
    def __init__(self, dim: int = 128, buckets: int = 1 << 18, ngrams: tuple[int, ...] = (1, 2, 3), seed: int = 0):
        super().__init__()
        self.buckets = buckets
        self.ngrams = ngrams
        init = tf.random.stateless_normal((buckets, dim), seed=(seed, 1)) / dim**0.5
        self.table = tf.Variable(init, name="ngram_embeddings")

    def tokens(self, text: tf.Tensor) -> tf.RaggedTensor:
        chars = tf.strings.unicode_split(tf.strings.lower(tf.strings.strip(text)), "UTF-8")
        grams = [tf.strings.ngrams(chars, n, separator="") if n > 1 else chars for n in self.ngrams]
        return tf.concat(grams, axis=1)

    @tf.function(input_signature=[TEXT_INPUT])
    def encode(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        ids = tf.strings.to_hash_bucket_fast(self.tokens(text), self.buckets)
        vectors = tf.ragged.map_flat_values(tf.gather, self.table, ids)
        pooled = tf.reduce_mean(vectors, axis=1)
        pooled = tf.where(tf.math.is_nan(pooled), tf.zeros_like(pooled), pooled)
        return {"embedding": pooled}
