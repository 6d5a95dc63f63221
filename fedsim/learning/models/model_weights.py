"""`ModelWeights`: a model's trainable and non-trainable weights, as values."""

from __future__ import annotations

from typing import Any

import attrs
import tensorflow as tf

from fedsim.core.containers import register_container

__all__ = ["ModelWeights"]


def _read(variable: Any) -> tf.Tensor:
    return tf.convert_to_tensor(variable)


@register_container("fedsim.learning.models.ModelWeights")
@attrs.frozen
class ModelWeights:
    """Lists of trainable and non-trainable weights, in the model's variable order."""

    trainable: list = attrs.field(converter=list)
    non_trainable: list = attrs.field(converter=list)

    @classmethod
    def from_model(cls, model: Any) -> "ModelWeights":
        """Reads the weights of a `VariableModel` or a Keras model."""
        return cls([_read(v) for v in model.trainable_variables], [_read(v) for v in model.non_trainable_variables])

    def assign_weights_to(self, model: Any) -> None:
        """Writes these weights into a `VariableModel` or a Keras model's variables."""
        for variables, values, kind in (
            (model.trainable_variables, self.trainable, "trainable"),
            (model.non_trainable_variables, self.non_trainable, "non-trainable"),
        ):
            if len(variables) != len(values):
                raise ValueError(f"the model has {len(variables)} {kind} variables but {len(values)} weights were given")
            for variable, value in zip(variables, values):
                variable.assign(value)
