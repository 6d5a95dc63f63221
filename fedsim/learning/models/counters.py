"""fedsim's own per-client counters: the example-weighted loss, `num_examples`, `num_batches`.

Plain variables rather than Keras metric objects: Keras metrics cost about 2 ms per batch in a
graph, these a few ops. Unfinalized they are sums, like Keras' own `Mean` and `Sum` variables,
so the server sums them across clients and finalizes once. Every model wrapper uses them; a
user's metric of the same name (TFF's tutorials name a Keras cross-entropy metric `loss`)
replaces the counter in the report, as in TFF, where the user's metrics are the only ones.
"""

from __future__ import annotations

import collections

import tensorflow as tf

__all__ = ["ExampleCounters"]


class ExampleCounters:
    """The three counters as variables, created inside the computation that uses them."""

    def __init__(self):
        self.loss_sum = tf.Variable(0.0, trainable=False, name="loss_sum")
        self.loss_weight = tf.Variable(0.0, trainable=False, name="loss_weight")
        self.num_examples = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="num_examples")
        self.num_batches = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="num_batches")

    @property
    def variables(self) -> list:
        return [self.loss_sum, self.loss_weight, self.num_examples, self.num_batches]

    def update(self, loss: tf.Tensor, num_examples: tf.Tensor) -> None:
        examples = tf.cast(num_examples, tf.float32)
        self.loss_sum.assign_add(tf.cast(loss, tf.float32) * examples)
        self.loss_weight.assign_add(examples)
        self.num_examples.assign_add(tf.cast(num_examples, tf.int64))
        self.num_batches.assign_add(tf.constant(1, tf.int64))

    def report(self) -> dict:
        return collections.OrderedDict(
            loss=[tf.convert_to_tensor(self.loss_sum), tf.convert_to_tensor(self.loss_weight)],
            num_examples=[tf.convert_to_tensor(self.num_examples)],
            num_batches=[tf.convert_to_tensor(self.num_batches)],
        )

    @staticmethod
    def finalizers() -> dict:
        return collections.OrderedDict(
            loss=lambda values: tf.math.divide_no_nan(values[0], values[1]),
            num_examples=lambda values: values[0],
            num_batches=lambda values: values[0],
        )

    def reset(self) -> None:
        for variable in self.variables:
            variable.assign(tf.zeros_like(variable))
