"""Federated Averaging (McMahan et al., 2017) and FedProx (Li et al., 2020) as learning processes.

Each round: the server broadcasts the global weights; each client trains a fresh copy of the
model on its data with the client optimizer and returns its weight delta, a weight (its number
of examples, or 1) and its unfinalized metrics; the server takes the weighted mean of the
deltas, applies it with the server optimizer (the delta as a negative gradient; SGD with rate
1.0 adds it), and finalizes the summed metrics. `next` is one federated computation of
TensorFlow computations, traced once per process.
"""

from __future__ import annotations

import collections
import enum
from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from fedsim.core import types as ft
from fedsim.core.wrappers import tf_computation
from fedsim.learning import optimizers as optimizers_lib
from fedsim.learning.optimizers import dp_sgd
from fedsim.learning.algorithms.model_info import as_model_fn, inspect_model_fn, make_model
from fedsim.learning.models import ModelWeights, VariableModel
from fedsim.learning.algorithms import parts
from fedsim.learning.templates import LearningProcess, compose_learning_process

__all__ = [
    "ClientWeighting",
    "build_fed_sgd",
    "build_unweighted_fed_avg",
    "build_weighted_fed_avg",
    "build_weighted_fed_prox",
]


class ClientWeighting(enum.Enum):
    """How clients' updates are weighted in the server's mean."""

    NUM_EXAMPLES = "num_examples"
    UNIFORM = "uniform"


def _make_optimizer(optimizer_fn: Callable[[], Any], what: str) -> Any:
    optimizer = optimizer_fn() if callable(optimizer_fn) and not isinstance(optimizer_fn, optimizers_lib.Optimizer) else optimizer_fn
    if not isinstance(optimizer, (optimizers_lib.Optimizer, keras.optimizers.Optimizer)):
        raise TypeError(
            f"{what} must be a fedsim optimizer (fedsim.learning.optimizers.build_*) or a function returning "
            f"one or a Keras optimizer, got {optimizer!r}"
        )
    return optimizer


def server_optimizer(optimizer_fn: Any) -> optimizers_lib.Optimizer:
    """The server's functional optimizer from a fedsim optimizer, or a function returning one
    or a Keras optimizer (TFF 0.86's `lambda: tf.keras.optimizers.SGD(1.0)`, converted)."""
    optimizer = _make_optimizer(optimizer_fn, "server_optimizer_fn")
    if isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = optimizers_lib.from_keras_optimizer(optimizer)
    return optimizer


def build_client_update(
    model_fn: Callable[[], VariableModel],
    client_optimizer_fn: Callable[[], Any],
    weights_type: ft.Type,
    batch_type: ft.Type,
    client_weighting: ClientWeighting,
    proximal_strength: float,
):
    """The client's work: train a fresh model from the broadcast weights on the client's data."""

    @tf_computation(weights_type, ft.SequenceType(batch_type))
    def client_update(initial_weights, dataset):
        model = make_model(model_fn)
        initial_weights.assign_weights_to(model)
        variables = model.trainable_variables
        optimizer = _make_optimizer(client_optimizer_fn, "client_optimizer_fn")
        functional = isinstance(optimizer, optimizers_lib.Optimizer)
        if functional:
            optimizer_state = optimizer.initialize([tf.TensorSpec(v.shape, v.dtype) for v in variables])
        else:
            optimizer.build(variables)
            optimizer_state = {}
        num_examples = tf.constant(0, tf.int64)
        private = getattr(optimizer, "per_example_gradients", False)  # DP-SGD: clipped, noised per-example gradients
        for batch in dataset:
            if private:
                output = model.forward_pass(batch, training=True)  # the metrics; the gradients come per example
                gradients = optimizer.privatize(dp_sgd.per_example_gradients(model, batch, variables))
                if proximal_strength:  # data-independent: added after the privatization
                    gradients = [g + proximal_strength * (v - w0) for g, v, w0 in zip(gradients, variables, initial_weights.trainable)]
            else:
                with tf.GradientTape() as tape:
                    output = model.forward_pass(batch, training=True)
                    loss = output.loss
                    if proximal_strength:
                        squared_distance = tf.add_n(
                            [tf.reduce_sum(tf.square(v - w0)) for v, w0 in zip(variables, initial_weights.trainable)]
                        )
                        loss = loss + 0.5 * proximal_strength * squared_distance
                gradients = tape.gradient(loss, variables)
            if functional:
                optimizer_state = optimizer.apply(optimizer_state, variables, gradients)
            else:
                optimizer.apply_gradients(zip(gradients, variables))
            num_examples += tf.cast(output.num_examples, tf.int64)
        delta = [tf.convert_to_tensor(v) - w0 for v, w0 in zip(variables, initial_weights.trainable)]
        if client_weighting is ClientWeighting.NUM_EXAMPLES:
            weight = tf.cast(num_examples, tf.float32)
        else:
            weight = tf.constant(1.0)
        return collections.OrderedDict(update=delta, update_weight=weight, metrics=model.report_local_unfinalized_metrics())

    return client_update


