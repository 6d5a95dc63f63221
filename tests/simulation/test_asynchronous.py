"""Buffered asynchronous training on a virtual clock, against synchronous FedAvg and numpy."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim as tff
from fedsim import aggregators, simulation
from fedsim.core import staleness

NUM_CLIENTS = 12
CLIENT_IDS = [f"client_{i:02d}" for i in range(NUM_CLIENTS)]
ARRAYS = dict(zip(CLIENT_IDS, simulation.emnist_like_client_arrays(NUM_CLIENTS, seed=3, num_classes=10, min_examples=20, max_examples=40)))


def client_dataset(client_id):
    pixels, labels = ARRAYS[client_id]
    return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=pixels.reshape(-1, 784), y=labels)).batch(10)


SPEC = client_dataset(CLIENT_IDS[0]).element_spec


def model_fn():
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, kernel_initializer="zeros")])
    return tff.learning.models.from_keras_model(
        model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=SPEC,
        metrics=[keras.metrics.SparseCategoricalAccuracy()])


@pytest.fixture(scope="module")
def process():
    return tff.learning.algorithms.build_weighted_fed_avg(model_fn, lambda: tff.learning.optimizers.build_sgdm(0.05))


def trainable(process, state):
    return [np.asarray(w) for w in process.get_model_weights(state).trainable]


def run(process, **options):
    options.setdefault("verbose", 0)
    return simulation.run_async_training_process(process, CLIENT_IDS, client_dataset, **options)


def test_buffer_of_the_cohort_with_equal_clients_is_synchronous_fedavg(process):
    result = run(process, total_versions=3, buffer_size=4, concurrency=4, staleness_weight=staleness.constant_staleness())
    assert [v.version for v in result.versions] == [1, 2, 3]
    assert [v.virtual_time for v in result.versions] == [1.0, 2.0, 3.0]
    state = process.initialize()
    for version in result.versions:
        assert [u.staleness for u in version.updates] == [0, 0, 0, 0]
        assert len({u.client_id for u in version.updates}) == 4
        state = process.next(state, [client_dataset(u.client_id) for u in version.updates]).state
    for got, want in zip(trainable(process, result.state), trainable(process, state)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_each_version_applies_the_staleness_weighted_buffer_as_fedbuff_defines_it(process):
    """Version v+1 = v + sum(s(tau_i) n_i delta_i) / sum(n_i), each delta from the client's base version."""
    latency = simulation.LatencyModel(CLIENT_IDS, slow_fraction=0.25, slow_factor=2.5, seed=1)
    options = dict(buffer_size=3, concurrency=6, latency=latency, seed=5)
    full = run(process, total_versions=5, **options)
    assert any(u.staleness > 0 for v in full.versions for u in v.updates), "the test needs stale updates"
    states = [process.initialize()] + [run(process, total_versions=k, **options).state for k in range(1, 5)]
    for version in full.versions:
        base = trainable(process, states[version.version - 1])
        numerator = [np.zeros_like(w, dtype=np.float64) for w in base]
        examples = 0
        for update in version.updates:
            assert update.staleness == version.version - 1 - update.base_version
            assert update.weight == pytest.approx(1.0 / np.sqrt(1.0 + update.staleness))
            start = states[update.base_version]
            alone = process.next(start, [client_dataset(update.client_id)]).state  # server lr 1: start + delta
            count = len(ARRAYS[update.client_id][1])
            for total, after, before in zip(numerator, trainable(process, alone), trainable(process, start)):
                total += update.weight * count * (after.astype(np.float64) - before)
            examples += count
        expected = [b + n / examples for b, n in zip(base, numerator)]
        for got, want in zip(trainable(process, full.state if version.version == 5 else states[version.version]), expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_runs_are_deterministic_for_a_seed_and_differ_across_seeds(process):
    latency = simulation.LatencyModel(CLIENT_IDS, slow_fraction=0.25, slow_factor=4.0, jitter=0.3, seed=2)
    first = run(process, total_versions=3, buffer_size=2, concurrency=4, latency=latency, seed=9)
    again = run(process, total_versions=3, buffer_size=2, concurrency=4, latency=latency, seed=9)
    other = run(process, total_versions=3, buffer_size=2, concurrency=4, latency=latency, seed=10)
    assert [v.updates for v in first.versions] == [v.updates for v in again.versions]
    for a, b in zip(trainable(process, first.state), trainable(process, again.state)):
        np.testing.assert_array_equal(a, b)
    assert [v.updates for v in first.versions] != [v.updates for v in other.versions]


def test_updates_staler_than_the_limit_are_refused_with_their_reason(process):
    latency = simulation.LatencyModel(CLIENT_IDS, slow_fraction=0.25, slow_factor=5.0, seed=0)
    result = run(process, total_versions=8, buffer_size=2, concurrency=3, latency=latency, max_staleness=1, seed=3)
    assert result.refused, "slow clients several versions behind must be refused"
    for refused in result.refused:
        assert refused.staleness > 1
        assert refused.client_id in latency.slow_clients
        assert "exceeds max_staleness 1" in refused.reason
    applied = [(u.client_id, u.base_version, u.arrived_at) for v in result.versions for u in v.updates]
    assert all((r.client_id, r.base_version, r.arrived_at) not in applied for r in result.refused)
    assert all(u.staleness <= 1 for v in result.versions for u in v.updates)
    assert result.versions[-1].metrics["async"]["refused_total"] == len(result.refused)


def test_metrics_callbacks_and_stopping_as_the_synchronous_loop(process, tmp_path):
    history = simulation.History()
    stop = simulation.EarlyStopping("evaluation/accuracy", patience=0, mode="max", min_delta=10.0)
    csv = simulation.CSVMetricsManager(tmp_path / "metrics.csv")
    evaluated = []

    def evaluate(state, data):
        evaluated.append(data)
        return {"accuracy": float(len(evaluated))}

    result = run(process, total_versions=10, buffer_size=2, concurrency=2, evaluation_fn=evaluate,
                 evaluation_selection_fn=lambda version: version, callbacks=[history, stop], metrics_managers=[csv])
    assert len(result.versions) == 2 and result.stopped_reason  # no improvement of 10 after the first
    assert evaluated == [1, 2]
    assert history.history["async/virtual_time"] == [1.0, 2.0]
    assert "training/client_work/train/loss" in history.history
    assert [row["round_num"] for row in csv.get_metrics()] == ["1", "2"]


def test_aggregations_that_cannot_be_staleness_weighted_are_refused(process):
    def build(aggregator):
        return tff.learning.algorithms.build_weighted_fed_avg(
            model_fn, lambda: tff.learning.optimizers.build_sgdm(0.05), model_aggregator=aggregator)

    with pytest.raises(staleness.AsyncUnsupportedError, match="two sums"):
        run(build(aggregators.MeanFactory()), total_versions=1)
    with pytest.raises(staleness.AsyncUnsupportedError, match="secure_sum"):
        run(build(tff.learning.secure_aggregator(zeroing=False, clipping=False)), total_versions=1)


def test_arguments_are_checked(process):
    with pytest.raises(ValueError, match="concurrency 20"):
        run(process, total_versions=1, buffer_size=2, concurrency=20)
    with pytest.raises(ValueError, match="buffer_size"):
        run(process, total_versions=1, buffer_size=0)
    with pytest.raises(ValueError, match="go together"):
        run(process, total_versions=1, evaluation_fn=lambda s, d: {})


def test_latency_model_slow_clients_and_rounds():
    latency = simulation.LatencyModel([f"c{i}" for i in range(100)], base_seconds=2.0, slow_fraction=0.1, slow_factor=10.0, seed=4)
    assert len(latency.slow_clients) == 10
    slow = sorted(latency.slow_clients)[0]
    fast = next(c for c in latency.client_ids if c not in latency.slow_clients)
    assert latency.seconds(slow, 0) == 20.0 and latency.seconds(fast, 7) == 2.0
    assert latency.round_seconds([fast, slow], 3) == 20.0 and latency.round_seconds([fast], 3) == 2.0
    jittered = simulation.LatencyModel(latency.client_ids, jitter=0.5, seed=4)
    times = np.array([jittered.seconds(fast, task) for task in range(2000)])
    assert times[0] == jittered.seconds(fast, 0)
    np.testing.assert_allclose(np.std(np.log(times)), 0.5, rtol=0.1)  # log-normal with sigma 0.5
    with pytest.raises(ValueError, match="slow_fraction"):
        simulation.LatencyModel(["a"], slow_fraction=1.5)


def test_staleness_weights():
    weight = staleness.polynomial_staleness()
    assert weight(0) == 1.0 and weight(3) == 0.5
    assert staleness.polynomial_staleness(1.0)(4) == 0.2
    assert staleness.constant_staleness()(100) == 1.0
