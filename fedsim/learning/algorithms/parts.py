"""The standard parts that `compose_learning_process` wires together.

- `build_broadcast_distributor`: sends the global weights to the clients.
- `build_model_delta_client_work`: trains locally, yields weight deltas (FedAvg, FedProx).
- `build_gradient_client_work`: yields example-weighted mean gradients (FedSGD).
- `build_weighted_mean_aggregator`: the weighted mean of the clients' updates.
- `build_apply_optimizer_finalizer`: applies the aggregate with a functional optimizer.
"""

from __future__ import annotations

import collections
import inspect
from typing import Any, Callable, Optional

import tensorflow as tf

from fedsim import aggregators
from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import tf_computation
from fedsim.learning import optimizers as optimizers_lib
from fedsim.learning.metrics import sum_then_finalize
from fedsim.learning.models import ModelWeights, VariableModel
from fedsim.learning.templates import ClientResult
from fedsim.templates import MeasuredProcess, MeasuredProcessOutput

__all__ = [
    "aggregator_from_factory",
    "build_apply_optimizer_finalizer",
    "build_broadcast_distributor",
    "build_client_work",
    "build_metrics_aggregation",
    "build_weighted_mean_aggregator",
]


@federated_computation
def _no_state():
    return intrinsics.federated_value((), SERVER)


def build_broadcast_distributor(weights_type: ft.Type) -> MeasuredProcess:
    """`next(state, weights@SERVER)`: the weights at every client; no state, no measurements."""

    @federated_computation(_no_state.type_signature.result, ft.FederatedType(weights_type, SERVER))
    def next_fn(state, weights):
        return MeasuredProcessOutput(state=state, result=intrinsics.federated_broadcast(weights), measurements=intrinsics.federated_value((), SERVER))

    return MeasuredProcess(_no_state, next_fn)


def build_metrics_aggregation(model_fn: Callable[[], VariableModel], metrics_type: ft.Type, metrics_aggregator: Optional[Callable] = None) -> Any:
    """The computation `{unfinalized}@CLIENTS -> metrics@SERVER` for a model's metrics."""
    with tf.Graph().as_default():
        finalizers = model_fn().metric_finalizers()
    aggregate = (metrics_aggregator or sum_then_finalize)(finalizers, metrics_type)
    expected = ft.FederatedType(metrics_type, CLIENTS)
    parameter = getattr(aggregate, "type_signature", None)
    if parameter is None or not ft.is_assignable_from(parameter.parameter, expected):
        raise TypeError(
            f"metrics_aggregator must return a computation taking {expected}, got "
            f"{getattr(aggregate, 'type_signature', aggregate)}"
        )
    return aggregate


def build_client_work(client_update: Any, metrics_aggregation: Any) -> MeasuredProcess:
    """Client work from a tf_computation `(weights, dataset) -> {update, update_weight, metrics}`.

    The result is `ClientResult(update, update_weight)@CLIENTS`; the measurements are the
    clients' metrics, aggregated by `metrics_aggregation`, under `train`.
    """
    weights_type, dataset_type = client_update.type_signature.parameter
    @federated_computation(
        _no_state.type_signature.result,
        ft.FederatedType(weights_type, CLIENTS, all_equal=True),
        ft.FederatedType(dataset_type, CLIENTS),
    )
    def next_fn(state, weights, client_data):
        outputs = intrinsics.federated_map(client_update, (weights, client_data))
        result = intrinsics.federated_zip(ClientResult(update=outputs.update, update_weight=outputs.update_weight))
        measurements = intrinsics.federated_zip({"train": metrics_aggregation(outputs.metrics)})
        return MeasuredProcessOutput(state=state, result=result, measurements=measurements)

    return MeasuredProcess(_no_state, next_fn)


