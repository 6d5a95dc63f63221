"""Canonical form: the phases run by hand equal the computation; what cannot compile is refused."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aggregators, learning
from fedsim.core import canonical_form
from fedsim.learning import optimizers

INPUT_SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 5], tf.float32), y=tf.TensorSpec([None], tf.int32))


def model_fn():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3)])
    return learning.from_keras_model(
        model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=INPUT_SPEC,
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


@pytest.fixture(scope="module")
def client_datasets():
    rng = np.random.RandomState(0)
    return [
        tf.data.Dataset.from_tensor_slices(
            collections.OrderedDict(x=rng.randn(n, 5).astype(np.float32), y=rng.randint(0, 3, n).astype(np.int32))
        ).batch(4)
        for n in (5, 9, 7, 12)
    ]


def _assert_equal_results(expected, got, rtol=1e-6):
    assert type(expected) is type(got)
    expected_leaves, got_leaves = tf.nest.flatten(expected), tf.nest.flatten(got)
    assert len(expected_leaves) == len(got_leaves)
    for a, b in zip(expected_leaves, got_leaves):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=1e-7)


PROCESSES = {
    "weighted_fed_avg": lambda: learning.build_weighted_fed_avg(
        model_fn, lambda: optimizers.build_sgdm(0.1), server_optimizer_fn=lambda: optimizers.build_adam(0.01)),
    "unweighted_fed_avg": lambda: learning.build_unweighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1)),
    "fed_prox": lambda: learning.build_weighted_fed_prox(model_fn, lambda: optimizers.build_sgdm(0.1), proximal_strength=0.5),
    "fed_sgd": lambda: learning.build_fed_sgd(model_fn, server_optimizer_fn=lambda: optimizers.build_sgdm(0.5)),
    "fed_eval": lambda: learning.build_fed_eval(model_fn),
    "dp_adaptive": lambda: learning.build_unweighted_fed_avg(
        model_fn, lambda: optimizers.build_sgdm(0.1),
        model_aggregator=aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(0.3, 4, noise_seed=2)),
    "trimmed_mean": lambda: learning.build_weighted_fed_avg(
        model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=aggregators.RobustMeanFactory("trimmed_mean", 0.25)),
    "secure_mean": lambda: learning.build_weighted_fed_avg(
        model_fn, lambda: optimizers.build_sgdm(0.1),
        model_aggregator=aggregators.MeanFactory(value_sum_factory=aggregators.SecureSumFactory(5.0, bitwidth=30))),
}


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_phases_by_hand_equal_the_computation(name, client_datasets):
    process = PROCESSES[name]()
    form = fedsim.compile_to_canonical_form(process.next)
    state = process.initialize()
    for _ in range(2):  # two rounds: the state the form returns feeds the next round
        expected = process.next(state, client_datasets)
        got = fedsim.run_canonical_form(form, state, client_datasets, merge_every=3)
        _assert_equal_results(expected, got)
        state = expected.state
    assert form.type_signature == process.next.type_signature


def test_phases_serialize_and_run_from_bytes(client_datasets):
    process = PROCESSES["weighted_fed_avg"]()
    form = fedsim.compile_to_canonical_form(process.next)
    restored = canonical_form.CanonicalForm(
        type_signature=form.type_signature,
        aggregation_kinds=form.aggregation_kinds,
        secure_bitwidths=form.secure_bitwidths,
        **{name: fedsim.deserialize_computation(fedsim.serialize_computation(phase)) for name, phase in form.phases().items()},
    )
    state = process.initialize()
    _assert_equal_results(fedsim.run_canonical_form(form, state, client_datasets), fedsim.run_canonical_form(restored, state, client_datasets))
    # The work phase is the only one a silo needs: client data in, aggregation inputs out.
    assert isinstance(form.work.type_signature.parameter[0], fedsim.SequenceType)
    assert form.aggregation_kinds == ("sum", "weighted_mean")


VECTOR = fedsim.TensorType(tf.float32, [3])


@fedsim.tf_computation(tf.float32, VECTOR)
def scale(factor, value):
    return value * factor


@fedsim.tf_computation(VECTOR)
def norm(value):
    return tf.norm(value)


def test_a_second_communication_stage_is_refused():
    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), fedsim.FederatedType(VECTOR, fedsim.CLIENTS))
    def two_stages(factor, values):
        mean_norm = fedsim.federated_mean(fedsim.federated_map(norm, values))
        rescaled = fedsim.federated_map(scale, (fedsim.federated_broadcast(mean_norm), values))  # depends on an aggregate
        return fedsim.federated_sum(rescaled)

    with pytest.raises(fedsim.CanonicalFormError, match="broadcast to the clients .* computed from an aggregate of the same round"):
        fedsim.compile_to_canonical_form(two_stages)


def test_wrong_shapes_are_refused():
    @fedsim.federated_computation(fedsim.FederatedType(VECTOR, fedsim.CLIENTS))
    def one_parameter(values):
        return fedsim.federated_sum(values)

    with pytest.raises(fedsim.CanonicalFormError, match="needs two parameters"):
        fedsim.compile_to_canonical_form(one_parameter)

    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), fedsim.FederatedType(VECTOR, fedsim.CLIENTS))
    def returns_client_values(factor, values):
        return fedsim.federated_map(scale, (fedsim.federated_broadcast(factor), values))

    with pytest.raises(fedsim.CanonicalFormError, match="placed at CLIENTS"):
        fedsim.compile_to_canonical_form(returns_client_values)
    with pytest.raises(fedsim.CanonicalFormError, match="compiles a @fedsim.federated_computation"):
        fedsim.compile_to_canonical_form(norm)


def test_all_kinds_of_aggregation_against_numpy():
    @fedsim.tf_computation
    def zero():
        return tf.constant(-np.inf, tf.float32)

    @fedsim.tf_computation(tf.float32, VECTOR)
    def keep_max(current, value):
        return tf.maximum(current, tf.reduce_max(value))

    @fedsim.tf_computation(tf.float32, tf.float32)
    def larger(a, b):
        return tf.maximum(a, b)

    @fedsim.tf_computation(tf.float32)
    def identity(x):
        return x

    @fedsim.tf_computation(VECTOR)
    def as_counts(value):
        return tf.cast(tf.abs(value) * 10, tf.int32)

    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), fedsim.FederatedType(VECTOR, fedsim.CLIENTS))
    def every_kind(factor, values):
        scaled = fedsim.federated_map(scale, (fedsim.federated_broadcast(factor), values))
        return collections.OrderedDict(
            sum=fedsim.federated_sum(scaled),
            mean=fedsim.federated_mean(values),
            weighted=fedsim.federated_mean(values, fedsim.federated_map(norm, values)),
            largest=fedsim.federated_aggregate(values, zero(), keep_max, larger, identity),
            secure=fedsim.federated_secure_sum_bitwidth(fedsim.federated_map(as_counts, values), 12),
            factor=factor,
        )

    rng = np.random.RandomState(3)
    values = [rng.randn(3).astype(np.float32) for _ in range(7)]
    form = fedsim.compile_to_canonical_form(every_kind)
    got = fedsim.run_canonical_form(form, np.float32(2.0), values, merge_every=2)
    expected = every_kind(np.float32(2.0), values)
    _assert_equal_results(expected, got)
    stacked = np.stack(values).astype(np.float64)
    norms = np.linalg.norm(stacked, axis=1)
    np.testing.assert_allclose(got["sum"], 2 * stacked.sum(0), rtol=1e-5)
    np.testing.assert_allclose(got["weighted"], (norms[:, None] * stacked).sum(0) / norms.sum(), rtol=1e-5)
    assert got["largest"] == pytest.approx(stacked.max())
    np.testing.assert_array_equal(got["secure"], np.sum([(np.abs(v) * 10).astype(np.int32) for v in values], axis=0))
    assert form.secure_bitwidths[form.aggregation_kinds.index("secure_sum")] == (12,)
    with pytest.raises(ValueError, match="empty"):
        fedsim.run_canonical_form(form, np.float32(2.0), [])


def test_secure_sum_over_unsorted_keys_agrees_with_the_simulation():
    """Regression: per-key bitwidths of a dict whose keys are not sorted were applied out of order."""
    value_type = collections.OrderedDict(b=fedsim.TensorType(tf.int32, [2]), a=fedsim.TensorType(tf.int32, [2]))

    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), fedsim.FederatedType(value_type, fedsim.CLIENTS))
    def secure(state, values):
        return state, fedsim.federated_secure_sum_bitwidth(values, {"b": 2, "a": 20})

    clients = [collections.OrderedDict(b=np.array([1, 3], np.int32), a=np.array([70_000, 5], np.int32)),
               collections.OrderedDict(b=np.array([2, 0], np.int32), a=np.array([900_000, 6], np.int32))]
    expected = {"b": [3, 3], "a": [970_000, 11]}
    local = secure(np.float32(1.0), clients)[1]
    form = fedsim.compile_to_canonical_form(secure)
    assert form.secure_bitwidths == ((2, 20),)  # in the type's order: b, then a
    compiled = fedsim.run_canonical_form(form, np.float32(1.0), clients)[1]
    for result in (local, compiled):
        assert list(result) == ["b", "a"]
        for key, want in expected.items():
            np.testing.assert_array_equal(result[key], want)
