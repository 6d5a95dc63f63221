"""What the algorithms need to know about a `model_fn`, read once in a scratch graph."""

from __future__ import annotations

from typing import Any, Callable

import attrs
import tensorflow as tf

from fedsim.core import types as ft
from fedsim.learning.models import FunctionalModel, VariableModel, model_from_functional, weights_type_from_model

__all__ = ["ModelInfo", "as_model_fn", "inspect_model_fn", "make_model"]


def as_model_fn(model_fn: Any) -> Callable[[], VariableModel]:
    """The `model_fn` an algorithm builds from: TFF's algorithms also take a `FunctionalModel`."""
    if isinstance(model_fn, FunctionalModel):
        functional_model = model_fn
        return lambda: model_from_functional(functional_model)
    return model_fn


def make_model(model_fn: Callable[[], VariableModel]) -> VariableModel:
    """`model_fn()`, called as plain Python inside a traced computation (autograph does not
    convert fedsim's modules, so building the model is not converted either)."""
    return model_fn()




@attrs.frozen
class ModelInfo:
    weights_type: ft.StructType
    batch_type: ft.Type
    metrics_type: ft.StructType


def inspect_model_fn(model_fn: Callable[[], VariableModel]) -> ModelInfo:
    """Builds the model once in a throwaway graph to learn its weight, batch and metric types."""
    if not callable(model_fn):
        raise TypeError(f"model_fn must be a no-argument callable returning a VariableModel, got {model_fn!r}")
    with tf.Graph().as_default():
        model = model_fn()
        if not isinstance(model, VariableModel):
            raise TypeError(
                f"model_fn must return a fedsim VariableModel (for example from_keras_model(...)), got "
                f"{type(model).__name__}; build the Keras model inside model_fn and wrap it"
            )
        weights_type = weights_type_from_model(model)
        batch_type = ft.to_type(model.input_spec)
        metrics = model.report_local_unfinalized_metrics()
        metrics_type = ft.to_type(
            {name: [ft.TensorType(t.dtype, t.shape) for t in values] for name, values in metrics.items()}
        )
    return ModelInfo(weights_type, batch_type, metrics_type)
