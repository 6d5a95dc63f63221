"""`ModelWeights`: a model's trainable and non-trainable weights, as values."""

from __future__ import annotations

from typing import Any

import attrs

from fedsim.core.containers import register_container

__all__ = ["ModelWeights", "model_variables"]


def model_variables(model: Any) -> tuple:
    """`(trainable, non_trainable)` variables of a `VariableModel` or a Keras model.

    For a Keras 3 model these are its *weights*: the RNG state of `Dropout` and other random
    layers (`seed_generator_state`) is a Keras variable but not a model weight, as in TFF.

    Args:
        model: a `VariableModel` or a `keras.Model`.

    Returns:
        `(trainable, non_trainable)`, two lists of variables.
    """
    if hasattr(model, "trainable_weights") and hasattr(model, "non_trainable_weights"):
        return list(model.trainable_weights), list(model.non_trainable_weights)
    return list(model.trainable_variables), list(model.non_trainable_variables)


@register_container("fedsim.learning.models.ModelWeights")
@attrs.frozen
class ModelWeights:
    """Lists of trainable and non-trainable weights, in the model's variable order."""

    trainable: list = attrs.field(converter=list)
    non_trainable: list = attrs.field(converter=list)

    @classmethod
    def from_model(cls, model: Any) -> "ModelWeights":
        """The weight *variables* of a `VariableModel` or a Keras model, as in TFF: they can be
        `assign`ed (`tf.nest.map_structure(lambda v, t: v.assign(t), weights, new)`), and a
        computation returning them returns their values."""
        trainable, non_trainable = model_variables(model)
        return cls(trainable, non_trainable)

    def assign_weights_to(self, model: Any) -> None:
        """Writes these weights into a `VariableModel` or a Keras model's variables.

        Args:
            model: a `VariableModel` or a `keras.Model` with the same variables.

        Example:
            >>> process.get_model_weights(state).assign_weights_to(keras_model)
        """
        trainable, non_trainable = model_variables(model)
        for variables, values, kind in ((trainable, self.trainable, "trainable"), (non_trainable, self.non_trainable, "non-trainable")):
            if len(variables) != len(values):
                raise ValueError(f"the model has {len(variables)} {kind} variables but {len(values)} weights were given")
            for variable, value in zip(variables, values):
                variable.assign(value)
