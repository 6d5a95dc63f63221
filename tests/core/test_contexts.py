import numpy as np
import pytest
import tensorflow as tf

import fedsim


class RecordingContext:
    def __init__(self):
        self.calls = []

    def invoke(self, computation, argument):
        self.calls.append((computation.name, argument))
        return "recorded"


@pytest.fixture(scope="module")
def mean():
    return fedsim.federated_computation(lambda v: fedsim.federated_mean(v), fedsim.FederatedType(tf.float32, fedsim.CLIENTS))


def test_with_block_swaps_the_context_and_restores_it(mean):
    recording = RecordingContext()
    with fedsim.execution_context(recording):
        assert mean([1.0, 2.0]) == "recorded"
    assert recording.calls[0][1] == [1.0, 2.0]
    assert mean([1.0, 3.0]) == 2.0


def test_setter_swaps_the_default(mean):
    recording = RecordingContext()
    fedsim.set_default_context(recording)
    try:
        assert mean([1.0]) == "recorded"
    finally:
        fedsim.set_default_context(None)
    assert mean([4.0]) == 4.0


def test_lazy_client_sequences_are_read_one_client_at_a_time():
    class Clients:
        def __init__(self, count):
            self.count, self.reads = count, []

        def __len__(self):
            return self.count

        def __getitem__(self, index):
            self.reads.append(index)
            return np.full(4, index, np.float32)

    total = fedsim.federated_computation(lambda v: fedsim.federated_sum(v), fedsim.FederatedType((tf.float32, [4]), fedsim.CLIENTS))
    clients = Clients(50)
    np.testing.assert_array_equal(total(clients), np.full(4, sum(range(50)), np.float32))
    assert sorted(clients.reads) == list(range(50))


def test_results_do_not_depend_on_threads():
    @fedsim.tf_computation((tf.float32, [1000]))
    def transform(x):
        return tf.sin(x) * 1e3

    computation = fedsim.federated_computation(
        lambda v: fedsim.federated_mean(fedsim.federated_map(transform, v)),
        fedsim.FederatedType((tf.float32, [1000]), fedsim.CLIENTS),
    )
    values = [np.random.RandomState(i).randn(1000).astype(np.float32) for i in range(40)]
    results = []
    for threads in (1, 2, 4):
        with fedsim.execution_context(fedsim.LocalExecutionContext(max_parallel_clients=threads)):
            results.append(computation(values))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
