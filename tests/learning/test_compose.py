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
        parts.build_client_work(client_update, parts.build_metrics_aggregation(model_fn, info.metrics_type)),
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


class PlainMeanFactory:
    """An unweighted aggregation factory in the factory -> process shape (create(value_type))."""

    def __init__(self):
        self.created_for = None

    def create(self, value_type):
        self.created_for = value_type

        @fedsim.federated_computation
        def initialize():
            return fedsim.federated_value((), fedsim.SERVER)

        @fedsim.federated_computation(initialize.type_signature.result, fedsim.FederatedType(value_type, fedsim.CLIENTS))
        def next_fn(state, value):
            return templates.MeasuredProcessOutput(
                state=state, result=fedsim.federated_mean(value), measurements=fedsim.federated_value(np.int32(7), fedsim.SERVER)
            )

        return templates.MeasuredProcess(initialize, next_fn)


def test_model_aggregator_factory_plugs_into_fed_avg(client_arrays):  # noqa: F811
    factory = PlainMeanFactory()
    custom = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=factory)
    unweighted = learning.build_unweighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))
    assert factory.created_for is not None
    state = custom.initialize()
    output = custom.next(state, _datasets(client_arrays))
    expected = unweighted.next(unweighted.set_model_weights(unweighted.initialize(), custom.get_model_weights(state)), _datasets(client_arrays))
    for got, want in zip(custom.get_model_weights(output.state).trainable, unweighted.get_model_weights(expected.state).trainable):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert output.metrics["aggregator"] == 7
    with pytest.raises(TypeError, match="aggregation factory with a create"):
        learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=object())


def test_metrics_aggregator_and_distributor_hooks(client_arrays):  # noqa: F811
    def with_client_count(metric_finalizers, unfinalized_type):
        inner = learning.metrics.sum_then_finalize(metric_finalizers, unfinalized_type)

        @fedsim.tf_computation(unfinalized_type)
        def one(unfinalized):
            del unfinalized
            return tf.constant(1)

        @fedsim.federated_computation(fedsim.FederatedType(unfinalized_type, fedsim.CLIENTS))
        def aggregate(unfinalized):
            return fedsim.federated_zip({"metrics": inner(unfinalized), "clients": fedsim.federated_sum(fedsim.federated_map(one, unfinalized))})

        return aggregate

    info = inspect_model_fn(model_fn)
    process = learning.build_weighted_fed_avg(
        model_fn,
        lambda: optimizers.build_sgdm(0.1),
        model_distributor=parts.build_broadcast_distributor(info.weights_type),
        metrics_aggregator=with_client_count,
    )
    train = process.next(process.initialize(), _datasets(client_arrays)).metrics["client_work"]["train"]
    assert train["clients"] == 3 and train["metrics"]["num_examples"] == 39
    evaluation = learning.build_federated_evaluation(model_fn, metrics_aggregator=with_client_count)
    assert evaluation(process.get_model_weights(process.initialize()), _datasets(client_arrays))["eval"]["clients"] == 3
