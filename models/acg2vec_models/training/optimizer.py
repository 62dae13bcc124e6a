"""Adam on TensorFlow's fused ResourceApplyAdam kernel: one op per variable.

Keras 3's Adam builds some thirty graph ops per variable; for a ~900-layer DeepDanbooru that makes the train step
take minutes to trace and optimise. This one keeps the same update (Kingma & Ba, epsilon outside the square root)
with a handful of ops in all, and its state is plain tf.Variables that a tf.train.Checkpoint saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf


class FusedAdam(tf.Module):
    def __init__(
        self,
        variables: Sequence[Any],
        learning_rate: float,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.variables_ = [getattr(v, "value", v) for v in variables]  # Keras 3 variables wrap a tf.Variable
        self.learning_rate = tf.Variable(learning_rate, dtype=tf.float32, trainable=False)
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables_]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables_]
        self._betas = (beta_1, beta_2, epsilon)

    def apply(self, gradients: Sequence[Any]) -> None:
        """One update of every variable that has a gradient (call inside a tf.function)."""
        beta_1, beta_2, epsilon = self._betas
        self.iterations.assign_add(1)
        t = tf.cast(self.iterations, tf.float32)
        b1, b2 = tf.pow(beta_1, t), tf.pow(beta_2, t)
        for var, m, v, grad in zip(self.variables_, self.m, self.v, gradients, strict=True):
            if grad is None:
                continue
            tf.raw_ops.ResourceApplyAdam(
                var=var.handle, m=m.handle, v=v.handle, beta1_power=b1, beta2_power=b2, lr=self.learning_rate,
                beta1=beta_1, beta2=beta_2, epsilon=epsilon, grad=tf.convert_to_tensor(grad),
            )  # fmt: skip
