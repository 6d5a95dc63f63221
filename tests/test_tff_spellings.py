"""TFF spellings that tutorials use before anything else: context setters, type helpers, metrics."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim as tff


@pytest.fixture
def restore_default_context():
    yield
    tff.set_default_context(None)


@pytest.mark.parametrize("setter, arguments", [
    (tff.backends.native.set_sync_local_cpp_execution_context, {}),
    (tff.backends.native.set_sync_local_cpp_execution_context, {"max_concurrent_computation_calls": 4, "stream_structs": True}),
    (tff.backends.native.set_local_python_execution_context, {}),
    (tff.backends.native.set_async_local_cpp_execution_context, {}),
    (tff.backends.test.set_sync_test_cpp_execution_context, {}),
])
def test_tff_context_setters_select_the_local_context(setter, arguments, restore_default_context):
    setter(**arguments)
    assert isinstance(tff.get_context(), tff.LocalExecutionContext)

    @tff.federated_computation(tff.types.type_at_clients(tf.float32))
    def mean(values):
        return tff.federated_mean(values)

    assert mean([1.0, 2.0, 6.0]) == pytest.approx(3.0)


def test_default_num_clients_is_honoured(restore_default_context):
    tff.backends.native.set_sync_local_cpp_execution_context(default_num_clients=3)

    @tff.tf_computation
    def one():
        return tf.constant(1.0)

    @tff.federated_computation
    def count_clients():
        return tff.federated_sum(tff.federated_eval(one, tff.CLIENTS))

    assert count_clients() == 3.0
    with pytest.raises(ValueError, match="non-negative"):
        tff.backends.native.set_sync_local_cpp_execution_context(default_num_clients=-1)
    assert isinstance(tff.backends.native.create_sync_local_cpp_execution_context(), tff.LocalExecutionContext)


def test_type_at_clients_and_server():
    assert tff.types.type_at_clients(tf.int32) == tff.FederatedType(tf.int32, tff.CLIENTS)
    assert str(tff.types.type_at_clients(tf.int32)) == "{int32}@CLIENTS"
    assert str(tff.types.type_at_clients(tf.int32, all_equal=True)) == "int32@CLIENTS"
    assert str(tff.types.type_at_server(tff.to_type([tf.float32]))) == "<float32>@SERVER"


def test_sum_then_finalize_without_a_type_traces_for_the_first_value():
    finalizers = collections.OrderedDict(
        mean=lambda values: values[0] / values[1],
        total=lambda values: values[0],
    )
    aggregate = tff.learning.metrics.sum_then_finalize(finalizers)
    unfinalized_type = tff.to_type(collections.OrderedDict(mean=[tf.float32, tf.float32], total=[tf.float32]))

    @tff.federated_computation(tff.types.type_at_clients(unfinalized_type))
    def metrics(unfinalized):
        return aggregate(unfinalized)

    clients = [collections.OrderedDict(mean=[np.float32(6.0), np.float32(2.0)], total=[np.float32(1.0)]),
               collections.OrderedDict(mean=[np.float32(3.0), np.float32(1.0)], total=[np.float32(4.0)])]
    result = metrics(clients)
    assert result["mean"] == pytest.approx(3.0) and result["total"] == pytest.approx(5.0)
    assert str(metrics.type_signature.result) == "<mean=float32,total=float32>@SERVER"
