"""`VariableModel`: the interface the learning algorithms train, as in `tff.learning`.

A model owns variables (trainable, non-trainable, and local ones for metrics), runs a forward
pass on a batch, and reports its metrics *unfinalized* (the raw metric variables), so that
they can be summed across clients and finalized once at the server.
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import attrs

from fedsim.core.containers import register_container

__all__ = ["BatchOutput", "VariableModel"]


@register_container("fedsim.learning.models.BatchOutput")
@attrs.frozen
class BatchOutput:
    """What a forward pass returns: the loss, the predictions and how many examples it saw."""

    loss: Any
    predictions: Any
    num_examples: Any


class VariableModel(abc.ABC):
    """A model for federated training. Built inside a computation by a `model_fn`."""

    @property
    @abc.abstractmethod
    def trainable_variables(self) -> list: ...

    @property
    @abc.abstractmethod
    def non_trainable_variables(self) -> list: ...

    @property
    @abc.abstractmethod
    def local_variables(self) -> list: ...

    @property
    @abc.abstractmethod
    def input_spec(self) -> Any:
        """The `tf.TensorSpec` structure of one batch."""

    @abc.abstractmethod
    def forward_pass(self, batch_input: Any, training: bool = True) -> BatchOutput:
        """Runs the model on one batch, updates its metric variables, and returns the loss.

        Args:
            batch_input: one batch of the client's data, of `input_spec`'s structure.
            training: whether this is a training step (dropout, batch norm).

        Returns:
            `BatchOutput(loss, predictions, num_examples)`.
        """

    @abc.abstractmethod
    def predict_on_batch(self, x: Any, training: bool = True) -> Any:
        """The model's predictions for the inputs `x` of one batch.

        Args:
            x: the batch's inputs (without labels).
            training: whether this is a training step.

        Returns:
            The predictions.
        """

    @abc.abstractmethod
    def report_local_unfinalized_metrics(self) -> dict:
        """Metric name -> list of metric variable values (summable across clients)."""

    @abc.abstractmethod
    def metric_finalizers(self) -> dict[str, Callable[[list], Any]]:
        """Metric name -> function from summed unfinalized values to the metric's result."""

    @abc.abstractmethod
    def reset_metrics(self) -> None:
        """Sets the metric variables back to their initial values (zero counts and sums)."""
