"""The process that learning algorithms return, with TFF's names.

`next(state, client_data)` returns `LearningProcessOutput(state, metrics)`; the state is a
`LearningAlgorithmState` holding the global model weights and each part's own state.
"""

from __future__ import annotations

from typing import Any

import attrs

from fedsim.core import computation as computation_lib
from fedsim.core.containers import register_container
from fedsim.templates import IterativeProcess

__all__ = ["LearningAlgorithmState", "LearningProcess", "LearningProcessOutput"]


@register_container("fedsim.learning.templates.LearningAlgorithmState")
@attrs.frozen
class LearningAlgorithmState:
    """The server state of a learning algorithm: the global model and each part's state."""

    global_model_weights: Any
    distributor: Any
    client_work: Any
    aggregator: Any
    finalizer: Any


@register_container("fedsim.learning.templates.LearningProcessOutput")
@attrs.frozen
class LearningProcessOutput:
    """What `LearningProcess.next` returns: the new `state` and the round's `metrics` (nested dicts)."""
    state: Any
    metrics: Any


class LearningProcess(IterativeProcess):
    """An `IterativeProcess` whose state holds a global model.

    Args:
        initialize_fn: a no-argument computation returning the initial `LearningAlgorithmState` at SERVER.
        next_fn: `(state@SERVER, data@CLIENTS) -> LearningProcessOutput(state, metrics)@SERVER`.

    Raises:
        ProcessTypeError: if the computations' types do not fit a learning process.

    Example::

        process = fedsim.learning.algorithms.build_weighted_fed_avg(model_fn, client_optimizer_fn)
        state = process.initialize()
        for _ in range(10):
            state, metrics = attrs.astuple(process.next(state, client_datasets), recurse=False)
        weights = process.get_model_weights(state)
    """

    def __init__(self, initialize_fn: computation_lib.Computation, next_fn: computation_lib.Computation):
        super().__init__(initialize_fn, next_fn)

    def get_model_weights(self, state: LearningAlgorithmState) -> Any:
        """The global `ModelWeights` held in `state`.

        Args:
            state: a state of this process.

        Returns:
            Its `ModelWeights(trainable, non_trainable)`, as numpy values.
        """
        return state.global_model_weights

    def set_model_weights(self, state: LearningAlgorithmState, model_weights: Any) -> LearningAlgorithmState:
        """A copy of `state` holding `model_weights` (e.g. weights loaded from a Keras model).

        Args:
            state: a state of this process.
            model_weights: `ModelWeights` (or a structure of the same types) to hold.

        Returns:
            The new state; `state` itself is unchanged.

        Raises:
            structure.TypeSignatureMismatchError: if the weights do not fit the model's types.

        Example:
            >>> state = process.set_model_weights(state, ModelWeights.from_model(pretrained_keras_model))
        """
        return attrs.evolve(state, global_model_weights=model_weights)
