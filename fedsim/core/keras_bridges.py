"""Keras 2 spellings that TFF code uses, kept working on Keras 3 where a bridge is exact.

TFF's examples were written against Keras 2. Two of their spellings have an exact Keras 3
equivalent, so fedsim bridges them (once, on the first trace of a `tf_computation`, never at
import):

- `optimizer.variables()`: Keras 3 made `variables` a property (a list). The list it returns is
  also callable, returning itself, so both spellings give the same variables.
- a tensor `learning_rate` (e.g. a computation's argument): Keras 3 takes floats, schedules
  and callables; the tensor is passed as the callable returning it, the same value each step.
- `optimizer.apply_gradients(..., name=...)`: Keras 2's name scope argument, accepted and
  ignored (it named ops; it changed nothing they compute).
- `model.reset_states()`: Keras 3 keeps `reset_state()` on stateful layers only. The bridge
  resets every layer of the model that has one, which is what Keras 2's method did.

What has no exact bridge (`keras.optimizers.legacy`, `.numpy()` inside a traced function) is
listed with its replacement in the README's "Coming from TFF".
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading

__all__ = ["install", "CallableList"]

_lock = threading.Lock()
_installed = False


class CallableList(list):
    """A list that may also be called (Keras 2's `optimizer.variables()`), returning itself."""

    def __call__(self) -> "CallableList":
        return self


def _layers(layer):
    for sublayer in getattr(layer, "layers", None) or []:
        yield sublayer
        yield from _layers(sublayer)


def _reset_states(model) -> None:
    """Keras 2's `Model.reset_states()`: reset every stateful layer."""
    for layer in _layers(model):
        reset = getattr(layer, "reset_state", None)
        if callable(reset) and getattr(layer, "stateful", False):
            reset()


def install() -> None:
    """Installs the bridges once (idempotent); only where Keras is in use already (a process
    without Keras, such as the serverless handler, never imports it for this)."""
    global _installed
    if sys.modules.get("keras") is None:
        return
    with _lock:
        if _installed:
            return
        _installed = True
        import keras
        import tensorflow as tf

        owner = next((cls for cls in keras.optimizers.Optimizer.__mro__ if isinstance(cls.__dict__.get("variables"), property)), None)
        if owner is not None:
            getter = owner.__dict__["variables"].fget
            setattr(owner, "variables", property(lambda self: CallableList(getter(self)), doc=owner.__dict__["variables"].__doc__))
        owner = next((cls for cls in keras.optimizers.Optimizer.__mro__ if "apply_gradients" in cls.__dict__), None)
        if owner is not None and "name" not in inspect.signature(owner.__dict__["apply_gradients"]).parameters:
            apply_gradients = owner.__dict__["apply_gradients"]

            @functools.wraps(apply_gradients)
            def apply_gradients_with_name(self, grads_and_vars, name=None, **kwargs):
                del name  # Keras 2's name scope for the update ops: no effect on what they compute
                return apply_gradients(self, grads_and_vars, **kwargs)

            setattr(owner, "apply_gradients", apply_gradients_with_name)
        owner = next((cls for cls in keras.optimizers.Optimizer.__mro__
                      if "__init__" in cls.__dict__ and "learning_rate" in inspect.signature(cls.__dict__["__init__"]).parameters
                      and cls.__name__ == "BaseOptimizer"), None)
        if owner is not None:
            initialize = owner.__dict__["__init__"]

            @functools.wraps(initialize)
            def init_with_tensor_rate(self, learning_rate, *args, **kwargs):
                if isinstance(learning_rate, tf.Tensor):  # Keras 2 took a tensor; Keras 3 takes the same as a callable
                    rate = learning_rate
                    learning_rate = lambda: rate  # noqa: E731
                return initialize(self, learning_rate, *args, **kwargs)

            setattr(owner, "__init__", init_with_tensor_rate)
        if not hasattr(keras.Model, "reset_states"):
            keras.Model.reset_states = _reset_states
