"""Saving the trained global model as a Keras file, and reading weights back from one.

Example::

    path = fedsim.learning.models.save_keras_model(process.get_model_weights(state), build_keras_model(), "global.keras")
    keras_model = keras.models.load_model(path)          # plain Keras from here on
    weights = fedsim.learning.models.load_model_weights(path)
    state = process.set_model_weights(state, weights)    # resume federated training from it
"""

from __future__ import annotations

import os
from typing import Union

import keras
import numpy as np

from fedsim.learning.models.model_weights import ModelWeights, model_variables

__all__ = ["save_keras_model", "load_model_weights"]


def save_keras_model(model_weights: ModelWeights, keras_model: keras.Model, path: Union[str, os.PathLike]) -> str:
    """Writes `model_weights` into `keras_model` (of the same architecture) and saves it to `path`.

    Args:
        model_weights: e.g. `process.get_model_weights(state)`.
        keras_model: a Keras model of the trained architecture.
        path: the file to write; must end in `.keras` (Keras 3's format).

    Returns:
        The path.

    Raises:
        ValueError: if `path` does not end in `.keras`.

    Example:
        >>> save_keras_model(process.get_model_weights(state), build_keras_model(), "model.keras")
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"save_keras_model writes Keras 3's format; the path must end in .keras, got {path!r}")
    model_weights.assign_weights_to(keras_model)
    keras_model.save(path)
    return path


def load_model_weights(path: Union[str, os.PathLike]) -> ModelWeights:
    """The weights of a saved Keras model, as numpy `ModelWeights`.

    Args:
        path: a `.keras` file.

    Returns:
        Its `ModelWeights`, ready for `LearningProcess.set_model_weights`.

    Raises:
        FileNotFoundError: if there is no saved model at `path`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved Keras model at {path!r}")
    keras_model = keras.models.load_model(path, compile=False)
    trainable, non_trainable = model_variables(keras_model)
    return ModelWeights([np.asarray(v) for v in trainable], [np.asarray(v) for v in non_trainable])
