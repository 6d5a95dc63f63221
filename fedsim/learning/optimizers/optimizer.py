"""Functional optimizers: `initialize(specs) -> state`, `next(state, weights, gradients)`.

No variables: the state is a dict of tensors that travels with the server (or client) state,
so an optimizer can live inside a pure, serializable computation. The update rules follow
Keras 3's own optimizers exactly, and tests check them against Keras on the same gradients.
The learning rate may be a float or a schedule `fn(step) -> rate` of the step count.

Example::

    optimizer = fedsim.learning.optimizers.build_adam(learning_rate=0.01)
    state = optimizer.initialize([tf.TensorSpec([3])])
    state, weights = optimizer.next(state, [w], [g])
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import tensorflow as tf

__all__ = ["Optimizer", "LearningRate"]

LearningRate = Union[float, Callable[[tf.Tensor], Any]]


def _zeros_like_specs(specs: Sequence[Any], value: float = 0.0) -> tuple:
    # Tuples, not lists: tf.data (a client's training loop state) reads a list as one tensor.
    return tuple(tf.fill(tf.TensorShape(spec.shape), tf.constant(value, spec.dtype)) for spec in tf.nest.flatten(specs))


class Optimizer:
    """An init/next pair; subclasses give `_slots` (names and initial values) and `_update`.

    TFF's functional optimizer: its state is a dict of tensors, so it can live in a process state.

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule`.
    """

    def __init__(self, learning_rate: LearningRate):
        if not callable(learning_rate) and learning_rate < 0:
            raise ValueError(f"learning_rate must be non-negative, got {learning_rate}")
        self.learning_rate = learning_rate

    def _slots(self) -> dict:
        return {}

    def initialize(self, specs: Sequence[Any]) -> dict:
        """The optimizer's first state for weights of `specs`.

        Args:
            specs: one `tf.TensorSpec` (or tensor) per weight.

        Returns:
            A dict: the step count and, per slot kind, one tensor per weight.
        """
        state = {"step": tf.constant(0, tf.int64)}
        for name, initial in self._slots().items():
            state[name] = _zeros_like_specs(specs, initial)
        return state

    def _rate(self, step: tf.Tensor) -> tf.Tensor:
        rate = self.learning_rate(step) if callable(self.learning_rate) else self.learning_rate
        return tf.cast(rate, tf.float32)

    def next(self, state: dict, weights: Sequence[Any], gradients: Sequence[Any]) -> tuple:
        """`(new_state, new_weights)`, the new weights in the structure `weights` came in (as TFF's).

        Args:
            state: the optimizer's state.
            weights: the weights, a sequence of tensors.
            gradients: their gradients, in the same order.

        Returns:
            `(new_state, new_weights)`.
        """
        structure_of_weights = weights
        weights, gradients = list(tf.nest.flatten(weights)), list(tf.nest.flatten(gradients))
        if len(weights) != len(gradients):
            raise ValueError(f"{len(weights)} weights but {len(gradients)} gradients")
        step = state["step"] + 1
        rate = self._rate(state["step"])
        new_state = {"step": step}
        new_weights = []
        slot_names = list(self._slots())
        per_weight_slots = [[state[name][i] for name in slot_names] for i in range(len(weights))]
        updated_slots = {name: [] for name in slot_names}
        for weight, gradient, slots in zip(weights, gradients, per_weight_slots):
            gradient = tf.cast(gradient, weight.dtype)
            new_weight, new_slots = self._update(weight, gradient, slots, tf.cast(rate, weight.dtype), step)
            new_weights.append(new_weight)
            for name, value in zip(slot_names, new_slots):
                updated_slots[name].append(value)
        new_state.update({name: tuple(values) for name, values in updated_slots.items()})
        return new_state, tf.nest.pack_sequence_as(structure_of_weights, new_weights)

    def apply(self, state: dict, variables: Sequence[Any], gradients: Sequence[Any]) -> dict:
        """`next` on variables in place: reads them, updates, assigns; returns the new state.

        Args:
            state: the optimizer's state.
            variables: `tf.Variable`s.
            gradients: their gradients.

        Returns:
            The new state.
        """
        new_state, new_weights = self.next(state, [tf.convert_to_tensor(v) for v in variables], gradients)
        for variable, value in zip(variables, new_weights):
            variable.assign(value)
        return new_state

    def _update(self, weight, gradient, slots, rate, step):
        raise NotImplementedError
