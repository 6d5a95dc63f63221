"""`weights_type_from_model`: the `ModelWeights` type of a model (TFF's name)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from fedsim.core import types as ft
from fedsim.learning.models.functional import FunctionalModel
from fedsim.learning.models.model_weights import ModelWeights
from fedsim.learning.models.variable_model import VariableModel

__all__ = ["weights_type_from_model"]


def _tensor_type(value: Any) -> ft.TensorType:
    return ft.TensorType(tf.as_dtype(value.dtype), tuple(value.shape))


def weights_type_from_model(model: Any) -> ft.StructType:
    """The `ModelWeights` type of a model, or of the model a no-argument `model_fn` builds (TFF's name).

    A function is called in a throwaway graph, so its variables leave nothing behind.

    Args:
        model: a `VariableModel`, or a no-argument function building one.

    Returns:
        The `StructType` of `ModelWeights(trainable, non_trainable)`.

    Raises:
        TypeError: if `model` is neither.

    Example::

        model_weights_type = fedsim.learning.models.weights_type_from_model(model_fn)
    """
    if isinstance(model, VariableModel):
        return ft.to_type(ModelWeights([_tensor_type(v) for v in model.trainable_variables],
                                       [_tensor_type(v) for v in model.non_trainable_variables]))
    if isinstance(model, FunctionalModel):
        return ft.to_type(ModelWeights(*[[_tensor_type(w) for w in weights] for weights in model.initial_weights]))
    if not callable(model):
        raise TypeError(f"weights_type_from_model needs a VariableModel or a function building one, got {model!r}")
    with tf.Graph().as_default():
        return weights_type_from_model(model())
