"""DP-SGD (Abadi et al. 2016) as a client optimizer: record-level differential privacy inside a silo.

Silo-level DP protects whether a silo took part; with tens of silos it costs a large epsilon.
DP-SGD protects each *record* of a silo instead: every step clips each example's gradient to
L2 norm `l2_norm_clip`, sums them, adds Gaussian noise of stddev `noise_multiplier *
l2_norm_clip` (from the client's own entropy) and divides by the batch size, then takes an SGD
step. The client loop of FedAvg asks the optimizer for per-example gradients
(`per_example_gradients`), computed with `tf.vectorized_map` over the batch (one vectorized
backward pass, not a loop over examples).

Accounting (`dp_sgd_epsilon`): each step is a Gaussian mechanism on a batch, counted as
Poisson sampling at rate `batch_size / examples` (TF Privacy's convention for shuffled batches);
`rounds * epochs * ceil(examples / batch_size)` steps compose, with dp-accounting's PLD accountant.

Example::

    process = fedsim.learning.build_weighted_fed_avg(
        model_fn, lambda: fedsim.learning.optimizers.build_dp_sgd(0.1, l2_norm_clip=1.0, noise_multiplier=1.1))
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import tensorflow as tf

from fedsim.learning.optimizers.builders import _SGDM
from fedsim.learning.optimizers.optimizer import LearningRate

__all__ = ["DpSgd", "build_dp_sgd", "dp_sgd_epsilon"]


class DpSgd(_SGDM):
    """SGD on clipped, noised per-example gradients (see the module docstring).

    Args:
        learning_rate: a float or a schedule.
        l2_norm_clip: each example's gradient is clipped to this L2 norm (> 0).
        noise_multiplier: the noise's stddev over `l2_norm_clip` (>= 0).
        momentum: SGD momentum.
    """

    per_example_gradients = True

    def __init__(self, learning_rate: LearningRate, l2_norm_clip: float, noise_multiplier: float, momentum: float = 0.0):
        super().__init__(learning_rate, momentum)
        if not (l2_norm_clip > 0 and math.isfinite(l2_norm_clip)):
            raise ValueError(f"build_dp_sgd: l2_norm_clip must be positive and finite, got {l2_norm_clip!r}")
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"build_dp_sgd: noise_multiplier must be >= 0 and finite, got {noise_multiplier!r}")
        self.l2_norm_clip, self.noise_multiplier = float(l2_norm_clip), float(noise_multiplier)

    def privatize(self, per_example: Sequence[tf.Tensor]) -> list:
        """The batch's private gradient from per-example gradients (leading dimension: examples).

        Args:
            per_example: one tensor per variable, `[examples, *variable shape]`.

        Returns:
            One tensor per variable: (sum of clipped gradients + noise) / examples.
        """
        squares = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1) for g in per_example])
        factors = tf.minimum(1.0, self.l2_norm_clip / tf.maximum(tf.sqrt(squares), 1e-12))
        count = tf.cast(tf.shape(per_example[0])[0], per_example[0].dtype)
        stddev = self.noise_multiplier * self.l2_norm_clip
        private = []
        for gradient in per_example:
            shaped = tf.reshape(factors, [-1] + [1] * (gradient.shape.rank - 1))
            total = tf.reduce_sum(gradient * tf.cast(shaped, gradient.dtype), axis=0)
            noise = tf.raw_ops.RandomStandardNormal(shape=tf.shape(total), dtype=total.dtype, seed=0, seed2=0)  # the client's entropy
            private.append((total + stddev * noise) / count)
        return private


def build_dp_sgd(learning_rate: LearningRate, l2_norm_clip: float, noise_multiplier: float, momentum: float = 0.0) -> DpSgd:
    """DP-SGD as a client optimizer: record-level DP for each client's examples.

    Args:
        learning_rate: a float or a schedule.
        l2_norm_clip: each example's gradient is clipped to this L2 norm (> 0).
        noise_multiplier: the noise's stddev over `l2_norm_clip` (>= 0).
        momentum: SGD momentum.

    Returns:
        A `DpSgd` optimizer (functional, like `build_sgdm`'s).

    Raises:
        ValueError: an argument is out of range.

    Example:
        >>> build_weighted_fed_avg(model_fn, lambda: build_dp_sgd(0.1, l2_norm_clip=1.0, noise_multiplier=1.1))
    """
    return DpSgd(learning_rate, l2_norm_clip, noise_multiplier, momentum)


def dp_sgd_epsilon(noise_multiplier: float, batch_size: int, examples: int, epochs_per_round: int, rounds: int,
                   delta: float) -> float:
    """Record-level epsilon of one client's DP-SGD over a run (dp-accounting's PLD accountant).

    Args:
        noise_multiplier: the optimizer's noise multiplier (> 0).
        batch_size: examples per batch.
        examples: the client's examples (>= batch_size).
        epochs_per_round: local epochs per round.
        rounds: rounds the client trained in.
        delta: delta, in (0, 1).

    Returns:
        Epsilon at `delta`.

    Raises:
        ValueError: an argument is out of range.

    Example:
        >>> dp_sgd_epsilon(1.1, 32, 6000, 1, 50, 1e-5)
    """
    if not (noise_multiplier > 0 and 1 <= batch_size <= examples and epochs_per_round >= 1 and rounds >= 1 and 0 < delta < 1):
        raise ValueError(f"dp_sgd_epsilon: arguments out of range: z={noise_multiplier}, batch={batch_size}, "
                         f"examples={examples}, epochs={epochs_per_round}, rounds={rounds}, delta={delta}")
    import dp_accounting

    steps = rounds * epochs_per_round * math.ceil(examples / batch_size)
    event = dp_accounting.PoissonSampledDpEvent(batch_size / examples, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))


def per_example_gradients(model: Any, batch: Any, variables: list) -> list:
    """Each example's gradient of `model.batch_loss` (one vectorized pass over the batch).

    Args:
        model: a model with `batch_loss(batch, training)` (fedsim's Keras model has it).
        batch: the batch (a structure of tensors with the examples first).
        variables: the trainable variables.

    Returns:
        One tensor per variable, `[examples, *variable shape]`.

    Raises:
        TypeError: the model cannot compute a loss without updating its metrics.
    """
    if not hasattr(model, "batch_loss"):
        raise TypeError(f"DP-SGD needs the model's loss on one example without updating its metrics: "
                        f"{type(model).__name__} has no batch_loss(batch, training); use from_keras_model")

    def one(example):
        single = tf.nest.map_structure(lambda t: tf.expand_dims(t, 0), example)
        with tf.GradientTape() as tape:
            loss = model.batch_loss(single, training=True)
        return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(tape.gradient(loss, variables), variables)]

    return tf.vectorized_map(one, batch)
