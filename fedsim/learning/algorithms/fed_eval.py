"""Federated evaluation: the metrics of given model weights on the clients' data."""

from __future__ import annotations

import collections
from typing import Callable

from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.federated_tracing import FederatedComputation, federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.tensorflow_computation import tf_computation
from fedsim.learning.algorithms.fed_avg import _finalize_metrics
from fedsim.learning.algorithms.model_info import inspect_model_fn
from fedsim.learning.models import VariableModel

__all__ = ["build_federated_evaluation"]


def build_federated_evaluation(model_fn: Callable[[], VariableModel]) -> FederatedComputation:
    """`(model_weights@SERVER, datasets@CLIENTS) -> metrics@SERVER`: metrics summed, then finalized.

    Example::

        evaluate = fedsim.learning.algorithms.build_federated_evaluation(model_fn)
        metrics = evaluate(process.get_model_weights(state), test_datasets)
        metrics["eval"]["loss"]
    """
    info = inspect_model_fn(model_fn)

    @tf_computation(info.weights_type, ft.SequenceType(info.batch_type))
    def client_eval(weights, dataset):
        model = model_fn()
        weights.assign_weights_to(model)
        for batch in dataset:
            model.forward_pass(batch, training=False)
        return model.report_local_unfinalized_metrics()

    @tf_computation(info.metrics_type)
    def finalize(summed):
        return collections.OrderedDict(eval=_finalize_metrics(model_fn, summed))

    @federated_computation(ft.FederatedType(info.weights_type, SERVER), ft.FederatedType(ft.SequenceType(info.batch_type), CLIENTS))
    def evaluate(model_weights, client_data):
        unfinalized = intrinsics.federated_map(client_eval, (intrinsics.federated_broadcast(model_weights), client_data))
        return intrinsics.federated_map(finalize, intrinsics.federated_sum(unfinalized))

    return evaluate
