"""compose_learning_process with a user's own stateful part."""

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import learning, templates
from fedsim.learning import optimizers
from fedsim.learning.algorithms import fed_avg, parts
from fedsim.learning.algorithms.model_info import inspect_model_fn
from fedsim.learning.models import ModelWeights
from tests.learning.test_fed_avg import _datasets, client_arrays, model_fn  # noqa: F401 - fixture


def halving_counting_aggregator(update_type):
    """Weighted mean times 0.5; its state counts rounds, reported as a measurement."""

    @fedsim.federated_computation
    def initialize():
        return fedsim.federated_value(np.int32(0), fedsim.SERVER)

    @fedsim.tf_computation(update_type)
    def halve(update):
        return [0.5 * u for u in update]

    @fedsim.tf_computation(tf.int32)
    def increment(count):
        return count + 1

    @fedsim.federated_computation(
        initialize.type_signature.result,
        fedsim.FederatedType(update_type, fedsim.CLIENTS),
        fedsim.FederatedType(tf.float32, fedsim.CLIENTS),
    )
    def next_fn(count, update, weight):
        new_count = fedsim.federated_map(increment, count)
        mean = fedsim.federated_mean(update, weight=weight)
        return templates.MeasuredProcessOutput(
            state=new_count, result=fedsim.federated_map(halve, mean), measurements=fedsim.federated_zip({"rounds": new_count})
        )

    return templates.MeasuredProcess(initialize, next_fn)


def test_custom_aggregator_in_a_composed_process(client_arrays):  # noqa: F811
    info = inspect_model_fn(model_fn)
    client_update = fed_avg.build_client_update(
        model_fn, lambda: optimizers.build_sgdm(0.1), info.weights_type, info.batch_type, learning.ClientWeighting.NUM_EXAMPLES, 0.0
    )
    update_type = client_update.type_signature.result["update"]

    @fedsim.tf_computation
    def initial_weights():
        return ModelWeights.from_model(model_fn())

    process = learning.templates.compose_learning_process(
        initial_weights,
        parts.build_broadcast_distributor(info.weights_type),
        parts.build_client_work(client_update, model_fn, info.metrics_type),
        halving_counting_aggregator(update_type),
        parts.build_apply_optimizer_finalizer(optimizers.build_sgdm(1.0), info.weights_type, update_type, update_is_gradient=False),
    )
    reference = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1), lambda: optimizers.build_sgdm(0.5))
    state = process.initialize()
    reference_state = reference.set_model_weights(reference.initialize(), process.get_model_weights(state))
    datasets = _datasets(client_arrays)
    for round_number in (1, 2):
        output = process.next(state, datasets)
        state = output.state
        reference_state = reference.next(reference_state, datasets).state
        assert output.metrics["aggregator"] == {"rounds": round_number}
        assert state.aggregator == round_number
    for got, want in zip(process.get_model_weights(state).trainable, reference.get_model_weights(reference_state).trainable):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_parts_must_be_measured_processes():
    @fedsim.tf_computation
    def initial_weights():
        return ModelWeights.from_model(model_fn())

    with pytest.raises(templates.ProcessTypeError, match="distributor must be a MeasuredProcess"):
        learning.templates.compose_learning_process(initial_weights, object(), None, None, None)
