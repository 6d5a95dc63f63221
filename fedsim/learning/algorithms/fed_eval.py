"""Federated evaluation: the metrics of given model weights on the clients' data."""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional

import tensorflow as tf

from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.federated_tracing import FederatedComputation
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import tf_computation
from fedsim.learning.algorithms.parts import build_metrics_aggregation
from fedsim.learning.metrics import finalize_metrics
from fedsim.learning.algorithms.model_info import ModelInfo, as_model_fn, inspect_model_fn, make_model
from fedsim.learning.models import ModelWeights, VariableModel
from fedsim.learning.templates import LearningAlgorithmState, LearningProcess, LearningProcessOutput

__all__ = ["build_fed_eval", "build_federated_evaluation"]


def _build_client_eval(model_fn: Callable[[], VariableModel], info: ModelInfo) -> Any:
    """`(weights, dataset) -> unfinalized metrics`: a fresh model evaluated on one client's data."""

    @tf_computation(info.weights_type, ft.SequenceType(info.batch_type))
    def client_eval(weights, dataset):
        model = make_model(model_fn)
        weights.assign_weights_to(model)
        for batch in dataset:
            model.forward_pass(batch, training=False)
        return model.report_local_unfinalized_metrics()

    return client_eval


def build_federated_evaluation(model_fn: Callable[[], VariableModel], metrics_aggregator: Optional[Callable] = None) -> FederatedComputation:
    """`(model_weights@SERVER, datasets@CLIENTS) -> metrics@SERVER`: metrics summed, then finalized.

    TFF's older evaluation API; `build_fed_eval` is the process form.

    Args:
        model_fn: a no-argument function that builds a fresh `VariableModel` (or a `FunctionalModel`).
        metrics_aggregator: replaces the sum-then-finalize aggregation of the model's metrics.

    Returns:
        A federated computation whose result is `{"eval": finalized metrics}`.

    Raises:
        TypeError: if `model_fn` does not build a model.

    Example::

        evaluate = fedsim.learning.algorithms.build_federated_evaluation(model_fn)
        metrics = evaluate(process.get_model_weights(state), test_datasets)
        metrics["eval"]["loss"]
    """
    model_fn = as_model_fn(model_fn)
    info = inspect_model_fn(model_fn)
    client_eval = _build_client_eval(model_fn, info)
    metrics_aggregation = build_metrics_aggregation(model_fn, info.metrics_type, metrics_aggregator)

    @federated_computation(ft.FederatedType(info.weights_type, SERVER), ft.FederatedType(ft.SequenceType(info.batch_type), CLIENTS))
    def evaluate(model_weights, client_data):
        unfinalized = intrinsics.federated_map(client_eval, (intrinsics.federated_broadcast(model_weights), client_data))
        return intrinsics.federated_zip({"eval": metrics_aggregation(unfinalized)})

    return evaluate


def build_fed_eval(model_fn: Callable[[], VariableModel]) -> LearningProcess:
    """Federated evaluation as a `LearningProcess`: set the weights to evaluate, then `next`.

    `next(state, datasets)` leaves the model as it is and reports, as TFF's `build_fed_eval`
    does, `client_work/eval/current_round_metrics` (this round's clients) and
    `client_work/eval/total_rounds_metrics` (every client evaluated since `initialize`: the
    state's `client_work` holds the running sums of the unfinalized metrics).

    Args:
        model_fn: a no-argument function that builds a fresh `VariableModel` (or a `FunctionalModel`).

    Returns:
        A `LearningProcess` whose `next` evaluates and never trains.

    Raises:
        TypeError: if `model_fn` does not build a model.

    Example::

        evaluation = fedsim.learning.algorithms.build_fed_eval(model_fn)
        state = evaluation.set_model_weights(evaluation.initialize(), trained_weights)
        metrics = evaluation.next(state, test_datasets).metrics
    """
    model_fn = as_model_fn(model_fn)
    info = inspect_model_fn(model_fn)
    client_eval = _build_client_eval(model_fn, info)
    with tf.Graph().as_default():
        finalizers = model_fn().metric_finalizers()

    @tf_computation
    def initial_state():
        zeros = collections.OrderedDict(
            (name, [tf.zeros(t.shape, t.dtype) for t in info.metrics_type[name]]) for name in info.metrics_type.names()
        )
        return LearningAlgorithmState(ModelWeights.from_model(model_fn()), (), zeros, (), ())

    state_type = initial_state.type_signature.result

    @tf_computation(info.metrics_type, info.metrics_type)
    def add_and_finalize(total, round_sum):
        new_total = collections.OrderedDict(
            (name, [a + b for a, b in zip(total[name], round_sum[name])]) for name in total
        )
        metrics = collections.OrderedDict(
            distributor=(),
            client_work=collections.OrderedDict(eval=collections.OrderedDict(
                current_round_metrics=finalize_metrics(finalizers, round_sum),
                total_rounds_metrics=finalize_metrics(finalizers, new_total))),
            aggregator=(),
            finalizer=(),
        )
        return new_total, metrics

    @federated_computation
    def initialize():
        return intrinsics.federated_eval(initial_state, SERVER)

    @federated_computation(ft.FederatedType(state_type, SERVER), ft.FederatedType(ft.SequenceType(info.batch_type), CLIENTS))
    def next_fn(state, client_data):
        weights = intrinsics.federated_broadcast(state.global_model_weights)
        round_sum = intrinsics.federated_sum(intrinsics.federated_map(client_eval, (weights, client_data)))
        total, metrics = intrinsics.federated_map(add_and_finalize, (state.client_work, round_sum))
        new_state = intrinsics.federated_zip(LearningAlgorithmState(state.global_model_weights, state.distributor, total, state.aggregator, state.finalizer))
        return LearningProcessOutput(state=new_state, metrics=metrics)

    return LearningProcess(initialize, next_fn)
