"""Models for federated learning: `VariableModel`, `from_keras_model`, `ModelWeights`, Keras files."""

from fedsim.learning.models.functional import (
    FunctionalModel,
    create_functional_metric_fns,
    functional_model_from_keras,
    model_from_functional,
)
from fedsim.learning.models.keras_io import load_model_weights, save_keras_model
from fedsim.learning.models.keras_model import KerasVariableModel, from_keras_model
from fedsim.learning.models.model_weights import ModelWeights, model_variables
from fedsim.learning.models.variable_model import BatchOutput, VariableModel
from fedsim.learning.models.weights_type import weights_type_from_model

__all__ = [
    "BatchOutput",
    "FunctionalModel",
    "create_functional_metric_fns",
    "functional_model_from_keras",
    "model_from_functional",
    "model_variables",
    "KerasVariableModel",
    "ModelWeights",
    "VariableModel",
    "from_keras_model",
    "load_model_weights",
    "save_keras_model",
    "weights_type_from_model",
]