def build_weighted_mean_aggregator(update_type: ft.Type) -> MeasuredProcess:
    """`next(state, update@CLIENTS, weight@CLIENTS)`: the weighted mean at the server."""

    @federated_computation(
        _no_state.type_signature.result,
        ft.FederatedType(update_type, CLIENTS),
        ft.FederatedType(tf.float32, CLIENTS),
    )
    def next_fn(state, update, weight):
        mean = intrinsics.federated_mean(update, weight=weight)
        # TFF's default aggregator is a MeanFactory, whose (empty) measurements have these names.
        measurements = intrinsics.federated_value(collections.OrderedDict(mean_value=(), mean_weight=()), SERVER)
        return MeasuredProcessOutput(state=state, result=mean, measurements=measurements)

    return MeasuredProcess(_no_state, next_fn)


def aggregator_from_factory(factory: Any, update_type: ft.Type) -> MeasuredProcess:
    """An aggregator for `compose_learning_process` from an aggregation factory.

    A weighted factory's `create(value_type, weight_type)` gives a process whose `next` takes
    `(state, value, weight)`; an unweighted factory's `create(value_type)` one that takes
    `(state, value)`, and the clients' weights are then not used.
    """
    create = getattr(factory, "create", None)
    if create is None:
        raise TypeError(f"model_aggregator must be an aggregation factory with a create(...) method, got {factory!r}")
    if isinstance(factory, aggregators.WeightedAggregationFactory):
        weighted = True
    elif isinstance(factory, aggregators.UnweightedAggregationFactory):
        weighted = False
    else:  # duck-typed: the number of required parameters of create
        weighted = len([p for p in inspect.signature(create).parameters.values() if p.default is p.empty]) >= 2
    process = create(update_type, ft.TensorType(tf.float32)) if weighted else create(update_type)
    if not isinstance(process, MeasuredProcess):
        raise TypeError(f"{type(factory).__name__}.create must return a MeasuredProcess, got {type(process).__name__}")
    if weighted:
        return process
    state_type = process.next.type_signature.parameter[0]

    @federated_computation(state_type, ft.FederatedType(update_type, CLIENTS), ft.FederatedType(tf.float32, CLIENTS))
    def next_fn(state, update, weight):
        del weight  # an unweighted aggregator does not use the clients' weights
        return process.next(state, update)

    return MeasuredProcess(process.initialize, next_fn)


def build_apply_optimizer_finalizer(
    optimizer: optimizers_lib.Optimizer, weights_type: ft.StructType, update_type: ft.Type, update_is_gradient: bool
) -> MeasuredProcess:
    """Applies the aggregated update to the trainable weights with a functional optimizer.

    A FedAvg delta is applied as a negative gradient (SGD with rate 1.0 adds it); a FedSGD
    gradient as it is. The optimizer's state is the finalizer's state. As in TFF, an update
    with a NaN or an infinity is not applied (weights and optimizer state stay as they were)
    and the measurement `update_non_finite` is 1.
    """
    trainable_specs = [tf.TensorSpec(t.shape, t.dtype) for t in weights_type[0]]
    sign = 1.0 if update_is_gradient else -1.0

    @tf_computation
    def initial_state():
        return optimizer.initialize(trainable_specs)

    optimizer_state_type = initial_state.type_signature.result

    @tf_computation(optimizer_state_type, weights_type, update_type)
    def apply(optimizer_state, weights, update):
        new_state, trainable = optimizer.next(optimizer_state, weights.trainable, [sign * u for u in update])
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(u)) for u in update])
        keep_if_not_finite = lambda new, old: tf.where(finite, new, old)  # noqa: E731
        new_state = tf.nest.map_structure(keep_if_not_finite, new_state, optimizer_state)
        trainable = [keep_if_not_finite(new, old) for new, old in zip(trainable, weights.trainable)]
        non_finite = collections.OrderedDict(update_non_finite=1 - tf.cast(finite, tf.int32))
        return new_state, ModelWeights(trainable, weights.non_trainable), non_finite

    @federated_computation
    def initialize():
        return intrinsics.federated_eval(initial_state, SERVER)

    @federated_computation(
        ft.FederatedType(optimizer_state_type, SERVER), ft.FederatedType(weights_type, SERVER), ft.FederatedType(update_type, SERVER)
    )
    def next_fn(state, weights, update):
        applied = intrinsics.federated_map(apply, (state, weights, update))
        return MeasuredProcessOutput(state=applied[0], result=applied[1], measurements=applied[2])

    return MeasuredProcess(initialize, next_fn)