def build_client_gradient(model_fn: Callable[[], VariableModel], weights_type: ft.Type, batch_type: ft.Type, client_weighting: ClientWeighting):
    """FedSGD's client work: the example-weighted mean gradient over the client's batches."""

    @tf_computation(weights_type, ft.SequenceType(batch_type))
    def client_gradient(weights, dataset):
        model = make_model(model_fn)
        weights.assign_weights_to(model)
        variables = model.trainable_variables
        total = tuple(tf.zeros(v.shape, v.dtype) for v in variables)
        num_examples = tf.constant(0.0)
        for batch in dataset:
            with tf.GradientTape() as tape:
                output = model.forward_pass(batch, training=True)
            gradients = tape.gradient(output.loss, variables)
            examples = tf.cast(output.num_examples, tf.float32)
            total = tuple(t + g * examples for t, g in zip(total, gradients))
            num_examples += examples
        gradient = [tf.math.divide_no_nan(t, num_examples) for t in total]
        weight = num_examples if client_weighting is ClientWeighting.NUM_EXAMPLES else tf.constant(1.0)
        return collections.OrderedDict(update=gradient, update_weight=weight, metrics=model.report_local_unfinalized_metrics())

    return client_gradient


def _build_process(
    model_fn: Callable[[], VariableModel],
    client_optimizer_fn: Optional[Callable[[], Any]],
    server_optimizer_fn: Callable[[], Any],
    client_weighting: ClientWeighting,
    proximal_strength: float = 0.0,
    model_distributor: Optional[Any] = None,
    model_aggregator: Optional[Any] = None,
    metrics_aggregator: Optional[Callable] = None,
) -> LearningProcess:
    """FedAvg, FedProx and FedSGD (`client_optimizer_fn=None`) as compositions of parts.

    The defaults are a broadcast, the weighted mean and sum-then-finalize; each can be replaced.
    """
    if not isinstance(client_weighting, ClientWeighting):
        raise TypeError(f"client_weighting must be a ClientWeighting, got {client_weighting!r}")
    if proximal_strength < 0:
        raise ValueError(f"proximal_strength must be non-negative, got {proximal_strength}")
    model_fn = as_model_fn(model_fn)
    info = inspect_model_fn(model_fn)
    optimizer = server_optimizer(server_optimizer_fn)
    if client_optimizer_fn is None:
        client_update = build_client_gradient(model_fn, info.weights_type, info.batch_type, client_weighting)
    else:
        client_update = build_client_update(model_fn, client_optimizer_fn, info.weights_type, info.batch_type, client_weighting, proximal_strength)
    update_type = client_update.type_signature.result["update"]

    @tf_computation
    def initial_weights():
        return ModelWeights.from_model(model_fn())

    distributor = model_distributor if model_distributor is not None else parts.build_broadcast_distributor(info.weights_type)
    if model_aggregator is None:
        aggregator = parts.build_weighted_mean_aggregator(update_type)
    else:
        aggregator = parts.aggregator_from_factory(model_aggregator, update_type)
    metrics_aggregation = parts.build_metrics_aggregation(model_fn, info.metrics_type, metrics_aggregator)
    return compose_learning_process(
        initial_weights,
        distributor,
        parts.build_client_work(client_update, metrics_aggregation),
        aggregator,
        parts.build_apply_optimizer_finalizer(optimizer, info.weights_type, update_type, update_is_gradient=client_optimizer_fn is None),
    )


