"""Federated evaluation: the metrics of given model weights on the clients' data."""

from __future__ import annotations

import collections
from typing import Callable, Optional

from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.federated_tracing import FederatedComputation
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import tf_computation
from fedsim.learning.algorithms.parts import build_metrics_aggregation
from fedsim.learning.algorithms.model_info import inspect_model_fn, make_model
from fedsim.learning.models import ModelWeights, VariableModel
from fedsim.learning.templates import LearningAlgorithmState, LearningProcess, LearningProcessOutput

__all__ = ["build_fed_eval", "build_federated_evaluation"]


def build_federated_evaluation(model_fn: Callable[[], VariableModel], metrics_aggregator: Optional[Callable] = None) -> FederatedComputation:
    """`(model_weights@SERVER, datasets@CLIENTS) -> metrics@SERVER`: metrics summed, then finalized.

    Example::

        evaluate = fedsim.learning.algorithms.build_federated_evaluation(model_fn)
        metrics = evaluate(process.get_model_weights(state), test_datasets)
        metrics["eval"]["loss"]
    """
    info = inspect_model_fn(model_fn)

    @tf_computation(info.weights_type, ft.SequenceType(info.batch_type))
    def client_eval(weights, dataset):
        model = make_model(model_fn)
        weights.assign_weights_to(model)
        for batch in dataset:
            model.forward_pass(batch, training=False)
        return model.report_local_unfinalized_metrics()

    metrics_aggregation = build_metrics_aggregation(model_fn, info.metrics_type, metrics_aggregator)

    @federated_computation(ft.FederatedType(info.weights_type, SERVER), ft.FederatedType(ft.SequenceType(info.batch_type), CLIENTS))
    def evaluate(model_weights, client_data):
        unfinalized = intrinsics.federated_map(client_eval, (intrinsics.federated_broadcast(model_weights), client_data))
        return intrinsics.federated_zip({"eval": metrics_aggregation(unfinalized)})

    return evaluate


def build_fed_eval(model_fn: Callable[[], VariableModel]) -> LearningProcess:
    """Federated evaluation as a `LearningProcess`: set the weights to evaluate, then `next`.

    `next(state, datasets)` leaves the state as it is and reports the metrics under
    `client_work/eval/current_round_metrics`, as TFF's `build_fed_eval` does.

    Example::

        evaluation = fedsim.learning.algorithms.build_fed_eval(model_fn)
        state = evaluation.set_model_weights(evaluation.initialize(), trained_weights)
        metrics = evaluation.next(state, test_datasets).metrics
    """
    evaluate = build_federated_evaluation(model_fn)

    @tf_computation
    def initial_state():
        return LearningAlgorithmState(ModelWeights.from_model(model_fn()), (), (), (), ())

    state_type = initial_state.type_signature.result

    @tf_computation(evaluate.type_signature.result.member)
    def arrange(metrics):
        return collections.OrderedDict(
            distributor=(),
            client_work=collections.OrderedDict(eval=collections.OrderedDict(current_round_metrics=metrics["eval"])),
            aggregator=(),
            finalizer=(),
        )

    @federated_computation
    def initialize():
        return intrinsics.federated_eval(initial_state, SERVER)

    @federated_computation(ft.FederatedType(state_type, SERVER), evaluate.type_signature.parameter[1])
    def next_fn(state, client_data):
        metrics = evaluate(state.global_model_weights, client_data)
        return LearningProcessOutput(state=state, metrics=intrinsics.federated_map(arrange, metrics))

    return LearningProcess(initialize, next_fn)
