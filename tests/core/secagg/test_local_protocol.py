"""The local context runs the secure-sum intrinsics as the protocol when asked: the same results as
the exact sum (FedAvg with `secure_aggregator()`), dropouts leave clients out as a deployment would."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim as tff
from fedsim.core import context_stack
from fedsim.core.local_context import LocalExecutionContext
from fedsim.core.secagg.runtime import SecureSumProtocol


@tff.federated_computation(tff.FederatedType(tff.TensorType(tf.int32, [6]), tff.CLIENTS))
def secure_total(values):
    return tff.federated_secure_sum_bitwidth(values, 12)


def _values(n, seed=0):
    return [np.random.default_rng(seed + i).integers(0, 2**12, 6).astype(np.int32) for i in range(n)]


def test_the_protocol_gives_the_exact_sum_and_records_its_cost():
    values = _values(7)
    runtime = SecureSumProtocol(neighbours=4)
    with context_stack.execution_context(LocalExecutionContext(secure_aggregation=runtime)):
        total = secure_total(values)
    np.testing.assert_array_equal(total, np.sum(values, axis=0))
    assert len(runtime.outcomes) == 1 and runtime.outcomes[0].included == tuple(f"client-{i:06d}" for i in range(7))
    assert all(size > runtime.outcomes[0].vector_bytes for size in runtime.outcomes[0].uploaded_bytes.values())


def test_dropouts_leave_their_clients_out_of_the_sum():
    values = _values(9, seed=5)
    runtime = SecureSumProtocol(drop_rate=0.3, seed=3)
    with context_stack.execution_context(LocalExecutionContext(secure_aggregation=runtime)):
        total = secure_total(values)
    included = [int(name.split("-")[1]) for name in runtime.outcomes[0].included]
    assert 0 < len(included) < 9  # some were lost, enough were left
    np.testing.assert_array_equal(total, np.sum([values[i] for i in included], axis=0))


def test_a_value_out_of_range_is_refused_before_the_protocol():
    with context_stack.execution_context(LocalExecutionContext(secure_aggregation="protocol")):
        with pytest.raises(ValueError, match=r"outside \[0, 2\*\*12\)"):
            secure_total([np.full(6, 2**12, np.int32), np.zeros(6, np.int32)])


def test_fed_avg_with_the_secure_aggregator_equals_the_exact_run():
    def model_fn():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_initializer="zeros")])
        spec = collections.OrderedDict(x=tf.TensorSpec([None, 3], tf.float32), y=tf.TensorSpec([None], tf.int32))
        return tff.learning.models.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                                    input_spec=spec)

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, lambda: keras.optimizers.SGD(0.5), model_aggregator=tff.learning.secure_aggregator())
    rng = np.random.RandomState(0)
    data = []
    for _ in range(4):
        x = rng.randn(12, 3).astype(np.float32)
        data.append(tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=(x[:, 0] > 0).astype(np.int32))).batch(4))
    runs = {}
    for mode in ("exact", "protocol"):
        with context_stack.execution_context(LocalExecutionContext(secure_aggregation=mode)):
            state = process.initialize()
            for _ in range(2):
                state = process.next(state, data).state
            runs[mode] = process.get_model_weights(state).trainable
    for exact, secure in zip(runs["exact"], runs["protocol"]):
        np.testing.assert_array_equal(exact, secure)  # the protocol's sum is the exact sum: bit-equal