def _default_server_optimizer() -> optimizers_lib.Optimizer:
    return optimizers_lib.build_sgdm(learning_rate=1.0)


def build_weighted_fed_avg(
    model_fn: Callable[[], VariableModel],
    client_optimizer_fn: Callable[[], Any],
    server_optimizer_fn: Callable[[], Any] = _default_server_optimizer,
    client_weighting: ClientWeighting = ClientWeighting.NUM_EXAMPLES,
    model_distributor: Optional[Any] = None,
    model_aggregator: Optional[Any] = None,
    metrics_aggregator: Optional[Any] = None,
) -> LearningProcess:
    """FedAvg with clients weighted by their number of examples (or uniformly).

    Each round broadcasts the model, trains it on every selected client with the client
    optimizer, averages the model deltas (weighted), and applies the average as a pseudo-gradient
    with the server optimizer.

    Args:
        model_fn: a no-argument function that builds a fresh `fedsim.learning.models.VariableModel`
            (for example `from_keras_model(...)` around a new Keras model), or a
            `FunctionalModel`. It is called inside computations, so it must create new variables.
        client_optimizer_fn: builds the client optimizer: a `fedsim.learning.optimizers`
            optimizer or a Keras optimizer (a new one per client).
        server_optimizer_fn: builds the server optimizer (default: SGD with learning rate 1.0, which
            is plain FedAvg).
        client_weighting: `ClientWeighting.NUM_EXAMPLES` (default) or `ClientWeighting.UNIFORM`.
        model_distributor: a `DistributionProcess` replacing the broadcast.
        model_aggregator: an aggregation factory for the updates (`MeanFactory` by default), for
            example `fedsim.learning.robust_aggregator()` or `secure_aggregator()`.
        metrics_aggregator: replaces the sum-then-finalize aggregation of the model's metrics.

    Returns:
        A `LearningProcess`: `initialize() -> state`, `next(state, client_datasets) ->
        LearningProcessOutput(state, metrics)`, `get_model_weights`, `set_model_weights`.

    Raises:
        TypeError: if `client_weighting` is not a `ClientWeighting` or `model_fn` does not build a model.

    Example::

        process = fedsim.learning.algorithms.build_weighted_fed_avg(
            model_fn, client_optimizer_fn=lambda: fedsim.learning.optimizers.build_sgdm(0.1))
        state = process.initialize()
        output = process.next(state, [client_1_dataset, client_2_dataset])
    """
    return _build_process(
        model_fn, client_optimizer_fn, server_optimizer_fn, client_weighting,
        model_distributor=model_distributor, model_aggregator=model_aggregator, metrics_aggregator=metrics_aggregator,
    )


