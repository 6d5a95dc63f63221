"""Local differential privacy: what the server receives is the client's clipped value plus noise
with the right distribution (numpy's statistics), drawn from the client's own entropy (the server,
holding the graph, cannot regenerate it), and accounted per client (dp-accounting)."""

import collections

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aggregators, learning, simulation
from fedsim.learning import optimizers

DIM = 20000


def _received_by_server(process, values):
    """With a SumFactory inside and one client, the result is exactly what that client sent."""
    return np.asarray(process.next(process.initialize(), values).result)


def test_gaussian_noise_has_the_stated_spread_around_the_clipped_value():
    process = aggregators.local_gaussian_factory(0.5, 2.0, aggregators.SumFactory()).create(fedsim.TensorType(tf.float32, [DIM]))
    value = np.random.RandomState(0).randn(DIM).astype(np.float32)
    value *= 10.0 / np.linalg.norm(value)  # norm 10: clipped to 2
    noise = _received_by_server(process, [value]) - value * (2.0 / 10.0)
    stddev = 0.5 * 2.0
    assert abs(noise.mean()) < 5 * stddev / np.sqrt(DIM)
    assert noise.std() == pytest.approx(stddev, rel=0.03)
    kurtosis = np.mean((noise - noise.mean()) ** 4) / noise.var() ** 2
    assert kurtosis == pytest.approx(3.0, abs=0.2)  # Gaussian tails, not uniform (1.8) or Laplace (6)


def test_the_noise_comes_from_the_clients_entropy_even_with_a_global_seed():
    """The graph the server ships (and could run) holds no seed; two clients sending the same
    value, or one client twice, send different noise."""
    keras.utils.set_random_seed(7)
    factory = aggregators.local_gaussian_factory(1.0, 1.0, aggregators.SumFactory())
    process = factory.create(fedsim.TensorType(tf.float32, [100]))
    value = np.zeros(100, np.float32)
    first, second = _received_by_server(process, [value]), _received_by_server(process, [value])
    assert np.abs(first - second).min() > 0
    keras.utils.set_random_seed(7)
    again = aggregators.local_gaussian_factory(1.0, 1.0, aggregators.SumFactory()).create(fedsim.TensorType(tf.float32, [100]))
    assert not np.allclose(_received_by_server(again, [value]), first)  # the same seed does not reproduce it
    work = fedsim.compile_to_canonical_form(process.next).work  # what each client runs, as shipped to it
    graph = tf.compat.v1.GraphDef.FromString(work.graph_def)
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    random_ops = [n for n in nodes if n.op.startswith("Random")]
    assert random_ops and all(n.attr["seed"].i == 0 and n.attr["seed2"].i == 0 for n in random_ops)


def test_discrete_laplace_keeps_integers_clips_l1_and_has_the_stated_variance():
    a = 0.5
    process = aggregators.local_discrete_laplace_factory(a, 10, aggregators.SumFactory()).create(fedsim.TensorType(tf.int32, [DIM]))
    received = _received_by_server(process, [np.zeros(DIM, np.int32)])
    assert received.dtype == np.int32
    variance = 2 * np.exp(-a) / (1 - np.exp(-a)) ** 2  # of DLap(a), P(k) ~ exp(-a|k|)
    assert received.var() == pytest.approx(variance, rel=0.1)
    assert abs(received.mean()) < 5 * np.sqrt(variance / DIM)
    assert np.mean(received == 0) == pytest.approx(np.tanh(a / 2), abs=0.02)  # P(0) = tanh(a/2)
    # A huge parameter: no noise, so the clipping shows. L1 40 -> 10: [30, -10] * 1/4 rounded toward zero.
    quiet = aggregators.local_discrete_laplace_factory(50.0, 10, aggregators.SumFactory()).create(fedsim.TensorType(tf.int32, [3]))
    np.testing.assert_array_equal(_received_by_server(quiet, [np.array([30, -10, 0], np.int32)]), [7, -2, 0])
    with pytest.raises(ValueError, match="integer values"):
        aggregators.local_discrete_laplace_factory(a, 10, aggregators.SumFactory()).create(fedsim.TensorType(tf.float32, [3]))


def test_the_ledger_accounts_local_dp_per_client_with_dp_accounting():
    spec = collections.OrderedDict(x=tf.TensorSpec([None, 3], tf.float32), y=tf.TensorSpec([None], tf.int32))

    def model_fn():
        return learning.from_keras_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), input_spec=spec,
                                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    rng = np.random.RandomState(0)
    datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        x=rng.randn(6, 3).astype(np.float32), y=rng.randint(0, 2, 6).astype(np.int32))).batch(3) for _ in range(3)]
    z = 4.0
    process = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1),
                                              model_aggregator=aggregators.local_gaussian_factory(z, 0.5, aggregators.MeanFactory()))
    history = simulation.History()
    ledger = aggregators.PrivacyLedger(delta=1e-5)
    simulation.run_training_process(process, lambda r: datasets, 3, callbacks=[history], privacy_ledger=ledger, verbose=0)

    def reference(rounds):  # one client's releases: replace-one sensitivity 2 * clip, stddev z * clip
        accountant = dp_accounting.pld.PLDAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(z / 2), rounds)
        return accountant.get_epsilon(1e-5)

    assert history.history["privacy/local_epsilon"] == pytest.approx([reference(r) for r in (1, 2, 3)], abs=1e-9)
    assert history.history["privacy/epsilon"] == [0.0, 0.0, 0.0]  # no central mechanism
    budget = aggregators.PrivacyBudget(epsilon=(reference(1) + reference(2)) / 2, delta=1e-5)
    stopped = aggregators.PrivacyLedger(budget=budget)
    simulation.run_training_process(process, lambda r: datasets, 3, privacy_ledger=stopped, verbose=0)
    assert len(stopped.rounds) == 1 and "round 2 would take a client's local epsilon" in stopped.stop_reason
