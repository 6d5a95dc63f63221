"""A Keras 3 optimizer as fedsim's functional optimizer, for where state must travel as values.

TFF 0.86 tutorials pass `server_optimizer_fn=lambda: tf.keras.optimizers.SGD(1.0)`. The server's
optimizer state is part of the server state (it crosses rounds, and the wire), so it cannot live
in Keras variables; this reads the Keras optimizer's configuration and builds the functional
optimizer with the same update rule (the builders follow Keras 3's rules and are tested against
Keras). Options with no functional counterpart are refused by name rather than ignored.

Example::

    optimizer = from_keras_optimizer(keras.optimizers.SGD(learning_rate=1.0, momentum=0.9))
"""

from __future__ import annotations

from typing import Any

import keras

from fedsim.learning.optimizers import builders
from fedsim.learning.optimizers.optimizer import Optimizer

__all__ = ["from_keras_optimizer"]

# Options that change the update rule and that the functional builders do not implement
# (each is off when None, False or 0).
_UNSUPPORTED = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema", "nesterov", "amsgrad",
                "centered", "gradient_accumulation_steps", "loss_scale_factor")


def _learning_rate(config: dict) -> Any:
    rate = config["learning_rate"]
    if isinstance(rate, dict):  # a serialized LearningRateSchedule: a callable of the step
        return keras.optimizers.schedules.deserialize(rate)
    return float(rate)


def from_keras_optimizer(optimizer: keras.optimizers.Optimizer) -> Optimizer:
    """The functional optimizer with `optimizer`'s update rule and hyperparameters.

    Supports Keras' `SGD` (with momentum), `Adam`, `Adagrad` and `RMSprop` (no momentum), with a
    float learning rate or a `LearningRateSchedule`.

    Args:
        optimizer: a Keras 3 optimizer.

    Returns:
        The equivalent functional `Optimizer`.

    Raises:
        TypeError: if `optimizer` is not a Keras optimizer.
        ValueError: if it or one of its options has no functional counterpart, naming it.

    Example:
        >>> server_optimizer = fedsim.learning.optimizers.from_keras_optimizer(keras.optimizers.Adam(0.01))
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"expected a Keras optimizer, got {optimizer!r}")
    config = optimizer.get_config()
    name = type(optimizer).__name__
    for option in _UNSUPPORTED:
        if config.get(option) not in (None, 0):  # False == 0.0 == 0
            raise ValueError(
                f"Keras {name}({option}={config[option]!r}) has no functional counterpart in fedsim; "
                f"use a fedsim.learning.optimizers.build_* optimizer, or drop {option}"
            )
    rate = _learning_rate(config)
    if isinstance(optimizer, keras.optimizers.SGD):
        return builders.build_sgdm(rate, momentum=float(config.get("momentum", 0.0)))
    if isinstance(optimizer, keras.optimizers.Adam):
        return builders.build_adam(rate, float(config["beta_1"]), float(config["beta_2"]), float(config["epsilon"]))
    if isinstance(optimizer, keras.optimizers.Adagrad):
        return builders.build_adagrad(rate, float(config["initial_accumulator_value"]), float(config["epsilon"]))
    if isinstance(optimizer, keras.optimizers.RMSprop):
        if config.get("momentum"):
            raise ValueError(f"Keras RMSprop(momentum={config['momentum']}) has no functional counterpart in fedsim")
        return builders.build_rmsprop(rate, float(config["rho"]), float(config["epsilon"]))
    raise ValueError(
        f"fedsim cannot turn a Keras {name} into a functional optimizer (SGD, Adam, Adagrad and RMSprop are "
        f"supported); pass a fedsim.learning.optimizers.build_* optimizer instead"
    )