def build_unweighted_fed_avg(
    model_fn: Callable[[], VariableModel],
    client_optimizer_fn: Callable[[], Any],
    server_optimizer_fn: Callable[[], Any] = _default_server_optimizer,
    model_distributor: Optional[Any] = None,
    model_aggregator: Optional[Any] = None,
    metrics_aggregator: Optional[Any] = None,
) -> LearningProcess:
    """FedAvg with every client's update weighted equally.

    Args:
        model_fn: a no-argument function that builds a fresh `fedsim.learning.models.VariableModel`
            (for example `from_keras_model(...)` around a new Keras model), or a
            `FunctionalModel`. It is called inside computations, so it must create new variables.
        client_optimizer_fn: builds the client optimizer (a new one per client).
        server_optimizer_fn: builds the server optimizer (default: SGD with learning rate 1.0).
        model_distributor: a `DistributionProcess` replacing the broadcast.
        model_aggregator: an unweighted aggregation factory (`UnweightedMeanFactory` by default).
        metrics_aggregator: replaces the sum-then-finalize aggregation of the model's metrics.

    Returns:
        A `LearningProcess` (see `build_weighted_fed_avg`).

    Raises:
        TypeError: if `model_fn` does not build a model.

    Example::

        process = fedsim.learning.algorithms.build_unweighted_fed_avg(
            model_fn, client_optimizer_fn=lambda: tf.keras.optimizers.SGD(0.1))
    """
    return _build_process(
        model_fn, client_optimizer_fn, server_optimizer_fn, ClientWeighting.UNIFORM,
        model_distributor=model_distributor, model_aggregator=model_aggregator, metrics_aggregator=metrics_aggregator,
    )


def build_weighted_fed_prox(
    model_fn: Callable[[], VariableModel],
    client_optimizer_fn: Callable[[], Any],
    proximal_strength: float,
    server_optimizer_fn: Callable[[], Any] = _default_server_optimizer,
    client_weighting: ClientWeighting = ClientWeighting.NUM_EXAMPLES,
) -> LearningProcess:
    """FedProx: FedAvg whose client loss adds `proximal_strength / 2 * ||w - w_global||^2`.

    Args:
        model_fn: a no-argument function that builds a fresh `fedsim.learning.models.VariableModel`
            (for example `from_keras_model(...)` around a new Keras model), or a
            `FunctionalModel`. It is called inside computations, so it must create new variables.
        client_optimizer_fn: builds the client optimizer (a new one per client).
        proximal_strength: the weight of the proximal term (0 is FedAvg).
        server_optimizer_fn: builds the server optimizer (default: SGD with learning rate 1.0).
        client_weighting: `ClientWeighting.NUM_EXAMPLES` (default) or `ClientWeighting.UNIFORM`.

    Returns:
        A `LearningProcess` (see `build_weighted_fed_avg`).

    Raises:
        ValueError: if `proximal_strength` is negative.

    Example::

        process = fedsim.learning.algorithms.build_weighted_fed_prox(
            model_fn, lambda: fedsim.learning.optimizers.build_sgdm(0.1), proximal_strength=0.01)
    """
    return _build_process(model_fn, client_optimizer_fn, server_optimizer_fn, client_weighting, proximal_strength)


def build_fed_sgd(
    model_fn: Callable[[], VariableModel],
    server_optimizer_fn: Callable[[], Any] = lambda: optimizers_lib.build_sgdm(learning_rate=0.1),
    client_weighting: ClientWeighting = ClientWeighting.NUM_EXAMPLES,
) -> LearningProcess:
    """FedSGD: one server step per round on the clients' example-weighted mean gradient.

    With NUM_EXAMPLES weighting a round equals one centralized step on the pooled data's
    gradient (batch gradients weighted by batch size).

    Args:
        model_fn: a no-argument function that builds a fresh `fedsim.learning.models.VariableModel`
            (for example `from_keras_model(...)` around a new Keras model), or a
            `FunctionalModel`. It is called inside computations, so it must create new variables.
        server_optimizer_fn: builds the server optimizer (default: SGD with learning rate 0.1).
        client_weighting: `ClientWeighting.NUM_EXAMPLES` (default) or `ClientWeighting.UNIFORM`.

    Returns:
        A `LearningProcess` (see `build_weighted_fed_avg`).

    Example::

        process = fedsim.learning.algorithms.build_fed_sgd(model_fn)
    """
    return _build_process(model_fn, None, server_optimizer_fn, client_weighting)
